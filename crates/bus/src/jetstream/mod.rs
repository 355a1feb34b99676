//! The NATS JetStream [`Bus`] backend: several spillway instances share one
//! stream and split each consumer's work.
//!
//! One bus is one JetStream stream with **interest retention** (a message
//! stays until every consumer interested in it has acked or terminated it,
//! the memory bus's "depth") and **file storage**, created or updated by
//! [`JetStreamBus::connect`] from [`Limits`]. Bus subjects travel as
//! `spillway.<stream>.<subject>` ([`subject`] module); consumers are durable
//! pull consumers ([`consumer`] module).
//!
//! # What it guarantees
//!
//! - **Accepted means stored by the server.** [`Bus::publish`] returns the
//!   stream sequence only after the server's PubAck. Every refusal hands the
//!   message back: `Full` (JetStream `10077` maximum messages/bytes, storage
//!   exhausted, or the client-side byte check, see [`stream`]), `TooLarge`
//!   (over `max_msg_size`, over `max_bytes`, or over the server's
//!   `max_payload`, which would otherwise cost the connection), `Closed`, or
//!   `Unavailable` (not connected, no PubAck within
//!   [`JetStreamOptions::request_timeout`], connection lost while waiting).
//!   `Unavailable` never claims success: the message may or may not have been
//!   stored, and a retry may store it twice (at-least-once).
//! - **Never hangs.** While the client is disconnected (async-nats reconnects
//!   by itself, forever), publish and fetch fail at once with `Unavailable`,
//!   and a connection lost mid-call ends the call within a moment.
//! - **`retry_after`** of `Full` is the number of messages that must leave
//!   divided by the stream's drain rate over the last 10 s, clamped to
//!   [1 s, 60 s], 5 s when nothing drained (as in the memory bus). The rate
//!   is measured on the server, so it counts every instance's acks (see
//!   `stream::DrainMeter`).
//! - **Statistics look the same as the memory bus's**, but they are a
//!   snapshot refreshed every [`JetStreamOptions::stats_interval`] by a
//!   background task (the trait's `stats()` is synchronous): depth, bytes,
//!   last sequence and consumer count from stream info; lag and pending acks
//!   from consumer info; the oldest unacked message is the first one after
//!   the consumer's ack floor. `published` and the `rejected_*` counters and
//!   `ConsumerStats::redelivered` count this process's calls only.
//!   `BusStats::consumers` counts JetStream consumers (a multi-subject bus
//!   consumer is several, see [`consumer`]).
//!   [`JetStreamBus::refresh_stats`] refreshes on demand.
//!
//! # What it does not guarantee (nats-server 2.9)
//!
//! - **Messages published while the stream has no consumer are not kept**
//!   (interest retention drops them after the PubAck), unlike the memory bus.
//!   Create every consumer before accepting events.
//! - **Durability of a PubAck.** 2.9 file storage syncs on an interval: a
//!   PubAck means the server's page cache, not the disk.
//! - **`discarded`** is always 0: JetStream does not report how many messages
//!   `discard: old` or `max_age` removed.
//! - Header order is not preserved (headers come back sorted by name), and
//!   `bytes` count the server's stored records, which are larger than
//!   [`Message::size`](crate::Message::size).
//! - See [`consumer`] for multi-subject consumers on 2.9, cancelled fetches
//!   and acks, and [`stream`] for `max_bytes`.

pub mod consumer;
pub mod error;
mod pending;
pub mod stats;
pub mod stream;
pub mod subject;

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

use crate::stream::{later, LimitHit};
use crate::{
    Bus, BusError, BusStats, Consumer, ConsumerConfig, DiscardPolicy, Limits, Message, PublishError,
};
use async_nats::connection::State;
use async_nats::jetstream;
use async_trait::async_trait;
use consumer::{ConsumerShared, JetStreamConsumer};
use error::Refusal;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stream::{ByteBudget, DrainMeter, StreamState};
use subject::SubjectSpace;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Tuning of a [`JetStreamBus`]; [`Default`] suits a local server.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// Longest wait for a PubAck, a JetStream API answer or an ack to be sent.
    pub request_timeout: Duration,
    /// Longest wait for the first connection.
    pub connect_timeout: Duration,
    /// How often the background task refreshes the statistics snapshot.
    pub stats_interval: Duration,
    /// How often [`Bus::wait_for_space`] looks at the stream (shared by all
    /// waiting producers: at most one request per interval).
    pub space_poll_interval: Duration,
    /// Stream replicas (1 on a single server).
    pub replicas: usize,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            stats_interval: Duration::from_secs(1),
            space_poll_interval: Duration::from_millis(100),
            replicas: 1,
        }
    }
}

