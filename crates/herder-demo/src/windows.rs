//! What the example servers share on Windows: the command line, logging, the
//! supervisor's loop and the worker's.
pub use crate::flags::{Common, pool_config, server, service};
use crate::protocol::Protocol;
use herder_pool::{Pool, PoolEvent, State, is_drain_request};
use herder_reactor::Server;
use std::sync::Arc;
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
/// line once every worker is ready, and calls `tick` after every poll.
pub fn supervise(
    pool: &mut Pool,
    addr: std::net::SocketAddr,
    c: &Common,
    poll: Duration,
    mut tick: impl FnMut(&mut Pool),
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
                PoolEvent::Exited { .. }
                | PoolEvent::SpawnFailed { .. }
                | PoolEvent::BreakerTripped { .. }
                | PoolEvent::Hung { .. }
                | PoolEvent::ReloadFailed { .. } => say(format_args!("{e:?}")),
                _ if verbose => say(format_args!("{e:?}")),
                _ => {}
            }
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
        }
        tick(pool);
        pool.poll(&mut events, Some(poll))?;
    }
}

/// Waits on a thread of its own for the drain request (or the supervisor's end) on
/// `channel`, then sets the returned flag and wakes `server`'s loop.
pub fn watch_drain(mut channel: herder_fd::Channel, server: &Server<Protocol>) -> Arc<AtomicBool> {
    let drain = Arc::new(AtomicBool::new(false));
    let flag = drain.clone();
    let waker = server.waker();
    std::thread::spawn(move || {
        while let Ok(Some(message)) = channel.recv() {
            if is_drain_request(message.payload()) {
                break;
            }
        }
        flag.store(true, Ordering::SeqCst);
        let _ = waker.wake();
    });
    drain
}

/// Publishes a worker's load in its scoreboard record after each turn of its loop:
/// the heartbeat that tells the supervisor the worker is alive, and the counts for
/// `status`, least-loaded dispatch and load-aware accepting.
pub struct Load {
    card: Option<herder_pool::Scorecard>,
    /// Connections accepted as last published.
    accepted: u64,
}

impl Load {
    /// The worker's scorecard, if the supervisor gave it a record.
    pub fn new(worker: &mut herder_pool::Worker) -> Load {
        Load {
            card: worker.scorecard(),
            accepted: 0,
        }
    }

    /// The scorecard, for load-aware accepting.
    pub fn card(&self) -> Option<&herder_pool::Scorecard> {
        self.card.as_ref()
    }

    /// Publishes `server`'s counts.
    pub fn report(&mut self, server: &Server<Protocol>) {
        self.report_counts(server.stats().accepted, server);
    }

    /// Counts a turn in which the accept lock was held by another.
    pub fn lock_wait(&mut self) {
        if let Some(card) = &self.card {
            card.add_lock_waits(1);
        }
    }

    /// With `accepted` counted by the caller.
    pub fn report_counts(&mut self, accepted: u64, server: &Server<Protocol>) {
        let Some(card) = &self.card else {
            return;
        };
        // `active` first: a supervisor that sees the new count of connections taken
        // in sees the open count with it.
        card.set_active(server.stats().active as u64);
        card.add_accepted(accepted.saturating_sub(self.accepted));
        self.accepted = self.accepted.max(accepted);
    }
}
