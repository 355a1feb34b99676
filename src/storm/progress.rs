//! The progress bar of a storm on stderr: time through the run and the
//! counts so far. Hidden when stderr is not a terminal, so logs and CI
//! output stay clean.
//!
//! Guarantees: redrawn four times a second from the recorder's totals, so
//! it costs the same at 10 or 100 000 requests per second. Not guaranteed:
//! anything once [`Progress::finish`] has run (the bar is cleared).

use super::deliver::Window;
use super::recorder::Recorder;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A running progress bar.
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts redrawing; `visible` false keeps the bar hidden.
    pub fn start(recorder: Arc<Recorder>, window: Window, visible: bool) -> Progress {
        let seconds = (window.end - window.start).as_secs_f64().ceil() as u64;
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(seconds), target);
        let style = ProgressStyle::with_template(
            "storm [{elapsed_precise}] {wide_bar} {pos}/{len} s  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(250));
            loop {
                ticks.tick().await;
                let now = Instant::now();
                shown.set_position(window.elapsed(now).as_secs().min(seconds));
                let t = recorder.totals();
                let outstanding = (t.sent + t.retries).saturating_sub(t.completed());
                let mut message = format!(
                    "sent {} · ok {} · 429 {} · 5xx {} · err {} · dropped {}",
                    t.sent + t.retries,
                    t.accepted,
                    t.rejected(),
                    t.server_errors,
                    t.errors,
                    t.dropped_by_generator
                );
                if now >= window.end {
                    message.push_str(&format!(" · waiting for {outstanding} outstanding"));
                }
                shown.set_message(message);
            }
        });
        Progress { bar, task }
    }

    /// Stops redrawing and clears the bar.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
