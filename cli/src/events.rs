//! The relay's live event stream (`GET /api/v1/events/stream`, Server-Sent Events): a small SSE
//! parser ([`SseParser`]), a reader task that keeps one stream open across drops
//! ([`open_stream`]: reconnects with backoff and `Last-Event-ID`), [`WatchFeed`], which tells a
//! `--watch` loop when to fetch its state again (falling back to polling on a relay without the
//! stream), and `flotilla events`, which tails the stream.

use super::client::{ApiClient, CliError};
use super::render::{self, clean};
use super::run::emit;
use super::Outcome;
use flotilla_shared::selector::Selector;
use flotilla_shared::stream::{FleetEvent, Reset, RESET_EVENT};
use futures_util::StreamExt;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest line the parser accepts (the relay's lines are one JSON event each).
pub const MAX_LINE: usize = 1024 * 1024;
/// First wait before reconnecting a dropped stream; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// With no byte for this long the stream counts as dropped (the relay sends a comment every
/// 15 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// A watch re-fetches at most this often however many events arrive.
pub const COALESCE: Duration = Duration::from_millis(250);

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name; `message` when there was none.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// The last `id:` seen so far on the stream (SSE's "last event ID"), if any.
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("the event stream sent a line longer than {0} bytes")]
    LineTooLong(usize),
}

/// An incremental parser of a `text/event-stream` body: feed it chunks as they come, split
/// anywhere (inside a line, inside a CRLF, inside a UTF-8 character).
#[derive(Debug)]
pub struct SseParser {
    max_line: usize,
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF of the next one belongs to that line end.
    after_cr: bool,
    /// Nothing parsed yet (a leading UTF-8 BOM is skipped).
    at_start: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    /// The `id:` of the event being read; it becomes `last_id` when the event is dispatched
    /// (the SSE "last event ID buffer"), so a connection that drops mid-event does not
    /// resume after an event it never delivered.
    id_buffer: Option<String>,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(MAX_LINE)
    }
}

impl SseParser {
    pub fn new(max_line: usize) -> SseParser {
        SseParser {
            max_line,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
            id_buffer: None,
        }
    }

    /// The last event id the stream set (for `Last-Event-ID` on reconnect).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Forgets a partial line and event (the connection dropped), keeping the last id.
    pub fn restart(&mut self) {
        let last_id = self.last_id.take();
        *self = SseParser::new(self.max_line);
        self.id_buffer = last_id.clone();
        self.last_id = last_id;
    }

    /// Parses `chunk` and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    if self.line.len() + i > self.max_line {
                        return Err(SseError::LineTooLong(self.max_line));
                    }
                    self.line.extend_from_slice(&rest[..i]);
                    let cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                    if cr {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        out.push(event);
                    }
                }
                None => {
                    if self.line.len() + rest.len() > self.max_line {
                        return Err(SseError::LineTooLong(self.max_line));
                    }
                    self.line.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, raw: &[u8]) -> Option<SseEvent> {
        let mut raw = raw;
        if self.at_start {
            self.at_start = false;
            raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
        }
        if raw.is_empty() {
            return self.dispatch();
        }
        let line = String::from_utf8_lossy(raw);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id_buffer = Some(value.to_string()),
            // `retry:` and unknown fields: ignored (the CLI has its own backoff).
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        // Every blank line commits the id buffer, with or without data (the SSE rules).
        self.last_id = self.id_buffer.clone();
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        })
    }
}

/// What the stream reader reports.
#[derive(Debug)]
pub enum Signal {
    Event(FleetEvent),
    /// `event: reset`: events were missed; reload.
    Reset(String),
    /// The stream dropped; the reader reconnects after `retry_in`.
    Dropped {
        reason: String,
        retry_in: Duration,
    },
    /// The stream is open again after a drop.
    Reconnected,
    /// The reader gave up (the relay refused the reconnect).
    Fatal(CliError),
}

/// The stream's query: kind prefixes (comma list) and a selector.
#[derive(Debug, Clone, Default)]
pub struct StreamQuery {
    pub kinds: Option<String>,
    pub selector: Option<String>,
}

impl StreamQuery {
    pub fn kinds(kinds: &str) -> StreamQuery {
        StreamQuery {
            kinds: Some(kinds.to_string()),
            selector: None,
        }
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(k) = self.kinds.as_deref().filter(|k| !k.trim().is_empty()) {
            q.push(("kinds", k.to_string()));
        }
        if let Some(s) = self.selector.as_deref().filter(|s| !s.trim().is_empty()) {
            q.push(("selector", s.to_string()));
        }
        q
    }
}

