//! Logging for the example servers, on every platform.

use crate::flags::Common;

/// Installs the `tracing` subscriber: to stderr, at `level`, as text or JSON lines.
/// Everything this process logs, the crates' lines included, carries its pid.
/// Returns the guard of the process's span; keep it for the life of `main`.
pub fn init_logging(c: &Common) -> tracing::span::EnteredSpan {
    use tracing_subscriber::filter::LevelFilter;
    let level = match c.log_level.as_str() {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false);
    // A second subscriber (none is ever set first here) would only be refused.
    let _ = match c.log_format.as_str() {
        "json" => builder.json().try_init(),
        _ => builder.try_init(),
    };
    let role = if std::env::var_os(herder_pool::WORKER_ENV).is_some() {
        "worker"
    } else {
        "supervisor"
    };
    tracing::info_span!("herder", pid = std::process::id(), role).entered()
}
