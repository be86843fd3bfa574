//! The smallest shared-listener server on the published API: every worker inherits
//! the listener and takes turns with a `flock` accept lock; workers serve echo.
//! Usage: `shared ADDR WORKERS`.

use herder_packaged_test::{Echo, all_ready};
use herder_pool::{
    AcceptLockKind, Config, Pool, PoolEvent, SharedListener, Sharing, Worker, WorkerLink,
};
use herder_reactor::Server;
use std::os::fd::OwnedFd;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(mut worker) = Worker::from_env()? {
        let mut server = Server::new(herder_reactor::ServerConfig::default(), |_| Echo)?;
        let shared = SharedListener::new(&mut worker, &mut server, "http", Sharing::Lock)?;
        let link = WorkerLink::ready(&mut worker, &mut server, Duration::from_secs(10))?;
        return Ok(link.run_shared(&mut server, shared, |_peer| Echo)?);
    }
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let mut config = Config::default();
    config.workers = args.next().map_or(Ok(2), |n| n.parse())?;
    config.drain_timeout = Duration::from_secs(10);
    config.accept_lock = Some(AcceptLockKind::Flock);
    let listener = std::net::TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let mut pool = Pool::new(config, vec![("http".into(), OwnedFd::from(listener))])?;
    pool.handle_signals()?;
    let mut events = Vec::new();
    let mut announced = false;
    pool.start(&mut events);
    loop {
        if events.drain(..).any(|e| matches!(e, PoolEvent::Stopped)) {
            return Ok(());
        }
        if !announced && all_ready(&pool) {
            announced = true;
            println!("listening on {bound}");
        }
        pool.poll(&mut events, Some(Duration::from_millis(200)))?;
    }
}