/// Opens the stream; `Ok(None)` when the relay has none (404: an older relay). The reader task
/// then keeps it open: on a drop it waits (1 s doubling to 30 s), reconnects with
/// `Last-Event-ID` and sends [`Signal::Reconnected`].
pub async fn open_stream(
    client: &ApiClient,
    query: StreamQuery,
) -> Result<Option<mpsc::Receiver<Signal>>, CliError> {
    let pairs = query.pairs();
    let Some(response) = client.open_stream(&pairs, None).await? else {
        return Ok(None);
    };
    let (tx, rx) = mpsc::channel(256);
    let client = client.clone();
    tokio::spawn(async move { read_stream(client, pairs, response, tx).await });
    Ok(Some(rx))
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    // The OS random source; on failure no jitter (the backoff still grows).
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return d;
    }
    let f = 0.5 + f64::from(u16::from_le_bytes(b)) / 65536.0;
    d.mul_f64(f)
}

async fn read_stream(
    client: ApiClient,
    pairs: Vec<(&'static str, String)>,
    first: reqwest::Response,
    tx: mpsc::Sender<Signal>,
) {
    let mut parser = SseParser::default();
    let mut response = first;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Ok(mut reason) = read_body(response, &mut parser, &tx, &mut backoff).await else {
            return; // nobody listens any more
        };
        // A partial event of the dropped connection never completes; the last id stays.
        parser.restart();
        let last_id = parser.last_id().map(str::to_string);
        response = loop {
            // ±50 % jitter: clients that lost the same relay do not come back in step.
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let signal = Signal::Dropped {
                reason: reason.clone(),
                retry_in: wait,
            };
            if tx.send(signal).await.is_err() {
                return;
            }
            tokio::time::sleep(wait).await;
            match client.open_stream(&pairs, last_id.as_deref()).await {
                Ok(Some(r)) => {
                    if tx.send(Signal::Reconnected).await.is_err() {
                        return;
                    }
                    break r;
                }
                // It served the stream a moment ago: a 404 now is a proxy or a relay still
                // starting, not an old relay. Keep trying.
                Ok(None) => reason = "the stream answered 404 while reconnecting".into(),
                // Still unreachable, or the relay (or a proxy in front of it) is restarting:
                // wait longer and try again. Refusals (401, 403, 400) end the stream.
                Err(e @ CliError::Transport { .. }) => reason = e.to_string(),
                Err(e @ CliError::Api { status, .. }) if status >= 500 || status == 429 => {
                    reason = e.to_string()
                }
                Err(e) => {
                    let _ = tx.send(Signal::Fatal(e)).await;
                    return;
                }
            }
        };
    }
}

/// Reads one connection's body until it ends; the reason it ended, or `Err` when nobody
/// listens any more.
async fn read_body(
    response: reqwest::Response,
    parser: &mut SseParser,
    tx: &mpsc::Sender<Signal>,
    backoff: &mut Duration,
) -> Result<String, ()> {
    let mut body = response.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
            Err(_) => {
                return Ok(format!(
                    "nothing received for {}",
                    render::span(IDLE_TIMEOUT.as_secs())
                ))
            }
            Ok(None) => return Ok("the relay closed the stream".into()),
            Ok(Some(Err(e))) => return Ok(format!("the stream broke: {e}")),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let events = match parser.feed(&chunk) {
            Ok(events) => events,
            Err(e) => return Ok(e.to_string()),
        };
        // A real event proves the connection works: the next drop starts the backoff over. (A
        // keep-alive comment does not: a proxy that accepts, sends a byte and closes would
        // otherwise be retried every second for ever.)
        if !events.is_empty() {
            *backoff = FIRST_BACKOFF;
        }
        for e in events {
            let signal = if e.event == RESET_EVENT {
                let reason = serde_json::from_str::<Reset>(&e.data)
                    .map(|r| r.reason)
                    .unwrap_or_else(|_| e.data.clone());
                Signal::Reset(reason)
            } else if e.event == "message" {
                match serde_json::from_str::<FleetEvent>(&e.data) {
                    Ok(event) => Signal::Event(event),
                    Err(err) => {
                        eprintln!("warning: ignoring an event the CLI cannot read: {err}");
                        continue;
                    }
                }
            } else {
                continue;
            };
            tx.send(signal).await.map_err(|_| ())?;
        }
    }
}

/// Why [`WatchFeed::wait`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Fetch the state again.
    Refetch,
    /// The local tick elapsed (redraw clocks without fetching).
    Tick,
}

/// Tells a `--watch` loop when to fetch again: on relevant stream events (coalesced to at most
/// one fetch per [`COALESCE`]), on a reset and after a reconnect; on a relay without the
/// stream, every `poll` (said once on stderr).
pub struct WatchFeed {
    rx: Option<mpsc::Receiver<Signal>>,
    poll: Duration,
    dirty: bool,
    last_fetch: Instant,
}

