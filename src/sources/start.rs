//! Turns one `EventSource` document into running non-webhook sources (the
//! webhook servers are bound by the topology, which shares ports between
//! endpoints).

use super::amqp::AmqpSource;
use super::calendar::{CalendarSource, Schedule};
use super::file::FileSource;
use super::jetstream::JetStreamSource;
use super::nats::NatsSource;
use super::{EventName, Running, SourceContext, SourceError};
use crate::config::eventsource::EventSource;
use crate::config::Located;

/// Starts every amqp, nats, jetstream, calendar and file event of `source`.
/// Connections are made here, so an unreachable upstream fails start-up
/// (after its `connectionBackoff` retries) instead of failing later.
pub async fn start_sources(
    source: &Located<EventSource>,
    ctx: &SourceContext,
) -> Result<Vec<Running>, SourceError> {
    let spec = &source.doc.spec;
    let source_name = source.doc.metadata.name().to_string();
    let name = |event: &str| EventName {
        source: source_name.clone(),
        event: event.to_string(),
    };
    let mut running = Vec::new();
    for (event, config) in spec.amqp.iter().flat_map(|m| m.iter()) {
        let amqp = AmqpSource::new(name(&event.value), config);
        running.push(amqp.start(ctx.clone()).await?);
    }
    for (event, config) in spec.jetstream.iter().flat_map(|m| m.iter()) {
        let jetstream = JetStreamSource::new(name(&event.value), config);
        running.push(jetstream.start(ctx.clone()).await?);
    }
    for (event, config) in spec.nats.iter().flat_map(|m| m.iter()) {
        let nats = NatsSource::new(name(&event.value), config);
        running.push(nats.start(ctx.clone()).await?);
    }
    for (event, config) in spec.calendar.iter().flat_map(|m| m.iter()) {
        let schedule =
            Schedule::from_config(config, event.pos).map_err(|problems| SourceError::Setup {
                name: name(&event.value).to_string(),
                reason: problems
                    .into_iter()
                    .map(|(_, message)| message)
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
        let calendar = CalendarSource {
            name: name(&event.value),
            schedule,
            metadata: config.metadata.clone().unwrap_or_default(),
        };
        running.push(calendar.start(ctx.clone()));
    }
    for (event, config) in spec.file.iter().flat_map(|m| m.iter()) {
        let file = FileSource::new(name(&event.value), config);
        running.push(file.start(ctx.clone()).await?);
    }
    Ok(running)
}
