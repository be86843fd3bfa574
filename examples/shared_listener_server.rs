//! Model 2, the shared listener: N worker processes inherit one listening socket and
//! accept for themselves, with the strategy chosen by `--accept`.
//!
//! ```text
//! cargo run --release --example shared_listener_server -- --listen 127.0.0.1:8080 --protocol http
//! ```

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

#[cfg(windows)]
fn main() -> anyhow::Result<()> {
    windows::main()
}

/// Windows: the workers get the listener duplicated for them (`WSADuplicateSocketW`)
/// and take turns with a named mutex (`--accept mutex`) or all poll it (`none`).
/// Ctrl-C or Ctrl-Break stops gracefully. See `docs/platforms.md` for what Windows
/// lacks here.
#[cfg(windows)]
mod windows {
    use clap::Parser;
    use herder::pool::{Pool, SharedListener, Sharing, Worker, WorkerLink};
    use herder_demo::windows::{self as common, Common, say};
    use std::time::Duration;

    #[derive(Debug, Parser)]
    #[command(about = "Workers sharing one listener (Windows)")]
    struct Args {
        #[command(flatten)]
        common: Common,
        /// `mutex`: the workers take turns with a named mutex; `none`: all poll.
        #[arg(long, default_value = "mutex", value_parser = ["mutex", "none"])]
        accept: String,
    }

    pub(crate) fn main() -> anyhow::Result<()> {
        let args = Args::parse();
        let _span = common::init_logging(&args.common);
        if let Some(worker) = Worker::from_env()? {
            return worker_main(worker, &args);
        }
        let (listener, addr) = common::listener(&args.common)?;
        let mut config = common::pool_config(&args.common);
        config.accept_lock = args.accept == "mutex";
        let mut pool = Pool::new(config, vec![("http".into(), listener)])?;
        common::supervise(&mut pool, addr, &args.common, |_, _| {})
    }

    fn worker_main(mut worker: Worker, args: &Args) -> anyhow::Result<()> {
        // The pool's named mutex, if it has one (none for `--accept none`), and
        // load-aware accepting through the scoreboard, as on Unix.
        let mut server = common::server(&args.common)?;
        let shared = SharedListener::new(&mut worker, &mut server, "http", Sharing::Lock)?;
        let drain = Duration::from_secs(args.common.drain_timeout);
        let link = WorkerLink::ready(&mut worker, &mut server, drain)?;
        link.run_shared(&mut server, shared, |_peer| common::service(&args.common))?;
        // What this worker did, for its operator (and the Windows tests).
        say(format_args!(
            "worker exits: accepted {}, drained",
            server.stats().accepted
        ));
        Ok(())
    }
}

#[cfg(not(any(unix, windows)))]
fn main() {
    eprintln!("shared_listener_server runs on Unix and Windows");
}

#[cfg(unix)]
mod unix {
    use anyhow::Context;
    use clap::Parser;
    use herder::pool::{
        AcceptLockKind, Pool, SharedListener, Sharing, Worker, WorkerLink, reuseport_listener,
    };
    use herder_demo::log;
    use herder_demo::unix::{self as common, Common};
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    #[derive(Debug, Parser)]
    #[command(about = "herder's shared-listener server: workers accept for themselves")]
    struct Args {
        #[command(flatten)]
        common: Common,
        /// How workers take turns to accept.
        #[arg(long, default_value = default_accept(),
              value_parser = ["flock", "fcntl", "pthread", "exclusive", "reuseport", "none"])]
        accept: String,
    }

    /// `EPOLLEXCLUSIVE` on Linux: one shared queue, so load-aware accepting keeps the
    /// workers even (`reuseport` is as fast, but leaves the spread to the kernel's
    /// hash of each connection); a lock elsewhere.
    fn default_accept() -> &'static str {
        if cfg!(target_os = "linux") {
            "exclusive"
        } else {
            "fcntl"
        }
    }

    pub(crate) fn main() -> anyhow::Result<()> {
        let args = Args::parse();
        let _span = common::init_logging(&args.common);
        if let Some(worker) = Worker::from_env()? {
            return worker_main(worker, &args);
        }
        let mut config = common::pool_config(&args.common)?;
        let lock = match args.accept.as_str() {
            "flock" => Some(AcceptLockKind::Flock),
            "fcntl" => Some(AcceptLockKind::Fcntl),
            "pthread" => Some(AcceptLockKind::Pthread),
            _ => None,
        };
        config.accept_lock = lock;
        let (listeners, addr) = if args.accept == "reuseport" {
            if !common::inherited(|name| name != common::metrics::NAME)?.is_empty() {
                anyhow::bail!(
                    "--accept reuseport binds a listener per worker; with socket activation, choose another --accept"
                );
            }
            // One listener per slot, in one SO_REUSEPORT group; the first picks the port.
            let first = reuseport_listener(args.common.listen).context("binding")?;
            let addr = first.local_addr()?;
            (vec![("http".to_string(), OwnedFd::from(first))], addr)
        } else {
            let (l, _) = common::listener(&args.common)?;
            let addr = l.local_addr()?;
            (vec![("http".to_string(), OwnedFd::from(l))], addr)
        };
        let (shared, per_slot) = if args.accept == "reuseport" {
            (Vec::new(), listeners)
        } else {
            (listeners, Vec::new())
        };
        let mut pool = Pool::new(config.clone(), shared)?;
        if !per_slot.is_empty() {
            let mut first = per_slot.into_iter().next();
            pool.set_slot_listeners(move |_slot| {
                let l = match first.take() {
                    Some((_, l)) => l,
                    None => OwnedFd::from(reuseport_listener(addr)?),
                };
                Ok(vec![("http".to_string(), l)])
            });
        }
        pool.handle_signals()?;
        if let Some(path) = &args.common.control {
            pool.listen_control(path)?;
        }
        // A replacement slot's listener joins the SO_REUSEPORT group, which only a
        // socket of the same user may.
        let refuse = (args.accept == "reuseport").then_some(
            "--accept reuseport binds each new slot's listener as the user that bound the first",
        );
        common::drop_privileges(&args.common, &config, refuse)?;
        log!(
            2,
            "supervisor: {} workers, accept strategy {}, protocol {}",
            pool_size(&args),
            args.accept,
            args.common.protocol
        );
        common::supervise(&mut pool, addr, &args.common, &|_| {}, |_, _| {})
    }

    fn pool_size(args: &Args) -> usize {
        args.common
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn worker_main(mut worker: Worker, args: &Args) -> anyhow::Result<()> {
        let sharing = match args.accept.as_str() {
            "exclusive" => Sharing::Exclusive,
            "reuseport" => Sharing::ReusePort,
            // The pool's lock, if it has one (none for `--accept none`).
            _ => Sharing::Lock,
        };
        let mut server = common::server(&args.common)?;
        let shared = SharedListener::new(&mut worker, &mut server, "http", sharing)?;
        let drain = Duration::from_secs(args.common.drain_timeout);
        let link = WorkerLink::ready(&mut worker, &mut server, drain)?;
        link.run_shared(&mut server, shared, |_peer| common::service(&args.common))?;
        log!(3, "drained");
        Ok(())
    }
}
