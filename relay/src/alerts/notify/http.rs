//! What the two HTTP channels share: one client per channel and the reading of an answer as
//! delivered / retry / give up.

use super::Attempt;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use std::time::Duration;

/// A client for one channel: `timeout` covers connect and answer, redirects are not followed
/// (a webhook that moved is a configuration error, and following it could leak the body).
pub(super) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("flotilla-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a reqwest client with rustls and native roots builds")
}

/// Sends `request` and classifies the outcome.
pub(super) async fn send(request: reqwest::RequestBuilder, timeout: Duration) -> Attempt {
    match request.send().await {
        Ok(response) => classify(
            response.status(),
            response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        ),
        Err(e) if e.is_timeout() => Attempt::Retry {
            error: format!("no answer within {}s", timeout.as_secs()),
            retry_after: None,
        },
        Err(e) if e.is_builder() => Attempt::GiveUp { error: describe(e) },
        Err(e) => Attempt::Retry {
            error: describe(e),
            retry_after: None,
        },
    }
}

/// 2xx delivered; 408, 429 and 5xx retried (with `Retry-After` when it is a number of
/// seconds); anything else (3xx, other 4xx) refused for good.
pub(super) fn classify(status: StatusCode, retry_after: Option<&str>) -> Attempt {
    if status.is_success() {
        return Attempt::Delivered;
    }
    let error = format!("the receiver answered {status}");
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Attempt::Retry {
            error,
            retry_after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    } else {
        Attempt::GiveUp { error }
    }
}

/// The error and its causes, without the request's URL (it may carry a token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, retry_after: Option<&str>, expected: &str) {
        let got = match classify(StatusCode::from_u16(status).unwrap(), retry_after) {
            Attempt::Delivered => "delivered".to_string(),
            Attempt::Retry { retry_after, .. } => format!("retry {retry_after:?}"),
            Attempt::GiveUp { .. } => "give up".to_string(),
        };
        assert_eq!(got, expected, "status {status} retry-after {retry_after:?}");
    }

    #[test]
    fn answers_are_classified() {
        check(200, None, "delivered");
        check(204, None, "delivered");
        check(500, None, "retry None");
        check(503, Some("7"), "retry Some(7s)");
        check(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), "retry None");
        check(429, Some(" 2 "), "retry Some(2s)");
        check(408, None, "retry None");
        check(400, Some("5"), "give up");
        check(404, None, "give up");
        check(301, None, "give up");
    }
}
