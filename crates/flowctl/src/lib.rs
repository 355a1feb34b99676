//! Flow-control primitives for spillway, with no I/O and an injected clock:
//! rate limiting, bounded buffers, credit windows, semaphores, gradual
//! drains and adaptive concurrency.
//!
//! Nothing is implemented here yet; the primitives land with the flowctl
//! issue. Until then `spillway run` refuses configs that ask for rate limits
//! instead of ignoring them.