impl WatchFeed {
    pub async fn open(
        client: &ApiClient,
        query: StreamQuery,
        poll: Duration,
    ) -> Result<WatchFeed, CliError> {
        let rx = open_stream(client, query).await?;
        if rx.is_none() {
            eprintln!(
                "note: this relay has no live event stream (an older version); polling every {}",
                render::span(poll.as_secs().max(1))
            );
        }
        Ok(WatchFeed {
            rx,
            poll,
            dirty: false,
            last_fetch: Instant::now(),
        })
    }

    /// Waits until the state should be fetched again (`relevant` picks the events that call
    /// for it), or until `tick` passed since the call ([`Wake::Tick`]).
    pub async fn wait(
        &mut self,
        tick: Option<Duration>,
        relevant: impl Fn(&FleetEvent) -> bool,
    ) -> Result<Wake, CliError> {
        let start = Instant::now();
        let tick_at = tick.map(|t| start + t);
        let Some(rx) = self.rx.as_mut() else {
            let poll_at = self.last_fetch + self.poll;
            match tick_at {
                Some(t) if t < poll_at => {
                    tokio::time::sleep_until(t).await;
                    return Ok(Wake::Tick);
                }
                _ => {
                    tokio::time::sleep_until(poll_at).await;
                    self.last_fetch = Instant::now();
                    return Ok(Wake::Refetch);
                }
            }
        };
        loop {
            let fetch_at = self.dirty.then(|| self.last_fetch + COALESCE);
            if let Some(at) = fetch_at {
                if Instant::now() >= at {
                    self.dirty = false;
                    self.last_fetch = Instant::now();
                    return Ok(Wake::Refetch);
                }
            }
            // A fetch due soon wins over the tick (it redraws anyway).
            let deadline = fetch_at.or(tick_at);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                signal = rx.recv() => match signal {
                    Some(Signal::Event(e)) => {
                        if relevant(&e) {
                            self.dirty = true;
                        }
                    }
                    Some(Signal::Reset(_)) | Some(Signal::Reconnected) => self.dirty = true,
                    Some(Signal::Dropped { reason, retry_in }) => eprintln!(
                        "note: event stream lost ({reason}); reconnecting in {}",
                        render::span(retry_in.as_secs())
                    ),
                    Some(Signal::Fatal(e)) => return Err(e),
                    None => {
                        return Err(CliError::Transport {
                            addr: "the event stream".into(),
                            reason: "its reader stopped".into(),
                        })
                    }
                },
                () = sleep => {
                    if !self.dirty {
                        return Ok(Wake::Tick);
                    }
                }
            }
        }
    }
}

/// One human line of an event: `time kind agent subject summary`.
pub fn event_line(e: &FleetEvent) -> String {
    format!(
        "{} {} {} {} {}\n",
        render::time(e.at),
        clean(&e.kind),
        clean(e.agent_id.as_deref().unwrap_or("-")),
        clean(e.subject.as_deref().unwrap_or("-")),
        clean(&e.summary)
    )
}

/// `flotilla events`: tails the stream until `stop` (Ctrl-C) completes, writing through `out`.
pub async fn tail(
    client: &ApiClient,
    kinds: Option<&str>,
    selector: Option<&Selector>,
    json: bool,
    out: &mut dyn FnMut(&str),
    stop: impl Future<Output = ()>,
) -> Result<Outcome, CliError> {
    let query = StreamQuery {
        kinds: kinds.map(str::to_string),
        selector: selector.map(ToString::to_string),
    };
    let Some(mut rx) = open_stream(client, query).await? else {
        return Err(CliError::Usage(
            "this relay has no live event stream (GET /api/v1/events/stream answered 404); \
             it is older than this CLI"
                .into(),
        ));
    };
    // Ids grow strictly; one at or below the last printed is a replay after a reconnect.
    let mut last: Option<u64> = None;
    tokio::pin!(stop);
    loop {
        let signal = tokio::select! {
            () = &mut stop => return Ok(Outcome::Success),
            s = rx.recv() => s,
        };
        match signal {
            Some(Signal::Event(e)) => {
                if last.is_some_and(|l| e.id <= l) {
                    continue;
                }
                last = Some(e.id);
                if json {
                    out(&format!(
                        "{}\n",
                        serde_json::to_string(&e).unwrap_or_default()
                    ));
                } else {
                    out(&event_line(&e));
                }
            }
            Some(Signal::Reset(reason)) => {
                // Whatever came before may be gone from the relay's buffer; start over.
                last = None;
                let text = format!("events were missed (reset): {}", clean(&reason));
                if json {
                    eprintln!("note: {text}");
                } else {
                    out(&format!(
                        "{} reset {text}\n",
                        render::time(chrono::Utc::now())
                    ));
                }
            }
            Some(Signal::Dropped { reason, retry_in }) => eprintln!(
                "note: event stream lost ({reason}); reconnecting in {}",
                render::span(retry_in.as_secs())
            ),
            Some(Signal::Reconnected) => eprintln!("note: event stream reconnected"),
            Some(Signal::Fatal(e)) => return Err(e),
            None => return Ok(Outcome::Success),
        }
    }
}

