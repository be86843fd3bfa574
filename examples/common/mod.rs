//! What the example servers share: the command line, logging, and the supervisor's
//! main loop.
#![allow(dead_code, missing_docs)]

mod flags;
pub(crate) mod metrics;

#[allow(unused_imports)]
pub(crate) use flags::{Common, server, service};

use herder::fd::{Channel, Message};
use herder::pool::{Pool, PoolEvent, Scorecard, Worker};
use herder::protocol::Protocol;
use herder::reactor::{Event, Interest, Key, Mode, Server, Signal, TimerId};
use std::time::Duration;

/// Installs the `tracing` subscriber: to stderr, at `level`, as text or JSON lines.
/// Everything this process logs, the crates' lines included, carries its pid.
/// Returns the guard of the process's span; keep it for the life of `main`.
pub(crate) fn init_logging(c: &Common) -> tracing::span::EnteredSpan {
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
    let role = if std::env::var_os(herder::pool::WORKER_ENV).is_some() {
        "worker"
    } else {
        "supervisor"
    };
    tracing::info_span!("herder", pid = std::process::id(), role).entered()
}

/// Logs through `tracing`: 0 error, 1 warn, 2 info, 3 debug.
#[macro_export]
macro_rules! log {
    (0, $($arg:tt)*) => { tracing::error!($($arg)*) };
    (1, $($arg:tt)*) => { tracing::warn!($($arg)*) };
    (2, $($arg:tt)*) => { tracing::info!($($arg)*) };
    (3, $($arg:tt)*) => { tracing::debug!($($arg)*) };
}

/// The pool configuration both servers start from: the common flags' and the
/// workers' user.
pub(crate) fn pool_config(c: &Common) -> anyhow::Result<herder::pool::Config> {
    let mut config = flags::pool_config(c);
    if let Some(user) = &c.user {
        use anyhow::Context;
        let who = herder::pool::Credentials::lookup(user, c.group.as_deref())
            .with_context(|| format!("--user {user}"))?;
        config.worker_credentials = Some(who);
    }
    Ok(config)
}

/// The inherited sockets (systemd's, or an upgraded supervisor's), adopted once.
static INHERITED: std::sync::Mutex<Option<Vec<(String, std::os::fd::OwnedFd)>>> =
    std::sync::Mutex::new(None);

