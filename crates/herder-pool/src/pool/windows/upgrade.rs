//! The Windows side of a binary upgrade and of moving connections between the two
//! supervisors: the new supervisor started with a token, connecting back to the old
//! one's rendezvous and receiving the listeners; its `HELLO` and `READY`; the
//! connection that carries moving connections both ways afterwards.

use super::super::{Error, Interest, Listener, Mode, Pool, PoolEvent, Source, Watch};
use super::{Process, UpgradeOs, channel_with};
use herder_fd::Channel;
use herder_reactor::Key;
use std::io;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

impl Pool {
    /// Watches `channel` (a handle of the pool's own on its socket) as `watch`.
    pub(in crate::pool) fn watch_conn(
        &mut self,
        channel: &Channel,
        watch: Watch,
    ) -> io::Result<Key> {
        let socket = channel
            .socket()
            .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?
            .try_clone_to_owned()?;
        let key = self.reactor.register(
            Source::Conn(std::net::TcpStream::from(socket)),
            Interest::READABLE,
            Mode::Level,
        )?;
        self.watches.insert(key, watch);
        Ok(key)
    }

    /// Watches the channels of moving connections between the supervisors for room
    /// to write while part of a message waits there.
    pub(in crate::pool) fn watch_moves_output(&mut self) {
        let channels = [
            self.os
                .upstream
                .as_ref()
                .map(|(c, k)| (c.has_pending_output(), *k)),
            self.os
                .downstream
                .as_ref()
                .map(|d| (d.channel.has_pending_output(), d.key)),
        ];
        for (pending, key) in channels.into_iter().flatten() {
            let interest = match pending {
                true => Interest::BOTH,
                false => Interest::READABLE,
            };
            let _ = self.reactor.modify(key, interest, Mode::Level);
        }
    }

    /// Writes what waits on the channels of moving connections.
    pub(in crate::pool) fn flush_moves(&mut self) {
        if let Some((c, _)) = self.os.upstream.as_mut() {
            let _ = c.flush();
        }
        if let Some(d) = self.os.downstream.as_mut() {
            let _ = d.channel.flush();
        }
        self.watch_moves_output();
    }

    /// Starts the new supervisor: this program, told in its environment where to
    /// connect, the token to present and the names of the sockets it gets there.
    pub(in crate::pool) fn start_upgrade(
        &mut self,
    ) -> Result<super::super::upgrade::Upgrade, Error> {
        let program = self.upgrade_program()?;
        let token = crate::sys::token();
        let names: Vec<&str> = self
            .listeners
            .iter()
            .chain(&self.os.upgrade_fds)
            .map(|(n, _)| n.as_str())
            .collect();
        let child = Command::new(program)
            .args(std::env::args_os().skip(1))
            .env(
                UPGRADE_ENV,
                format!("{} {token} {}", self.os.rendezvous.1, names.join(":")),
            )
            .stdin(Stdio::null())
            .spawn()
            .map_err(Error::io("starting the new program"))?;
        let pid = child.id();
        let process = Process {
            child,
            token: String::new(),
            handoff: None,
            ready_pending: false,
            supervisor: true,
        };
        let os = UpgradeOs {
            token,
            channel: None,
            hello: false,
        };
        Ok(self.watch_upgrade(pid, process, None, os))
    }

    /// The new supervisor's connection presented `token`: hands it the listeners,
    /// and watches for its word that it is ready.
    pub(in crate::pool) fn adopt_upgrade(&mut self, key: Key, token: &[u8]) -> bool {
        let Some(u) = self.os.upgrade.as_mut() else {
            return false;
        };
        if u.os.channel.is_some() || u.os.token.is_empty() || u.os.token.as_bytes() != token {
            return false;
        }
        let pid = u.pid;
        let sockets = self.listeners.iter().chain(&self.os.upgrade_fds);
        let sent = channel_with(&self.reactor, key, pid, sockets);
        let Some(u) = self.os.upgrade.as_mut() else {
            return false;
        };
        match sent {
            None => false,
            Some(Err(e)) => {
                u.process.kill();
                u.failed = Some(format!("handing the listeners to the new supervisor: {e}"));
                false
            }
            Some(Ok(channel)) => {
                // What the socket did not take at once goes when it has room.
                if channel.has_pending_output() {
                    let _ = self.reactor.modify(key, Interest::BOTH, Mode::Level);
                }
                u.os.token.clear();
                u.os.channel = Some(channel);
                u.key = Some(key);
                self.watches.insert(key, Watch::UpgradeReady);
                true
            }
        }
    }

