//! The `body` of a message-based event (amqp, nats, jetstream, file), as
//! Argo's `jsonBody` flag asks: embedded JSON, or the text of the message.
//!
//! Guarantees: never panics on any bytes; a body flagged JSON that is not
//! JSON is an error the caller counts as `invalid`. Not JSON-flagged bodies
//! that are not UTF-8 are kept with replacement characters (Argo would
//! base64 them; spillway favours readable sensor filters).

/// A body flagged `jsonBody` that is not JSON.
#[derive(Debug, thiserror::Error)]
#[error("body is not valid JSON (jsonBody is set): {0}")]
pub struct BodyError(#[from] serde_json::Error);

/// `bytes` as the event's `body` value.
pub fn event_body(bytes: &[u8], json_body: bool) -> Result<serde_json::Value, BodyError> {
    if json_body {
        Ok(serde_json::from_slice(bytes)?)
    } else {
        Ok(serde_json::Value::String(
            String::from_utf8_lossy(bytes).into_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_bodies() {
        assert_eq!(
            event_body(br#"{"a":1}"#, true).ok(),
            Some(serde_json::json!({"a": 1}))
        );
        assert!(event_body(b"not json", true).is_err());
        assert_eq!(
            event_body(b"plain", false).ok(),
            Some(serde_json::json!("plain"))
        );
        assert_eq!(
            event_body(&[0xff, b'a'], false).ok(),
            Some(serde_json::json!("\u{fffd}a"))
        );
    }
}