/// Takes the inherited sockets whose name `wanted` accepts.
pub(crate) fn inherited(
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<(String, std::os::fd::OwnedFd)>> {
    use anyhow::Context;
    let mut all = INHERITED
        .lock()
        .map_err(|_| anyhow::anyhow!("inherited sockets: poisoned"))?;
    if all.is_none() {
        *all = Some(herder::pool::systemd::listen_fds().context("socket activation")?);
    }
    let all = all.get_or_insert_with(Vec::new);
    let (taken, rest) = std::mem::take(all)
        .into_iter()
        .partition(|(name, _)| wanted(name));
    *all = rest;
    Ok(taken)
}

/// The listener: the one systemd passed (socket activation, `LISTEN_FDS`), or else
/// one bound to `--listen`. Whether it came from systemd, too.
pub(crate) fn listener(c: &Common) -> anyhow::Result<(std::net::TcpListener, bool)> {
    use anyhow::Context;
    let mut activated = inherited(|name| name != metrics::NAME)?;
    match activated.len() {
        0 => {
            let l = std::net::TcpListener::bind(c.listen)
                .with_context(|| format!("binding {}", c.listen))?;
            keep_in_systemd(&l);
            Ok((l, false))
        }
        1 => {
            let (name, fd) = activated.remove(0);
            let l = std::net::TcpListener::from(fd);
            let addr = l
                .local_addr()
                .with_context(|| format!("the socket systemd passed ({name}) is not TCP"))?;
            log!(
                2,
                "socket {name:?} inherited (from systemd or an upgrade): {addr}"
            );
            Ok((l, true))
        }
        n => anyhow::bail!("systemd passed {n} sockets; this server serves one"),
    }
}

/// The name of the listener in systemd's descriptor store.
pub(crate) const STORED_LISTENER: &str = "herder-listener";

/// Under systemd, hands a listener this process bound to systemd's descriptor store,
/// so that it outlives this supervisor: connections made while none runs wait in its
/// backlog for the next one (with `FileDescriptorStoreMax=` in the unit).
fn keep_in_systemd(l: &std::net::TcpListener) {
    use std::os::fd::AsFd;
    let stored = herder::pool::systemd::Notifier::from_env().and_then(|n| {
        n.map(|n| n.store_fds(STORED_LISTENER, &[l.as_fd()]))
            .transpose()
    });
    match stored {
        Ok(Some(())) => log!(2, "listener handed to systemd's descriptor store"),
        Ok(None) => {}
        Err(e) => log!(1, "systemd's descriptor store: {e}"),
    }
}

/// The supervisor of the hand-off model: its listener (inherited or bound,
/// non-blocking) watched in the pool's loop and passed on at an upgrade, the pool
/// with signals and control socket, and privileges dropped as asked. Returns the
/// pool, the listener, its key and its address.
pub(crate) fn handoff_supervisor(
    c: &Common,
) -> anyhow::Result<(Pool, std::net::TcpListener, Key, std::net::SocketAddr)> {
    let (listener, _) = listener(c)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let config = pool_config(c)?;
    let mut pool = Pool::new(config.clone(), Vec::new())?;
    pool.handle_signals()?;
    if let Some(path) = &c.control {
        pool.listen_control(path)?;
    }
    drop_privileges(c, &config, None)?;
    // An upgrade's new supervisor gets the listener too.
    pool.pass_on_upgrade("http", std::os::fd::OwnedFd::from(listener.try_clone()?));
    let key = pool.add_source(
        Box::new(listener.try_clone()?),
        Interest::READABLE,
        Mode::Level,
    )?;
    Ok((pool, listener, key, addr))
}

/// After binding: with `--unprivileged-supervisor`, the supervisor switches to the
/// workers' user (`--user`) too. `refuse` says why it cannot, if it cannot.
pub(crate) fn drop_privileges(
    c: &Common,
    config: &herder::pool::Config,
    refuse: Option<&str>,
) -> anyhow::Result<()> {
    let Some(who) = config.worker_credentials else {
        return Ok(());
    };
    if !c.unprivileged_supervisor {
        log!(2, "workers run as uid {} gid {}", who.uid, who.gid);
        return Ok(());
    }
    if let Some(why) = refuse {
        anyhow::bail!("--unprivileged-supervisor: {why}");
    }
    use anyhow::Context;
    who.apply().context("switching the supervisor to --user")?;
    log!(
        2,
        "supervisor and workers run as uid {} gid {}",
        who.uid,
        who.gid
    );
    Ok(())
}

/// Runs the supervisor until a graceful stop ends: logs the pool's events, prints the
/// one `listening on` line once every initial worker is ready, and calls `other` for
/// the caller's own events.
pub(crate) fn supervise(
    pool: &mut Pool,
    addr: std::net::SocketAddr,
    c: &Common,
    extra_metrics: &dyn Fn(&mut String),
    mut other: impl FnMut(&mut Pool, &PoolEvent),
) -> anyhow::Result<()> {
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
            && pool
                .workers()
                .iter()
                .all(|w| w.state == herder::pool::State::Ready)
        {
            announced = true;
            // Whoever reads stdout may be gone (after an upgrade, say): never a reason
            // to stop serving.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
        }
        pool.poll(&mut events, Some(Duration::from_millis(500)))?;
    }
}

/// A worker's side of its supervisor: the channel in the event loop, drain requests,
/// `SIGTERM`/`SIGINT` (which a terminal's Ctrl-C or systemd send to the whole group),
/// the heartbeat and the load figures.
pub(crate) struct Link {
    pub(crate) channel: Channel,
    key: Key,
    card: Option<Scorecard>,
    tick: TimerId,
    drain_timeout: Duration,
    reported: u64,
    /// Ids of hand-offs whose descriptors never arrived (this process's descriptor
    /// table was full), not yet reported to the supervisor.
    lost: Vec<u64>,
    /// When a lost hand-off was last logged (at most once a second).
    lost_logged: Option<std::time::Instant>,
}

