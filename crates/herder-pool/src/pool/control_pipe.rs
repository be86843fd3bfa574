//! The control pipe on Windows: a named pipe, served by threads that block on it and
//! hand each request to the pool's loop (the JSON lines of the Unix control socket).

use super::windows::{Report, Reporter};
use super::{Pool, PoolEvent};
use crate::Error;
use std::io;
use std::os::windows::io::OwnedHandle;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a control client waits for the pool to carry out its request.
const CONTROL_WAIT: Duration = Duration::from_secs(30);

impl Pool {
    /// Answers control requests on the named pipe `name` (`\\.\pipe\NAME`, or a
    /// full `\\.\pipe\…` path): the JSON lines of the Unix control socket
    /// ([`Command`](crate::Command)), carried out during [`poll`](Self::poll) and
    /// reported as [`PoolEvent::Command`]. Only the current user, SYSTEM and the
    /// administrators may open the pipe, and only from this machine.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the pipe exists already (another server uses the name) or
    /// cannot be made.
    pub fn listen_control(&mut self, name: impl AsRef<std::path::Path>) -> Result<(), Error> {
        let io = |what: &'static str| move |source| Error::Io { what, source };
        let path = control_pipe_path(&name.as_ref().to_string_lossy());
        // `FILE_FLAG_FIRST_PIPE_INSTANCE` refuses a name in use on Windows, not on
        // every implementation of it (Wine): ask first as well.
        if crate::sys::pipe_exists(&path) && self.os.ready_owed {
            // Started by an upgrade: the supervisor being replaced answers there
            // until it hands over; the pipe is this one's once it has closed it.
            self.os.control_pending = Some(path);
            if self.os.control_retry.is_none() {
                let every = std::time::Duration::from_millis(50);
                let timer = self.reactor.add_timer(Instant::now() + every, Some(every));
                self.os.control_retry = Some(timer);
            }
            return Ok(());
        }
        if crate::sys::pipe_exists(&path) {
            return Err(Error::Io {
                what: "creating the control pipe",
                source: io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{path} exists: another server uses the name"),
                ),
            });
        }
        let security = crate::sys::owner_only().map_err(io("securing the control pipe"))?;
        let first = crate::sys::create_pipe(&path, true, &security)
            .map_err(io("creating the control pipe"))?;
        let reporter = self.os.reporter.clone();
        let thread_path = path.clone();
        let closed = self.os.control_closed.clone();
        std::thread::spawn(move || {
            control_thread(&thread_path, first, &security, &reporter, &closed);
        });
        self.os.control_path = Some(path);
        self.os.control_pending = None;
        if let Some(timer) = self.os.control_retry.take() {
            self.reactor.cancel_timer(timer);
        }
        Ok(())
    }

    /// Opens the control pipe an upgrade's supervisor could not open yet, once the
    /// supervisor it replaces has handed over and closed it.
    pub(super) fn retry_control(&mut self) {
        let Some(path) = self.os.control_pending.clone() else {
            return;
        };
        if !self.os.ready_owed && !crate::sys::pipe_exists(&path) {
            if let Err(e) = self.listen_control(&path) {
                tracing::warn!(%e, path, "opening the control pipe after the upgrade");
            }
        }
    }

    /// Stops answering on the control pipe: its thread ends, the name is free.
    pub(super) fn close_control(&mut self) {
        self.os.control_closed.store(true, Ordering::SeqCst);
        if let Some(path) = self.os.control_path.take() {
            // The thread waits for a client: be one. Its one waiting instance may be
            // taken by a client at this moment (`ERROR_PIPE_BUSY`): try again, a
            // little while.
            for _ in 0..50 {
                let woke = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path);
                match woke {
                    Err(e) if e.raw_os_error() == Some(231) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }

    /// The control pipe's path, once [`listen_control`](Self::listen_control)
    /// succeeded.
    pub fn control_path(&self) -> Option<&Path> {
        self.os.control_path.as_deref().map(Path::new)
    }

    /// Carries out what a control pipe's thread reported.
    pub(super) fn on_report(&mut self, report: Report, events: &mut Vec<PoolEvent>) {
        match report {
            Report::Control { line, reply, asked } => {
                // Its client was told there is no answer: carrying it out now would
                // surprise whoever sent it.
                if asked.elapsed() >= CONTROL_WAIT {
                    return;
                }
                let answer = match crate::Command::parse(&line) {
                    Ok(cmd) => {
                        let answer = crate::control::execute(self, &cmd, events);
                        events.push(PoolEvent::Command(cmd));
                        answer
                    }
                    Err(msg) => crate::control::error(&msg),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// Serves the control pipe: waits for a client on an instance, makes the next
/// instance at once (so a second client need not wait), and answers each client on a
/// thread of its own (16 at most; more are closed unanswered).
fn control_thread(
    path: &str,
    first: OwnedHandle,
    security: &crate::sys::SecurityDescriptor,
    reporter: &Reporter,
    closed: &AtomicBool,
) {
    let busy = Arc::new(AtomicUsize::new(0));
    let mut pipe = first;
    loop {
        let connected = crate::sys::connect_pipe(&pipe);
        if closed.load(Ordering::SeqCst) {
            // The pool is gone (and its wake-up connection is this one).
            return;
        }
        let next = loop {
            match crate::sys::create_pipe(path, false, security) {
                Ok(next) => break next,
                Err(_) if closed.load(Ordering::SeqCst) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let conn = std::mem::replace(&mut pipe, next);
        if connected.is_err() || busy.load(Ordering::SeqCst) >= 16 {
            continue;
        }
        busy.fetch_add(1, Ordering::SeqCst);
        let (reporter, busy) = (reporter.clone(), busy.clone());
        std::thread::spawn(move || {
            serve_control(std::fs::File::from(conn), &reporter);
            busy.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Reads one request line from a control client, has the pool carry it out, and
/// writes the answer.
fn serve_control(mut conn: std::fs::File, reporter: &Reporter) {
    use std::io::{Read, Write};
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => line.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            let (reply, answer) = mpsc::channel();
            let asked = Instant::now();
            if !reporter.send(Report::Control { line, reply, asked }) {
                return;
            }
            break answer
                .recv_timeout(CONTROL_WAIT)
                .unwrap_or_else(|_| crate::control::error("the supervisor did not answer"));
        }
        if line.len() > crate::control::MAX_LINE {
            break crate::control::error("request line too long");
        }
    };
    // Flushing waits for the client to read the answer; closing then cannot lose it.
    let _ = conn.write_all(&answer).and_then(|()| conn.sync_all());
}

/// The full path of control pipe `name`: `\\.\pipe\NAME`, unless `name` is a
/// path already.
pub fn control_pipe_path(name: &str) -> String {
    if name.starts_with(r"\\") {
        name.to_string()
    } else {
        format!(r"\\.\pipe\{name}")
    }
}
