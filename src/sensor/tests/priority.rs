//! Sensor-level shedding and priority-first dispatch, on paused time with
//! the in-memory bus: exact counts and exact orders.

use super::*;
use crate::priority::{PriorityFrom, PrioritySource, PRIORITY_HEADER};
use crate::sensor::runner::{look_ahead, PriorityDispatch};
use spillway_flowctl::SheddingPolicy;

/// Records the `n` of every event it runs, taking `took` per call.
struct Order {
    seen: Mutex<Vec<u64>>,
    took: Duration,
}

impl Order {
    fn new(took: Duration) -> Arc<Order> {
        Arc::new(Order {
            seen: Mutex::new(Vec::new()),
            took,
        })
    }

    fn seen(&self) -> Vec<u64> {
        self.seen.lock().clone()
    }
}

#[async_trait]
impl CustomTrigger for Order {
    async fn invoke(&self, _dependency: &str, event: &Event) -> Result<(), TriggerError> {
        let n = event.data_json()["n"].as_u64().unwrap_or(u64::MAX);
        self.seen.lock().push(n);
        tokio::time::sleep(self.took).await;
        Ok(())
    }
}

/// Publishes one event per entry: data `{"n": i, "body": {"priority": …}}`
/// (`body` as given), the bus header `spillway-priority` as given.
async fn publish(bus: &MemoryBus, events: &[(Option<u8>, serde_json::Value)]) {
    for (n, (stamped, body)) in events.iter().enumerate() {
        let data = serde_json::json!({"n": n, "body": body});
        let event = Event::new("src", "orders", "orders", Bytes::from(data.to_string()));
        let mut message = event.to_message();
        if let Some(priority) = stamped {
            message
                .headers
                .push((PRIORITY_HEADER.to_string(), priority.to_string()));
        }
        bus.publish(message).await.expect("publish");
    }
}

/// Stamped priorities only, empty bodies.
async fn publish_stamped(bus: &MemoryBus, priorities: &[Option<u8>]) {
    let events: Vec<_> = priorities
        .iter()
        .map(|p| (*p, serde_json::json!({})))
        .collect();
    publish(bus, &events).await;
}

/// The stamped header (default 5), `shedding` if given, the default window.
fn dispatch(shedding: Option<(u64, i64)>) -> PriorityDispatch {
    PriorityDispatch {
        source: PrioritySource {
            from: PriorityFrom::Header(PRIORITY_HEADER.into()),
            default: 5,
        },
        shedding: shedding.map(|(depth, above)| {
            SheddingPolicy::single(depth, above).expect("a valid shedding level")
        }),
        look_ahead: look_ahead(1),
    }
}

/// A serial trigger (`maxInFlight: 1`) that dispatches with `dispatch`.
fn serial(dispatch: PriorityDispatch) -> TriggerLimits {
    TriggerLimits {
        priority: Some(dispatch),
        ..limits(1)
    }
}

