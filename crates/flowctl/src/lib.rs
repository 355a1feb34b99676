//! Flow-control primitives for spillway, with no I/O and an injected clock.
//!
//! Each primitive is one module whose top comment states what it guarantees:
//!
//! - [`rate_limit`]: GCRA rate limiter (governor) with exact waits for
//!   `Retry-After`; burst defaults to 1.
//!
//! Every primitive reads time from a [`Clock`], so tests drive time by hand
//! ([`FakeClock`]) or with tokio's paused time ([`TokioClock`]) and assert
//! exact counts.

pub mod clock;
pub mod rate_limit;

pub use clock::{Clock, FakeClock, SystemClock, TokioClock};
pub use rate_limit::{CheckNError, RateLimit, RateLimited, RateLimiter, RateUnit, UnknownRateUnit};
