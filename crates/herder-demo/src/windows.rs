//! What the example servers share on Windows: the same functions as on Unix
//! ([`common`](crate::common) names whichever this platform has), without what Windows
//! lacks (signals, systemd, privilege separation).
pub use crate::flags::{Common, server, service};
pub use crate::logging::init_logging;
pub use crate::supervise::supervise;
use herder_pool::Pool;
use std::net::{SocketAddr, TcpListener};

/// The pool configuration both servers start from: the common flags'.
pub fn pool_config(c: &Common) -> anyhow::Result<herder_pool::Config> {
    Ok(crate::flags::pool_config(c))
}

pub use crate::inherited::inherited;

/// The listener: the one a supervisor upgrading to this one passed on, or else one
/// bound to `--listen`. Whether it was inherited, too.
pub fn listener(c: &Common) -> anyhow::Result<(TcpListener, bool)> {
    use anyhow::Context;
    if let Some((_, socket)) = inherited(|name| name == "http")?.pop() {
        let l = TcpListener::from(socket);
        crate::log!(2, "listener inherited from an upgrade: {}", l.local_addr()?);
        crate::flags::prepare_listener(c, &l)?;
        return Ok((l, true));
    }
    let l = herder_pool::tcp_listener(c.listen).with_context(|| format!("binding {}", c.listen))?;
    crate::flags::prepare_listener(c, &l)?;
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
    // An upgrade's new supervisor gets the listener too.
    pool.pass_on_upgrade("http", listener.try_clone()?.into());
    Ok((pool, listener, addr))
}

/// After binding: nothing on Windows, where workers run as the supervisor does
/// (there is no `--user`).
pub fn drop_privileges(
    _: &Common,
    _: &herder_pool::Config,
    _refuse: Option<&str>,
) -> anyhow::Result<()> {
    Ok(())
}