/// `flotilla events` as the binary runs it: to stdout, until Ctrl-C.
pub async fn events(
    client: &ApiClient,
    kinds: Option<&str>,
    selector: Option<&Selector>,
    json: bool,
) -> Result<Outcome, CliError> {
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tail(client, kinds, selector, json, &mut |s| emit(s), stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str =
        ": hello\r\n\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\nevent: reset\ndata: one\ndata:two\n\n\
                          : keep-alive\n\nid: 8\rdata\rdata: x\r\r";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: "message".into(),
                data: "{\"a\":1}".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: "reset".into(),
                data: "one\ntwo".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: "message".into(),
                data: "\nx".into(),
                id: Some("8".into()),
            },
        ]
    }

    #[test]
    fn an_id_counts_only_once_its_event_is_complete() {
        let mut p = SseParser::default();
        let done = p.feed(b"id: 5\ndata: x\n\nid: 6\ndata: y").unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id.as_deref(), Some("5"));
        // The connection drops inside event 6: resume after 5, not after 6.
        assert_eq!(p.last_id(), Some("5"));
        p.restart();
        assert_eq!(p.last_id(), Some("5"));
        let done = p.feed(b"data: z\n\n").unwrap();
        assert_eq!(
            done[0].id.as_deref(),
            Some("5"),
            "an event without id keeps the last"
        );
        // A blank line commits an id even without data.
        p.feed(b"id: 9\n\n").unwrap();
        assert_eq!(p.last_id(), Some("9"));
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(5) && j < Duration::from_secs(15),
                "{j:?}"
            );
        }
    }

    #[test]
    fn parses_the_whole_stream_at_once() {
        let mut p = SseParser::default();
        assert_eq!(p.feed(STREAM.as_bytes()).unwrap(), expected());
        assert_eq!(p.last_id(), Some("8"));
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let bytes = STREAM.as_bytes();
        // One split at every position, and byte by byte.
        for i in 0..=bytes.len() {
            let mut p = SseParser::default();
            let mut got = p.feed(&bytes[..i]).unwrap();
            got.extend(p.feed(&bytes[i..]).unwrap());
            assert_eq!(got, expected(), "split at {i}");
        }
        let mut p = SseParser::default();
        let mut got = Vec::new();
        for b in bytes {
            got.extend(p.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, expected());
    }

    #[test]
    fn comments_blank_lines_and_fields() {
        let mut p = SseParser::default();
        // Comments and blank lines alone dispatch nothing; an event needs data.
        assert!(p
            .feed(b":x\n\n\nevent: ping\n\nid: 3\n\n")
            .unwrap()
            .is_empty());
        assert_eq!(p.last_id(), Some("3"));
        // "data:x" (no space) and "data: x" are the same; only one space is stripped;
        // unknown fields and retry are ignored; a BOM only at the very start is skipped.
        let got = p.feed(b"retry: 5\nfoo: bar\ndata:  two\n\n").unwrap();
        assert_eq!(got[0].data, " two");
        let mut p = SseParser::default();
        let got = p.feed("\u{feff}data: é\n\n".as_bytes()).unwrap();
        assert_eq!(got[0].data, "é");
        // A UTF-8 character split across chunks survives.
        let mut p = SseParser::default();
        let bytes = "data: é\n\n".as_bytes();
        let mut got = p.feed(&bytes[..7]).unwrap();
        got.extend(p.feed(&bytes[7..]).unwrap());
        assert_eq!(got[0].data, "é");
    }

    #[test]
    fn oversized_lines_are_an_error() {
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 0123456789\n\n").unwrap().len() == 1);
        let e = p.feed(b"data: 0123456789abcdef").unwrap_err();
        assert_eq!(e, SseError::LineTooLong(16));
        assert!(e.to_string().contains("longer than 16 bytes"), "{e}");
        // Also when the line arrives in pieces, and when it ends in the same chunk.
        let mut p = SseParser::new(16);
        p.feed(b"data: 01234").unwrap();
        assert!(p.feed(b"56789abcdef").is_err());
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 0123456789abcdef\n").is_err());
    }

    #[test]
    fn event_lines_make_control_characters_clean() {
        let e = FleetEvent {
            id: 1,
            at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            kind: "container.event".into(),
            agent_id: Some("ag_1".into()),
            subject: None,
            summary: "web died\x1b[2J\nnext".into(),
            data: None,
        };
        let line = event_line(&e);
        assert_eq!(
            line,
            "2027-01-15T08:00:00Z container.event ag_1 - web died[2J next\n"
        );
    }
}
