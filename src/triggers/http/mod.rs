//! The `http` trigger: sends a request built from the event (Argo `HTTPTrigger`).
//!
//! Per trigger run, as Argo's http trigger does it:
//! 1. parameters are applied to the trigger's own spec: first the
//!    trigger-level `parameters` (dest `http.url`, `http.method`,
//!    `http.headers.NAME`), then `http.parameters` (dest `url`, `method`,
//!    `headers.NAME`); validation refuses any other `dest`;
//! 2. the body is built from `payload` parameters (Argo `ConstructPayload`,
//!    [`params::payload_body`]): a JSON object of the values at their
//!    `dest`, or, for a parameter with `dest: ""`, that value's text as the
//!    whole body. Without `payload`, spillway sends the event's data (and
//!    for several events, `{dependency: data}`), where Argo sends an empty
//!    body (docs/parameters.md).
//!
//! A parameter that finds no value, or a spec that parameters made invalid
//! (a URL that does not parse, a bad header), fails the run permanently:
//! the same events would fail the same way again.
//!
//! 2xx is success, or exactly the statuses of Argo's `policy.status.allow`
//! when given. A `429` or `503` is retryable, marked as downstream
//! pushback, and its `Retry-After` (seconds or HTTP date) is passed up so
//! the sensor pauses the trigger that long; timeouts are pushback too;
//! other 5xx and connection errors are retryable; other 4xx are permanent.

use super::{params, DropReason, TriggerError};
use crate::config::sensor::{HttpTrigger as HttpConfig, TriggerParameter};
use crate::event::Event;
use crate::json_path;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;
use std::borrow::Cow;
use std::time::Duration;

/// Argo's default HTTP trigger timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Where trigger-level parameters of an http trigger point.
pub const TRIGGER_LEVEL_PREFIX: &str = "http.";

/// Why an http trigger could not be built from its config (or, after
/// parameters changed its spec, for one run).
#[derive(Debug, thiserror::Error)]
pub enum HttpTriggerError {
    #[error("invalid url {0:?}: {1}")]
    Url(String, String),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid header {0:?}: {1}")]
    Header(String, String),
    #[error(
        "parameter dest {0:?}: trigger-level parameters of an http trigger must point into `http.`"
    )]
    Dest(String),
}

/// Whether `dest` (relative to the http trigger's spec) names a part of
/// the request that parameters may set: `url`, `method` or `headers.NAME`
/// (a header name without `.`, which would split the dotted path).
pub fn is_settable(dest: &str) -> bool {
    matches!(dest, "url" | "method")
        || dest.strip_prefix("headers.").is_some_and(|name| {
            !name.contains('.') && HeaderName::from_bytes(name.as_bytes()).is_ok()
        })
}

/// The parts of a request that parameters can change.
#[derive(Debug, Clone)]
struct Target {
    url: reqwest::Url,
    method: reqwest::Method,
    headers: HeaderMap,
}

impl Target {
    fn parse<'a>(
        url: &str,
        method: Option<&str>,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, HttpTriggerError> {
        let url_error = |why: String| HttpTriggerError::Url(url.to_string(), why);
        let parsed = reqwest::Url::parse(url).map_err(|e| url_error(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(url_error("not an http:// or https:// URL".to_string()));
        }
        let method_text = method.map_or_else(|| "POST".to_string(), str::to_ascii_uppercase);
        let method = reqwest::Method::from_bytes(method_text.as_bytes())
            .map_err(|_| HttpTriggerError::Method(method_text.clone()))?;
        let mut header_map = HeaderMap::new();
        for (name, value) in headers {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| HttpTriggerError::Header(name.to_string(), e.to_string()))?;
            let header_value = HeaderValue::from_str(value)
                .map_err(|e| HttpTriggerError::Header(name.to_string(), e.to_string()))?;
            header_map.insert(header_name, header_value);
        }
        Ok(Target {
            url: parsed,
            method,
            headers: header_map,
        })
    }

    /// Reads the target back from a spec that parameters were applied to.
    fn from_spec(spec: &Value) -> Result<Self, HttpTriggerError> {
        let text = |v: &Value| json_path::to_plain_string(v);
        let url = spec.get("url").map(text).unwrap_or_default();
        let method = spec.get("method").map(text);
        let headers: Vec<(String, String)> = spec
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(name, value)| (name.clone(), text(value)))
            .collect();
        Target::parse(
            &url,
            method.as_deref(),
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        )
    }
}

