//! Event sources: where events enter and where backpressure reaches the
//! producer. One folder per source kind.

pub mod webhook;
