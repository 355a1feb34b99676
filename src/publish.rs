//! `spillway publish`: sends events to a webhook (spillway's, or any HTTP
//! endpoint) as fast as it accepts them, and no faster.
//!
//! Events are the `--data` arguments, or the lines of a file or of stdin
//! (one event per line, blank lines skipped), each POSTed as the request
//! body.
//!
//! Guarantees:
//! - at most `concurrency` events are in flight, and the next line is read
//!   only when one of them has finished: an endpoint that pushes back stops
//!   the reading, so memory holds at most `concurrency` events of at most
//!   `max_line_bytes` each, whatever the input's size;
//! - an event answered `429` or `5xx` is sent again, with the same body,
//!   once the answer's `Retry-After` has passed (at least
//!   [`MIN_RETRY_WAIT`]; [`NO_ANSWER_BACKOFF`] doubling when there is
//!   none); an attempt without an answer (connection refused, timeout) is
//!   retried the same way;
//! - an event is given up, and reported with its line number, on any other
//!   answer (`400`, `401`, `404`, `413` …), on a line longer than
//!   `max_line_bytes`, or when the next attempt would start more than
//!   `max_wait` after its first one;
//! - nothing is reported accepted that the endpoint did not answer `2xx`.
//!
//! Not guaranteed: exactly once. An attempt that timed out may have been
//! accepted, and its retry then sends the event a second time.

use crate::sources::file::{read_line, Line, Partial};
use crate::storm::target::{classify, http_url, Outcome};
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufRead;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Shortest wait before resending a refused event.
pub const MIN_RETRY_WAIT: Duration = Duration::from_millis(100);
/// First wait after an attempt without an answer (or an answer without
/// `Retry-After`); doubles up to [`MAX_BACKOFF`].
pub const NO_ANSWER_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts without a `Retry-After`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bytes of an error answer's body quoted in a report.
const QUOTED_BODY: usize = 200;

/// How events are sent.
#[derive(Debug, Clone, Copy)]
pub struct PublishOptions {
    /// Events in flight at once (≥ 1).
    pub concurrency: usize,
    /// Give an event up when its next attempt would start later than this
    /// after its first.
    pub max_wait: Duration,
    /// Longest event (line) accepted from the input.
    pub max_line_bytes: usize,
}

/// One answer of the endpoint, as the publisher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    /// The start of the answer's body (quoted in reports).
    pub body: String,
}

/// Where events go. [`HttpPoster`] in the command; fakes on paused time in
/// tests.
pub trait Poster: Send + Sync + 'static {
    fn post(&self, body: Bytes) -> impl Future<Output = Answer> + Send;
}

/// Why an input cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read the input: {0}")]
    Io(#[from] std::io::Error),
}

/// One event of the input: its line number (1-based; the argument's
/// position for `--data`) and its body, or why it cannot be sent.
pub type InputLine = (u64, Result<Bytes, String>);

/// Reads events one line at a time, never holding more than one line (the
/// file source's reader, [`crate::sources::file::read_line`]).
pub struct LineInput<R> {
    reader: R,
    partial: Partial,
    line: u64,
    max_line_bytes: usize,
}

impl<R: AsyncBufRead + Unpin + Send> LineInput<R> {
    pub fn new(reader: R, max_line_bytes: usize) -> Self {
        LineInput {
            reader,
            partial: Partial::default(),
            line: 0,
            max_line_bytes,
        }
    }

    /// The next non-blank line; `None` at the end of the input. A line
    /// longer than `max_line_bytes` is skipped to its end and returned as an
    /// error, without being held in memory.
    pub async fn next(&mut self) -> Result<Option<InputLine>, InputError> {
        loop {
            let read = read_line(&mut self.reader, &mut self.partial, self.max_line_bytes).await?;
            let bytes = match read {
                Line::Complete(bytes) => Some(bytes),
                Line::TooLong => None,
                // A last line without a newline is still a line.
                Line::End => {
                    let rest = std::mem::take(&mut self.partial);
                    if !rest.skipping && rest.bytes.is_empty() {
                        return Ok(None);
                    }
                    let mut bytes = rest.bytes;
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                    (!rest.skipping).then_some(bytes)
                }
            };
            self.line += 1;
            let Some(bytes) = bytes else {
                let limit = self.max_line_bytes;
                return Ok(Some((
                    self.line,
                    Err(format!("line longer than {limit} bytes; not sent")),
                )));
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some((self.line, Ok(Bytes::from(bytes)))));
        }
    }
}

/// The events of a run.
pub enum Input<R> {
    /// `--data` arguments.
    Data(std::vec::IntoIter<String>, u64),
    /// Lines of a file or stdin.
    Lines(LineInput<R>),
}

