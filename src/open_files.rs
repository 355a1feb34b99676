//! The process's open-files limit.
//!
//! The embedded bus keeps one descriptor per log segment (64 MiB of
//! retained events each, as Kafka keeps one per segment), the webhook one
//! per connection, and the storm one per client socket; a soft limit of
//! 1024, common by default, would fail those on `open`/`accept` long before
//! backpressure. Like the Go runtime (and so nats-server), spillway raises
//! the soft limit towards what it needs, never above the hard limit.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft open-files limit to `wanted` (capped at the hard
/// limit); never lowers it. Best effort: a refusal is logged.
pub fn raise_limit(wanted: u64) {
    let current = getrlimit(Resource::Nofile);
    let wanted = match current.maximum {
        Some(hard) => wanted.min(hard),
        None => wanted,
    };
    if current.current.is_none_or(|soft| soft >= wanted) {
        return;
    }
    let raised = Rlimit {
        current: Some(wanted),
        maximum: current.maximum,
    };
    if let Err(err) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!("cannot raise the open-files limit to {wanted}: {err}");
    }
}
