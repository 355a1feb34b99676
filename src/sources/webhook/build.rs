//! Turns the config's webhook events into [`Port`]s: endpoints grouped by
//! port, with their secrets resolved and their defaults filled in.
//!
//! Guarantees: every secret an endpoint names is resolved here, before
//! anything listens, and every one that cannot be is reported (all of
//! them, with the file position of the selector), never its value.
//! Connection-level limits are per port: when endpoints sharing a port set
//! different `headerReadTimeout` / `maxConnections`, the smallest applies.

use super::auth::{Auth, SignatureCheck, DEFAULT_SIGNATURE_HEADER};
use super::server::ServerLimits;
use super::{Endpoint, Prioritizing, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_MAX_PAYLOAD};
use crate::config::eventsource::{WebhookEvent, WebhookFlowControl};
use crate::config::values::SecretKeySelector;
use crate::config::{Config, Spanned};
use crate::priority::PrioritySource;
use crate::secrets::{SecretStore, SecretValue};
use crate::telemetry::LogThrottle;
use axum::http::{HeaderName, Method};
use spillway_flowctl::{PriorityShedder, RateLimiter, SheddingPolicy};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The endpoints one HTTP server serves, and its connection limits.
#[derive(Debug)]
pub struct Port {
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
    pub limits: ServerLimits,
}

impl Port {
    /// One line for the start-up log: limits, endpoints, what they check
    /// (never a secret).
    pub fn summary(&self) -> String {
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| {
                let mut checks = Vec::new();
                if e.auth.bearer.is_some() {
                    checks.push("bearer token".to_string());
                }
                if let Some(signature) = &e.auth.signature {
                    checks.push(format!("{} signature", signature.header()));
                }
                let checks = if checks.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", checks.join(", "))
                };
                format!("{} {} → {}.{}{checks}", e.method, e.path, e.source, e.event)
            })
            .collect();
        format!(
            "(maxConnections {}, headerReadTimeout {:?}): {}",
            self.limits.max_connections,
            self.limits.header_read_timeout,
            endpoints.join(", ")
        )
    }
}

/// Secrets that could not be resolved, one `FILE:LINE:COL: …` line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct BuildError(pub Vec<String>);

/// The webhook ports of `config`, by port number.
pub fn ports(config: &Config, secrets: &SecretStore) -> Result<Vec<Port>, BuildError> {
    let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
    let mut problems = Vec::new();
    let bus_max = config.bus.limits.max_msg_size.unwrap_or(u64::MAX);
    for source in &config.event_sources {
        let source_name = source.doc.metadata.name().to_string();
        for (event, hook) in source.doc.spec.webhook.iter().flat_map(|w| w.iter()) {
            // Validation guarantees a valid port and method.
            let Ok(port) = hook.port.value.trim().parse::<u16>() else {
                continue;
            };
            let flow = hook.flow_control.as_ref();
            let place = format!("webhook {source_name}/{}", event.value);
            let mut resolve = |what: &str, selector: &Spanned<SecretKeySelector>| {
                secrets
                    .resolve(&selector.value)
                    .map_err(|err| {
                        problems.push(format!(
                            "{}:{}: {place}: {what}: {err}",
                            source.file.display(),
                            selector.pos
                        ))
                    })
                    .ok()
            };
            let bearer = hook
                .auth_secret
                .as_ref()
                .and_then(|s| resolve("authSecret", s));
            let signing_key = flow
                .and_then(|f| f.signature.as_ref())
                .and_then(|s| Some((s, resolve("flowControl.signature.secret", &s.value.secret)?)));
            let signature = signing_key
                .and_then(|(s, key)| signature_check(&source.file, s, &key, &mut problems));
            let endpoint = Endpoint {
                source: source_name.clone(),
                event: event.value.clone(),
                path: hook.endpoint.value.clone(),
                method: method(hook),
                max_payload: hook
                    .max_payload_size
                    .as_ref()
                    .map_or(DEFAULT_MAX_PAYLOAD, |s| s.value.0)
                    .min(bus_max),
                body_read_timeout: duration(
                    flow.and_then(|f| f.body_read_timeout.as_ref()),
                    DEFAULT_BODY_READ_TIMEOUT,
                ),
                max_block: duration(flow.and_then(|f| f.max_block.as_ref()), Duration::ZERO),
                metadata: hook.metadata.clone().unwrap_or_default(),
                auth: Auth { bearer, signature },
                rate_limit: flow
                    .and_then(|f| f.rate_limit.as_ref())
                    .and_then(|r| r.value.to_flowctl())
                    .map(|limit| Arc::new(RateLimiter::new(limit))),
                priority: flow.and_then(prioritizing),
            };
            let entry = ports.entry(port).or_insert_with(|| Port {
                port,
                endpoints: Vec::new(),
                limits: ServerLimits::default(),
            });
            if let Some(flow) = flow {
                tighten(&mut entry.limits, flow, entry.endpoints.is_empty());
            }
            entry.endpoints.push(endpoint);
        }
    }
    if problems.is_empty() {
        Ok(ports.into_values().collect())
    } else {
        Err(BuildError(problems))
    }
}

