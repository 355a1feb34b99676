//! Flow-control primitives for spillway, with no I/O and an injected clock.
//!
//! Each primitive is one module whose top comment states what it guarantees:
//!
//! - [`adaptive`]: adaptive concurrency limits (fixed, Vector-style AIMD,
//!   Netflix Gradient2) that back off on 429/503/timeouts, rising RTT and
//!   `Retry-After`.
//! - [`rate_limit`]: GCRA rate limiter (governor) with exact waits for
//!   `Retry-After`; burst defaults to 1.
//! - [`buffer`]: FIFO buffer bounded by items and bytes, blocking (with a
//!   deadline), rejecting or dropping the oldest when full; nothing is lost
//!   unreported.
//! - [`credit`]: credit window (AMQP prefetch, reactive-streams `request(n)`)
//!   with a limit that can change at runtime.
//! - [`semaphore`]: counting semaphore with a bounded FIFO pending queue and
//!   a runtime-adjustable limit (Argo's ConfigMap semaphore).
//! - [`priority`]: priority load shedding by queue depth, and a bounded
//!   priority queue whose aging rule bounds how long an item can be overtaken.
//! - [`drain`]: slow start for draining a backlog; a geometric ramp of
//!   evenly spaced starts, at most `floor(rate × interval)` per interval.
//! - [`autoscale`]: KEDA/HPA-style worker count from consumer lag, with
//!   immediate scale-up, a scale-down stabilisation window and scale to zero.
//!
//! Every primitive reads time from a [`Clock`], so tests drive time by hand
//! ([`FakeClock`]) or with tokio's paused time ([`TokioClock`]) and assert
//! exact counts.

pub mod adaptive;
pub mod autoscale;
pub mod buffer;
pub mod clock;
pub mod credit;
pub mod drain;
pub mod priority;
pub mod rate_limit;
pub mod semaphore;

pub use adaptive::{
    AdaptiveConcurrency, AimdConfig, Algorithm, Busy, ConcurrencyMode, DropReason, Gradient2Config,
    InvalidConfig, Outcome, Token, UnknownConcurrencyMode,
};
pub use autoscale::{AutoscalePolicy, AutoscalePolicyError, LagAutoscaler};
pub use buffer::{
    BoundedBuffer, BufferLimits, BufferStats, Pushed, RejectReason, Rejected, WhenFull,
};
pub use clock::{Clock, FakeClock, SystemClock, TokioClock};
pub use credit::{CreditWindow, OverRelease};
pub use drain::{GradualDrain, SlowStart, SlowStartError};
pub use priority::{
    clamp_priority, Decision, PolicyError, PriorityCounts, PriorityQueue, PriorityShedder,
    QueueFull, Queued, ShedLevel, SheddingPolicy, LOWEST_PRIORITY, PRIORITY_LEVELS,
};
pub use rate_limit::{
    retry_after_secs, CheckNError, RateLimit, RateLimited, RateLimiter, RateUnit, UnknownRateUnit,
};
pub use semaphore::{AcquireError, Permit, Semaphore, TryAcquireError, DEFAULT_MAX_PENDING};
