//! The smallest fd-hand-off server on the published API: the supervisor accepts and
//! hands each connection to a worker, keeping it until the worker acknowledges it;
//! workers serve echo. Usage: `handoff ADDR WORKERS`.

use herder_packaged_test::{Echo, all_ready};
use herder_pool::{Choice, Config, Dispatcher, Pool, PoolEvent, Worker, WorkerLink};
use herder_reactor::Server;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(mut worker) = Worker::from_env()? {
        let mut server = Server::new(herder_reactor::ServerConfig::default(), |_| Echo)?;
        let link = WorkerLink::ready(&mut worker, &mut server, Duration::from_secs(10))?;
        return Ok(link.run(&mut server, |_peer| Echo)?);
    }
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let mut config = Config::default();
    config.workers = args.next().map_or(Ok(2), |n| n.parse())?;
    config.drain_timeout = Duration::from_secs(10);
    let listener = std::net::TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let mut pool = Pool::new(config, Vec::new())?;
    pool.handle_signals()?;
    let mut dispatcher = Dispatcher::new(Choice::LeastLoaded);
    dispatcher.add_listener(&mut pool, listener)?;
    let mut events = Vec::new();
    let mut announced = false;
    pool.start(&mut events);
    loop {
        for event in events.drain(..) {
            dispatcher.handle(&mut pool, &event);
            if matches!(event, PoolEvent::Stopped) {
                return Ok(());
            }
        }
        if !announced && all_ready(&pool) {
            announced = true;
            println!("listening on {bound}");
        }
        pool.poll(&mut events, Some(Duration::from_millis(200)))?;
    }
}
