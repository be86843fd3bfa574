//! `--metrics ADDR`: the supervisor's figures in Prometheus's text format, served over
//! HTTP from its own event loop (non-blocking, a few connections at a time).

use herder_pool::{Pool, PoolEvent, State};
use herder_reactor::{Event, Interest, Key, Mode};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The metrics listener's name among the descriptors an upgrade passes on.
pub const NAME: &str = "herder-metrics";

/// Scrapers served at once; more are closed at once.
const MAX_CONNS: usize = 16;
/// How long a scraper has to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(5);

/// Counters the supervisor keeps besides the pool's own.
#[derive(Debug, Default)]
pub struct Tally {
    /// Reloads the pool finished.
    pub reloads: u64,
    /// Binary upgrades that failed.
    pub upgrades_failed: u64,
}

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    until: Instant,
}

/// The metrics listener and its connections.
pub struct Metrics {
    listener: TcpListener,
    key: Key,
    conns: HashMap<Key, Conn>,
    /// The listener's pause after a failed accept (out of descriptors, say).
    retry: Option<herder_reactor::TimerId>,
}

impl Metrics {
    /// Binds `addr` (or takes the listener a supervisor upgrading to this one
    /// passed on), and watches it in the pool's loop.
    pub fn start(pool: &mut Pool, addr: SocketAddr) -> anyhow::Result<Metrics> {
        use anyhow::Context;
        let inherited = crate::inherited::inherited(|name| name == NAME)?.pop();
        let listener = match inherited {
            Some((_, fd)) => TcpListener::from(fd),
            None => TcpListener::bind(addr).with_context(|| format!("binding --metrics {addr}"))?,
        };
        listener.set_nonblocking(true)?;
        pool.pass_on_upgrade(NAME, listener.try_clone()?.into());
        let key = pool.add_source(
            Box::new(listener.try_clone()?),
            Interest::READABLE,
            Mode::Level,
        )?;
        crate::log!(2, "metrics on http://{}/metrics", listener.local_addr()?);
        Ok(Metrics {
            listener,
            key,
            conns: HashMap::new(),
            retry: None,
        })
    }

    /// Handles `event` if it is one of the metrics sockets'; `render` writes the
    /// figures. Returns whether it was.
    pub fn on_event(
        &mut self,
        pool: &mut Pool,
        event: &PoolEvent,
        render: &dyn Fn(&Pool, &mut String),
    ) -> bool {
        if let PoolEvent::Other(Event::Timer(id)) = event {
            if Some(*id) == self.retry {
                self.retry = None;
                let _ = pool.modify_source(self.key, Interest::READABLE, Mode::Level);
                return true;
            }
            return false;
        }
        let PoolEvent::Other(Event::Io { key, .. }) = event else {
            return false;
        };
        if *key == self.key {
            self.accept(pool);
            return true;
        }
        if !self.conns.contains_key(key) {
            return false;
        }
        self.serve(pool, *key, render);
        true
    }

    fn accept(&mut self, pool: &mut Pool) {
        self.expire(pool);
        for _ in 0..MAX_CONNS {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // Level-triggered, the listener would wake the loop at once again:
                    // look again in 100 ms instead of spinning.
                    if pool
                        .modify_source(self.key, Interest::NONE, Mode::Level)
                        .is_ok()
                    {
                        let at = Instant::now() + Duration::from_millis(100);
                        self.retry = Some(pool.add_timer(at, None));
                    }
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNS
                || stream.set_nonblocking(true).is_err()
                || private(&stream).is_err()
            {
                continue;
            }
            let Ok(watched) = stream.try_clone() else {
                continue;
            };
            let Ok(key) = pool.add_source(Box::new(watched), Interest::READABLE, Mode::Level)
            else {
                continue;
            };
            self.conns.insert(
                key,
                Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    until: Instant::now() + DEADLINE,
                },
            );
        }
    }

    /// Closes connections past their deadline.
    fn expire(&mut self, pool: &mut Pool) {
        let now = Instant::now();
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.until < now)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.close(pool, key);
        }
    }

    fn close(&mut self, pool: &mut Pool, key: Key) {
        self.conns.remove(&key);
        let _ = pool.remove_source(key);
    }

    fn serve(&mut self, pool: &mut Pool, key: Key, render: &dyn Fn(&Pool, &mut String)) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.output.is_empty() {
            let mut buf = [0u8; 1024];
            match c.stream.read(&mut buf) {
                Ok(0) => return self.close(pool, key),
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close(pool, key),
            }
            if c.input.len() > 8192 {
                return self.close(pool, key);
            }
            let Some(end) = c.input.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&c.input[..end]);
            let path = head.split(' ').nth(1).unwrap_or("");
            let (status, body) = if head.starts_with("GET ") && (path == "/metrics" || path == "/")
            {
                let mut body = String::new();
                render(pool, &mut body);
                ("200 OK", body)
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            c.output = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes();
            let _ = pool.modify_source(key, Interest::WRITABLE, Mode::Level);
        }
        match c.stream.write(&c.output[c.written..]) {
            Ok(n) => c.written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => return self.close(pool, key),
        }
        if c.written == c.output.len() {
            self.close(pool, key);
        }
    }
}

