//! Model 1, descriptor hand-off: the supervisor accepts every connection and hands it
//! to one of N worker processes over its channel (`SCM_RIGHTS`); each worker serves
//! its connections on its own event loop.
//!
//! ```text
//! cargo run --release --example handoff_server -- --listen 127.0.0.1:8080 --protocol http
//! ```

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

#[cfg(windows)]
fn main() -> anyhow::Result<()> {
    windows::main()
}

#[cfg(not(any(unix, windows)))]
fn main() {
    eprintln!("handoff_server runs on Unix and Windows");
}

/// Windows: the supervisor accepts and hands each connection to the least-loaded
/// (or the next) ready worker, duplicated for its pid (`WSADuplicateSocketW`) and
/// acknowledged before the supervisor closes its copy. Ctrl-C, Ctrl-Break or
/// `herderctl stop` stops gracefully.
#[cfg(windows)]
mod windows {
    use anyhow::Context;
    use clap::Parser;
    use herder::fd::Handoff;
    use herder::pool::{Pool, Worker};
    use herder_demo::windows::{self as common, Common, say};
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[derive(Debug, Parser)]
    #[command(about = "Supervisor hands connections to workers (Windows)")]
    struct Args {
        #[command(flatten)]
        common: Common,
        /// How a connection's worker is chosen.
        #[arg(long, default_value = "least-loaded", value_parser = ["least-loaded", "round-robin"])]
        dispatch: String,
    }

    pub(crate) fn main() -> anyhow::Result<()> {
        let args = Args::parse();
        if let Some(worker) = Worker::from_env()? {
            return worker_main(worker, &args);
        }
        let (listener, addr) = common::listener(&args.common)?;
        listener.set_nonblocking(true)?;
        let mut listener = Some(listener);
        let mut pool = Pool::new(common::pool_config(&args.common), Vec::new())?;
        let mut dispatcher = Dispatcher {
            least_loaded: args.dispatch == "least-loaded",
            max: (args.common.max_connections > 0).then_some(args.common.max_connections as u64),
            next: 0,
            handed: HashMap::new(),
            shed: 0,
            shed_logged: None,
        };
        // The pool's loop wakes every 5 ms to accept: Windows has no pool-wide
        // readiness for a socket of the caller's yet.
        common::supervise(
            &mut pool,
            addr,
            &args.common,
            Duration::from_millis(5),
            |pool| {
                // Stopping: close the listener, so that new connections are refused
                // (or wait for whoever else holds the socket) instead of queueing
                // where nobody accepts.
                if pool.is_stopping() {
                    listener = None;
                    return;
                }
                let Some(listener) = &listener else {
                    return;
                };
                while let Ok((stream, peer)) = listener.accept() {
                    let _ = stream.set_nonblocking(false);
                    dispatcher.dispatch(pool, &stream, peer);
                }
            },
        )
    }

    struct Dispatcher {
        least_loaded: bool,
        /// `--max-connections`: a worker at this load gets no more.
        max: Option<u64>,
        /// Where round-robin goes next, and least-loaded's tie-break.
        next: usize,
        /// Connections handed to each worker, by pid: those beyond the count it last
        /// reported receiving are on their way, and count as its load.
        handed: HashMap<u32, u64>,
        /// Connections closed because every worker was full, and when that was last
        /// logged (at most once a second).
        shed: u64,
        shed_logged: Option<Instant>,
    }

