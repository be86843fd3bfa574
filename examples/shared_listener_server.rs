//! Model 2, the shared listener: N worker processes inherit one listening socket and
//! accept for themselves, with the strategy chosen by `--accept`. One program for
//! every platform; only the strategies differ (Windows has a named mutex, or none).
//!
//! ```text
//! cargo run --release --example shared_listener_server -- --listen 127.0.0.1:8080 --protocol http
//! ```

use clap::Parser;
use herder::pool::{Pool, SharedListener, Sharing, Worker, WorkerLink};
use herder_demo::common::{self, Common};
use herder_demo::log;
use std::time::Duration;

/// The strategies this platform has, the default first.
#[cfg(target_os = "linux")]
const ACCEPT: [&str; 6] = [
    "exclusive",
    "flock",
    "fcntl",
    "pthread",
    "reuseport",
    "none",
];
#[cfg(all(unix, not(target_os = "linux")))]
const ACCEPT: [&str; 5] = ["fcntl", "flock", "pthread", "reuseport", "none"];
#[cfg(windows)]
const ACCEPT: [&str; 2] = ["mutex", "none"];

#[derive(Debug, Parser)]
#[command(about = "herder's shared-listener server: workers accept for themselves")]
struct Args {
    #[command(flatten)]
    common: Common,
    /// How workers take turns to accept: `EPOLLEXCLUSIVE` (Linux's default), a lock
    /// (`flock`, `fcntl`, `pthread`; on Windows a named `mutex`), a listener per
    /// worker in an `SO_REUSEPORT` group, or `none`. Every strategy but
    /// `reuseport` balances the workers by load.
    #[arg(long, default_value = ACCEPT[0], value_parser = ACCEPT)]
    accept: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _span = common::init_logging(&args.common);
    if let Some(worker) = Worker::from_env()? {
        return worker_main(worker, &args);
    }
    let (mut pool, addr) = supervisor(&args)?;
    log!(
        2,
        "supervisor: accept strategy {}, protocol {}",
        args.accept,
        args.common.protocol
    );
    common::supervise(&mut pool, addr, &args.common, &|_| {}, |_, _| {})
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
    log!(
        2,
        "worker exits: accepted {}, drained",
        server.stats().accepted
    );
    Ok(())
}

/// The pool, with the listener (or, for `reuseport`, a listener per slot), the
/// accept lock, signals, the control endpoint and the workers' user; and the address.
fn supervisor(args: &Args) -> anyhow::Result<(Pool, std::net::SocketAddr)> {
    let mut config = common::pool_config(&args.common)?;
    // `exclusive`, `reuseport` and `none` take no lock.
    config.accept_lock = args.accept.parse().ok();
    let reuseport = args.accept == "reuseport";
    let (mut pool, addr) = match reuseport {
        true => reuseport_pool(args, &config)?,
        false => {
            let (listener, _) = common::listener(&args.common)?;
            let addr = listener.local_addr()?;
            let pool = Pool::new(config.clone(), vec![("http".into(), listener.into())])?;
            (pool, addr)
        }
    };
    #[cfg(unix)]
    pool.handle_signals()?;
    if let Some(path) = &args.common.control {
        pool.listen_control(path)?;
    }
    // A replacement slot's listener joins the SO_REUSEPORT group, which only a socket
    // of the same user may.
    let refuse = reuseport.then_some(
        "--accept reuseport binds each new slot's listener as the user that bound the first",
    );
    common::drop_privileges(&args.common, &config, refuse)?;
    Ok((pool, addr))
}

/// A pool whose slots each have their own listener in one `SO_REUSEPORT` group.
#[cfg(unix)]
fn reuseport_pool(
    args: &Args,
    config: &herder::pool::Config,
) -> anyhow::Result<(Pool, std::net::SocketAddr)> {
    use anyhow::Context;
    use herder::pool::reuseport_listener;
    if !common::inherited(|name| name != common::metrics::NAME)?.is_empty() {
        anyhow::bail!(
            "--accept reuseport binds a listener per worker; with socket activation, choose another --accept"
        );
    }
    // One listener per slot, in one SO_REUSEPORT group; the first picks the port.
    let first = reuseport_listener(args.common.listen).context("binding")?;
    herder_demo::flags::prepare_listener(&args.common, &first)?;
    let addr = first.local_addr()?;
    let defer = args.common.defer_accept;
    let mut pool = Pool::new(config.clone(), Vec::new())?;
    let mut first = Some(first);
    pool.set_slot_listeners(move |_slot| {
        let l = match first.take() {
            Some(l) => l,
            None => {
                let l = reuseport_listener(addr)?;
                if defer {
                    herder::pool::defer_accept(&l)?;
                }
                l
            }
        };
        Ok(vec![("http".to_string(), l.into())])
    });
    Ok((pool, addr))
}

#[cfg(windows)]
fn reuseport_pool(
    _: &Args,
    _: &herder::pool::Config,
) -> anyhow::Result<(Pool, std::net::SocketAddr)> {
    anyhow::bail!("--accept reuseport is not available on Windows")
}