/// The pool's figures, and the supervisor's `tally`.
pub fn render_pool(pool: &Pool, tally: &Tally, out: &mut String) {
    let workers = pool.workers();
    let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let per_slot = |f: &dyn Fn(&herder_pool::WorkerInfo) -> u64| -> Vec<(String, u64)> {
        workers
            .iter()
            .map(|w| (format!("{{slot=\"{}\"}}", w.slot), f(w)))
            .collect()
    };
    let states = [
        ("starting", State::Starting),
        ("ready", State::Ready),
        ("backoff", State::Backoff),
        ("tripped", State::Tripped),
        ("fatal", State::Fatal),
        ("stopped", State::Stopped),
    ];
    let by_state: Vec<(String, u64)> = states
        .iter()
        .map(|(n, s)| {
            let count = workers.iter().filter(|w| w.state == *s).count() as u64;
            (format!("{{state=\"{n}\"}}"), count)
        })
        .collect();
    metric(
        "herder_workers",
        "gauge",
        "Worker slots by state.",
        &by_state,
    );
    metric(
        "herder_worker_accepted_total",
        "counter",
        "Connections the slot's current worker took.",
        &per_slot(&|w| w.accepted),
    );
    metric(
        "herder_worker_active_connections",
        "gauge",
        "Connections the slot's current worker has open.",
        &per_slot(&|w| w.active),
    );
    metric(
        "herder_worker_accept_lock_waits_total",
        "counter",
        "Times the slot's current worker wanted to accept but found the accept lock held.",
        &per_slot(&|w| w.lock_waits),
    );
    metric(
        "herder_worker_restarts_total",
        "counter",
        "Times the slot's worker was restarted after exiting.",
        &per_slot(&|w| w.restarts as u64),
    );
    metric(
        "herder_generation",
        "gauge",
        "The workers' generation: one more per rolling restart.",
        &[(String::new(), pool.generation())],
    );
    metric(
        "herder_reloads_total",
        "counter",
        "Rolling restarts finished.",
        &[(String::new(), tally.reloads)],
    );
    metric(
        "herder_upgrades_failed_total",
        "counter",
        "Binary upgrades abandoned.",
        &[(String::new(), tally.upgrades_failed)],
    );
    moves(pool, &mut metric);
}

/// The live connections retiring workers moved to others.
fn moves(pool: &Pool, metric: &mut impl FnMut(&str, &str, &str, &[(String, u64)])) {
    let moves = pool.move_stats();
    metric(
        "herder_connections_moved_total",
        "counter",
        "Live connections a retiring worker moved to another worker (reload, recycle, scale-down, upgrade).",
        &[(String::new(), moves.moved)],
    );
    metric(
        "herder_connections_move_kept_total",
        "counter",
        "Live connections that found no taker and were finished by the worker they were in.",
        &[(String::new(), moves.kept)],
    );
}

/// A scraper's connection is the supervisor's alone: on Unix `accept4` makes it
/// close-on-exec; on Windows an accepted socket may be inheritable, and a worker
/// started while it is open would keep it open.
#[cfg(unix)]
fn private(_: &TcpStream) -> std::io::Result<()> {
    Ok(())
}

#[cfg(windows)]
fn private(stream: &TcpStream) -> std::io::Result<()> {
    herder_reactor::os::windows::no_inherit(stream)
}
