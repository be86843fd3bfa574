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
/// (or the next) ready worker, duplicated for its pid (`WSADuplicateSocketW`), and
/// keeps its copy until the worker acknowledges it — the same `Dispatcher` and
/// `WorkerLink` as on Unix. Ctrl-C, Ctrl-Break or `herderctl stop` stops gracefully.
#[cfg(windows)]
mod windows {
    use clap::Parser;
    use herder::pool::{Choice, Dispatcher, Pool, Worker, WorkerLink};
    use herder_demo::windows::{self as common, Common, say};
    use std::time::Duration;

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
        let _span = common::init_logging(&args.common);
        if let Some(mut worker) = Worker::from_env()? {
            // A worker: serve what the supervisor hands over until told to drain.
            let mut server = common::server(&args.common)?;
            let drain = Duration::from_secs(args.common.drain_timeout);
            let link = WorkerLink::ready(&mut worker, &mut server, drain)?;
            link.run(&mut server, |_peer| common::service(&args.common))?;
            // What this worker did, for its operator (and the Windows tests).
            say(format_args!(
                "worker exits: accepted {}, drained",
                server.stats().accepted
            ));
            return Ok(());
        }
        // The supervisor: accept, and hand each connection to a worker, keeping it
        // until the worker acknowledges it.
        let (listener, addr) = common::listener(&args.common)?;
        let mut pool = Pool::new(common::pool_config(&args.common), Vec::new())?;
        let choice = match args.dispatch.as_str() {
            "round-robin" => Choice::RoundRobin,
            _ => Choice::LeastLoaded,
        };
        let mut dispatcher = Dispatcher::new(choice);
        let max = args.common.max_connections;
        dispatcher.set_max_connections((max > 0).then_some(max as u64));
        dispatcher.add_listener(&mut pool, listener)?;
        common::supervise(&mut pool, addr, &args.common, |pool, event| {
            dispatcher.handle(pool, event);
        })
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
