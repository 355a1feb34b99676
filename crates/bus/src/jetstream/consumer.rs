//! Durable pull consumers on JetStream.
//!
//! # One bus consumer, one or more JetStream consumers
//!
//! A bus consumer with zero or one filter subject is one durable JetStream
//! pull consumer, named after it (see [`subject`](super::subject)). nats-server 2.9
//! accepts only one `filter_subject` per consumer, so a bus consumer with
//! several filter subjects (a sensor trigger with several dependencies) is
//! made of one durable JetStream consumer per subject, named
//! `<name>.<subject>` sanitised, and its fetches pull from them in turn.
//! Consequences, all documented limits of the 2.9 server:
//!
//! - Each part counts against the stream's `max_consumers`.
//! - Messages of different subjects are not delivered in stream order
//!   relative to each other (each subject is in order).
//! - A waiting fetch polls the parts (20 ms, doubling to 250 ms) instead of
//!   parking one pull request on the server, so a new message may wait up to
//!   250 ms; a single-subject consumer is woken by the server at once.
//! - `max_ack_pending` is set on every part and also enforced across them by
//!   this process. Several processes sharing the consumer may together have
//!   up to `max_ack_pending` per part in flight.
//! - Changing the set of subjects leaves the parts of removed subjects behind
//!   (they keep holding their messages under interest retention) until the
//!   bus consumer is deleted ([`Bus::delete_consumer`](crate::Bus::delete_consumer)
//!   removes every JetStream consumer carrying its description), or by hand
//!   with `nats consumer rm` once no instance uses them.
//!
//! # Acks need the delivery handle
//!
//! Acknowledging a JetStream message means publishing to the reply subject it
//! was delivered with. Each consumer keeps, per delivered and not yet settled
//! stream sequence, that reply subject and when the message becomes due for
//! redelivery, in a [`PendingMap`] of at most `max_ack_pending` entries: a
//! fetch never asks for more than the free credit (entries not yet due).
//!
//! # One subscription per JetStream consumer
//!
//! Requests for what is there now (the hot path: a fetch while messages
//! are waiting) are answered on one inbox subscription per JetStream
//! consumer (`<inbox>.*`, request `n` replies to `<inbox>.n`), kept from
//! one fetch to the next for as long as each request is answered in full,
//! instead of a subscribe and unsubscribe per fetch. A request answered
//! short, or a fetch cancelled midway, drops the subscription: the request
//! may stay parked on a 2.9 server until it expires, and the server
//! delivers nothing to a reply subject nobody listens on, so nothing
//! reaches this process while no fetch runs. These pulls of one JetStream
//! consumer in this process take turns (a fetch waits at most
//! `NOW_EXPIRES` for its turn). A fetch that waits on the server for a
//! message uses a subscription of its own, for the same reason.
//!
//! # What differs from the memory bus
//!
//! - **Shared by many processes.** Binding to the same name from several
//!   spillway instances shares the JetStream consumer: each message goes to
//!   one of them at a time. Handles bound in one process share the map
//!   above, so any of them can ack what another fetched.
//! - **`max_deliver` is enforced here**, not by the server: on 2.9 a message
//!   that exhausts the server's `MaxDeliver` stays in an interest stream
//!   forever. The server consumer has no delivery cap; a nak after the last
//!   allowed delivery, or a delivery beyond it, terminates the message
//!   (`+TERM`), which releases it like the memory bus does.
//! - **Cancelling a fetch** that waits for a message leaves its pull request
//!   on the server until `max_wait` ends; a message delivered to it then is
//!   redelivered only after `ack_wait` (a waiting pull has its own
//!   subscription, dropped with the fetch).
//! - **Acks are fire-and-forget** NATS publishes (as in every JetStream
//!   client): `ack` returns once the ack is sent. A lost ack means a
//!   redelivery, never a loss. While disconnected, settling calls fail with
//!   [`BusError::Unavailable`] instead of queueing.
//! - `in_progress` after a `nak` is ignored, as in the memory bus; the server
//!   would otherwise restart the ack timer and drop the nak delay.

