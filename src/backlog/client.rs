//! `spillway backlog replay`'s side of the admin API: a [`ReplaySource`]
//! that asks the running pipeline to replay one record per request.
//!
//! The embedded bus's data dir is locked by its `spillway run`, so replay
//! goes through that process (which also owns the backlog store) rather
//! than opening the bus a second time. Answers map one to one onto
//! [`Refused`]: `429` (+ `Retry-After`) is a full bus, `404` a record
//! already gone, `409`/`413`/`422` a record that cannot be replayed, and a
//! connection failure or `503` means the pipeline is not there to take it.

use super::replay::{Refused, ReplaySource};
use async_trait::async_trait;
use reqwest::StatusCode;
use std::time::Duration;

/// Used when a `429` carries no readable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The admin API of a running `spillway run`.
pub struct AdminClient {
    base: String,
    client: reqwest::Client,
}

impl AdminClient {
    /// `base` is the admin URL, e.g. `http://127.0.0.1:9470`.
    pub fn new(base: &str) -> Result<AdminClient, reqwest::Error> {
        crate::install_tls_provider();
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    fn unreachable(&self, err: &reqwest::Error) -> Refused {
        Refused::Unavailable(format!(
            "cannot reach the running pipeline's admin API at {}: {err}; `spillway backlog replay` \
             publishes through the `spillway run` that owns the data dir (start it, or pass its --admin URL)",
            self.base
        ))
    }
}

#[derive(serde::Deserialize)]
struct Listing {
    names: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Replayed {
    seq: u64,
}

#[derive(serde::Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
}

#[async_trait]
impl ReplaySource for AdminClient {
    async fn names(&self) -> Result<Vec<String>, Refused> {
        let url = format!("{}/api/v1/backlog", self.base);
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if !status.is_success() {
            let body: ErrorBody = response.json().await.unwrap_or_default();
            return Err(Refused::Unavailable(format!(
                "GET {url}: HTTP {status} {}",
                body.error
            )));
        }
        let listing: Listing = response
            .json()
            .await
            .map_err(|e| Refused::Unavailable(format!("GET {url}: unexpected answer: {e}")))?;
        Ok(listing.names)
    }

    async fn replay(&self, name: &str) -> Result<u64, Refused> {
        let url = format!("{}/api/v1/backlog/{name}/replay", self.base);
        let response = self
            .client
            .post(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status.is_success() {
            let replayed: Replayed = response
                .json()
                .await
                .map_err(|e| Refused::Unavailable(format!("POST {url}: unexpected answer: {e}")))?;
            return Ok(replayed.seq);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::triggers::http::parse_retry_after);
        let body: ErrorBody = response.json().await.unwrap_or_default();
        let why = if body.error.is_empty() {
            format!("{name}: HTTP {status}")
        } else {
            body.error
        };
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => Refused::Full {
                retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            },
            StatusCode::NOT_FOUND => Refused::Gone(why),
            StatusCode::CONFLICT
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY => Refused::Skipped(why),
            _ => Refused::Unavailable(format!("POST {url}: HTTP {status}: {why}")),
        })
    }
}
