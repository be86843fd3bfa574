//! herder's hand-off model with the async stack: the supervisor (herder-pool) accepts
//! connections and hands each one to a worker process, whose workers serve them with
//! hyper on a tokio runtime, receiving them through `herder_fd::tokio::AsyncChannel`.
//!
//! ```text
//! cargo run --release --example tokio_handoff -- --listen 127.0.0.1:8080 --workers 2
//! curl http://127.0.0.1:8080/        # Hello from worker 4243
//! ```
//!
//! It takes the common flags of the other servers (`--control`, `--metrics`,
//! `--log-format`, …; `--protocol` is always HTTP here). Connections go round-robin to
//! the ready workers, without the acknowledgements of `handoff_server`: a connection
//! in flight to a worker that dies is lost.

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!("tokio_handoff runs on Unix");
}

#[cfg(unix)]
mod unix {
    use clap::Parser;
    use herder::fd::Handoff;
    use herder::fd::tokio::AsyncChannel;
    use herder::pool::{Pool, PoolEvent, Worker, is_drain_request};
    use herder::reactor::{Event, Interest, Mode};
    use herder_demo::log;
    use herder_demo::unix::{self as common, Common};
    use std::net::TcpListener;
    use std::time::Duration;

    #[derive(Debug, Parser)]
    #[command(about = "Hand-off server whose workers serve with hyper on tokio")]
    struct Args {
        #[command(flatten)]
        common: Common,
    }

    pub(crate) fn main() -> anyhow::Result<()> {
        let args = Args::parse();
        let _span = common::init_logging(&args.common);
        if let Some(worker) = Worker::from_env()? {
            return worker_main(worker, &args.common);
        }
        let (mut pool, listener, addr) = common::handoff_supervisor(&args.common)?;
        listener.set_nonblocking(true)?;
        let key = pool.add_source(
            Box::new(listener.try_clone()?),
            Interest::READABLE,
            Mode::Level,
        )?;
        let mut next = 0usize;
        common::supervise(
            &mut pool,
            addr,
            &args.common,
            &|_| {},
            |pool, event| match event {
                PoolEvent::Other(Event::Io { key: k, .. }) if *k == key => {
                    accept(pool, &listener, &mut next)
                }
                PoolEvent::Command(herder::pool::Command::Stop) | PoolEvent::Upgraded { .. } => {
                    let _ = pool.modify_source(key, Interest::NONE, Mode::Level);
                }
                _ => {}
            },
        )
    }

    /// Accepts what is pending and hands each connection to the next ready worker.
    fn accept(pool: &mut Pool, listener: &TcpListener, next: &mut usize) {
        for _ in 0..64 {
            let (stream, peer) = match listener.accept() {
                Ok(conn) => conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log!(1, "accept: {e}");
                    return;
                }
            };
            let n = pool.len();
            let sent = (0..n).any(|i| {
                let slot = (*next + i) % n;
                let meta = Handoff {
                    id: 0,
                    peer: Some(peer),
                    data: &[],
                };
                let ok =
                    pool.load(slot).is_some() && pool.send_socket(slot, &stream, &meta).is_ok();
                if ok {
                    *next = slot + 1;
                }
                ok
            });
            if !sent {
                log!(1, "no ready worker for {peer}; closing it");
            }
        }
    }

    fn worker_main(mut worker: Worker, c: &Common) -> anyhow::Result<()> {
        worker.ready()?;
        let channel = worker
            .take_channel()
            .ok_or_else(|| anyhow::anyhow!("no channel to the supervisor"))?;
        let card = worker.scorecard();
        let drain = Duration::from_secs(c.drain_timeout);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut channel = AsyncChannel::new(channel)?;
            let mut connections = tokio::task::JoinSet::new();
            // The supervisor watches for a hung worker: beat while the runtime runs.
            if let Some(card) = card.clone() {
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        card.heartbeat();
                    }
                });
            }
            loop {
                let Some(message) = channel.recv().await? else {
                    break; // the supervisor is gone
                };
                if is_drain_request(message.payload()) {
                    break;
                }
                let got = match message.into_socket() {
                    Ok(got) => got,
                    Err(e) => {
                        log!(1, "a malformed hand-off: {e}");
                        continue;
                    }
                };
                let Ok(stream) = got.into_tcp_stream() else {
                    continue;
                };
                stream.set_nonblocking(true)?;
                let stream = tokio::net::TcpStream::from_std(stream)?;
                if let Some(card) = &card {
                    card.add_accepted(1);
                }
                connections.spawn(serve(stream));
                // Reap the finished ones as we go.
                while connections.try_join_next().is_some() {}
                if let Some(card) = &card {
                    card.set_active(connections.len() as u64);
                }
            }
            // Drain: let the open connections finish, for at most the drain timeout.
            let _ = tokio::time::timeout(drain, async {
                while connections.join_next().await.is_some() {}
            })
            .await;
            anyhow::Ok(())
        })
    }

    /// Serves one connection with hyper: every request gets `Hello from worker PID`.
    async fn serve(stream: tokio::net::TcpStream) {
        use http_body_util::Full;
        use hyper::body::Bytes;
        let service = hyper::service::service_fn(|_request| async {
            let body = format!("Hello from worker {}\n", std::process::id());
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
        {
            log!(3, "connection: {e}");
        }
    }
}