use super::pending::{Entry, PendingMap};
use super::subject::{durable_name, from_header_map};
use super::Inner;
use crate::{BusError, Consumer, ConsumerConfig, ConsumerStats, Received};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, ReplayPolicy};
use async_nats::StatusCode;
use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// `expires` of a pull request that takes only what is there now. With
/// `no_wait` the server answers at once when messages are available; the
/// expiry bounds the one case in which 2.9 never answers on its own (the
/// consumer is at `max_ack_pending`). It must outlast the delivery of a
/// whole batch: with 1 ms, nats-server 2.9 let requests expire midway
/// through a batch without the closing status, every such fetch then waited
/// out `request_timeout`, and a trigger on JetStream drained ~700 events/s
/// instead of thousands (scripts/bench-scale-out.sh).
const NOW_EXPIRES: Duration = Duration::from_millis(100);
/// Shortest wait worth parking a pull request for.
const MIN_WAIT: Duration = Duration::from_millis(2);
/// Poll interval bounds of a waiting multi-subject fetch.
const POLL_MIN: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);

/// One JetStream consumer behind a bus consumer.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) durable: String,
    /// NATS filter subject; empty means the whole stream.
    pub(crate) filter: String,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`.
    next_subject: String,
}

/// The JetStream consumers a bus consumer needs.
pub(crate) fn plan(inner: &Inner, config: &ConsumerConfig) -> Vec<Part> {
    let mut filters: Vec<&String> = Vec::new();
    for f in &config.filter_subjects {
        if !filters.contains(&f) {
            filters.push(f);
        }
    }
    let part = |durable: String, filter: String| Part {
        next_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{}.{durable}", inner.stream_name),
        durable,
        filter,
    };
    match filters.as_slice() {
        [] => vec![part(durable_name(&config.name), String::new())],
        [only] => vec![part(durable_name(&config.name), inner.space.to_nats(only))],
        many => many
            .iter()
            .map(|f| {
                part(
                    durable_name(&format!("{}.{f}", config.name)),
                    inner.space.to_nats(f),
                )
            })
            .collect(),
    }
}

/// The description every JetStream consumer of bus consumer `name` carries:
/// how [`delete_consumer`](crate::Bus::delete_consumer) finds all its parts,
/// including those of subjects it no longer has.
pub(crate) fn description(name: &str) -> String {
    format!("spillway consumer {name:?}")
}

/// The server-side configuration of `part`.
pub(crate) fn part_config(config: &ConsumerConfig, part: &Part) -> pull::Config {
    pull::Config {
        durable_name: Some(part.durable.clone()),
        description: Some(description(&config.name)),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        // Enforced by the client (see the module docs).
        max_deliver: -1,
        filter_subject: part.filter.clone(),
        replay_policy: ReplayPolicy::Instant,
        max_ack_pending: i64::try_from(config.max_ack_pending.max(1)).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

/// Whether an existing server consumer can serve `part` as is (`Ok(true)`),
/// after an update (`Ok(false)`), or not at all (`Err` with the reason).
pub(crate) fn compare(
    existing: &async_nats::jetstream::consumer::Config,
    want: &pull::Config,
) -> Result<bool, String> {
    if existing.deliver_subject.is_some() {
        return Err("it is a push consumer".to_string());
    }
    if existing.filter_subject != want.filter_subject {
        return Err(format!(
            "its filter subject is {:?}, not {:?} (nats-server 2.9 cannot change it)",
            existing.filter_subject, want.filter_subject
        ));
    }
    if existing.ack_policy != AckPolicy::Explicit {
        return Err(format!("its ack policy is {:?}", existing.ack_policy));
    }
    if existing.deliver_policy != DeliverPolicy::All {
        return Err(format!(
            "its deliver policy is {:?}",
            existing.deliver_policy
        ));
    }
    Ok(existing.ack_wait == want.ack_wait
        && existing.max_ack_pending == want.max_ack_pending
        && existing.max_deliver == want.max_deliver
        && existing.description == want.description)
}

/// State shared by every handle bound to one consumer name in this process.
pub(crate) struct ConsumerShared {
    pub(crate) config: ConsumerConfig,
    pub(crate) parts: Vec<Part>,
    pending: Mutex<PendingMap>,
    /// Per part (same index), the subscription its pulls are answered on;
    /// the lock is the part's pull turn.
    inboxes: Vec<tokio::sync::Mutex<Option<PullInbox>>>,
    /// Notified when credit is freed or a nak may make a message due sooner.
    changed: Notify,
    redelivered: AtomicU64,
    /// First part the next multi-part fetch pulls from (round robin).
    next_part: AtomicUsize,
    /// Last figures read from the server.
    cached: Mutex<CachedStats>,
    /// Set by [`Bus::delete_consumer`](crate::Bus::delete_consumer) in this
    /// process: fetches fail at once instead of asking the server.
    deleted: AtomicBool,
    /// Notified when `deleted` is set: ends pull requests parked on the
    /// server (nats-server 2.9 does not end them when the consumer goes).
    deletion: Notify,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CachedStats {
    pub(crate) pending: u64,
    pub(crate) ack_pending: u64,
    /// Publish time of the oldest message not yet released.
    pub(crate) oldest: Option<SystemTime>,
}

impl ConsumerShared {
    pub(crate) fn new(config: ConsumerConfig, parts: Vec<Part>) -> ConsumerShared {
        ConsumerShared {
            pending: Mutex::new(PendingMap::new(config.max_ack_pending)),
            inboxes: parts
                .iter()
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            config,
            parts,
            changed: Notify::new(),
            redelivered: AtomicU64::new(0),
            next_part: AtomicUsize::new(0),
            cached: Mutex::new(CachedStats::default()),
            deleted: AtomicBool::new(false),
            deletion: Notify::new(),
        }
    }

    /// Tests: how many parts keep a pull subscription right now.
    #[cfg(test)]
    pub(crate) fn kept_subscriptions(&self) -> usize {
        self.inboxes
            .iter()
            .filter(|i| i.try_lock().is_ok_and(|slot| slot.is_some()))
            .count()
    }

    /// Marks the consumer deleted and ends its waiting fetches.
    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        self.deletion.notify_waiters();
        self.changed.notify_waiters();
    }

    /// Resolves once the consumer is deleted in this process.
    async fn until_deleted(&self) {
        let notified = self.deletion.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.deleted.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    fn deleted_error(&self) -> BusError {
        BusError::ConsumerDeleted {
            name: self.config.name.clone(),
        }
    }

    pub(crate) fn set_cached(&self, stats: CachedStats) {
        *self.cached.lock() = stats;
    }

    pub(crate) fn stats(&self) -> ConsumerStats {
        let c = *self.cached.lock();
        ConsumerStats {
            pending: c.pending,
            ack_pending: c.ack_pending,
            redelivered: self.redelivered.load(Ordering::Relaxed),
            oldest_unacked_age: c
                .oldest
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default()),
        }
    }
}

/// The kept subscription one JetStream consumer's `no_wait` pull requests
/// are answered on.
struct PullInbox {
    /// `<inbox>`; request `n` replies to `<inbox>.n`.
    prefix: String,
    subscriber: async_nats::Subscriber,
    requests: u64,
}

/// A delivered message (not a status or heartbeat).
fn is_delivery(msg: &async_nats::Message) -> bool {
    matches!(msg.status, None | Some(StatusCode::OK)) && msg.reply.is_some()
}

/// A handle on a durable JetStream consumer. See the [module docs](self).
pub(crate) struct JetStreamConsumer {
    pub(crate) inner: Arc<Inner>,
    pub(crate) shared: Arc<ConsumerShared>,
}

/// How long a pull request may wait on the server.
#[derive(Clone, Copy)]
enum Pull {
    /// Only what is available now.
    Now,
    /// Up to this long for the batch to fill.
    Wait(Duration),
}

impl JetStreamConsumer {
    /// Pulls from part `index`: see [`pull_now`](Self::pull_now) and
    /// [`pull_wait`](Self::pull_wait).
    async fn pull(
        &self,
        index: usize,
        batch: usize,
        mode: Pull,
    ) -> Result<Vec<async_nats::Message>, BusError> {
        match mode {
            Pull::Now => self.pull_now(index, batch).await,
            Pull::Wait(wait) => self.pull_wait(index, batch, wait).await,
        }
    }

    /// Takes what part `index` has now with one `no_wait` pull request, on
    /// the part's kept subscription (see the module docs).
    async fn pull_now(
        &self,
        index: usize,
        batch: usize,
    ) -> Result<Vec<async_nats::Message>, BusError> {
        let (Some(part), Some(turn)) =
            (self.shared.parts.get(index), self.shared.inboxes.get(index))
        else {
            return Ok(Vec::new());
        };
        let turn_deadline = crate::stream::later(Instant::now(), NOW_EXPIRES);
        let Ok(mut slot) = tokio::time::timeout_at(turn_deadline, turn.lock()).await else {
            // Other fetches of this process kept the part busy all that time.
            return Ok(Vec::new());
        };
        // Taken out for the request: if the fetch is cancelled midway it is
        // dropped (unsubscribed) with the future, and the next pull makes a
        // new one.
        let mut inbox = match slot.take() {
            Some(inbox) => inbox,
            None => {
                let client = &self.inner.client;
                let prefix = client.new_inbox();
                let subscriber = client
                    .subscribe(format!("{prefix}.*"))
                    .await
                    .map_err(|err| {
                        BusError::Unavailable(format!("cannot subscribe for pulls: {err}"))
                    })?;
                PullInbox {
                    prefix,
                    subscriber,
                    requests: 0,
                }
            }
        };
        inbox.requests += 1;
        let reply = format!("{}.{}", inbox.prefix, inbox.requests);
        let body = format!(
            r#"{{"batch":{batch},"no_wait":true,"expires":{}}}"#,
            NOW_EXPIRES.as_nanos()
        );
        let mut out = Vec::new();
        let ended = self
            .request(
                part,
                &mut inbox.subscriber,
                reply,
                body,
                batch,
                NOW_EXPIRES,
                &mut out,
            )
            .await;
        // Kept only after a request the server answered in full: that one
        // is over, so nothing more can arrive on the subscription. One that
        // ended short may stay parked on a 2.9 server until it expires;
        // dropping the subscription withdraws it (the server delivers
        // nothing to a reply subject nobody listens on), so nothing reaches
        // this process while no fetch runs. Under load batches fill and the
        // subscription is reused.
        if matches!(ended, Ok(false)) && out.len() >= batch {
            *slot = Some(inbox);
        }
        ended.map(|_| out)
    }

    /// Waits up to `wait` on the server for part `index` to have messages,
    /// on a subscription of its own: when the fetch is cancelled, dropping
    /// it makes the server drop the parked request, so nothing is
    /// delivered to a fetch that is gone.
    async fn pull_wait(
        &self,
        index: usize,
        batch: usize,
        wait: Duration,
    ) -> Result<Vec<async_nats::Message>, BusError> {
        let Some(part) = self.shared.parts.get(index) else {
            return Ok(Vec::new());
        };
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|err| BusError::Unavailable(format!("cannot subscribe for a pull: {err}")))?;
        let body = format!(r#"{{"batch":{batch},"expires":{}}}"#, wait.as_nanos());
        let mut out = Vec::new();
        self.request(part, &mut sub, inbox, body, batch, wait, &mut out)
            .await?;
        Ok(out)
    }

    /// Sends pull request `body` for `part` replying to `reply` (on which
    /// `sub` receives) and collects deliveries into `out` until it holds
    /// `batch` or the server ends the request. Returns whether the
    /// subscription ended.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        part: &Part,
        sub: &mut async_nats::Subscriber,
        reply: String,
        body: String,
        batch: usize,
        expires: Duration,
        out: &mut Vec<async_nats::Message>,
    ) -> Result<bool, BusError> {
        self.inner
            .client
            .publish_with_reply(part.next_subject.clone(), reply.clone(), body.into())
            .await
            .map_err(|err| BusError::Unavailable(format!("cannot send a pull request: {err}")))?;
        // The server ends every request by `expires`; this only guards
        // against a lost connection or a server that never answers.
        let guard = crate::stream::later(
            Instant::now(),
            expires.saturating_add(self.inner.options.request_timeout),
        );
        while out.len() < batch {
            let next = tokio::select! {
                next = sub.next() => next,
                _ = tokio::time::sleep_until(guard) => {
                    tracing::debug!(consumer = %part.durable, "pull request not ended by the server in time");
                    break;
                }
                _ = self.inner.link.interrupted() => {
                    if self.inner.link.is_closed() || !out.is_empty() {
                        break;
                    }
                    return Err(self.inner.not_connected());
                }
                _ = self.shared.until_deleted() => return Err(self.shared.deleted_error()),
            };
            let Some(msg) = next else {
                return Ok(true);
            };
            if is_delivery(&msg) {
                out.push(msg);
                continue;
            }
            if msg.subject.as_str() != reply {
                // A status ending an earlier request.
                continue;
            }
            match msg.status {
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(StatusCode::NOT_FOUND) | Some(StatusCode::TIMEOUT) => break,
                Some(StatusCode::NO_RESPONDERS) => {
                    // Nobody serves the consumer's pull subject: it is gone
                    // (deleted by another instance or by hand).
                    tracing::debug!(consumer = %part.durable, "JetStream consumer does not exist");
                    return Err(self.shared.deleted_error());
                }
                status => {
                    tracing::debug!(consumer = %part.durable, ?status, description = ?msg.description, "pull request ended");
                    break;
                }
            }
        }
        Ok(false)
    }

    /// A fetch from a single-part consumer: what is there now, else wait on
    /// the server for one message and top the batch up with what followed.
    async fn pull_single(
        &self,
        batch: usize,
        deadline: Instant,
    ) -> Result<Vec<async_nats::Message>, BusError> {
        let mut got = self.pull(0, batch, Pull::Now).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if got.is_empty() && remaining >= MIN_WAIT {
            got = self.pull(0, 1, Pull::Wait(remaining)).await?;
            if got.len() == 1 && batch > 1 {
                match self.pull(0, batch - 1, Pull::Now).await {
                    Ok(more) => got.extend(more),
                    Err(err) => tracing::debug!(%err, "top-up pull failed"),
                }
            }
        }
        Ok(got)
    }

    /// One round over every part, starting at the next one in turn.
    async fn pull_round(&self, batch: usize) -> Result<Vec<async_nats::Message>, BusError> {
        let parts = &self.shared.parts;
        let start = self.shared.next_part.fetch_add(1, Ordering::Relaxed);
        let mut got = Vec::new();
        for i in 0..parts.len() {
            if got.len() >= batch {
                break;
            }
            let index = (start + i) % parts.len();
            match self.pull(index, batch - got.len(), Pull::Now).await {
                Ok(more) => got.extend(more),
                // Never drop what other parts already delivered.
                Err(err) if !got.is_empty() => {
                    tracing::debug!(%err, "pull failed");
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(got)
    }

    /// Records deliveries and turns them into [`Received`]; terminates
    /// messages delivered more than `max_deliver` times.
    async fn accept(&self, raw: Vec<async_nats::Message>) -> Vec<Received> {
        let now = Instant::now();
        let config = &self.shared.config;
        let mut out = Vec::with_capacity(raw.len());
        let mut give_up = Vec::new();
        for msg in raw {
            let js_msg = async_nats::jetstream::Message {
                message: msg,
                context: self.inner.js.clone(),
            };
            let (seq, deliveries, published_at) = match js_msg.info() {
                Ok(info) => (
                    info.stream_sequence,
                    u32::try_from(info.delivered).unwrap_or(u32::MAX),
                    SystemTime::from(info.published),
                ),
                Err(err) => {
                    tracing::warn!(%err, reply = ?js_msg.message.reply, "not a JetStream delivery; ignored");
                    continue;
                }
            };
            let msg = js_msg.message;
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            if config.max_deliver.is_some_and(|max| deliveries > max) {
                give_up.push((seq, deliveries, reply));
                continue;
            }
            if deliveries > 1 {
                self.shared.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            self.shared.pending.lock().insert(
                seq,
                Entry {
                    reply,
                    due: crate::stream::later(now, config.ack_wait),
                    deliveries,
                    nakked: false,
                },
                now,
            );
            out.push(Received {
                seq,
                subject: self.inner.space.strip(msg.subject.as_str()).to_string(),
                headers: from_header_map(msg.headers.as_ref()),
                payload: msg.payload,
                published_at,
                delivery_count: deliveries,
            });
        }
        for (seq, deliveries, reply) in give_up {
            tracing::warn!(
                consumer = %config.name,
                seq,
                deliveries = deliveries - 1,
                "max_deliver reached; message released without ack"
            );
            if let Err(err) = self.send(reply, "+TERM".into()).await {
                tracing::debug!(%err, seq, "could not terminate an exhausted message");
            }
        }
        out
    }

    /// Publishes an ack-protocol message to `reply`.
    async fn send(
        &self,
        reply: async_nats::Subject,
        payload: bytes::Bytes,
    ) -> Result<(), BusError> {
        if !self.inner.is_connected() {
            return Err(self.inner.not_connected());
        }
        match tokio::time::timeout(
            self.inner.options.request_timeout,
            self.inner.client.publish(reply, payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(BusError::Unavailable(format!("cannot send ack: {err}"))),
            Err(_) => Err(BusError::Unavailable(
                "timed out sending an ack".to_string(),
            )),
        }
    }

    /// The reply subject and delivery count of `seq`, if it is pending here.
    fn entry(&self, seq: u64) -> Option<(async_nats::Subject, u32, bool)> {
        self.shared
            .pending
            .lock()
            .get(seq)
            .map(|e| (e.reply.clone(), e.deliveries, e.nakked))
    }

    /// `ack` and `term`: settles `seq` for good.
    async fn settle(&self, seq: u64, payload: &'static [u8]) -> Result<(), BusError> {
        let Some((reply, _, _)) = self.entry(seq) else {
            return Ok(());
        };
        self.send(reply, bytes::Bytes::from_static(payload)).await?;
        self.shared.pending.lock().remove(seq);
        self.shared.changed.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl Consumer for JetStreamConsumer {
    fn name(&self) -> &str {
        &self.shared.config.name
    }

    async fn fetch(&self, max: usize, max_wait: Duration) -> Result<Vec<Received>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = crate::stream::later(Instant::now(), max_wait);
        let mut poll = POLL_MIN;
        loop {
            if self.shared.deleted.load(Ordering::SeqCst) {
                return Err(self.shared.deleted_error());
            }
            if self.inner.link.is_closed() {
                return Ok(Vec::new());
            }
            if !self.inner.is_connected() {
                return Err(self.inner.not_connected());
            }
            // Registered before looking at the credit, so a release in
            // between is not missed.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let (credit, next_due) = self.shared.pending.lock().credit(now);
            let batch = max.min(credit);
            if batch == 0 {
                if now >= deadline {
                    return Ok(Vec::new());
                }
                let until = next_due.map_or(deadline, |due| due.min(deadline));
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(until) => {}
                    _ = self.inner.link.interrupted() => {}
                }
                continue;
            }
            let raw = if self.shared.parts.len() == 1 {
                self.pull_single(batch, deadline).await?
            } else {
                self.pull_round(batch).await?
            };
            let out = self.accept(raw).await;
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            // Multi-part consumers poll; a single part gets here only when
            // the server ended a wait early (e.g. 409), so do not spin.
            let until = crate::stream::later(now, poll).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = self.inner.link.interrupted() => {}
            }
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    async fn ack(&self, seq: u64) -> Result<(), BusError> {
        self.settle(seq, b"+ACK").await
    }

    async fn nak(&self, seq: u64, delay: Duration) -> Result<(), BusError> {
        let Some((reply, deliveries, _)) = self.entry(seq) else {
            return Ok(());
        };
        if self
            .shared
            .config
            .max_deliver
            .is_some_and(|max| deliveries >= max)
        {
            tracing::warn!(
                consumer = %self.shared.config.name,
                seq,
                deliveries,
                "nak after max_deliver deliveries; message released without ack"
            );
            return self.settle(seq, b"+TERM").await;
        }
        let payload = if delay.is_zero() {
            bytes::Bytes::from_static(b"-NAK")
        } else {
            format!(r#"-NAK {{"delay":{}}}"#, delay.as_nanos()).into()
        };
        self.send(reply, payload).await?;
        let due = crate::stream::later(Instant::now(), delay);
        self.shared.pending.lock().reschedule(seq, due, true);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn in_progress(&self, seq: u64) -> Result<(), BusError> {
        let Some((reply, _, nakked)) = self.entry(seq) else {
            return Ok(());
        };
        if nakked {
            return Ok(());
        }
        self.send(reply, bytes::Bytes::from_static(b"+WPI")).await?;
        let due = crate::stream::later(Instant::now(), self.shared.config.ack_wait);
        self.shared.pending.lock().reschedule(seq, due, false);
        Ok(())
    }

    async fn term(&self, seq: u64) -> Result<(), BusError> {
        self.settle(seq, b"+TERM").await
    }

    fn stats(&self) -> ConsumerStats {
        self.shared.stats()
    }
}
