//! The backend-neutral conformance suite against a real `nats-server -js`:
//! one server per test (free port, temporary store, killed when the test
//! ends), one uniquely named stream per bus the case opens.
//!
//! Where JetStream 2.9 legitimately differs from the embedded backends the
//! backend says so through [`Quirks`] and the case checks the documented
//! behaviour instead (see the quirks' docs); statistics are server
//! snapshots, so [`Backend::stats_when`] refreshes them until the acks sent
//! so far have been applied.

use super::subject::{self, SubjectSpace};
use super::test_server::TestServer;
use super::{JetStreamBus, JetStreamOptions};
use crate::conformance::{Backend, Quirks, Settled};
use crate::{Bus, BusStats, Consumer, ConsumerStats, Limits, Message};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for the server to apply acks before a case asserts anyway.
const SETTLE: Duration = Duration::from_secs(5);

/// The name of the `n`th stream a backend opens; always the same length
/// (the bus subject's prefix, hence the stored size, does not depend on `n`).
fn stream_name(n: usize) -> String {
    format!("conformance{n:04}")
}

/// Fresh JetStream buses on one test server.
pub(crate) struct JetStreamBackend {
    server: TestServer,
    opened: Mutex<Vec<Arc<JetStreamBus>>>,
    next: AtomicUsize,
}

impl JetStreamBackend {
    pub(crate) fn start() -> JetStreamBackend {
        JetStreamBackend {
            server: TestServer::start(),
            opened: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// The JetStream bus behind `bus` (one this backend opened).
    fn find(&self, bus: &Arc<dyn Bus>) -> Arc<JetStreamBus> {
        let wanted = Arc::as_ptr(bus) as *const ();
        self.opened
            .lock()
            .iter()
            .find(|js| Arc::as_ptr(js) as *const () == wanted)
            .cloned()
            .expect("a bus opened by this backend")
    }

    /// Refreshes `bus`'s snapshot until `read` satisfies `settled`.
    async fn settle<T>(
        &self,
        bus: &Arc<dyn Bus>,
        read: &(dyn Fn() -> T + Send + Sync),
        settled: &Settled<'_, T>,
    ) -> T {
        let js = self.find(bus);
        let deadline = Instant::now() + SETTLE;
        loop {
            js.refresh_stats().await.expect("refresh stats");
            let value = read();
            if settled(&value) || Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl Backend for JetStreamBackend {
    async fn open(&self, limits: Limits) -> Arc<dyn Bus> {
        let name = stream_name(self.next.fetch_add(1, Ordering::Relaxed));
        let options = JetStreamOptions {
            request_timeout: Duration::from_secs(2),
            stats_interval: Duration::from_millis(200),
            space_poll_interval: Duration::from_millis(20),
            ..JetStreamOptions::default()
        };
        let no_subjects: &[&str] = &[];
        let bus =
            JetStreamBus::connect_with(&self.server.url(), &name, limits, no_subjects, options)
                .await
                .expect("connect");
        self.opened.lock().push(Arc::clone(&bus));
        bus
    }

    fn quirks(&self) -> Quirks {
        Quirks {
            drops_without_consumers: true,
            server_bytes: true,
            no_discard_count: true,
        }
    }

    async fn stats_when(&self, bus: &Arc<dyn Bus>, settled: &Settled<'_, BusStats>) -> BusStats {
        self.settle(bus, &|| bus.stats(), settled).await
    }

    async fn consumer_stats_when(
        &self,
        bus: &Arc<dyn Bus>,
        consumer: &Arc<dyn Consumer>,
        settled: &Settled<'_, ConsumerStats>,
    ) -> ConsumerStats {
        self.settle(bus, &|| consumer.stats(), settled).await
    }

    fn stored_size(&self, message: &Message) -> u64 {
        // Every stream name has the same length, so any will do.
        let nats_subject = SubjectSpace::new(&stream_name(0), Vec::new()).to_nats(&message.subject);
        super::stream::stored_size(
            nats_subject.len(),
            subject::header_block_len(&message.headers),
            message.payload.len(),
        )
    }
}

mod suite {
    crate::conformance::conformance_suite!(super::JetStreamBackend::start());
}
