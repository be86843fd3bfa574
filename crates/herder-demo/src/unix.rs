//! What the example servers share: the command line, logging, and the supervisor's
//! main loop.
pub use crate::flags::{Common, server, service};
pub use crate::logging::init_logging;
pub use crate::metrics;
pub use crate::supervise::supervise;

use herder_pool::Pool;

/// The pool configuration both servers start from: the common flags' and the
/// workers' user.
pub fn pool_config(c: &Common) -> anyhow::Result<herder_pool::Config> {
    let mut config = crate::flags::pool_config(c);
    if let Some(user) = &c.user {
        use anyhow::Context;
        let who = herder_pool::Credentials::lookup(user, c.group.as_deref())
            .with_context(|| format!("--user {user}"))?;
        config.worker_credentials = Some(who);
    }
    Ok(config)
}

pub use crate::inherited::inherited;

/// The listener: the one systemd passed (socket activation, `LISTEN_FDS`), or else
/// one bound to `--listen`. Whether it came from systemd, too.
pub fn listener(c: &Common) -> anyhow::Result<(std::net::TcpListener, bool)> {
    use anyhow::Context;
    let mut activated = inherited(|name| name != metrics::NAME)?;
    let (l, inherited) = match activated.len() {
        0 => {
            let l = herder_pool::tcp_listener(c.listen)
                .with_context(|| format!("binding {}", c.listen))?;
            keep_in_systemd(&l);
            (l, false)
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
            (l, true)
        }
        n => anyhow::bail!("systemd passed {n} sockets; this server serves one"),
    };
    crate::flags::prepare_listener(c, &l)?;
    Ok((l, inherited))
}

/// The name of the listener in systemd's descriptor store.
pub const STORED_LISTENER: &str = "herder-listener";

/// Under systemd, hands a listener this process bound to systemd's descriptor store,
/// so that it outlives this supervisor: connections made while none runs wait in its
/// backlog for the next one (with `FileDescriptorStoreMax=` in the unit).
fn keep_in_systemd(l: &std::net::TcpListener) {
    use std::os::fd::AsFd;
    let stored = herder_pool::systemd::Notifier::from_env().and_then(|n| {
        n.map(|n| n.store_fds(STORED_LISTENER, &[l.as_fd()]))
            .transpose()
    });
    match stored {
        Ok(Some(())) => log!(2, "listener handed to systemd's descriptor store"),
        Ok(None) => {}
        Err(e) => log!(1, "systemd's descriptor store: {e}"),
    }
}

/// The supervisor of the hand-off model: its listener (inherited or bound), passed
/// on at an upgrade, and the pool with signals and control socket, privileges
/// dropped as asked. Returns the pool, the listener and its address.
pub fn handoff_supervisor(
    c: &Common,
) -> anyhow::Result<(Pool, std::net::TcpListener, std::net::SocketAddr)> {
    let (listener, _) = listener(c)?;
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
    Ok((pool, listener, addr))
}

/// After binding: with `--unprivileged-supervisor`, the supervisor switches to the
/// workers' user (`--user`) too. `refuse` says why it cannot, if it cannot.
pub fn drop_privileges(
    c: &Common,
    config: &herder_pool::Config,
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
