//! The `http` trigger: sends a request built from the event (Argo `HTTPTrigger`).
//!
//! The body is the JSON object built from `payload` parameters, or the
//! event's data when no `payload` is configured. 2xx is success, or exactly
//! the statuses of Argo's `policy.status.allow` when given. A `429` or `503`
//! is retryable, marked as downstream pushback, and its `Retry-After`
//! (seconds or HTTP date) is passed up so the sensor pauses the trigger that
//! long; timeouts are pushback too; other 5xx and connection errors are
//! retryable; other 4xx are permanent.

use super::{params, DropReason, TriggerError};
use crate::config::sensor::{HttpTrigger as HttpConfig, TriggerParameter};
use crate::event::Event;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use std::time::Duration;

/// Argo's default HTTP trigger timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an http trigger could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum HttpTriggerError {
    #[error("invalid url {0:?}: {1}")]
    Url(String, String),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid header {0:?}: {1}")]
    Header(String, String),
}

pub struct HttpTrigger {
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    headers: HeaderMap,
    payload: Option<Vec<TriggerParameter>>,
    timeout: Duration,
    /// Argo `policy.status.allow`: the statuses that count as success
    /// (default: any 2xx).
    allowed_statuses: Option<Vec<u16>>,
}

impl HttpTrigger {
    pub fn new(
        client: reqwest::Client,
        config: &HttpConfig,
        allowed_statuses: Option<Vec<u16>>,
    ) -> Result<Self, HttpTriggerError> {
        let url = reqwest::Url::parse(&config.url.value)
            .map_err(|e| HttpTriggerError::Url(config.url.value.clone(), e.to_string()))?;
        let method_text = config
            .method
            .as_ref()
            .map(|m| m.value.to_ascii_uppercase())
            .unwrap_or_else(|| "POST".to_string());
        let method = reqwest::Method::from_bytes(method_text.as_bytes())
            .map_err(|_| HttpTriggerError::Method(method_text.clone()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in config.headers.iter().flatten() {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| HttpTriggerError::Header(name.clone(), e.to_string()))?;
            let header_value = HeaderValue::from_str(value)
                .map_err(|e| HttpTriggerError::Header(name.clone(), e.to_string()))?;
            headers.insert(header_name, header_value);
        }
        Ok(HttpTrigger {
            client,
            url,
            method,
            headers,
            payload: config.payload.clone(),
            timeout: config
                .timeout
                .as_ref()
                .map_or(DEFAULT_TIMEOUT, |t| Duration::from_secs(t.value)),
            allowed_statuses,
        })
    }

    pub async fn invoke(&self, dependency: &str, event: &Event) -> Result<(), TriggerError> {
        self.invoke_matched(&[(dependency, event)]).await
    }

    /// One request for the events of one trigger run. Without `payload`
    /// the body is the event's data; for several events (a trigger with
    /// `conditions`) it is a JSON object of each event's data by dependency
    /// name, so no event's data is left out.
    pub async fn invoke_matched(&self, matched: &super::Matched<'_>) -> Result<(), TriggerError> {
        let body = match (&self.payload, matched) {
            (Some(parameters), _) => {
                let json = params::build_payload_matched(parameters, matched).map_err(|e| {
                    TriggerError::Permanent {
                        message: format!("{} {}: payload: {e}", self.method, self.url),
                    }
                })?;
                bytes::Bytes::from(json.to_string())
            }
            (None, [(_, event)]) => event.data.clone(),
            (None, _) => {
                let by_dependency: serde_json::Map<String, serde_json::Value> = matched
                    .iter()
                    .map(|(dependency, event)| (dependency.to_string(), event.data_json()))
                    .collect();
                bytes::Bytes::from(serde_json::Value::Object(by_dependency).to_string())
            }
        };
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .timeout(self.timeout)
            .headers(self.headers.clone())
            .body(body);
        if !self.headers.contains_key(CONTENT_TYPE) {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let response = request
            .send()
            .await
            .map_err(|err| TriggerError::Retryable {
                message: format!("{} {}: {}", self.method, self.url, super::error_chain(&err)),
                retry_after: None,
                pushback: err.is_timeout().then_some(DropReason::Timeout),
            })?;
        let status = response.status();
        let allowed = match &self.allowed_statuses {
            Some(allowed) => allowed.contains(&status.as_u16()),
            None => status.is_success(),
        };
        if allowed {
            return Ok(());
        }
        let message = format!("{} {}: HTTP {}", self.method, self.url, status);
        match status.as_u16() {
            code @ (429 | 503) => Err(TriggerError::Retryable {
                message,
                retry_after: response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after),
                pushback: DropReason::from_status(code),
            }),
            408 | 500..=599 => Err(TriggerError::Retryable {
                message,
                retry_after: None,
                pushback: None,
            }),
            _ => Err(TriggerError::Permanent { message }),
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::parse_retry_after;
    use std::time::Duration;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