impl<R: AsyncBufRead + Unpin + Send> Input<R> {
    /// Events given as arguments.
    pub fn data(events: Vec<String>) -> Self {
        Input::Data(events.into_iter(), 0)
    }

    async fn next(&mut self) -> Result<Option<InputLine>, InputError> {
        match self {
            Input::Data(events, n) => Ok(events.next().map(|event| {
                *n += 1;
                (*n, Ok(Bytes::from(event)))
            })),
            Input::Lines(lines) => lines.next().await,
        }
    }
}

/// How one event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Answered `2xx` after `attempts` attempts.
    Accepted {
        line: u64,
        attempts: u32,
        /// The accepting answer's body (spillway: `{"id":…,"seq":…}`).
        body: String,
    },
    /// Not accepted; `reason` says why.
    GaveUp { line: u64, reason: String },
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub accepted: u64,
    pub failed: u64,
    /// Attempts refused with `429`/`5xx` or unanswered, then sent again.
    pub resent: u64,
    /// Why reading the input stopped early, if it did (the events already
    /// read were still sent to their end and are counted above).
    pub input_error: Option<String>,
}

/// Sends every event of `input` to `poster`; `report` sees each event's
/// end as it happens (in completion order). An input that fails midway
/// stops the reading; the events already read are still sent to their end.
pub async fn publish<P: Poster, R: AsyncBufRead + Unpin + Send>(
    poster: Arc<P>,
    mut input: Input<R>,
    options: PublishOptions,
    mut report: impl FnMut(&Delivery),
) -> Summary {
    let mut summary = Summary::default();
    let mut tally = |delivery: Delivery, summary: &mut Summary| {
        match &delivery {
            Delivery::Accepted { attempts, .. } => {
                summary.accepted += 1;
                summary.resent += u64::from(attempts.saturating_sub(1));
            }
            Delivery::GaveUp { .. } => summary.failed += 1,
        }
        report(&delivery);
    };
    let mut in_flight = JoinSet::new();
    // The line of each task, to name it should the task itself fail.
    let mut lines = std::collections::HashMap::new();
    let concurrency = options.concurrency.max(1);
    loop {
        // Read on only when a place is free: the endpoint's pace is ours.
        while in_flight.len() >= concurrency {
            if let Some(done) = in_flight.join_next_with_id().await {
                tally(finished(done, &mut lines), &mut summary);
            }
        }
        let (line, event) = match input.next().await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(err) => {
                summary.input_error = Some(err.to_string());
                break;
            }
        };
        match event {
            Ok(body) => {
                let poster = Arc::clone(&poster);
                let task = in_flight
                    .spawn(async move { deliver(&*poster, line, body, options.max_wait).await });
                lines.insert(task.id(), line);
            }
            Err(reason) => tally(Delivery::GaveUp { line, reason }, &mut summary),
        }
    }
    while let Some(done) = in_flight.join_next_with_id().await {
        tally(finished(done, &mut lines), &mut summary);
    }
    summary
}

fn finished(
    joined: Result<(tokio::task::Id, Delivery), tokio::task::JoinError>,
    lines: &mut std::collections::HashMap<tokio::task::Id, u64>,
) -> Delivery {
    match joined {
        Ok((id, delivery)) => {
            lines.remove(&id);
            delivery
        }
        Err(err) => Delivery::GaveUp {
            line: lines.remove(&err.id()).unwrap_or(0),
            reason: format!("sending task failed: {err}"),
        },
    }
}

/// Sends one event until it is accepted or given up.
async fn deliver<P: Poster>(poster: &P, line: u64, body: Bytes, max_wait: Duration) -> Delivery {
    let first = Instant::now();
    let mut attempts = 0;
    let mut backoff = NO_ANSWER_BACKOFF;
    loop {
        attempts += 1;
        let answer = poster.post(body.clone()).await;
        let wait = match answer.outcome {
            Outcome::Accepted => {
                return Delivery::Accepted {
                    line,
                    attempts,
                    body: answer.body,
                }
            }
            Outcome::ClientError { status } => {
                return Delivery::GaveUp {
                    line,
                    reason: format!("{status} {}", answer.body),
                }
            }
            Outcome::Rejected { retry_after, .. } | Outcome::ServerError { retry_after, .. } => {
                match retry_after {
                    Some(wait) => wait.max(MIN_RETRY_WAIT),
                    None => next_backoff(&mut backoff),
                }
            }
            Outcome::Failed => next_backoff(&mut backoff),
        };
        // Saturating: a Retry-After of centuries gives up, never overflows.
        if first.elapsed().saturating_add(wait) > max_wait {
            let last = match answer.outcome {
                Outcome::Failed => "no answer".to_string(),
                _ => answer.body,
            };
            return Delivery::GaveUp {
                line,
                reason: format!(
                    "not accepted within {:?} ({attempts} attempts; last: {last})",
                    max_wait
                ),
            };
        }
        tokio::time::sleep(wait).await;
    }
}

