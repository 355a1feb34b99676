//! Connecting to RabbitMQ and declaring what an `amqp` event consumes:
//! `basic.qos`, the exchange, the queue, the binding, the consumer.
//!
//! Declarations follow Argo's defaults: the exchange is durable; without a
//! `queueDeclare.name` the server names an exclusive queue that lives as
//! long as the connection (so messages sent while spillway is down are not
//! kept — name a durable queue for that).

use super::AmqpSource;
use crate::sensor::RetryPolicy;
use crate::sources::SourceError;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest wait between two reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// A connected, consuming channel.
pub(super) struct Session {
    pub connection: Connection,
    pub channel: Channel,
    pub consumer: Consumer,
    pub consumer_tag: ShortString,
    pub queue: String,
}

/// The first connection: `backoff.steps` attempts, then a start-up error.
pub(super) async fn connect_with_retries(
    source: &AmqpSource,
    stop: &CancellationToken,
) -> Result<Session, SourceError> {
    let mut attempt = 1;
    loop {
        match open(source).await {
            Ok(session) => return Ok(session),
            Err(err) => match source.backoff.delay_after(attempt, None) {
                Some(delay) if !stop.is_cancelled() => {
                    tracing::warn!(
                        "amqp source {}: attempt {attempt} failed ({err}); retrying in {delay:?}",
                        source.name
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return Err(err),
                    }
                    attempt += 1;
                }
                _ => return Err(err),
            },
        }
    }
}

/// Re-establishes a lost session, retrying until it works or `stop`.
pub(super) async fn reconnect(source: &AmqpSource, stop: &CancellationToken) -> Option<Session> {
    let forever = RetryPolicy {
        steps: u32::MAX,
        ..source.backoff.clone()
    };
    let mut attempt = 1;
    loop {
        let delay = forever
            .delay_after(attempt, None)
            .unwrap_or(MAX_RECONNECT_DELAY)
            .min(MAX_RECONNECT_DELAY);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return None,
        }
        match open(source).await {
            Ok(session) => {
                tracing::info!("amqp source {}: reconnected", source.name);
                return Some(session);
            }
            Err(err) => {
                tracing::warn!(
                    "amqp source {}: reconnect attempt {attempt} failed: {err}",
                    source.name
                );
                attempt += 1;
            }
        }
    }
}

/// Closes the channel and the connection; unacked deliveries return to the queue.
pub(super) async fn close(session: Session) {
    let _ = session.channel.close(200, "spillway stopping".into()).await;
    let _ = session
        .connection
        .close(200, "spillway stopping".into())
        .await;
}