impl Link {
    /// Sets the link up in `server` and tells the supervisor the worker is ready:
    /// call it last, once the worker can serve.
    pub(crate) fn ready(
        worker: &mut Worker,
        server: &mut Server<Protocol>,
        c: &Common,
    ) -> anyhow::Result<Link> {
        use anyhow::Context;
        use std::os::fd::AsFd;
        let mut channel = worker.take_channel().context("no channel")?;
        channel.set_nonblocking(true)?;
        let key = server.add_source(
            Box::new(channel.as_fd().try_clone_to_owned()?),
            Interest::READABLE,
            Mode::Level,
        )?;
        server.watch_signals(&[Signal::Terminate, Signal::Interrupt])?;
        let tick = server.add_timer(std::time::Instant::now(), Some(Duration::from_secs(1)));
        herder::pool::send_ready(&mut channel)?;
        log!(3, "worker ready in slot {}", worker.slot());
        Ok(Link {
            channel,
            key,
            card: worker.scorecard(),
            tick,
            drain_timeout: Duration::from_secs(c.drain_timeout),
            reported: 0,
            lost: Vec::new(),
            lost_logged: None,
        })
    }

    /// Handles `event` if it is the link's; the supervisor's messages other than a
    /// drain request go to `on_message`. Returns whether the event was the link's.
    pub(crate) fn handle(
        &mut self,
        server: &mut Server<Protocol>,
        event: &Event,
        mut on_message: impl FnMut(&mut Server<Protocol>, Message),
    ) -> anyhow::Result<bool> {
        let deadline = std::time::Instant::now() + self.drain_timeout;
        match event {
            Event::Io { key, .. } if *key == self.key => loop {
                // `recv_lossy`: at this process's descriptor limit the kernel drops the
                // descriptors of a hand-off, and the supervisor, which keeps its copies
                // until told, must hear which ones rather than wait forever; `recv`
                // would only report an error (and the worker die of it).
                match self.channel.recv_lossy() {
                    Ok(Some(m)) if m.lost_fds() > 0 => self.lost_message(&m),
                    Ok(Some(m)) if herder::pool::is_drain_request(m.payload()) => {
                        log!(3, "draining");
                        server.drain(deadline);
                    }
                    Ok(Some(m)) => on_message(server, m),
                    Ok(None) => {
                        // The supervisor is gone: finish what is open, then go.
                        server.drain(deadline);
                        let _ = server.remove_source(self.key);
                        return Ok(true);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e.into()),
                }
            },
            Event::Signal(_) => server.drain(deadline),
            Event::Timer(t) if *t == self.tick => {
                if let Some(card) = &self.card {
                    card.heartbeat();
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Notes the hand-offs of a message that lost its descriptors, for
    /// [`take_lost`](Link::take_lost). A message that is no hand-off has nobody
    /// waiting for an answer: it is only logged.
    fn lost_message(&mut self, m: &Message) {
        let ids = m.handoff_ids().unwrap_or_default();
        if self
            .lost_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.lost_logged = Some(std::time::Instant::now());
            log!(
                1,
                "out of descriptors: {} received descriptor(s) dropped by the kernel ({} hand-off(s) refused)",
                m.lost_fds(),
                ids.len()
            );
        }
        self.lost.extend(ids);
    }

    /// The ids of the hand-offs that arrived without their descriptors since the
    /// last call: the worker refuses them, so that the supervisor closes its copies.
    pub(crate) fn take_lost(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.lost)
    }

    /// After every poll: the figures status, dispatch and scaling read.
    pub(crate) fn report(&mut self, server: &Server<Protocol>) {
        if let Some(card) = &self.card {
            let stats = server.stats();
            card.add_accepted(stats.accepted - self.reported);
            self.reported = stats.accepted;
            card.set_active(stats.active as u64);
        }
    }
}