fn next_backoff(backoff: &mut Duration) -> Duration {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    wait
}

/// Why an [`HttpPoster`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PosterError {
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid header {0:?}: expected `Name: value`")]
    Header(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// POSTs events over HTTP.
pub struct HttpPoster {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: http::HeaderMap,
}

impl HttpPoster {
    /// `headers` are `Name: value` strings sent with every event (the
    /// content type defaults to JSON); `timeout` bounds each attempt.
    pub fn new(url: &str, headers: &[String], timeout: Duration) -> Result<Self, PosterError> {
        let parsed = http_url(url).map_err(|reason| PosterError::Url {
            url: url.to_string(),
            reason,
        })?;
        let mut map = http::HeaderMap::new();
        map.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        for header in headers {
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| PosterError::Header(header.clone()))?;
            let name = http::HeaderName::try_from(name.trim())
                .map_err(|_| PosterError::Header(header.clone()))?;
            let value = http::HeaderValue::try_from(value.trim())
                .map_err(|_| PosterError::Header(header.clone()))?;
            map.insert(name, value);
        }
        crate::install_tls_provider();
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(HttpPoster {
            client,
            url: parsed,
            headers: map,
        })
    }
}

impl Poster for HttpPoster {
    fn post(&self, body: Bytes) -> impl Future<Output = Answer> + Send {
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body);
        async move {
            let failed = Answer {
                outcome: Outcome::Failed,
                body: String::new(),
            };
            let Ok(response) = request.send().await else {
                return failed;
            };
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let outcome = classify(
                response.status().as_u16(),
                header("x-spillway-reason").as_deref(),
                header("retry-after").as_deref(),
            );
            // Only the start of the body is kept (memory stays bounded
            // whatever the endpoint sends), and a 2xx counts as accepted even
            // if the body then breaks off: resending would duplicate it.
            let mut response = response;
            let mut body = Vec::new();
            while body.len() < QUOTED_BODY {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(_) if outcome == Outcome::Accepted => break,
                    Err(_) => return failed,
                }
            }
            Answer {
                outcome,
                body: quote(&body),
            }
        }
    }
}

