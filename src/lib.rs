//! spillway: an event pipeline that stays up under an event storm.
//!
//! EventSource → EventBus → Sensor → Trigger, as in Argo Events, with
//! backpressure at every hop. `main.rs` is only the command line; everything
//! else is here so tests and other binaries can drive it.

pub mod api;
pub mod backlog;
pub mod config;
pub mod event;
pub mod failpoint;
pub mod json_path;
pub mod open_files;
pub mod priority;
pub mod publish;
pub mod scenario;
pub mod secrets;
pub mod sensor;
pub mod sources;
pub mod storm;
pub mod telemetry;
pub mod topology;
pub mod triggers;

/// Installs rustls' `ring` crypto provider for this process (reqwest is
/// built without a default one). Idempotent.
pub fn install_tls_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
