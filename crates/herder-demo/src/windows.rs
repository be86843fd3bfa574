//! What the example servers share on Windows: the command line, logging and the
//! supervisor's loop.
pub use crate::flags::{Common, pool_config, server, service};
pub use crate::logging::init_logging;
use herder_pool::{Pool, PoolEvent, State};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Writes one log line to stderr in a single write: the workers share the
/// supervisor's stderr, and a line written in pieces could interleave with theirs.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let line = format!("[{}] {line}\n", std::process::id());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

static STOP: AtomicBool = AtomicBool::new(false);

unsafe extern "system" fn on_ctrl(_kind: u32) -> windows_sys::core::BOOL {
    STOP.store(true, Ordering::SeqCst);
    1
}

/// The listener `--listen` names, bound, and its address (port 0 resolved).
pub fn listener(c: &Common) -> anyhow::Result<(std::net::TcpListener, std::net::SocketAddr)> {
    use anyhow::Context;
    let listener =
        std::net::TcpListener::bind(c.listen).with_context(|| format!("binding {}", c.listen))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Runs the supervisor until a graceful stop ends (Ctrl-C, Ctrl-Break, or
/// `herder_pool::request_stop`): logs the pool's events, prints the `listening on`
/// line once every worker is ready, and calls `other` for each event (the caller's
/// own included: a dispatcher's listener, its timers).
pub fn supervise(
    pool: &mut Pool,
    addr: std::net::SocketAddr,
    c: &Common,
    mut other: impl FnMut(&mut Pool, &PoolEvent),
) -> anyhow::Result<()> {
    let verbose = c.log_level == "info" || c.log_level == "debug";
    // SAFETY: registers a handler that only stores to an atomic.
    unsafe { windows_sys::Win32::System::Console::SetConsoleCtrlHandler(Some(on_ctrl), 1) };
    if let Some(name) = &c.control {
        pool.listen_control(&name.to_string_lossy())?;
    }
    let mut events = Vec::new();
    pool.start(&mut events);
    let mut announced = false;
    loop {
        for e in events.drain(..) {
            match &e {
                PoolEvent::Stopped => return Ok(()),
                PoolEvent::Other(_) | PoolEvent::Acknowledged { .. } => {}
                PoolEvent::Exited { .. }
                | PoolEvent::SpawnFailed { .. }
                | PoolEvent::BreakerTripped { .. }
                | PoolEvent::Hung { .. }
                | PoolEvent::ReloadFailed { .. } => say(format_args!("{e:?}")),
                _ if verbose => say(format_args!("{e:?}")),
                _ => {}
            }
            other(pool, &e);
        }
        if !announced && pool.workers().iter().all(|w| w.state == State::Ready) {
            announced = true;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
        }
        if STOP.swap(false, Ordering::SeqCst) {
            say(format_args!("stopping"));
            pool.stop(&mut events);
            continue;
        }
        // The console handler sets `STOP` without waking the loop: look at least
        // twice a second.
        pool.poll(&mut events, Some(Duration::from_millis(500)))?;
    }
}