    /// The new supervisor's connection has something: its word that it is ready,
    /// or its end.
    pub(in crate::pool) fn on_upgrade_ready(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(u) = self.os.upgrade.as_mut() else {
            return;
        };
        let Some(channel) = u.os.channel.as_mut() else {
            return;
        };
        // The rest of the listeners, if the socket had no room for all at once.
        if channel.has_pending_output() {
            let flushed = channel.flush();
            if let (Ok(()), Some(key)) = (flushed, u.key) {
                let _ = self.reactor.modify(key, Interest::READABLE, Mode::Level);
            }
        }
        let mut ready = false;
        let mut ended = false;
        // Bounded: whatever else arrives waits for the next wake-up.
        for _ in 0..16 {
            match channel.recv() {
                Ok(Some(m)) => {
                    ready |= m.payload() == crate::message::READY;
                    u.os.hello |= m.payload() == crate::message::HELLO;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Its end: its exit follows, and the periodic check reports it.
                Ok(None) | Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        if ready && u.failed.is_none() {
            self.end_upgrade(Ok(()), events);
        } else if ended {
            if let Some(key) = u.key.take() {
                u.os.channel = None;
                self.forget_watch(key);
            }
        }
    }

    /// The new supervisor is ready: it answers on the control pipe from now on, and
    /// takes this pool's workers' live connections if it said it would.
    pub(in crate::pool) fn hand_over(&mut self, u: super::super::upgrade::Upgrade) {
        self.close_control();
        let Some(channel) = u.os.channel.filter(|_| u.os.hello) else {
            tracing::info!("the new supervisor does not take live connections; the workers drain");
            return;
        };
        match self.watch_conn(&channel, Watch::Downstream) {
            Ok(key) => {
                self.os.downstream = Some(super::super::moving::Downstream {
                    channel,
                    key,
                    pid: u.pid,
                })
            }
            Err(e) => tracing::warn!(error = %e, "cannot move connections to the new supervisor"),
        }
    }

    /// A failed upgrade's leftovers: none on Windows.
    pub(in crate::pool) fn drop_upgrade(&mut self, _: super::super::upgrade::Upgrade) {}
}

/// The variable that tells a supervisor started by an upgrade where to connect:
/// `ADDR TOKEN NAMES`, as a worker's channel variable.
pub(super) const UPGRADE_ENV: &str = "HERDER_UPGRADE";

/// The connection to the supervisor being upgraded, once [`upgrade_sockets`] made it.
static PARENT: std::sync::Mutex<Option<Channel>> = std::sync::Mutex::new(None);
/// Whether the sockets were taken already.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Connects to the supervisor being upgraded, if this process was started by one,
/// and receives the sockets it passes on.
fn connect_parent() -> Result<Option<(Channel, Vec<(String, Listener)>)>, Error> {
    let Ok(spec) = std::env::var(UPGRADE_ENV) else {
        return Ok(None);
    };
    let (channel, sockets, _) = crate::worker::connect(&spec, UPGRADE_ENV, "/u", 0)?;
    Ok(Some((channel, sockets)))
}

/// The sockets a supervisor being upgraded passes to this one (once; empty if this
/// process was not started by an upgrade). See [`crate::inherited_sockets`].
pub(crate) fn upgrade_sockets() -> Result<Vec<(String, super::super::Descriptor)>, Error> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let Some((channel, sockets)) = connect_parent()? else {
        return Ok(Vec::new());
    };
    if let Ok(mut parent) = PARENT.lock() {
        *parent = Some(channel);
    }
    Ok(sockets.into_iter().map(|(n, l)| (n, l.into())).collect())
}

/// The connection to the supervisor being upgraded, for the pool to report ready
/// on: the one [`upgrade_sockets`] made, or a new one (whose sockets go unused).
pub(super) fn parent_channel() -> Result<Option<Channel>, Error> {
    if let Some(channel) = PARENT.lock().ok().and_then(|mut p| p.take()) {
        return Ok(Some(channel));
    }
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    Ok(connect_parent()?.map(|(channel, _)| channel))
}
