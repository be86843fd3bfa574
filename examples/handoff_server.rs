//! Model 1, descriptor hand-off: the supervisor accepts every connection and hands it
//! to one of N worker processes over its channel (`SCM_RIGHTS` on Unix,
//! `WSADuplicateSocketW` on Windows), keeping it until the worker acknowledges it;
//! each worker serves its connections on its own event loop. One program for every
//! platform.
//!
//! ```text
//! cargo run --release --example handoff_server -- --listen 127.0.0.1:8080 --protocol http
//! ```

use clap::Parser;
use herder::pool::{Choice, DispatchStats, Dispatcher, Worker, WorkerLink};
use herder_demo::common::{self, Common};
use herder_demo::log;
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _span = common::init_logging(&args.common);
    if let Some(mut worker) = Worker::from_env()? {
        // A worker: serve what the supervisor hands over until told to drain.
        let mut server = common::server(&args.common)?;
        let drain = Duration::from_secs(args.common.drain_timeout);
        let link = WorkerLink::ready(&mut worker, &mut server, drain)?;
        link.run(&mut server, |_peer| common::service(&args.common))?;
        log!(
            2,
            "worker exits: accepted {}, drained",
            server.stats().accepted
        );
        return Ok(());
    }
    // The supervisor: accept, and hand each connection to a worker, keeping it until
    // the worker acknowledges it.
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

/// The dispatcher's counters, for the metrics endpoint.
fn handoff_metrics(stats: &DispatchStats, out: &mut String) {
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
