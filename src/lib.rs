//! spillway: an event pipeline that stays up under an event storm.
//!
//! EventSource → EventBus → Sensor → Trigger, as in Argo Events, with
//! backpressure at every hop. `main.rs` is only the command line; everything
//! else is here so tests and other binaries can drive it.

pub mod api;
pub mod config;
pub mod event;
pub mod json_path;
pub mod sensor;
pub mod sources;
pub mod telemetry;
pub mod topology;
pub mod triggers;