/// Applies `flow`'s connection limits to its port's: the first endpoint's
/// values replace the defaults, later ones can only lower them.
fn tighten(limits: &mut ServerLimits, flow: &WebhookFlowControl, first: bool) {
    if let Some(timeout) = &flow.header_read_timeout {
        let timeout = timeout.value.0;
        limits.header_read_timeout = if first {
            timeout
        } else {
            limits.header_read_timeout.min(timeout)
        };
    }
    if let Some(max) = &flow.max_connections {
        limits.max_connections = if first {
            max.value
        } else {
            limits.max_connections.min(max.value)
        };
    }
}

fn method(hook: &WebhookEvent) -> Method {
    hook.method
        .as_ref()
        .and_then(|m| Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()).ok())
        .unwrap_or(Method::POST)
}

fn duration(
    value: Option<&Spanned<crate::config::values::GoDuration>>,
    default: Duration,
) -> Duration {
    value.map_or(default, |d| d.value.0)
}

/// The body-signature check of `flowControl.signature`.
fn signature_check(
    file: &Path,
    signature: &Spanned<crate::config::eventsource::Signature>,
    key: &SecretValue,
    problems: &mut Vec<String>,
) -> Option<SignatureCheck> {
    let header = signature
        .value
        .header
        .as_ref()
        .map_or(DEFAULT_SIGNATURE_HEADER, |h| h.value.as_str());
    // Validation has checked the header name; report rather than assume.
    let check = HeaderName::try_from(header)
        .map_err(|e| e.to_string())
        .and_then(|name| SignatureCheck::new(name, key).map_err(|e| e.to_string()));
    match check {
        Ok(check) => Some(check),
        Err(err) => {
            problems.push(format!(
                "{}:{}: flowControl.signature: {err}",
                file.display(),
                signature.pos
            ));
            None
        }
    }
}

/// How often an endpoint may warn about unreadable priority values.
const UNREADABLE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The endpoint's priorities, if `flowControl.priority` or `shedding` is
/// set. Validation has checked the values, so a policy error cannot happen
/// here.
fn prioritizing(flow: &WebhookFlowControl) -> Option<Arc<Prioritizing>> {
    let source = flow
        .priority
        .as_ref()
        .and_then(|p| PrioritySource::from_config(&p.value));
    let shedder = flow.shedding.as_ref().and_then(|rule| {
        SheddingPolicy::single(
            rule.value.queue_depth_above.value,
            i64::from(rule.value.shed_priority_above.value),
        )
        .ok()
        .map(PriorityShedder::new)
    });
    if source.is_none() && shedder.is_none() {
        return None;
    }
    Some(Arc::new(Prioritizing {
        source,
        shedder,
        unreadable_log: LogThrottle::new(UNREADABLE_LOG_INTERVAL),
    }))
}
