//! The `file` event source (a spillway extension): one event per line of a
//! file, or of standard input with `path: "-"`.
//!
//! Lines are read only as fast as the bus accepts them: while the bus is
//! full the source waits for space and does not read on, so nothing is
//! dropped and memory holds one line at a time. With `follow: true` the
//! source keeps waiting at the end of the file for appended lines (like
//! `tail -f`); otherwise it stops at the end (a last line without a
//! newline is still sent).
//!
//! | outcome (`source_events_total`) | the line |
//! |---|---|
//! | `accepted` | in the bus; the next line is read |
//! | `too_large` | longer than the bus `max_msg_size` (or 1 MiB): skipped, logged with its line number |
//! | `invalid` | `jsonBody: true` and not JSON: skipped, logged with its line number |
//! | `unavailable` | bus failing: the same line is offered again after 1 s |
//!
//! Blank lines are skipped. Not handled: files that are truncated or
//! rotated while followed (the source keeps reading the open file).
//!
//! Event data: `{"path": …, "line": N, "body": <text or JSON>, "metadata": …}`.

use super::{publish_waiting, EventName, LogThrottle, Running, SourceContext, SourceError, Waited};
use crate::config::eventsource::file::FileEvent;
use crate::event::Event;
use crate::telemetry::SourceOutcome;
use spillway_bus::PublishError;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

/// Longest line read when the bus has no `max_msg_size`.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;
/// How often a followed file is checked for new data at its end.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Pause before offering a line again to a failing bus.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The runnable form of one `file` event.
#[derive(Debug, Clone)]
pub struct FileSource {
    pub name: EventName,
    /// A file path, or `-` for standard input.
    pub path: String,
    pub follow: bool,
    pub json_body: bool,
    pub metadata: BTreeMap<String, String>,
}

/// One read from the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A whole line, without its line ending.
    Complete(Vec<u8>),
    /// A line longer than the limit; its bytes were skipped.
    TooLong,
    /// The end of the input for now (a partial line stays in [`Partial`]).
    End,
}

impl FileSource {
    pub fn new(name: EventName, config: &FileEvent) -> Self {
        FileSource {
            name,
            path: config.path.value.clone(),
            follow: config.follow.unwrap_or(false),
            json_body: config.json_body.unwrap_or(false),
            metadata: config.metadata.clone().unwrap_or_default(),
        }
    }

    /// Opens the input (a missing file fails start-up) and starts reading.
    pub async fn start(self, ctx: SourceContext) -> Result<Running, SourceError> {
        let reader: Box<dyn AsyncBufRead + Send + Unpin> = if self.path == "-" {
            Box::new(BufReader::new(tokio::io::stdin()))
        } else {
            let file =
                tokio::fs::File::open(&self.path)
                    .await
                    .map_err(|err| SourceError::Open {
                        name: self.name.to_string(),
                        reason: format!("cannot open {:?}: {err}", self.path),
                    })?;
            Box::new(BufReader::new(file))
        };
        tracing::info!(
            "file source {} reading {}{}",
            self.name,
            if self.path == "-" {
                "standard input"
            } else {
                &self.path
            },
            if self.follow { " (following)" } else { "" }
        );
        Ok(tokio::spawn(self.run(reader, ctx)))
    }