/// `spillway_sensor_events_shed_total` of trigger `t` at `priority`.
fn shed(metrics: &Metrics, priority: u8) -> u64 {
    let series = format!(
        "spillway_sensor_events_shed_total{{sensor=\"sensor\",trigger=\"t\",priority=\"{priority}\"}} "
    );
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn sheds(metrics: &Metrics) -> Vec<u64> {
    (0..=9).map(|p| shed(metrics, p)).collect()
}

async fn start(setup: &mut Setup, order: &Arc<Order>, limits: TriggerLimits) -> Arc<dyn Consumer> {
    let action = Arc::clone(order) as Arc<dyn CustomTrigger>;
    setup.runner_with("t", action, None, limits).await.1
}

#[test]
fn the_look_ahead_window_is_max_in_flight_within_bounds() {
    assert_eq!(look_ahead(1), 16);
    assert_eq!(look_ahead(100), 100);
    assert_eq!(look_ahead(100_000), 1024);
    let limits = serial(dispatch(None));
    assert_eq!(limits.max_fetched(), 1 + 16);
    assert_eq!(super::limits(8).max_fetched(), 8);
}

/// Ten events fetched at once, priority 3 and 0 taking turns, shedding
/// above a backlog of 4: each priority-3 event meets a backlog of at least
/// 6 (the rest of the batch plus the window) and is shed; priority 0 never.
#[tokio::test(start_paused = true)]
async fn above_the_depth_priorities_above_the_threshold_are_shed_and_0_never() {
    let mut setup = Setup::new(0).await;
    let priorities: Vec<Option<u8>> = (0..10)
        .map(|i| Some(if i % 2 == 0 { 3 } else { 0 }))
        .collect();
    publish_stamped(&setup.bus, &priorities).await;
    let order = Order::new(Duration::ZERO);
    let consumer = start(&mut setup, &order, serial(dispatch(Some((4, 2))))).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(order.seen(), [1, 3, 5, 7, 9]);
    assert_eq!(sheds(&setup.metrics), [0, 0, 0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(invocations(&setup.metrics, "t", "success"), 5);
    // Shed events are acked, not left for redelivery.
    let stats = consumer.stats();
    assert_eq!((stats.pending, stats.ack_pending), (0, 0));
    assert_eq!(setup.bus.stats().messages, 0);
    setup.stop().await;
}

/// The same ten events with the threshold at 10: the backlog never goes
/// above it, nothing is shed.
#[tokio::test(start_paused = true)]
async fn at_or_below_the_depth_nothing_is_shed() {
    let mut setup = Setup::new(0).await;
    let priorities: Vec<Option<u8>> = (0..10)
        .map(|i| Some(if i % 2 == 0 { 3 } else { 0 }))
        .collect();
    publish_stamped(&setup.bus, &priorities).await;
    let order = Order::new(Duration::ZERO);
    start(&mut setup, &order, serial(dispatch(Some((10, 2))))).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Higher priority first: the five 0s, then the five 3s, FIFO within.
    assert_eq!(order.seen(), [1, 3, 5, 7, 9, 0, 2, 4, 6, 8]);
    assert_eq!(sheds(&setup.metrics), [0; 10]);
    setup.stop().await;
}

/// Ten priority-9 events, shedding above 7: the first three meet a backlog
/// of 10, 9 and 8 and are shed; from then on the backlog is 7 and the rest
/// run.
#[tokio::test(start_paused = true)]
async fn shedding_stops_once_the_backlog_is_down_to_the_threshold() {
    let mut setup = Setup::new(0).await;
    publish_stamped(&setup.bus, &[Some(9); 10]).await;
    let order = Order::new(Duration::ZERO);
    start(&mut setup, &order, serial(dispatch(Some((7, 0))))).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(order.seen(), [3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(shed(&setup.metrics, 9), 3);
    setup.stop().await;
}

/// The depth includes the events still on the bus: with a 4-event window,
/// the first event of twelve meets a lag of 8 plus the 4 fetched.
#[tokio::test(start_paused = true)]
async fn the_depth_counts_the_lag_still_on_the_bus() {
    let mut setup = Setup::new(0).await;
    publish_stamped(&setup.bus, &[Some(4); 12]).await;
    let order = Order::new(Duration::ZERO);
    let limits = serial(PriorityDispatch {
        look_ahead: 4,
        ..dispatch(Some((9, 3)))
    });
    start(&mut setup, &order, limits).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // First batch of 4: backlogs 12, 11, 10 (shed), then 9 (kept). Then
    // the window (1) refills with 3 more: lag 5 + window 1 + batch 3 = 9,
    // nothing more is shed.
    assert_eq!(shed(&setup.metrics, 4), 3);
    assert_eq!(order.seen(), (3..12).collect::<Vec<u64>>());
    setup.stop().await;
}

/// A backlog of mixed priorities on a serial trigger runs lowest number
/// first, FIFO within a priority; an event without a stamp has the default.
#[tokio::test(start_paused = true)]
async fn a_backlog_is_dispatched_higher_priority_first_fifo_within_one() {
    let mut setup = Setup::new(0).await;
    publish_stamped(
        &setup.bus,
        &[
            Some(5),
            Some(9),
            Some(0),
            Some(3),
            Some(0),
            None,
            Some(1),
            Some(9),
        ],
    )
    .await;
    let order = Order::new(Duration::from_secs(1));
    start(&mut setup, &order, serial(dispatch(None))).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(order.seen(), [2, 4, 6, 3, 0, 5, 1, 7]);
    assert_eq!(sheds(&setup.metrics), [0; 10]);
    setup.stop().await;
}

/// Events that arrive while the window waits for a slot compete with it:
/// a priority-0 event published during the first (slow) invocation goes
/// before the priority-5 events fetched earlier.
#[tokio::test(start_paused = true)]
async fn a_late_important_event_overtakes_the_waiting_window() {
    let mut setup = Setup::new(0).await;
    publish_stamped(&setup.bus, &[Some(5), Some(5), Some(5)]).await;
    let order = Order::new(Duration::from_secs(2));
    start(&mut setup, &order, serial(dispatch(None))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = Event::new(
        "src",
        "orders",
        "orders",
        Bytes::from(serde_json::json!({"n": 100}).to_string()),
    );
    let mut message = late.to_message();
    message.headers.push((PRIORITY_HEADER.into(), "0".into()));
    setup.bus.publish(message).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(order.seen(), [0, 100, 1, 2]);
    setup.stop().await;
}

/// Waiting is worth a priority step per `PRIORITY_AGING`: a priority-2
/// event that has waited 3 s goes before a priority-0 event that just came.
#[tokio::test(start_paused = true)]
async fn a_long_waiting_event_is_not_starved() {
    let mut setup = Setup::new(0).await;
    publish_stamped(&setup.bus, &[Some(0), Some(2)]).await;
    let order = Order::new(Duration::from_secs(3));
    start(&mut setup, &order, serial(dispatch(None))).await;
    // Event 0 runs 0–3 s; at 1 s a priority-0 event is published, and at
    // 3 s it enters the window: its turn is due at 3 s + 0 steps, event 1's
    // at 0 s + 2 steps = 2 s, so event 1 goes first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = Event::new(
        "src",
        "orders",
        "orders",
        Bytes::from(serde_json::json!({"n": 100}).to_string()),
    );
    let mut message = late.to_message();
    message.headers.push((PRIORITY_HEADER.into(), "0".into()));
    setup.bus.publish(message).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(order.seen(), [0, 1, 100]);
    setup.stop().await;
}

/// A sensor `priority: {path: body.priority}` overrides the stamped header;
/// a missing or unreadable value is the sensor's default (here 1).
#[tokio::test(start_paused = true)]
async fn a_sensor_path_overrides_the_stamped_priority() {
    let mut setup = Setup::new(0).await;
    publish(
        &setup.bus,
        &[
            (Some(0), serde_json::json!({"priority": 9})),
            (Some(9), serde_json::json!({"priority": 0})),
            (Some(0), serde_json::json!({"priority": "high"})),
            (Some(0), serde_json::json!({})),
            (None, serde_json::json!({"priority": "3"})),
        ],
    )
    .await;
    let order = Order::new(Duration::from_secs(1));
    let limits = serial(PriorityDispatch {
        source: PrioritySource {
            from: PriorityFrom::Path("body.priority".into()),
            default: 1,
        },
        ..dispatch(None)
    });
    start(&mut setup, &order, limits).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(order.seen(), [1, 2, 3, 4, 0]);
    setup.stop().await;
}

/// Events waiting in the window are kept alive: with a 3 s `ack_wait` and
/// a trigger taking 5 s per event, none is redelivered while it waits.
#[tokio::test(start_paused = true)]
async fn events_waiting_in_the_window_are_kept_alive() {
    let mut setup = Setup::new(0).await;
    publish_stamped(&setup.bus, &[Some(3), Some(2), Some(1), Some(0)]).await;
    let order = Order::new(Duration::from_secs(5));
    let consumer = start(
        &mut setup,
        &order,
        TriggerLimits {
            ack_wait: Duration::from_secs(3),
            ..serial(dispatch(None))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    // The first fetch saw all four; then strictly by priority.
    assert_eq!(order.seen(), [3, 2, 1, 0]);
    assert_eq!(consumer.stats().redelivered, 0);
    assert_eq!(setup.bus.stats().messages, 0);
    setup.stop().await;
}

/// The window is kept alive even when every wait is shorter than the
/// keep-alive interval: a 0.9 s trigger, `ack_wait` 3 s (refresh every
/// 1 s), 16 events waiting up to 14 s: none is redelivered, each runs once.
#[tokio::test(start_paused = true)]
async fn a_window_of_short_waits_is_still_kept_alive() {
    let mut setup = Setup::new(0).await;
    publish_stamped(&setup.bus, &[Some(5); 16]).await;
    let order = Order::new(Duration::from_millis(900));
    let consumer = start(
        &mut setup,
        &order,
        TriggerLimits {
            ack_wait: Duration::from_secs(3),
            ..serial(dispatch(None))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(consumer.stats().redelivered, 0);
    let mut seen = order.seen();
    seen.sort_unstable();
    assert_eq!(seen, (0..16).collect::<Vec<u64>>());
    assert_eq!(setup.bus.stats().messages, 0);
    setup.stop().await;
}
