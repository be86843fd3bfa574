//! What the example servers share on Windows: the same functions as on Unix
//! ([`common`](crate::common) names whichever this platform has), without what Windows
//! lacks (signals, systemd, privilege separation, the metrics endpoint).
pub use crate::flags::{Common, server, service};
pub use crate::logging::init_logging;
use herder_pool::{Pool, PoolEvent, State};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

unsafe extern "system" fn on_ctrl(_kind: u32) -> windows_sys::core::BOOL {
    STOP.store(true, Ordering::SeqCst);
    1
}

/// The pool configuration both servers start from: the common flags'.
pub fn pool_config(c: &Common) -> anyhow::Result<herder_pool::Config> {
    Ok(crate::flags::pool_config(c))
}

/// The listener bound to `--listen`, and whether it was inherited (never, here: there
/// is no socket activation on Windows).
pub fn listener(c: &Common) -> anyhow::Result<(TcpListener, bool)> {
    use anyhow::Context;
    let l = herder_pool::tcp_listener(c.listen).with_context(|| format!("binding {}", c.listen))?;
    Ok((l, false))
}

/// The supervisor of the hand-off model: its listener and the pool, with the control
/// pipe if asked for. Returns the pool, the listener and its address.
pub fn handoff_supervisor(c: &Common) -> anyhow::Result<(Pool, TcpListener, SocketAddr)> {
    let (listener, _) = listener(c)?;
    let addr = listener.local_addr()?;
    let mut pool = Pool::new(pool_config(c)?, Vec::new())?;
    if let Some(name) = &c.control {
        pool.listen_control(name)?;
    }
    Ok((pool, listener, addr))
}

/// Runs the supervisor until a graceful stop ends (Ctrl-C, Ctrl-Break, the control
/// pipe's `stop`, or `herder_pool::request_stop`): logs the pool's events, prints the
/// one `listening on` line once every initial worker is ready, and calls `other` for
/// each event (the caller's own included: a dispatcher's listener, its timers).
/// `extra_metrics` is for the metrics endpoint, which Windows does not have.
pub fn supervise(
    pool: &mut Pool,
    addr: SocketAddr,
    c: &Common,
    extra_metrics: &dyn Fn(&mut String),
    mut other: impl FnMut(&mut Pool, &PoolEvent),
) -> anyhow::Result<()> {
    let _ = extra_metrics;
    let verbose = c.log_level == "info" || c.log_level == "debug";
    // SAFETY: registers a handler that only stores to an atomic.
    unsafe { windows_sys::Win32::System::Console::SetConsoleCtrlHandler(Some(on_ctrl), 1) };
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
                | PoolEvent::ReloadFailed { .. } => log!(1, "{e:?}"),
                _ if verbose => log!(2, "{e:?}"),
                _ => {}
            }
            other(pool, &e);
        }
        if !announced
            && !pool.workers().is_empty()
            && pool.workers().iter().all(|w| w.state == State::Ready)
        {
            announced = true;
            // Whoever reads stdout may be gone: never a reason to stop serving.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
        }
        if STOP.swap(false, Ordering::SeqCst) {
            log!(2, "stopping");
            pool.stop(&mut events);
            continue;
        }
        // The console handler sets `STOP` without waking the loop: look at least
        // twice a second.
        pool.poll(&mut events, Some(Duration::from_millis(500)))?;
    }
}
