//! What JetStream's answers mean for the bus.
//!
//! A publish is refused with a typed [`PublishError`] that hands the message
//! back; nothing here ever turns a failure into a success:
//!
//! | JetStream answer | bus error |
//! |---|---|
//! | `10077 maximum messages exceeded` (discard new) | `Full { limit: "max_msgs" }` |
//! | `10077 maximum bytes exceeded`, `10047` / `10023` storage exhausted | `Full { limit: "max_bytes" }` |
//! | `10054 message size exceeds maximum allowed` | `TooLarge` |
//! | no PubAck in time, connection lost, no responders, anything else | `Unavailable` |

use crate::stream::LimitHit;
use crate::{BusError, Message, PublishError};
use async_nats::jetstream::context::{PublishError as NatsPublishError, PublishErrorKind};
use async_nats::jetstream::ErrorCode;

/// Server error codes (see `nats-server/server/errors.json`).
pub(crate) const STREAM_STORE_FAILED: u64 = 10077;
pub(crate) const STORAGE_RESOURCES_EXCEEDED: u64 = 10047;
pub(crate) const INSUFFICIENT_RESOURCES: u64 = 10023;
pub(crate) const MESSAGE_EXCEEDS_MAXIMUM: u64 = 10054;
pub(crate) const MAXIMUM_CONSUMERS_LIMIT: u64 = 10026;

/// How a refused publish should be reported (the message is attached later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full(LimitHit),
    TooLarge,
    Unavailable(String),
}

impl Refusal {
    pub(crate) fn into_error(
        self,
        message: Message,
        retry_after: impl FnOnce(LimitHit) -> std::time::Duration,
        max_size: u64,
    ) -> PublishError {
        match self {
            Refusal::Full(hit) => PublishError::Full {
                message,
                limit: hit.name(),
                retry_after: retry_after(hit),
            },
            Refusal::TooLarge => PublishError::TooLarge {
                size: message.size() as u64,
                message,
                max: max_size,
            },
            Refusal::Unavailable(reason) => PublishError::Unavailable { message, reason },
        }
    }
}

/// The JetStream API error behind `err`, if the server answered with one.
fn api_error(err: &NatsPublishError) -> Option<&async_nats::jetstream::Error> {
    std::error::Error::source(err)?.downcast_ref::<async_nats::jetstream::Error>()
}

/// Classifies a failed publish.
pub(crate) fn classify_publish(err: &NatsPublishError) -> Refusal {
    if let Some(api) = api_error(err) {
        return classify_api(api.error_code(), &api.to_string());
    }
    match err.kind() {
        PublishErrorKind::StreamNotFound => Refusal::Unavailable(
            "no JetStream stream captures this subject (stream deleted, or JetStream disabled?)"
                .to_string(),
        ),
        PublishErrorKind::TimedOut => Refusal::Unavailable(
            "no PubAck from JetStream in time; the message may or may not be stored".to_string(),
        ),
        _ => Refusal::Unavailable(format!("publish failed: {err}")),
    }
}

/// Classifies a JetStream API error returned to a publish.
pub(crate) fn classify_api(code: ErrorCode, text: &str) -> Refusal {
    match code.0 {
        STREAM_STORE_FAILED if text.contains("maximum messages") => Refusal::Full(LimitHit::Msgs),
        STREAM_STORE_FAILED if text.contains("maximum bytes") => Refusal::Full(LimitHit::Bytes),
        STORAGE_RESOURCES_EXCEEDED | INSUFFICIENT_RESOURCES => Refusal::Full(LimitHit::Bytes),
        MESSAGE_EXCEEDS_MAXIMUM => Refusal::TooLarge,
        _ => Refusal::Unavailable(format!("JetStream refused the message: {text}")),
    }
}

/// A JetStream management error as a [`BusError`].
pub(crate) fn unavailable(what: impl std::fmt::Display, err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_map_to_refusals() {
        let full = |text| classify_api(ErrorCode(10077), text);
        assert_eq!(
            full("maximum messages exceeded (code 503, error code 10077)"),
            Refusal::Full(LimitHit::Msgs)
        );
        assert_eq!(
            full("maximum bytes exceeded"),
            Refusal::Full(LimitHit::Bytes)
        );
        assert!(matches!(full("disk on fire"), Refusal::Unavailable(_)));
        assert_eq!(
            classify_api(ErrorCode(10047), "insufficient storage"),
            Refusal::Full(LimitHit::Bytes)
        );
        assert_eq!(
            classify_api(ErrorCode(10054), "message size exceeds maximum allowed"),
            Refusal::TooLarge
        );
        assert!(matches!(
            classify_api(ErrorCode(10999), "?"),
            Refusal::Unavailable(_)
        ));
    }
}
