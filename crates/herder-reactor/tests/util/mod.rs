//! Helpers shared by herder-reactor's behaviour tests.
#![allow(dead_code, unreachable_pub)]

use herder_reactor::{Event, Reactor, Source};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A connected, non-blocking pair of loopback TCP sockets.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// Polls until `pred` accepts an event or `limit` passes; returns the events of the
/// poll that had it (panics after the limit).
pub fn poll_until<S: Source>(
    r: &mut Reactor<S>,
    limit: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + limit;
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the expected event did not come within {limit:?}"
        );
        r.poll(&mut events, Some(left)).unwrap();
        if events.iter().any(&pred) {
            return events;
        }
    }
}

/// Polls once with `timeout` and returns what came.
pub fn poll_once<S: Source>(r: &mut Reactor<S>, timeout: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    r.poll(&mut events, Some(timeout)).unwrap();
    events
}

use herder_reactor::{CloseReason, Flow, Input, Output, Server, ServerConfig, Service, Stats};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Echoes every byte; records why it was closed.
pub struct Echo {
    pub closed: Arc<Mutex<Vec<String>>>,
}

impl Service for Echo {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        out.write(input.data());
        input.consume(input.len());
        Flow::Continue
    }

    fn on_close(&mut self, reason: &CloseReason) {
        let name = match reason {
            CloseReason::Error(_) => "Error".to_string(),
            other => format!("{other:?}"),
        };
        self.closed.lock().unwrap().push(name);
    }
}

/// A server running on its own thread until [`Running::stop`].
pub struct Running {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: herder_reactor::Waker,
    thread: std::thread::JoinHandle<Stats>,
}

impl Running {
    /// Stops the loop and returns the server's counters.
    pub fn stop(self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake().unwrap();
        self.thread.join().expect("server thread")
    }
}

/// Starts a server with `config` on 127.0.0.1 whose connections get services from
/// `factory`. `each_poll` runs after every poll (e.g. to start a drain).
pub fn spawn_server<Svc: Service + 'static>(
    config: ServerConfig,
    factory: impl FnMut() -> Svc + Send + 'static,
    mut each_poll: impl FnMut(&mut Server<Svc>) + Send + 'static,
) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut factory = factory;
        let mut server = Server::new(config, move |_| factory()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send((listener.local_addr().unwrap(), server.waker()))
            .unwrap();
        server.add_listener(listener).unwrap();
        let mut events = Vec::new();
        // Bounded: a test that forgets to stop its server ends here after 120 s.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
            server
                .poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            each_poll(&mut server);
        }
        server.stats()
    });
    let (addr, waker) = rx.recv().unwrap();
    Running {
        addr,
        stop,
        waker,
        thread,
    }
}

/// Polls `cond` every millisecond until it holds (panics after 10 s).
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An echo server with `config`, and the list its connections' close reasons go to.
pub fn echo_server(config: ServerConfig) -> (Running, Arc<Mutex<Vec<String>>>) {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let server = spawn_server(config, move || Echo { closed: c2.clone() }, |_| {});
    (server, closed)
}
