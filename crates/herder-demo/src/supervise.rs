//! The supervisor's loop of both example servers, on every platform.

use crate::flags::Common;
use crate::metrics;
use herder_pool::{Pool, PoolEvent, State};
use std::time::Duration;

/// Set by the console handler (Ctrl-C, Ctrl-Break): a graceful stop.
#[cfg(windows)]
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(windows)]
unsafe extern "system" fn on_ctrl(_kind: u32) -> windows_sys::core::BOOL {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    1
}

/// Runs the supervisor until a graceful stop ends (the operator's signals on Unix;
/// Ctrl-C, Ctrl-Break or `herder_pool::request_stop` on Windows; the control
/// socket's or pipe's `stop` on both): serves the metrics endpoint if asked
/// (`--metrics`, with `extra_metrics` after the pool's figures), prints the one
/// `listening on` line once every initial worker is ready, and calls `other` for the
/// caller's own events (a dispatcher's listener, its timers).
pub fn supervise(
    pool: &mut Pool,
    addr: std::net::SocketAddr,
    c: &Common,
    extra_metrics: &dyn Fn(&mut String),
    mut other: impl FnMut(&mut Pool, &PoolEvent),
) -> anyhow::Result<()> {
    #[cfg(windows)]
    // SAFETY: registers a handler that only stores to an atomic.
    unsafe {
        windows_sys::Win32::System::Console::SetConsoleCtrlHandler(Some(on_ctrl), 1)
    };
    let mut metrics = match c.metrics {
        Some(addr) => Some(metrics::Metrics::start(pool, addr)?),
        None => None,
    };
    let tally = std::cell::RefCell::new(metrics::Tally::default());
    let render = |pool: &Pool, out: &mut String| {
        metrics::render_pool(pool, &tally.borrow(), out);
        extra_metrics(out);
    };
    let mut events = Vec::new();
    pool.start(&mut events);
    let mut announced = false;
    loop {
        for e in events.drain(..) {
            if let Some(m) = metrics.as_mut() {
                if m.on_event(pool, &e, &render) {
                    continue;
                }
            }
            match &e {
                PoolEvent::Reloaded { .. } => tally.borrow_mut().reloads += 1,
                PoolEvent::UpgradeFailed { .. } => tally.borrow_mut().upgrades_failed += 1,
                // The pool logged it; a graceful stop ends here.
                PoolEvent::Stopped => return Ok(()),
                _ => {}
            }
            other(pool, &e);
        }
        if !announced
            && !pool.workers().is_empty()
            && pool.workers().iter().all(|w| w.state == State::Ready)
        {
            announced = true;
            // Whoever reads stdout may be gone (after an upgrade, say): never a reason
            // to stop serving.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
        }
        #[cfg(windows)]
        if STOP.swap(false, std::sync::atomic::Ordering::SeqCst) {
            crate::log!(2, "stopping");
            pool.stop(&mut events);
            continue;
        }
        // On Windows the console handler sets `STOP` without waking the loop: it is
        // looked at least twice a second.
        pool.poll(&mut events, Some(Duration::from_millis(500)))?;
    }
}
