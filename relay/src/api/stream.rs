//! `GET /api/v1/events/stream`: the live event stream as Server-Sent Events (read scope).
//!
//! Query: `kinds` (comma list of kind prefixes), `selector` (label selector; see
//! [`crate::stream`] for how events are matched against it), `last_event_id` (or the
//! `Last-Event-ID` header, which wins) to resume from the replay buffer. Each event is an
//! unnamed SSE event with `id:` and one JSON line ([`FleetEvent`]); a client whose id is
//! older than the buffer first gets `event: reset` and then live events, and a client that
//! falls [`crate::stream::CLIENT_QUEUE`] events behind gets `event: reset` and the stream
//! ends. A comment every 15 s keeps proxies from closing an idle stream.

/// Where the stream is served.
pub const STREAM_PATH: &str = "/api/v1/events/stream";

use super::error::QueryParams;
use super::{ApiError, Caller};
use crate::state::AppState;
use crate::store::Store;
use crate::stream::{Decision, Filter, LabelCache, Start};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use flotilla_shared::api::Scope;
use flotilla_shared::stream::{FleetEvent, Reset, RESET_EVENT};
use futures_util::Stream;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

/// Interval of the keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    kinds: Option<String>,
    selector: Option<String>,
    last_event_id: Option<String>,
}

fn parse_id(text: &str, what: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{what} must be an event id (a number), got {text:?}"
        ))
    })
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(query): QueryParams<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Scope::Read)?;
    let kinds = query
        .kinds
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let selector = match query.selector.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(
            s.parse()
                .map_err(|e| ApiError::bad_request(format!("selector {s:?}: {e}")))?,
        ),
    };
    let after = match headers.get("last-event-id") {
        Some(v) => Some(parse_id(
            v.to_str().unwrap_or("?"),
            "the Last-Event-ID header",
        )?),
        None => match query.last_event_id.as_deref() {
            Some(v) if !v.trim().is_empty() => Some(parse_id(v, "last_event_id")?),
            _ => None,
        },
    };
    let filter = Filter { kinds, selector };
    let sub = state.stream.subscribe(after, &filter);
    let (reset, replay) = match sub.start {
        Start::Replay(events) => (None, events.into()),
        Start::Reset(reason) => (Some(reason), VecDeque::new()),
    };
    let client = Client {
        filter,
        labels: LabelCache::default(),
        store: state.store.clone(),
        reset,
        replay,
        live: sub.live,
        shutdown: state.shutdown.clone(),
        done: false,
    };
    let stream = futures_util::stream::unfold(client, |mut c| async move {
        c.next().await.map(|event| (Ok(event), c))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One stream client's state, polled only by its own response body.
struct Client {
    filter: Filter,
    labels: LabelCache,
    store: Store,
    /// A reset to send first (the client's last id was too old).
    reset: Option<String>,
    replay: VecDeque<Arc<FleetEvent>>,
    live: broadcast::Receiver<Arc<FleetEvent>>,
    shutdown: CancellationToken,
    done: bool,
}

fn reset_event(reason: String) -> Event {
    let data = serde_json::to_string(&Reset { reason }).unwrap_or_else(|_| "{}".into());
    Event::default().event(RESET_EVENT).data(data)
}

impl Client {
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        if let Some(reason) = self.reset.take() {
            return Some(reset_event(reason));
        }
        loop {
            let event = match self.replay.pop_front() {
                Some(e) => e,
                None => {
                    let received = tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        r = self.live.recv() => r,
                    };
                    match received {
                        Ok(e) => e,
                        Err(RecvError::Closed) => return None,
                        Err(RecvError::Lagged(missed)) => {
                            self.done = true;
                            return Some(reset_event(format!(
                                "this client fell {missed} events behind; reload and reconnect"
                            )));
                        }
                    }
                }
            };
            if self.wanted(&event).await {
                let data = serde_json::to_string(&*event).unwrap_or_else(|_| "{}".into());
                return Some(Event::default().id(event.id.to_string()).data(data));
            }
        }
    }

    async fn wanted(&mut self, event: &FleetEvent) -> bool {
        loop {
            match self.labels.decide(&self.filter, event) {
                Decision::Send => return true,
                Decision::Skip => return false,
                Decision::NeedLabels(agent_id) => {
                    let labels = match self.store.agent_auth(agent_id.clone()).await {
                        Ok(found) => found.map(|a| a.labels),
                        Err(e) => {
                            tracing::warn!(error = %e, "event stream: cannot read an agent's labels");
                            None
                        }
                    };
                    self.labels.insert(agent_id, labels);
                }
            }
        }
    }
}
