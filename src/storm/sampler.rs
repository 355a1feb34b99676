//! Samples a running spillway's admin API once a second during a storm:
//! queue depth and limits, per-trigger lag and the process's resident
//! memory, all from one `GET /api/v1/status`.
//!
//! Guarantees: at most `max_samples` samples are kept (one per second of
//! the run, sized by the caller), later ones are counted as skipped; a poll
//! that fails or times out (after 900 ms) is counted and logged once, never
//! fails the storm. Fields the admin API does not have are left empty, so a
//! storm against another endpoint or an older spillway still works.
//! Not guaranteed: that samples are exactly one second apart (a slow admin
//! API delays the next poll instead of piling polls up).

use serde::Serialize;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How long one poll of the admin API may take.
const POLL_TIMEOUT: Duration = Duration::from_millis(900);

/// One trigger's consumer at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerSample {
    /// `sensor/trigger`.
    pub name: String,
    pub lag: Option<u64>,
    pub ack_pending: Option<u64>,
    pub oldest_unacked_age_seconds: Option<f64>,
    pub inflight: Option<u64>,
}

/// The pipeline's state at one moment of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the storm started.
    pub at_seconds: f64,
    /// Events on the bus (queue depth).
    pub bus_messages: Option<u64>,
    pub bus_bytes: Option<u64>,
    pub bus_max_messages: Option<u64>,
    pub triggers: Vec<TriggerSample>,
    pub rss_bytes: Option<u64>,
}

impl Sample {
    /// Lag summed over the triggers (`None` without any trigger lag).
    pub fn total_lag(&self) -> Option<u64> {
        self.triggers
            .iter()
            .filter_map(|t| t.lag)
            .reduce(|a, b| a + b)
    }
}

/// Everything the sampler saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Samples {
    pub samples: Vec<Sample>,
    /// Polls that got no usable answer.
    pub failed_polls: u64,
    /// The first such failure, for the report.
    pub first_failure: Option<String>,
    /// Samples not kept because `max_samples` were already held.
    pub skipped: u64,
}

/// Polls an admin API; see the module docs.
pub struct Sampler {
    client: reqwest::Client,
    status_url: String,
    max_samples: usize,
}

/// Why a poll gave no sample.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
}

impl Sampler {
    /// `admin` is the admin server's base URL, e.g. `http://127.0.0.1:9470`.
    pub fn new(admin: &str, max_samples: usize) -> Result<Sampler, reqwest::Error> {
        crate::install_tls_provider();
        let base = admin.trim_end_matches('/');
        Ok(Sampler {
            client: reqwest::Client::builder().timeout(POLL_TIMEOUT).build()?,
            status_url: format!("{base}/api/v1/status"),
            max_samples,
        })
    }

    /// Polls every second from `start` until `stop` is cancelled.
    pub async fn run(self, start: Instant, stop: CancellationToken) -> Samples {
        let mut out = Samples {
            samples: Vec::with_capacity(self.max_samples.min(4096)),
            ..Samples::default()
        };
        let mut ticks = tokio::time::interval_at(start, Duration::from_secs(1));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return out,
                _ = ticks.tick() => {}
            }
            let at = Instant::now().saturating_duration_since(start);
            match self.poll(at).await {
                Ok(sample) if out.samples.len() < self.max_samples => out.samples.push(sample),
                Ok(_) => out.skipped += 1,
                Err(err) => {
                    if out.first_failure.is_none() {
                        tracing::warn!("storm: cannot sample the admin API: {err}");
                        out.first_failure = Some(err.to_string());
                    }
                    out.failed_polls += 1;
                }
            }
        }
    }

    async fn poll(&self, at: Duration) -> Result<Sample, PollError> {
        let status: serde_json::Value =
            self.get(&self.status_url)
                .await?
                .json()
                .await
                .map_err(|source| PollError::Http {
                    url: self.status_url.clone(),
                    source,
                })?;
        Ok(sample_from_status(at, &status))
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, PollError> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|source| PollError::Http {
                url: url.to_string(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(PollError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
            });
        }
        Ok(response)
    }
}

/// Reads a sample out of `/api/v1/status` (see `src/api/mod.rs`).
pub fn sample_from_status(at: Duration, status: &serde_json::Value) -> Sample {
    let triggers = status
        .get("triggers")
        .and_then(|t| t.as_array())
        .map(|list| {
            list.iter()
                .map(|t| TriggerSample {
                    name: format!(
                        "{}/{}",
                        t.get("sensor").and_then(|v| v.as_str()).unwrap_or("?"),
                        t.get("trigger").and_then(|v| v.as_str()).unwrap_or("?")
                    ),
                    lag: t.get("lag").and_then(|v| v.as_u64()),
                    ack_pending: t.get("ack_pending").and_then(|v| v.as_u64()),
                    oldest_unacked_age_seconds: t
                        .get("oldest_unacked_age_seconds")
                        .and_then(|v| v.as_f64()),
                    inflight: t.get("inflight").and_then(|v| v.as_u64()),
                })
                .collect()
        })
        .unwrap_or_default();
    Sample {
        at_seconds: at.as_secs_f64(),
        bus_messages: status.pointer("/bus/messages").and_then(|v| v.as_u64()),
        bus_bytes: status.pointer("/bus/bytes").and_then(|v| v.as_u64()),
        bus_max_messages: status
            .pointer("/bus/limits/max_msgs")
            .and_then(|v| v.as_u64()),
        triggers,
        // Optional: an admin API without it still gives a sample.
        rss_bytes: status
            .pointer("/process/resident_memory_bytes")
            .and_then(|v| v.as_u64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_status_shape_of_the_admin_api() {
        let status = json!({
            "ready": true,
            "bus": {"messages": 120, "bytes": 4096, "limits": {"max_msgs": 1000}},
            "triggers": [
                {"sensor": "orders", "trigger": "a", "lag": 100, "ack_pending": 16,
                 "oldest_unacked_age_seconds": 1.5, "inflight": 16},
                {"sensor": "orders", "trigger": "b", "lag": 20, "ack_pending": 0,
                 "oldest_unacked_age_seconds": null, "inflight": 0}
            ],
            "process": {"resident_memory_bytes": 7}
        });
        let s = sample_from_status(Duration::from_millis(2500), &status);
        assert_eq!(s.at_seconds, 2.5);
        assert_eq!(
            (s.bus_messages, s.bus_bytes, s.bus_max_messages),
            (Some(120), Some(4096), Some(1000))
        );
        assert_eq!(s.triggers.len(), 2);
        assert_eq!(s.triggers[0].name, "orders/a");
        assert_eq!(s.triggers[0].oldest_unacked_age_seconds, Some(1.5));
        assert_eq!(s.triggers[1].oldest_unacked_age_seconds, None);
        assert_eq!(s.total_lag(), Some(120));
        assert_eq!(s.rss_bytes, Some(7));
    }

    #[test]
    fn missing_fields_stay_empty() {
        let s = sample_from_status(Duration::ZERO, &json!({"something": "else"}));
        assert_eq!(s.bus_messages, None);
        assert!(s.triggers.is_empty());
        assert_eq!(s.total_lag(), None);
        assert_eq!(s.rss_bytes, None);
    }
}