/// The start of a body as one line of text.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY)]);
    text.trim().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::target::Rejection;
    use parking_lot::Mutex;

    /// Answers from a script, then `then`; records when each call came.
    struct Scripted {
        answers: Mutex<std::collections::VecDeque<Outcome>>,
        then: Outcome,
        calls: Mutex<Vec<(Duration, Bytes)>>,
        start: Instant,
    }

    impl Scripted {
        fn new(answers: Vec<Outcome>, then: Outcome) -> Arc<Self> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.into()),
                then,
                calls: Mutex::new(Vec::new()),
                start: Instant::now(),
            })
        }

        fn calls(&self) -> Vec<(u64, String)> {
            self.calls
                .lock()
                .iter()
                .map(|(at, body)| {
                    (
                        at.as_millis() as u64,
                        String::from_utf8_lossy(body).into_owned(),
                    )
                })
                .collect()
        }
    }

    impl Poster for Scripted {
        fn post(&self, body: Bytes) -> impl Future<Output = Answer> + Send {
            self.calls.lock().push((self.start.elapsed(), body));
            let outcome = self.answers.lock().pop_front().unwrap_or(self.then);
            async move {
                Answer {
                    outcome,
                    body: "answer".to_string(),
                }
            }
        }
    }

    fn bus_full(secs: u64) -> Outcome {
        Outcome::Rejected {
            reason: Rejection::BusFull,
            retry_after: Some(Duration::from_secs(secs)),
        }
    }

    fn options(concurrency: usize) -> PublishOptions {
        PublishOptions {
            concurrency,
            max_wait: Duration::from_secs(60),
            max_line_bytes: 64,
        }
    }

    fn lines(text: &'static str) -> Input<&'static [u8]> {
        Input::Lines(LineInput::new(text.as_bytes(), 64))
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_event_is_resent_after_retry_after_and_holds_up_the_reading() {
        let poster = Scripted::new(vec![bus_full(2), bus_full(3)], Outcome::Accepted);
        let mut reports = Vec::new();
        let summary = publish(Arc::clone(&poster), lines("a\nb\n\nc"), options(1), |d| {
            reports.push(d.clone())
        })
        .await;
        assert_eq!(
            poster.calls(),
            vec![
                (0, "a".to_string()),
                (2000, "a".to_string()),
                (5000, "a".to_string()),
                (5000, "b".to_string()),
                (5000, "c".to_string()),
            ]
        );
        assert_eq!(
            summary,
            Summary {
                accepted: 3,
                failed: 0,
                resent: 2,
                input_error: None,
            }
        );
        assert_eq!(
            reports[0],
            Delivery::Accepted {
                line: 1,
                attempts: 3,
                body: "answer".into()
            }
        );
        // The blank line 3 is skipped but counted: "c" is line 4.
        assert!(matches!(reports[2], Delivery::Accepted { line: 4, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_bounds_the_events_read_ahead() {
        // Every event is refused once for 1 s: with 2 in flight, events go
        // out two by two, one second apart.
        let poster = Scripted::new(
            vec![
                bus_full(1),
                bus_full(1),
                Outcome::Accepted,
                Outcome::Accepted,
                bus_full(1),
                bus_full(1),
            ],
            Outcome::Accepted,
        );
        publish(
            Arc::clone(&poster),
            lines("1\n2\n3\n4\n"),
            options(2),
            |_| {},
        )
        .await;
        let times: Vec<u64> = poster.calls().iter().map(|(t, _)| *t).collect();
        assert_eq!(times, vec![0, 0, 1000, 1000, 1000, 1000, 2000, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_is_given_up_after_max_wait_or_on_a_client_error() {
        let poster = Scripted::new(
            vec![
                Outcome::ClientError { status: 413 },
                bus_full(2),
                bus_full(2),
                bus_full(2),
            ],
            Outcome::Accepted,
        );
        let mut reports = Vec::new();
        let summary = publish(
            Arc::clone(&poster),
            lines("too-big\nlate\n"),
            PublishOptions {
                max_wait: Duration::from_secs(5),
                ..options(1)
            },
            |d| reports.push(d.clone()),
        )
        .await;
        // "late": attempts at 0, 2 and 4 s; the next would start at 6 s,
        // past the 5 s allowed.
        let times: Vec<u64> = poster.calls().iter().map(|(t, _)| *t).collect();
        assert_eq!(times, vec![0, 0, 2000, 4000]);
        assert_eq!(summary.failed, 2);
        assert_eq!(
            reports[0],
            Delivery::GaveUp {
                line: 1,
                reason: "413 answer".into()
            }
        );
        assert!(
            matches!(&reports[1], Delivery::GaveUp { line: 2, reason } if reason.contains("3 attempts")),
            "{reports:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_backs_off_doubling_up_to_the_cap() {
        let poster = Scripted::new(vec![Outcome::Failed; 8], Outcome::Accepted);
        publish(Arc::clone(&poster), lines("x"), options(1), |_| {}).await;
        let times: Vec<u64> = poster.calls().iter().map(|(t, _)| *t).collect();
        // Waits 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5 s.
        assert_eq!(
            times,
            vec![0, 100, 300, 700, 1500, 3100, 6300, 11300, 16300]
        );
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_skipped_without_being_held() {
        let long = "x".repeat(200);
        let text = format!("ok\n{long}\nafter\n");
        let mut input = LineInput::new(text.as_bytes(), 64);
        assert_eq!(
            input.next().await.expect("read"),
            Some((1, Ok(Bytes::from_static(b"ok"))))
        );
        let (line, event) = input.next().await.expect("read").expect("a line");
        assert_eq!(line, 2);
        assert_eq!(
            event,
            Err("line longer than 64 bytes; not sent".to_string())
        );
        assert_eq!(
            input.next().await.expect("read"),
            Some((3, Ok(Bytes::from_static(b"after"))))
        );
        assert_eq!(input.next().await.expect("read"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_of_centuries_gives_up_instead_of_overflowing() {
        let poster = Scripted::new(vec![bus_full(u64::MAX)], Outcome::Accepted);
        let mut reports = Vec::new();
        let summary = publish(Arc::clone(&poster), lines("x\n"), options(1), |d| {
            reports.push(d.clone())
        })
        .await;
        assert_eq!(summary.failed, 1);
        assert!(
            matches!(&reports[0], Delivery::GaveUp { line: 1, reason } if reason.contains("1 attempts")),
            "{reports:?}"
        );
    }

    /// Reads two lines, then fails.
    struct Broken {
        lines: &'static [u8],
    }

    impl tokio::io::AsyncRead for Broken {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.lines.is_empty() {
                return std::task::Poll::Ready(Err(std::io::Error::other("disk gone")));
            }
            buf.put_slice(self.lines);
            self.lines = &[];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_input_that_fails_midway_still_finishes_what_it_read() {
        let poster = Scripted::new(vec![bus_full(2), bus_full(2)], Outcome::Accepted);
        let input = Input::Lines(LineInput::new(
            tokio::io::BufReader::new(Broken { lines: b"a\nb\n" }),
            64,
        ));
        let summary = publish(Arc::clone(&poster), input, options(2), |_| {}).await;
        assert_eq!(
            summary.accepted, 2,
            "both events read before the error are sent"
        );
        assert_eq!(
            summary.input_error.as_deref(),
            Some("cannot read the input: disk gone")
        );
    }
}