pub struct HttpTrigger {
    client: reqwest::Client,
    /// The request as configured (used as is when there are no parameters).
    target: Target,
    /// The spec parameters are applied to: `{url, method, headers}`.
    spec: Value,
    /// Trigger-level parameters (made relative to `http.`), then
    /// `http.parameters`, in Argo's order.
    parameters: Vec<TriggerParameter>,
    payload: Option<Vec<TriggerParameter>>,
    timeout: Duration,
    /// Argo `policy.status.allow`: the statuses that count as success
    /// (default: any 2xx).
    allowed_statuses: Option<Vec<u16>>,
}

impl HttpTrigger {
    /// The trigger for `config`; `trigger_parameters` are the trigger's
    /// own `parameters` (dest under `http.`).
    pub fn new(
        client: reqwest::Client,
        config: &HttpConfig,
        trigger_parameters: &[TriggerParameter],
        allowed_statuses: Option<Vec<u16>>,
    ) -> Result<Self, HttpTriggerError> {
        let method = config.method.as_ref().map(|m| m.value.as_str());
        let headers = config.headers.iter().flatten();
        let target = Target::parse(
            &config.url.value,
            method,
            headers.clone().map(|(n, v)| (n.as_str(), v.as_str())),
        )?;
        let mut parameters = params::rebase(trigger_parameters, &[TRIGGER_LEVEL_PREFIX])
            .map_err(HttpTriggerError::Dest)?;
        parameters.extend(config.parameters.iter().flatten().cloned());
        // Header names are case-insensitive: one spelling in the spec, so
        // `dest: headers.Authorization` replaces a configured
        // `authorization` instead of racing it in key order.
        for parameter in &mut parameters {
            if let Some(name) = parameter.dest.value.strip_prefix("headers.") {
                parameter.dest.value = format!("headers.{}", name.to_ascii_lowercase());
            }
        }
        let spec = serde_json::json!({
            "url": config.url.value,
            "method": target.method.as_str(),
            "headers": headers
                .map(|(n, v)| (n.to_ascii_lowercase(), Value::String(v.clone())))
                .collect::<serde_json::Map<String, Value>>(),
        });
        Ok(HttpTrigger {
            client,
            target,
            spec,
            parameters,
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

    /// The request target for one run: the configured one, or the spec
    /// with the parameters applied.
    fn target_for(&self, matched: &super::Matched<'_>) -> Result<Cow<'_, Target>, TriggerError> {
        if self.parameters.is_empty() {
            return Ok(Cow::Borrowed(&self.target));
        }
        let permanent = |message: String| TriggerError::Permanent {
            message: format!(
                "{} {}: parameters: {message}",
                self.target.method, self.target.url
            ),
        };
        let mut spec = self.spec.clone();
        params::apply_matched(&self.parameters, matched, &mut spec)
            .map_err(|e| permanent(e.to_string()))?;
        Target::from_spec(&spec)
            .map(Cow::Owned)
            .map_err(|e| permanent(e.to_string()))
    }

    /// One request for the events of one trigger run (see the module doc
    /// for the body).
    pub async fn invoke_matched(&self, matched: &super::Matched<'_>) -> Result<(), TriggerError> {
        let target = self.target_for(matched)?;
        let (method, url) = (&target.method, &target.url);
        let body = match (&self.payload, matched) {
            (Some(parameters), _) => {
                let text = params::payload_body(parameters, matched).map_err(|e| {
                    TriggerError::Permanent {
                        message: format!("{method} {url}: payload: {e}"),
                    }
                })?;
                bytes::Bytes::from(text)
            }
            (None, [(_, event)]) => event.data.clone(),
            (None, _) => {
                let by_dependency: serde_json::Map<String, Value> = matched
                    .iter()
                    .map(|(dependency, event)| (dependency.to_string(), event.data_json()))
                    .collect();
                bytes::Bytes::from(Value::Object(by_dependency).to_string())
            }
        };
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .timeout(self.timeout)
            .headers(target.headers.clone())
            .body(body);
        if !target.headers.contains_key(CONTENT_TYPE) {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let response = request
            .send()
            .await
            .map_err(|err| TriggerError::Retryable {
                message: format!("{method} {url}: {}", super::error_chain(&err)),
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
        let message = format!("{method} {url}: HTTP {status}");
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
    use super::{is_settable, parse_retry_after};
    use std::time::Duration;

    #[test]
    fn settable_dests_are_the_request_parts() {
        for dest in [
            "url",
            "method",
            "headers.X-Event-Id",
            "headers.authorization",
        ] {
            assert!(is_settable(dest), "{dest}");
        }
        for dest in [
            "",
            "timeout",
            "payload.0.dest",
            "headers",
            "headers.",
            "headers.a.b",
            "headers.bad name",
            "urls",
        ] {
            assert!(!is_settable(dest), "{dest}");
        }
    }

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
