//! The control socket on Unix: line-delimited JSON ([`Command`](crate::Command))
//! over a Unix socket (mode 0600, peer uid checked), served in the pool's loop.

use super::{Error, Interest, Key, Mode, Pool, PoolEvent, Source, TimerFor, Watch};
use crate::sys;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A control connection's buffers.
#[derive(Default)]
pub(super) struct ControlConn {
    /// The connection (the reactor watches a duplicate of it).
    pub(super) stream: Option<UnixStream>,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    /// End of file seen: close once the output is written.
    pub(super) eof: bool,
}

/// The most control connections at once.
pub(super) const MAX_CONTROL_CONNS: usize = 64;

/// The most unwritten response bytes per control connection.
pub(super) const MAX_CONTROL_OUTPUT: usize = 4 << 20;

/// Writes what the socket takes; `true` if the connection failed.
pub(super) fn flush_control(conn: &mut UnixStream, out: &mut Vec<u8>) -> bool {
    while !out.is_empty() {
        match conn.write(out) {
            Ok(0) => return true,
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}

impl Pool {
    /// Listens for control requests on a Unix socket at `path` (mode 0600; only
    /// processes of the user calling this, and root, are answered, even after the
    /// supervisor switches to another user). A stale socket file left by a dead supervisor
    /// is replaced; a live one is an error.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `AddrInUse` if another process listens there, or what binding
    /// returns.
    pub fn listen_control(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        use std::os::unix::fs::FileTypeExt;
        let path = path.as_ref();
        // Upgraded from a supervisor that listened there: go on with its socket.
        if let Some(listener) = crate::systemd::inherited_control(path) {
            self.watch_control(listener, path)?;
            if self.os.parent.is_some() {
                // Not ours to remove until the old supervisor handed over.
                self.os.inherited_control_path = self.os.control_path.take();
            }
            return Ok(());
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            let in_use = || Error::Io {
                what: "binding the control socket",
                source: io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "the path exists and is not a stale socket",
                ),
            };
            if !meta.file_type().is_socket() {
                return Err(in_use());
            }
            // Stale only if nobody listens: a refused connection says so.
            match UnixStream::connect(path) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(Error::io("removing a stale control socket"))?
                }
                _ => return Err(in_use()),
            }
        }
        let listener = UnixListener::bind(path).map_err(Error::io("binding the control socket"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io("restricting the control socket"))?;
        self.watch_control(listener, path)
    }

    /// The control socket's path, once [`listen_control`](Self::listen_control)
    /// succeeded.
    pub fn control_path(&self) -> Option<&Path> {
        self.os.control_path.as_deref()
    }

    pub(super) fn watch_control(
        &mut self,
        listener: UnixListener,
        path: &Path,
    ) -> Result<(), Error> {
        listener
            .set_nonblocking(true)
            .map_err(Error::io("binding the control socket"))?;
        let key = self
            .reactor
            .register(
                Source::ControlListener(listener),
                Interest::READABLE,
                Mode::Level,
            )
            .map_err(Error::io("watching the control socket"))?;
        self.watches.insert(key, Watch::ControlListener);
        self.os.control_path = Some(path.to_path_buf());
        // The user that made the socket file: the one that opened it, even for a
        // socket inherited from the supervisor before an upgrade.
        use std::os::unix::fs::MetadataExt;
        self.os.control_owner = std::fs::metadata(path).map_or(sys::geteuid(), |m| m.uid());
        Ok(())
    }

    pub(super) fn accept_control(&mut self, key: Key) {
        for _ in 0..16 {
            let accepted = match self.reactor.get(key) {
                Some(Source::ControlListener(l)) => l.accept(),
                _ => return,
            };
            let conn = match accepted {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // Out of descriptors, most likely: stop listening for a moment
                    // rather than spin on a level-triggered listener.
                    if self
                        .reactor
                        .modify(key, Interest::NONE, Mode::Level)
                        .is_ok()
                    {
                        let id = self
                            .reactor
                            .add_timer(Instant::now() + Duration::from_millis(100), None);
                        self.timers.insert(id, TimerFor::ControlRetry(key));
                    }
                    return;
                }
            };
            // Only processes of the user that opened the socket (or root) may control
            // the pool, and only a bounded number at once. Workers running as another
            // user (`worker_credentials`) are not answered.
            let owner = self.os.control_owner;
            let own =
                herder_fd::peer_credentials(&conn).is_ok_and(|c| c.uid == owner || c.uid == 0);
            if !own
                || self.os.control_conns.len() >= MAX_CONTROL_CONNS
                || conn.set_nonblocking(true).is_err()
            {
                continue;
            }
            let Ok(dup) = conn.try_clone() else { continue };
            if let Ok(k) =
                self.reactor
                    .register(Source::ControlConn(dup), Interest::READABLE, Mode::Level)
            {
                self.watches.insert(k, Watch::ControlConn);
                self.os.control_conns.insert(
                    k,
                    ControlConn {
                        stream: Some(conn),
                        input: Vec::new(),
                        output: Vec::new(),
                        eof: false,
                    },
                );
            }
        }
    }

    pub(super) fn serve_control(&mut self, key: Key, events: &mut Vec<PoolEvent>) {
        let Some(state) = self.os.control_conns.get_mut(&key) else {
            return;
        };
        let Some(mut conn) = state.stream.take() else {
            return;
        };
        let mut closed = flush_control(&mut conn, &mut state.output);
        let mut buf = [0u8; 4096];
        // Bounded reads per wake-up, and none while replies pile up unread.
        for _ in 0..16 {
            let Some(state) = self.os.control_conns.get_mut(&key) else {
                break;
            };
            if closed || state.eof || state.output.len() > MAX_CONTROL_OUTPUT / 2 {
                break;
            }
            match conn.read(&mut buf) {
                Ok(0) => state.eof = true,
                Ok(n) => state.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => closed = true,
            }
            // Handle complete lines as they arrive.
            while let Some(state) = self.os.control_conns.get_mut(&key) {
                let Some(end) = state.input.iter().position(|&b| b == b'\n') else {
                    if state.input.len() > crate::control::MAX_LINE {
                        state
                            .output
                            .extend_from_slice(&crate::control::error("request line too long"));
                        state.eof = true;
                        state.input.clear();
                    }
                    break;
                };
                let line: Vec<u8> = state.input.drain(..=end).collect();
                let reply = match crate::Command::parse(&line) {
                    Ok(cmd) => {
                        let reply = crate::control::execute(self, &cmd, events);
                        events.push(PoolEvent::Command(cmd));
                        reply
                    }
                    Err(msg) => crate::control::error(&msg),
                };
                if let Some(state) = self.os.control_conns.get_mut(&key) {
                    state.output.extend_from_slice(&reply);
                    if state.output.len() > MAX_CONTROL_OUTPUT {
                        // A client that asks and never reads.
                        closed = true;
                        break;
                    }
                }
            }
        }
        let Some(state) = self.os.control_conns.get_mut(&key) else {
            return;
        };
        closed |= flush_control(&mut conn, &mut state.output);
        closed |= state.eof && state.output.is_empty();
        if closed {
            self.watches.remove(&key);
            self.os.control_conns.remove(&key);
            let _ = self.reactor.deregister(key);
            return;
        }
        let interest = Interest {
            readable: !state.eof,
            writable: !state.output.is_empty(),
        };
        state.stream = Some(conn);
        let _ = self.reactor.modify(key, interest, Mode::Level);
    }
}