/// Parses `url`: one NATS URL, or several separated by commas (the seed
/// servers of a cluster; the client learns the rest from them).
fn server_list(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|err| {
                BusError::Unavailable(format!("invalid NATS server URL {u:?}: {err}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|servers| {
            if servers.is_empty() {
                Err(BusError::Unavailable("no NATS server URL given".into()))
            } else {
                Ok(servers)
            }
        })
}

#[cfg(test)]
mod server_list_tests {
    use super::server_list;

    #[test]
    fn one_or_several_urls_and_clear_errors() {
        assert_eq!(
            server_list("nats://127.0.0.1:4222").map(|s| s.len()).ok(),
            Some(1)
        );
        let cluster = "nats://10.0.0.1:4222, nats://10.0.0.2:4222,nats://10.0.0.3:4222";
        assert_eq!(server_list(cluster).map(|s| s.len()).ok(), Some(3));
        let bad = server_list("nats://a:4222,nats://b:port").expect_err("bad port");
        assert!(bad.to_string().contains("nats://b:port"), "{bad}");
        assert!(server_list(" , ").is_err());
    }
}

/// A [`Bus`] on a NATS JetStream stream. See the [module docs](self).
pub struct JetStreamBus {
    inner: Arc<Inner>,
}

/// Connection and lifecycle flags, shared with the client's event callback.
#[derive(Debug, Default)]
pub(crate) struct Link {
    connected: AtomicBool,
    closed: AtomicBool,
    /// Notified on every change of the flags above.
    changed: Notify,
}

impl Link {
    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the bus is closed or the connection is down.
    pub(crate) async fn interrupted(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_closed() || !self.connected.load(Ordering::SeqCst) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once the bus is closed.
    async fn closed(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_closed() {
                return;
            }
            changed.await;
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    rejected_full: AtomicU64,
    rejected_too_large: AtomicU64,
}

/// What the bus and its consumer handles share.
pub(crate) struct Inner {
    url: String,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: jetstream::stream::Stream<()>,
    pub(crate) stream_name: String,
    pub(crate) space: SubjectSpace,
    limits: Limits,
    pub(crate) options: JetStreamOptions,
    pub(crate) link: Arc<Link>,
    counters: Counters,
    budget: Mutex<ByteBudget>,
    drain: Mutex<DrainMeter>,
    /// Makes concurrent stream-state refreshes share one request.
    refreshing: tokio::sync::Mutex<()>,
    /// Consumers bound in this process, by bus name.
    consumers: Mutex<HashMap<String, Arc<ConsumerShared>>>,
    /// Serialises consumer creation in this process.
    creating: tokio::sync::Mutex<()>,
    refresher: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn is_connected(&self) -> bool {
        self.link.connected.load(Ordering::SeqCst)
            && self.client.connection_state() == State::Connected
    }

    pub(crate) fn not_connected(&self) -> BusError {
        BusError::Unavailable(format!("not connected to NATS at {}", self.url))
    }

    /// The stream's state, from a fetch at most `max_age` old; concurrent
    /// callers share one request.
    pub(crate) async fn state(&self, max_age: Duration) -> Result<StreamState, BusError> {
        let fresh = |b: &ByteBudget| {
            b.seen_at
                .filter(|at| at.elapsed() <= max_age)
                .map(|_| b.state)
        };
        if let Some(state) = fresh(&self.budget.lock()) {
            return Ok(state);
        }
        let _one = self.refreshing.lock().await;
        if let Some(state) = fresh(&self.budget.lock()) {
            return Ok(state);
        }
        if !self.is_connected() {
            return Err(self.not_connected());
        }
        // Bytes this process published before the request are in the answer
        // (or were refused): only those added since then stay on top of it.
        let counted = self.budget.lock().added;
        let info = tokio::time::timeout(self.options.request_timeout, self.stream.get_info())
            .await
            .map_err(|_| BusError::Unavailable("timed out reading stream info".to_string()))?
            .map_err(|err| error::unavailable("cannot read stream info", err))?;
        let state = StreamState::from(&info.state);
        let now = Instant::now();
        {
            let mut budget = self.budget.lock();
            budget.observe(state, now);
            budget.added = budget.added.saturating_sub(counted);
        }
        self.drain.lock().record(now, state);
        Ok(state)
    }

    fn has_room(&self, state: StreamState) -> bool {
        self.limits.max_msgs.is_none_or(|max| state.messages < max)
            && self.limits.max_bytes.is_none_or(|max| state.bytes < max)
    }

    fn retry_after(&self, hit: LimitHit, size: u64) -> Duration {
        let state = self.budget.lock().state;
        self.drain
            .lock()
            .retry_after(hit, state, &self.limits, size)
    }

    /// Reserves `stored` bytes against the client-side `max_bytes` check
    /// (discard new only); `false` when they do not fit.
    async fn reserve_bytes(&self, stored: u64) -> bool {
        let Some(max) = self.limits.max_bytes else {
            return true;
        };
        if self.limits.discard != DiscardPolicy::New {
            return true;
        }
        let try_reserve = || {
            let mut budget = self.budget.lock();
            if budget.estimate().saturating_add(stored) <= max {
                budget.in_flight += stored;
                true
            } else {
                false
            }
        };
        if try_reserve() {
            return true;
        }
        // The estimate errs high (acks since the last look are not in it):
        // look again before refusing.
        let _ = self.state(self.options.space_poll_interval / 2).await;
        try_reserve()
    }

    fn release_bytes(&self, stored: u64, accepted: bool) {
        if self.limits.max_bytes.is_none() || self.limits.discard != DiscardPolicy::New {
            return;
        }
        let mut budget = self.budget.lock();
        budget.in_flight = budget.in_flight.saturating_sub(stored);
        if accepted {
            budget.added += stored;
        }
    }

    fn refuse(&self, refusal: Refusal, message: Message) -> PublishError {
        let size = message.size() as u64;
        match &refusal {
            Refusal::Full(_) => {
                self.counters.rejected_full.fetch_add(1, Ordering::Relaxed);
            }
            Refusal::TooLarge => {
                self.counters
                    .rejected_too_large
                    .fetch_add(1, Ordering::Relaxed);
            }
            Refusal::Unavailable(_) => {}
        }
        refusal.into_error(
            message,
            |hit| self.retry_after(hit, size),
            self.max_size().unwrap_or(size),
        )
    }

    /// The largest message the limits allow (`max_msg_size`, `max_bytes`).
    fn max_size(&self) -> Option<u64> {
        match (self.limits.max_msg_size, self.limits.max_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Bytes reserved by [`Inner::reserve_bytes`] for one publish; released
/// when dropped, so a cancelled publish does not leak them.
struct Reservation<'a> {
    inner: &'a Inner,
    stored: u64,
    accepted: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.inner.release_bytes(self.stored, self.accepted);
    }
}

impl JetStreamBus {
    /// Connects to `url`, creates or updates stream `stream_name` with
    /// `limits` (interest retention, file storage), and starts the
    /// statistics refresher.
    ///
    /// `subjects` are the bus subjects the stream captures, NATS wildcards
    /// allowed (empty: every subject); on the wire they live under
    /// `spillway.<stream_name>.` (see [`subject`]).
    pub async fn connect(
        url: &str,
        stream_name: &str,
        limits: Limits,
        subjects: &[impl AsRef<str>],
    ) -> Result<Arc<JetStreamBus>, BusError> {
        Self::connect_with(
            url,
            stream_name,
            limits,
            subjects,
            JetStreamOptions::default(),
        )
        .await
    }

    /// [`connect`](Self::connect) with explicit [`JetStreamOptions`].
    pub async fn connect_with(
        url: &str,
        stream_name: &str,
        limits: Limits,
        subjects: &[impl AsRef<str>],
        options: JetStreamOptions,
    ) -> Result<Arc<JetStreamBus>, BusError> {
        if !subject::is_valid_name(stream_name) {
            return Err(BusError::Unavailable(format!(
                "invalid JetStream stream name {stream_name:?}: it may not be empty or contain \
                 `.`, `*`, `>`, `/`, `\\` or whitespace"
            )));
        }
        let servers = server_list(url)?;
        let patterns: Vec<String> = subjects.iter().map(|s| s.as_ref().to_string()).collect();
        let link = Arc::new(Link::default());
        let events = Arc::clone(&link);
        let client = async_nats::ConnectOptions::new()
            .name("spillway")
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout))
            .ping_interval(Duration::from_secs(10))
            .event_callback(move |event| {
                let link = Arc::clone(&events);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            link.set_connected(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            tracing::warn!("disconnected from NATS; reconnecting");
                            link.set_connected(false);
                        }
                        other => tracing::debug!(event = %other, "NATS client event"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|err| error::unavailable(format!("cannot connect to NATS at {url}"), err))?;
        link.set_connected(true);
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.request_timeout);

        let space = SubjectSpace::new(stream_name, patterns);
        let config = stream::stream_config(
            stream_name,
            space.stream_subjects(),
            &limits,
            options.replicas,
        );
        let info = stream::ensure_stream(&js, config).await?;
        let handle = js
            .get_stream_no_info(stream_name)
            .await
            .map_err(|err| error::unavailable("cannot open stream", err))?;
        let state = StreamState::from(&info.state);
        let now = Instant::now();
        let mut budget = ByteBudget::default();
        budget.observe(state, now);
        let mut drain = DrainMeter::default();
        drain.record(now, state);
        tracing::info!(
            url,
            stream = stream_name,
            subjects = ?info.config.subjects,
            max_msgs = ?limits.max_msgs,
            max_bytes = ?limits.max_bytes,
            discard = ?limits.discard,
            messages = state.messages,
            "JetStream bus ready (interest retention, file storage)"
        );
        let inner = Arc::new(Inner {
            url: url.to_string(),
            client,
            js,
            stream: handle,
            stream_name: stream_name.to_string(),
            space,
            limits,
            options,
            link,
            counters: Counters::default(),
            budget: Mutex::new(budget),
            drain: Mutex::new(drain),
            refreshing: tokio::sync::Mutex::new(()),
            consumers: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            refresher: Mutex::new(None),
        });
        let task = stats::spawn_refresher(Arc::downgrade(&inner));
        *inner.refresher.lock() = Some(task);
        Ok(Arc::new(JetStreamBus { inner }))
    }

    /// Refreshes the statistics snapshot now (stream and every consumer
    /// bound in this process) instead of waiting for the background task.
    pub async fn refresh_stats(&self) -> Result<(), BusError> {
        stats::refresh_all(&self.inner).await
    }

    /// The JetStream stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream_name
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    /// Creates or updates the JetStream consumer(s) of `config`.
    async fn bind(&self, config: ConsumerConfig) -> Result<Arc<ConsumerShared>, BusError> {
        let inner = &self.inner;
        let parts = consumer::plan(inner, &config);
        let mut created: Vec<String> = Vec::new();
        for part in &parts {
            match self.ensure_part(&config, part).await {
                Ok(true) => created.push(part.durable.clone()),
                Ok(false) => {}
                Err(err) => {
                    // Do not leave parts behind that hold messages for nobody.
                    for durable in created {
                        if let Err(e) = inner.stream.delete_consumer(&durable).await {
                            tracing::warn!(consumer = %durable, err = %e, "cannot remove a consumer part after a failed bind");
                        }
                    }
                    return Err(err);
                }
            }
        }
        Ok(Arc::new(ConsumerShared::new(config, parts)))
    }

    /// Makes one JetStream consumer match `config`; `Ok(true)` if it was created.
    async fn ensure_part(
        &self,
        config: &ConsumerConfig,
        part: &consumer::Part,
    ) -> Result<bool, BusError> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        let inner = &self.inner;
        let want = consumer::part_config(config, part);
        let exists = match inner.stream.consumer_info(&part.durable).await {
            Ok(info) => match consumer::compare(&info.config, &want) {
                Ok(true) => return Ok(false),
                Ok(false) => true,
                Err(why) => {
                    tracing::warn!(consumer = %config.name, durable = %part.durable, %why, "existing JetStream consumer does not fit");
                    return Err(BusError::ConsumerMismatch {
                        name: config.name.clone(),
                    });
                }
            },
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => false,
            Err(err) => {
                return Err(error::unavailable(
                    format!("cannot read JetStream consumer {:?}", part.durable),
                    err,
                ))
            }
        };
        // On 2.9 creating an existing durable updates its mutable fields.
        match inner
            .js
            .create_consumer_on_stream(want, &inner.stream_name)
            .await
        {
            Ok(_) => {
                if exists {
                    tracing::info!(consumer = %config.name, durable = %part.durable, "updated JetStream consumer settings");
                }
                Ok(!exists)
            }
            Err(err) => {
                if let async_nats::jetstream::stream::ConsumerErrorKind::JetStream(api) = err.kind()
                {
                    if api.error_code().0 == error::MAXIMUM_CONSUMERS_LIMIT {
                        return Err(BusError::TooManyConsumers {
                            name: config.name.clone(),
                            max: inner.limits.max_consumers.unwrap_or(0),
                        });
                    }
                }
                Err(error::unavailable(
                    format!("cannot create JetStream consumer {:?}", part.durable),
                    err,
                ))
            }
        }
    }
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus")
            .field("url", &self.inner.url)
            .field("stream", &self.inner.stream_name)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Drop for JetStreamBus {
    fn drop(&mut self) {
        if let Some(task) = self.inner.refresher.lock().take() {
            task.abort();
        }
    }
}

#[async_trait]
impl Bus for JetStreamBus {
    async fn publish(&self, message: Message) -> Result<u64, PublishError> {
        let inner = &self.inner;
        if inner.link.is_closed() {
            return Err(PublishError::Closed { message });
        }
        let unusable = if let Some(why) = subject::invalid_publish_subject(&message.subject) {
            Some(format!("subject {:?}: {why}", message.subject))
        } else if !inner.space.captures(&message.subject) {
            Some(format!(
                "subject {:?} is outside stream {:?}'s subjects {:?}",
                message.subject,
                inner.stream_name,
                inner.space.patterns()
            ))
        } else {
            subject::invalid_headers(&message.headers)
        };
        if let Some(reason) = unusable {
            return Err(PublishError::Unavailable { message, reason });
        }
        let size = message.size() as u64;
        if let Some(max) = inner.max_size() {
            if size > max {
                inner
                    .counters
                    .rejected_too_large
                    .fetch_add(1, Ordering::Relaxed);
                return Err(PublishError::TooLarge { message, size, max });
            }
        }
        // The server closes the connection on a message over its
        // max_payload: refuse it here instead.
        let header_block = subject::header_block_len(&message.headers);
        let wire = (header_block + message.payload.len()) as u64;
        let max_payload = inner.client.server_info().max_payload as u64;
        if max_payload > 0 && wire > max_payload {
            inner
                .counters
                .rejected_too_large
                .fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::TooLarge {
                message,
                size: wire,
                max: max_payload,
            });
        }
        if !inner.is_connected() {
            let reason = inner.not_connected().to_string();
            return Err(PublishError::Unavailable { message, reason });
        }
        let nats_subject = inner.space.to_nats(&message.subject);
        let stored = stream::stored_size(nats_subject.len(), header_block, message.payload.len());
        if !inner.reserve_bytes(stored).await {
            return Err(inner.refuse(Refusal::Full(LimitHit::Bytes), message));
        }
        let mut reservation = Reservation {
            inner,
            stored,
            accepted: false,
        };
        let headers = subject::to_header_map(&message.headers);
        let payload = message.payload.clone();
        let send = async {
            let ack = if message.headers.is_empty() {
                inner.js.publish(nats_subject, payload).await?
            } else {
                inner
                    .js
                    .publish_with_headers(nats_subject, headers, payload)
                    .await?
            };
            ack.await
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(inner.options.request_timeout, send) => match r {
                Ok(Ok(ack)) => Ok(ack.sequence),
                Ok(Err(err)) => Err(error::classify_publish(&err)),
                Err(_) => Err(Refusal::Unavailable(format!(
                    "no PubAck within {:?}; the message may or may not be stored",
                    inner.options.request_timeout
                ))),
            },
            _ = inner.link.interrupted() => Err(Refusal::Unavailable(if inner.link.is_closed() {
                "bus closed while waiting for the PubAck; the message may or may not be stored".to_string()
            } else {
                "connection to NATS lost while waiting for the PubAck; the message may or may not be stored".to_string()
            })),
        };
        reservation.accepted = outcome.is_ok();
        drop(reservation);
        match outcome {
            Ok(seq) => {
                inner.counters.published.fetch_add(1, Ordering::Relaxed);
                Ok(seq)
            }
            Err(refusal) => Err(inner.refuse(refusal, message)),
        }
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Arc<dyn Consumer>, BusError> {
        let inner = &self.inner;
        if inner.link.is_closed() {
            return Err(BusError::Closed);
        }
        let _one = inner.creating.lock().await;
        let known = inner.consumers.lock().get(&config.name).cloned();
        let shared = match known {
            Some(shared) if shared.config != config => {
                return Err(BusError::ConsumerMismatch { name: config.name });
            }
            Some(shared) => shared,
            None => {
                if !inner.is_connected() {
                    return Err(inner.not_connected());
                }
                let shared = self.bind(config.clone()).await?;
                inner
                    .consumers
                    .lock()
                    .insert(config.name.clone(), Arc::clone(&shared));
                if let Err(err) = stats::refresh_consumer(inner, &shared).await {
                    tracing::debug!(%err, consumer = %config.name, "first consumer stats refresh failed");
                }
                shared
            }
        };
        Ok(Arc::new(JetStreamConsumer {
            inner: Arc::clone(inner),
            shared,
        }))
    }

    /// Deletes every JetStream consumer of `name` (found by description,
    /// so parts of subjects it no longer has go too) and forgets the
    /// handles bound here. Instances elsewhere notice at their next pull.
    async fn delete_consumer(&self, name: &str) -> Result<bool, BusError> {
        use async_nats::jetstream::stream::ConsumerErrorKind;
        let inner = &self.inner;
        if !inner.is_connected() {
            return Err(inner.not_connected());
        }
        let _one = inner.creating.lock().await;
        let description = consumer::description(name);
        let mut durables = Vec::new();
        let mut listing = inner.stream.consumers();
        while let Some(info) = listing.next().await {
            let info =
                info.map_err(|err| error::unavailable("cannot list JetStream consumers", err))?;
            if info.config.description.as_deref() == Some(description.as_str()) {
                durables.push(info.name);
            }
        }
        let mut deleted = false;
        for durable in &durables {
            match inner.stream.delete_consumer(durable).await {
                Ok(_) => deleted = true,
                Err(err)
                    if matches!(err.kind(), ConsumerErrorKind::JetStream(api)
                        if api.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND) =>
                    {}
                Err(err) => {
                    return Err(error::unavailable(
                        format!("cannot delete JetStream consumer {durable:?}"),
                        err,
                    ))
                }
            }
        }
        if let Some(shared) = inner.consumers.lock().remove(name) {
            shared.mark_deleted();
        }
        if deleted {
            tracing::info!(consumer = %name, parts = durables.len(), "deleted durable consumer");
        }
        Ok(deleted)
    }

    async fn wait_for_space(&self, timeout: Duration) {
        let inner = &self.inner;
        let deadline = later(Instant::now(), timeout);
        let poll = inner.options.space_poll_interval;
        // Space counts as freed when a message left the stream since the
        // first look (acked by every consumer, terminated, expired or
        // discarded: `last_seq` grew by less than the depth did, see
        // `DrainMeter`), whatever the limits say: a stream with room but no
        // release would otherwise wake every waiter each interval. Only when
        // the first look failed does a later look with room count.
        let first = inner.state(poll).await.ok();
        loop {
            if inner.link.is_closed() {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(later(now, poll).min(deadline)) => {}
                _ = inner.link.closed() => return,
            }
            if let Ok(state) = inner.state(poll).await {
                let freed = match first {
                    Some(first) => stream::removed_between(first, state) > 0,
                    None => inner.has_room(state),
                };
                if freed {
                    return;
                }
            }
        }
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn stats(&self) -> BusStats {
        let inner = &self.inner;
        let state = inner.budget.lock().state;
        BusStats {
            messages: state.messages,
            bytes: state.bytes,
            published: inner.counters.published.load(Ordering::Relaxed),
            rejected_full: inner.counters.rejected_full.load(Ordering::Relaxed),
            rejected_too_large: inner.counters.rejected_too_large.load(Ordering::Relaxed),
            discarded: 0,
            last_seq: state.last_seq,
            consumers: state.consumers,
        }
    }

    async fn close(&self) {
        let inner = &self.inner;
        inner.link.closed.store(true, Ordering::SeqCst);
        inner.link.changed.notify_waiters();
        if let Some(task) = inner.refresher.lock().take() {
            task.abort();
        }
        // The connection stays open: handles may still ack in-flight work.
    }
}