    impl Dispatcher {
        /// Hands `stream` to a ready worker below its limit; closes it (by dropping)
        /// if there is none.
        fn dispatch(
            &mut self,
            pool: &mut Pool,
            stream: &std::net::TcpStream,
            peer: std::net::SocketAddr,
        ) {
            let n = pool.len().max(1);
            let start = self.next % n;
            let turn = |s: usize| (s + n - start) % n;
            // Open connections by the worker's last report, plus those on their way.
            let load = |s: usize| {
                pool.load(s).map(|l| {
                    let handed = self.handed.get(&l.pid).copied().unwrap_or(0);
                    l.active + handed.saturating_sub(l.accepted)
                })
            };
            let mut slots: Vec<usize> = (0..pool.len())
                .filter(|&s| load(s).is_some_and(|l| self.max.is_none_or(|m| l < m)))
                .collect();
            if self.least_loaded {
                slots.sort_by_key(|&s| (load(s), turn(s)));
            } else {
                slots.sort_by_key(|&s| turn(s));
            }
            let meta = Handoff {
                id: 0,
                peer: Some(peer),
                data: &[],
            };
            for slot in slots {
                if let Ok(pid) = pool.send_socket(slot, stream, &meta) {
                    self.next = slot + 1;
                    *self.handed.entry(pid).or_default() += 1;
                    if self.handed.len() > 4 * n {
                        // Forget the workers that are gone.
                        let live: Vec<u32> = (0..pool.len())
                            .filter_map(|s| Some(pool.load(s)?.pid))
                            .collect();
                        self.handed.retain(|pid, _| live.contains(pid));
                    }
                    return;
                }
            }
            let full = (0..pool.len()).any(|s| pool.load(s).is_some());
            self.shed += 1;
            if self
                .shed_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                self.shed_logged = Some(Instant::now());
                if full {
                    say(format_args!(
                        "every worker holds its maximum of connections: {} shed so far",
                        self.shed
                    ));
                } else {
                    say(format_args!(
                        "no ready worker for {peer}: {} closed so far",
                        self.shed
                    ));
                }
            }
        }
    }

    fn worker_main(mut worker: Worker, args: &Args) -> anyhow::Result<()> {
        let mut server = common::server(&args.common)?;
        let mut handoff = worker
            .take_handoff_channel()
            .context("no hand-off channel")?;
        worker.ready()?;
        let mut load = common::Load::new(&mut worker);
        let drain = common::watch_drain(worker.take_channel().context("no channel")?, &server);
        // Connections arrive on a thread of their own (each receipt acknowledges),
        // and join the event loop through a queue and its waker.
        let (tx, rx) = mpsc::channel();
        let waker = server.waker();
        std::thread::spawn(move || {
            while let Ok(Some(got)) = handoff.recv_socket() {
                let data = got.data.clone();
                if let Ok(stream) = got.into_tcp_stream() {
                    if tx.send((stream, data)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            }
        });
        let drain_timeout = Duration::from_secs(args.common.drain_timeout);
        let mut events = Vec::new();
        // What it reports as accepted: every connection it received, served or
        // refused (over `--max-connections`), so that the supervisor's count of those
        // on their way comes back to 0.
        let mut received = 0u64;
        loop {
            for (stream, data) in rx.try_iter() {
                received += 1;
                let svc = common::service(&args.common);
                if let Err(e) = server.add_connection(stream, svc, &data) {
                    say(format_args!("serving a handed-off connection: {e}"));
                }
            }
            if drain.load(Ordering::SeqCst) && !server.is_draining() {
                server.drain(Instant::now() + drain_timeout);
            }
            if server.is_draining() && server.is_empty() {
                break;
            }
            server.poll(&mut events, Some(Duration::from_millis(500)))?;
            events.clear();
            load.report_counts(received, &server);
        }
        say(format_args!(
            "worker exits: accepted {}, lock recovered 0",
            server.stats().accepted
        ));
        Ok(())
    }
}

#[cfg(unix)]
mod unix {
    use clap::Parser;
    use herder::pool::{Choice, Dispatcher, Worker, WorkerLink};
    use herder_demo::log;
    use herder_demo::unix::{self as common, Common};
    use std::cell::RefCell;
    use std::time::Duration;

    #[derive(Debug, Parser)]
    #[command(about = "herder's hand-off server: one process accepts, workers serve")]
    struct Args {
        #[command(flatten)]
        common: Common,
        /// How a connection's worker is chosen.
        #[arg(long, default_value = "least-loaded", value_parser = ["least-loaded", "round-robin"])]
        dispatch: String,
    }

    pub(crate) fn main() -> anyhow::Result<()> {
        let args = Args::parse();
        let _span = common::init_logging(&args.common);
        if let Some(mut worker) = Worker::from_env()? {
            // A worker: serve what the supervisor hands over until told to drain.
            let mut server = common::server(&args.common)?;
            let drain = Duration::from_secs(args.common.drain_timeout);
            let link = WorkerLink::ready(&mut worker, &mut server, drain)?;
            link.run(&mut server, |_peer| common::service(&args.common))?;
            return Ok(());
        }
        // The supervisor: accept, and hand each connection to a worker, keeping it
        // until the worker acknowledges it.
        let (mut pool, listener, addr) = common::handoff_supervisor(&args.common)?;
        let choice = match args.dispatch.as_str() {
            "round-robin" => Choice::RoundRobin,
            _ => Choice::LeastLoaded,
        };
        let mut dispatcher = Dispatcher::new(choice);
        let max = args.common.max_connections;
        dispatcher.set_max_connections((max > 0).then_some(max as u64));
        dispatcher.add_listener(&mut pool, listener)?;
        log!(
            2,
            "supervisor: dispatch {}, protocol {}",
            args.dispatch,
            args.common.protocol
        );
        let dispatcher = RefCell::new(dispatcher);
        common::supervise(
            &mut pool,
            addr,
            &args.common,
            &|out| handoff_metrics(&dispatcher.borrow().stats(), out),
            |pool, event| {
                dispatcher.borrow_mut().handle(pool, event);
            },
        )
    }

    fn handoff_metrics(stats: &herder::pool::DispatchStats, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP herder_handoffs_total Connections handed to a worker.\n\
             # TYPE herder_handoffs_total counter\n\
             herder_handoffs_total {}\n\
             # HELP herder_handoffs_shed_total Connections closed because every worker was full.\n\
             # TYPE herder_handoffs_shed_total counter\n\
             herder_handoffs_shed_total {}\n\
             # HELP herder_handoffs_refused_total Connections a worker could not take (its descriptor table was full), closed.\n\
             # TYPE herder_handoffs_refused_total counter\n\
             herder_handoffs_refused_total {}",
            stats.handed_off, stats.shed, stats.refused
        );
    }
}