async fn open(source: &AmqpSource) -> Result<Session, SourceError> {
    let config = &source.config;
    let url = &config.url.value;
    let name = source.name.to_string();
    let connect_error = |reason: String| SourceError::Connect {
        name: name.clone(),
        url: redact(url),
        reason,
    };
    let setup_error = |what: &str, err: lapin::Error| SourceError::Setup {
        name: name.clone(),
        reason: format!("{what}: {err}"),
    };
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| setup_error("cannot open a channel", e))?;
    let qos = config
        .flow_control
        .as_ref()
        .and_then(|f| f.value.qos.as_ref())
        .map(|q| &q.value);
    channel
        .basic_qos(
            source.prefetch,
            BasicQosOptions {
                global: qos.and_then(|q| q.global).unwrap_or(false),
            },
        )
        .await
        .map_err(|e| setup_error("basic.qos", e))?;
    let exchange = config.exchange_declare.as_ref().map(|e| &e.value);
    let kind = match config.exchange_type.value.as_str() {
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Direct,
    };
    channel
        .exchange_declare(
            config.exchange_name.value.as_str().into(),
            kind,
            ExchangeDeclareOptions {
                passive: false,
                durable: exchange.and_then(|e| e.durable).unwrap_or(true),
                auto_delete: exchange.and_then(|e| e.auto_delete).unwrap_or(false),
                internal: exchange.and_then(|e| e.internal).unwrap_or(false),
                nowait: exchange.and_then(|e| e.no_wait).unwrap_or(false),
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            setup_error(
                &format!("exchange.declare {:?}", config.exchange_name.value),
                e,
            )
        })?;
    let queue = config.queue_declare.as_ref().map(|q| &q.value);
    let queue_name = queue
        .and_then(|q| q.name.as_ref())
        .map_or_else(String::new, |n| n.value.clone());
    let arguments = match queue.and_then(|q| q.arguments.as_ref()) {
        Some(text) => crate::config::eventsource::amqp::queue_arguments(&text.value)
            .and_then(|map| field_table(&map))
            .map_err(|reason| SourceError::Setup {
                name: name.clone(),
                reason,
            })?,
        None => FieldTable::default(),
    };
    let declared = channel
        .queue_declare(
            queue_name.as_str().into(),
            QueueDeclareOptions {
                passive: false,
                durable: queue.and_then(|q| q.durable).unwrap_or(false),
                exclusive: queue
                    .and_then(|q| q.exclusive)
                    .unwrap_or(queue_name.is_empty()),
                auto_delete: queue.and_then(|q| q.auto_delete).unwrap_or(false),
                nowait: queue.and_then(|q| q.no_wait).unwrap_or(false),
            },
            arguments,
        )
        .await
        .map_err(|e| setup_error(&format!("queue.declare {queue_name:?}"), e))?;
    let queue_name = declared.name().as_str().to_string();
    channel
        .queue_bind(
            queue_name.as_str().into(),
            config.exchange_name.value.as_str().into(),
            config.routing_key.value.as_str().into(),
            QueueBindOptions {
                nowait: config
                    .queue_bind
                    .as_ref()
                    .and_then(|b| b.value.no_wait)
                    .unwrap_or(false),
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| setup_error("queue.bind", e))?;
    let consume = config.consume.as_ref().map(|c| &c.value);
    let consumer = channel
        .basic_consume(
            queue_name.as_str().into(),
            consume
                .and_then(|c| c.consumer_tag.clone())
                .unwrap_or_default()
                .into(),
            BasicConsumeOptions {
                no_local: consume.and_then(|c| c.no_local).unwrap_or(false),
                // Never auto-ack: validation refuses `autoAck: true`.
                no_ack: false,
                exclusive: consume.and_then(|c| c.exclusive).unwrap_or(false),
                nowait: consume.and_then(|c| c.no_wait).unwrap_or(false),
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| setup_error("basic.consume", e))?;
    let consumer_tag = consumer.tag();
    Ok(Session {
        connection,
        channel,
        consumer,
        consumer_tag,
        queue: queue_name,
    })
}

/// The url without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// x-arguments from a JSON object: strings, integers, floats and booleans.
pub fn field_table(map: &serde_json::Map<String, serde_json::Value>) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (key, value) in map {
        let amqp = match value {
            serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
            serde_json::Value::String(s) => AMQPValue::LongString(s.as_str().into()),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
            },
            other => {
                return Err(format!(
                    "queueDeclare.arguments: {key:?} is {other}; only strings, numbers and booleans are supported"
                ))
            }
        };
        table.insert(key.as_str().into(), amqp);
    }
    Ok(table)
}

/// A header value as JSON (byte strings as text, nested tables as objects).
pub fn amqp_value_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_value_json).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k.as_str().to_string(), amqp_value_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(bytes) => {
            Value::String(String::from_utf8_lossy(bytes.as_slice()).into_owned())
        }
        AMQPValue::DecimalValue(_) | AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn queue_arguments_become_a_field_table() {
        let map = serde_json::json!({"x-queue-type": "quorum", "x-max-length": 5, "lazy": true});
        let table = field_table(map.as_object().expect("object")).expect("table");
        assert_eq!(
            table.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(5))
        );
        let nested = serde_json::json!({"x": {"y": 1}});
        assert!(field_table(nested.as_object().expect("object")).is_err());
    }
}