    /// Reads and publishes lines until the end (or forever when following)
    /// or `ctx.stop`.
    pub async fn run(self, mut reader: Box<dyn AsyncBufRead + Send + Unpin>, ctx: SourceContext) {
        let max_line = ctx
            .bus
            .limits()
            .max_msg_size
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(DEFAULT_MAX_LINE);
        let skipped = LogThrottle::new(WARN_EVERY);
        let count = |outcome| {
            ctx.metrics
                .source_event(&self.name.source, &self.name.event, outcome)
        };
        let mut partial = Partial::default();
        let mut number: u64 = 0;
        loop {
            let read = tokio::select! {
                read = read_line(&mut reader, &mut partial, max_line) => read,
                _ = ctx.stop.cancelled() => return,
            };
            let line = match read {
                Ok(Line::Complete(line)) => line,
                Ok(Line::TooLong) => {
                    number += 1;
                    count(SourceOutcome::TooLarge);
                    if let Some(n) = skipped.occurred() {
                        tracing::warn!("file source {}: line {number} skipped: longer than {max_line} bytes ({n} skipped)", self.name);
                    }
                    continue;
                }
                Ok(Line::End) if self.follow => {
                    tokio::select! {
                        _ = tokio::time::sleep(FOLLOW_POLL) => continue,
                        _ = ctx.stop.cancelled() => return,
                    }
                }
                Ok(Line::End) => {
                    // The input ended for good: a last line without a
                    // newline still counts.
                    let last = std::mem::take(&mut partial);
                    if last.skipping {
                        number += 1;
                        count(SourceOutcome::TooLarge);
                        tracing::warn!(
                            "file source {}: line {number} skipped: longer than {max_line} bytes",
                            self.name
                        );
                        break;
                    }
                    if last.bytes.is_empty() {
                        break;
                    }
                    last.bytes
                }
                Err(err) => {
                    tracing::error!(
                        "file source {}: cannot read {:?}: {err}; stopping",
                        self.name,
                        self.path
                    );
                    return;
                }
            };
            number += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let body = match super::event_body(&line, self.json_body) {
                Ok(body) => body,
                Err(err) => {
                    count(SourceOutcome::Invalid);
                    if let Some(n) = skipped.occurred() {
                        tracing::warn!(
                            "file source {}: line {number} skipped: {err} ({n} skipped)",
                            self.name
                        );
                    }
                    continue;
                }
            };
            let mut data = serde_json::json!({"path": self.path, "line": number, "body": body});
            if !self.metadata.is_empty() {
                data["metadata"] = serde_json::json!(self.metadata);
            }
            let mut message = Event::new(
                &self.name.source,
                "file",
                &self.name.event,
                bytes::Bytes::from(data.to_string()),
            )
            .to_message();
            loop {
                match publish_waiting(
                    &*ctx.bus,
                    &ctx.metrics,
                    &self.name.source,
                    message,
                    None,
                    Some(&ctx.stop),
                )
                .await
                {
                    Waited::Accepted(_) => {
                        count(SourceOutcome::Accepted);
                        break;
                    }
                    Waited::Stopped(_) | Waited::Refused(PublishError::Closed { .. }) => return,
                    Waited::Refused(PublishError::TooLarge { size, max, .. }) => {
                        count(SourceOutcome::TooLarge);
                        tracing::warn!("file source {}: line {number} skipped: event of {size} bytes exceeds the bus max_msg_size {max}", self.name);
                        break;
                    }
                    Waited::Refused(refused) => {
                        count(SourceOutcome::Unavailable);
                        tracing::warn!(
                            "file source {}: line {number}: {refused}; retrying",
                            self.name
                        );
                        message = refused.into_message();
                        tokio::select! {
                            _ = tokio::time::sleep(UNAVAILABLE_RETRY) => {}
                            _ = ctx.stop.cancelled() => return,
                        }
                    }
                }
            }
        }
        tracing::info!(
            "file source {}: end of {:?} after {number} line(s)",
            self.name,
            self.path
        );
    }
}

/// A line being read: its bytes so far, or that it is being skipped.
#[derive(Debug, Default)]
pub(crate) struct Partial {
    pub(crate) bytes: Vec<u8>,
    /// Past the length limit: the rest up to the newline is discarded.
    pub(crate) skipping: bool,
}

/// Reads up to the next `\n`, keeping what it has in `partial` across
/// calls, so a line written in pieces by a follower arrives whole. A line
/// longer than `max` bytes is skipped through its newline without being
/// held in memory. Also used by `spillway publish` ([`crate::publish`]).
pub(crate) async fn read_line(
    reader: &mut (dyn AsyncBufRead + Send + Unpin),
    partial: &mut Partial,
    max: usize,
) -> std::io::Result<Line> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::End);
        }
        let (chunk, found) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !partial.skipping {
            if partial.bytes.len() + chunk.len() > max {
                partial.skipping = true;
                partial.bytes = Vec::new();
            } else {
                partial.bytes.extend_from_slice(chunk);
            }
        }
        let consumed = found.unwrap_or(available.len());
        reader.consume(consumed);
        if found.is_some() {
            let done = std::mem::take(partial);
            if done.skipping {
                return Ok(Line::TooLong);
            }
            let mut line = done.bytes;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Line::Complete(line));
        }
    }
}

#[cfg(test)]
mod tests;
