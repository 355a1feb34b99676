//! What a storm sends requests to, and how answers are classified.
//!
//! [`HttpTarget`] POSTs a JSON body `{"id":"storm-<n>","priority":P,"pad":"…"}`
//! padded to the asked-for size, with the priority in a header, and sorts the
//! answer into an [`Outcome`]: spillway's webhook contract (200 / 429 with
//! `X-Spillway-Reason` and `Retry-After` / 413 / 503) maps one to one, and
//! any other HTTP endpoint fits the same buckets. The request number is the
//! event id, and a retry sends the same id, so a run can be checked for loss
//! against what the downstream received.
//!
//! Not guaranteed: anything about the target's own behaviour; a request that
//! times out may or may not have been accepted.

use super::priority_mix::PriorityMix;
use std::future::Future;
use std::time::Duration;

/// One attempt at delivering event number `id`; `attempt` 0 is the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub attempt: u32,
}

/// Why a 429 was answered (`X-Spillway-Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    BusFull,
    RateLimited,
    Shed,
    /// A 429 without a reason spillway knows (another endpoint, a proxy).
    Other,
}

impl Rejection {
    /// From the `X-Spillway-Reason` header value.
    pub fn from_reason(reason: Option<&str>) -> Rejection {
        match reason {
            Some("bus_full") => Rejection::BusFull,
            Some("rate_limited") => Rejection::RateLimited,
            Some("shed") => Rejection::Shed,
            _ => Rejection::Other,
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Accepted,
    /// 429.
    Rejected {
        reason: Rejection,
        retry_after: Option<Duration>,
    },
    /// 5xx (503 while spillway drains or its bus is unreachable).
    ServerError {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Any other status (413 too large, 400, 401, 404 …).
    ClientError { status: u16 },
    /// No answer: connect failure, timeout, broken connection.
    Failed,
}

impl Outcome {
    /// The wait the target asked for before trying again, on a 429 or 5xx.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Outcome::Rejected { retry_after, .. } | Outcome::ServerError { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether an HTTP answer came back (latency is only recorded for those).
    pub fn answered(&self) -> bool {
        !matches!(self, Outcome::Failed)
    }
}

/// Something a storm can send requests to. Implemented by [`HttpTarget`]
/// and, in tests, by fakes that answer under paused time.
pub trait Target: Send + Sync + 'static {
    fn send(&self, request: Request) -> impl Future<Output = Outcome> + Send;
}

/// A target that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid target URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid priority header name {0:?}")]
    Header(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// POSTs JSON events to a URL; see the module docs.
pub struct HttpTarget {
    client: reqwest::Client,
    url: reqwest::Url,
    priorities: Option<(http::HeaderName, PriorityMix)>,
    payload_bytes: usize,
}

impl HttpTarget {
    /// `timeout` bounds each attempt; `pool` is the most connections kept
    /// open (the storm's concurrency).
    pub fn new(
        url: &str,
        priorities: Option<(&str, PriorityMix)>,
        payload_bytes: usize,
        timeout: Duration,
        pool: usize,
    ) -> Result<HttpTarget, TargetError> {
        let parsed = http_url(url).map_err(|reason| TargetError::Url {
            url: url.to_string(),
            reason,
        })?;
        let priorities = match priorities {
            Some((name, mix)) => Some((
                http::HeaderName::try_from(name)
                    .map_err(|_| TargetError::Header(name.to_string()))?,
                mix,
            )),
            None => None,
        };
        crate::install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(pool)
            .build()?;
        Ok(HttpTarget {
            client,
            url: parsed,
            priorities,
            payload_bytes,
        })
    }
}

impl Target for HttpTarget {
    fn send(&self, request: Request) -> impl Future<Output = Outcome> + Send {
        let priority = self
            .priorities
            .as_ref()
            .map(|(_, mix)| mix.pick(request.id));
        let mut builder = self
            .client
            .post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(payload(request.id, priority, self.payload_bytes));
        if let (Some((header, _)), Some(p)) = (&self.priorities, priority) {
            builder = builder.header(header.clone(), p.to_string());
        }
        async move {
            let response = match builder.send().await {
                Ok(response) => response,
                Err(_) => return Outcome::Failed,
            };
            let outcome = classify(
                response.status().as_u16(),
                header_str(response.headers(), "x-spillway-reason"),
                header_str(response.headers(), "retry-after"),
            );
            // Read the body so the connection goes back to the pool.
            match response.bytes().await {
                Ok(_) => outcome,
                Err(_) => Outcome::Failed,
            }
        }
    }
}

/// `url` parsed, if it is an absolute http or https URL.
pub fn http_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".to_string());
    }
    Ok(parsed)
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Sorts an HTTP answer into an [`Outcome`].
pub fn classify(status: u16, reason: Option<&str>, retry_after: Option<&str>) -> Outcome {
    let retry_after = retry_after.and_then(parse_retry_after);
    match status {
        200..=299 => Outcome::Accepted,
        429 => Outcome::Rejected {
            reason: Rejection::from_reason(reason),
            retry_after,
        },
        500..=599 => Outcome::ServerError {
            status,
            retry_after,
        },
        _ => Outcome::ClientError { status },
    }
}

/// `Retry-After` as delay-seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The body of event `id`: `{"id":"storm-<id>"[,"priority":P],"pad":"…"}`,
/// padded with `x` to exactly `size` bytes when `size` is larger than the
/// unpadded body.
pub fn payload(id: u64, priority: Option<u8>, size: usize) -> Vec<u8> {
    let head = match priority {
        Some(p) => format!(r#"{{"id":"storm-{id}","priority":{p},"pad":""#),
        None => format!(r#"{{"id":"storm-{id}","pad":""#),
    };
    let tail = r#""}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = Vec::with_capacity(head.len() + pad + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.resize(head.len() + pad, b'x');
    body.extend_from_slice(tail.as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_json_with_the_id_and_the_exact_size() {
        let body = payload(17, Some(5), 200);
        assert_eq!(body.len(), 200);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["id"], "storm-17");
        assert_eq!(value["priority"], 5);
        let small = payload(3, None, 0);
        let value: serde_json::Value = serde_json::from_slice(&small).unwrap();
        assert_eq!(value["id"], "storm-3");
        assert_eq!(value["pad"], "");
    }

    #[test]
    fn answers_are_classified_per_the_webhook_contract() {
        assert_eq!(classify(200, None, None), Outcome::Accepted);
        assert_eq!(
            classify(429, Some("bus_full"), Some("2")),
            Outcome::Rejected {
                reason: Rejection::BusFull,
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            classify(429, Some("shed"), None).retry_after(),
            None,
            "no header, no wait"
        );
        assert_eq!(
            classify(429, Some("something"), Some("soon")),
            Outcome::Rejected {
                reason: Rejection::Other,
                retry_after: None
            }
        );
        assert_eq!(
            classify(503, None, Some("1")).retry_after(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            classify(413, None, None),
            Outcome::ClientError { status: 413 }
        );
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
        assert_eq!(
            classify(429, Some("rate_limited"), Some(&past)).retry_after(),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        let err = HttpTarget::new("ftp://x/", None, 0, Duration::from_secs(1), 1).err();
        assert!(matches!(err, Some(TargetError::Url { .. })));
        let err = HttpTarget::new("not a url", None, 0, Duration::from_secs(1), 1).err();
        assert!(matches!(err, Some(TargetError::Url { .. })));
    }
}
