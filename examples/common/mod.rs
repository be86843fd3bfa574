//! What the example servers share: the command line, logging, and the supervisor's
//! main loop.
#![allow(dead_code, missing_docs)]

use herder::pool::{Pool, PoolEvent};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// The options both servers take.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Address to bind; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,
    /// Worker processes (default: the number of CPUs).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// `echo` writes back every byte; `http` answers every request with 200 OK.
    #[arg(long, default_value = "echo", value_parser = ["echo", "http"])]
    pub(crate) protocol: String,
    /// Control socket (line-delimited JSON).
    #[arg(long)]
    pub(crate) control: Option<std::path::PathBuf>,
    /// How long a graceful stop or reload waits for open connections, in seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) drain_timeout: u64,
    /// error, warn, info or debug.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug"])]
    pub(crate) log_level: String,
}

static LEVEL: AtomicU8 = AtomicU8::new(2);

/// Sets the log level from its name.
pub(crate) fn set_log_level(name: &str) {
    let n = match name {
        "error" => 0,
        "warn" => 1,
        "info" => 2,
        _ => 3,
    };
    LEVEL.store(n, Ordering::Relaxed);
}

/// Whether messages of `level` (0 error … 3 debug) are shown.
pub(crate) fn enabled(level: u8) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

/// Logs to stderr with the process's role and pid.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::common::enabled($level) {
            eprintln!("[{}] {}", std::process::id(), format_args!($($arg)*));
        }
    };
}

/// The pool configuration both servers start from.
pub(crate) fn pool_config(c: &Common) -> herder::pool::Config {
    let mut config = herder::pool::Config::default();
    if let Some(n) = c.workers {
        config.workers = n.max(1);
    }
    config.drain_timeout = Duration::from_secs(c.drain_timeout);
    config.heartbeat_timeout = Some(Duration::from_secs(10));
    config
}

/// Runs the supervisor until a graceful stop ends: logs the pool's events, prints the
/// one `listening on` line once every initial worker is ready, and calls `other` for
/// the caller's own events.
pub(crate) fn supervise(
    pool: &mut Pool,
    addr: std::net::SocketAddr,
    mut other: impl FnMut(&mut Pool, &PoolEvent),
) -> anyhow::Result<()> {
    let mut events = Vec::new();
    pool.start(&mut events);
    let mut announced = false;
    loop {
        for e in events.drain(..) {
            match &e {
                PoolEvent::Spawned {
                    slot,
                    pid,
                    generation,
                } => {
                    log!(
                        2,
                        "worker {pid} started in slot {slot} (generation {generation})"
                    )
                }
                PoolEvent::Ready { slot, pid } => log!(2, "worker {pid} ready in slot {slot}"),
                PoolEvent::Exited {
                    slot,
                    pid,
                    status,
                    restart_in,
                } => match restart_in {
                    Some(d) => log!(
                        1,
                        "worker {pid} in slot {slot} exited ({status}); restart in {d:?}"
                    ),
                    None => log!(2, "worker {pid} in slot {slot} exited ({status})"),
                },
                PoolEvent::SpawnFailed { slot, error } => log!(0, "slot {slot}: {error}"),
                PoolEvent::BreakerTripped { slot, failures } => {
                    log!(0, "slot {slot} stopped after {failures} crashes in a row")
                }
                PoolEvent::Hung { slot, pid, silent } => {
                    log!(
                        0,
                        "worker {pid} in slot {slot} silent for {silent:?}: terminated"
                    )
                }
                PoolEvent::Reloaded { generation } => log!(2, "reloaded: generation {generation}"),
                PoolEvent::ReloadFailed { generation, slots } => {
                    log!(
                        0,
                        "reload to generation {generation} failed in slots {slots:?}"
                    )
                }
                PoolEvent::Command(cmd) => log!(2, "command: {cmd:?}"),
                PoolEvent::Stopped => {
                    log!(2, "stopped");
                    return Ok(());
                }
                _ => {}
            }
            other(pool, &e);
        }
        if !announced
            && !pool.workers().is_empty()
            && pool
                .workers()
                .iter()
                .all(|w| w.state == herder::pool::State::Ready)
        {
            announced = true;
            println!("listening on {addr}");
            use std::io::Write;
            std::io::stdout().flush()?;
        }
        pool.poll(&mut events, Some(Duration::from_millis(500)))?;
    }
}
