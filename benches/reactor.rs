//! Event-loop overhead: a ping-pong over many connections through herder-reactor —
//! the bare [`Reactor`] and the buffered [`Server`] with an echo service — next to the
//! same loop written directly on `polling`, in one run.
//!
//! Each iteration writes one byte to each of N client sockets, runs the loop until
//! every server end has echoed it, and reads the N echoes: N readiness events, N
//! reads and N writes per iteration in the loop under test. The three run in three
//! interleaved rounds; compare within a round. Run with
//! `cargo bench --bench reactor -- --warm-up-time 1 --measurement-time 4`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

#[cfg(unix)]
mod unix {
    use criterion::Criterion;
    use herder_reactor::{
        Event, Flow, Input, Interest, Mode, Output, Reactor, Server, ServerConfig, Service,
    };
    use std::cell::Cell;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;

    const N: usize = 64;

    fn pairs(n: usize) -> (Vec<UnixStream>, Vec<UnixStream>) {
        let (mut clients, mut servers) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (c, s) = UnixStream::pair().unwrap();
            s.set_nonblocking(true).unwrap();
            clients.push(c);
            servers.push(s);
        }
        (clients, servers)
    }

    fn ping(clients: &mut [UnixStream]) {
        for c in clients.iter_mut() {
            c.write_all(b"x").unwrap();
        }
    }

    fn pong(clients: &mut [UnixStream]) {
        let mut b = [0u8; 1];
        for c in clients.iter_mut() {
            c.read_exact(&mut b).unwrap();
        }
    }

    /// The baseline: `polling` with a Vec of sockets indexed by key.
    fn direct(c: &mut Criterion, round: u32) {
        let (mut clients, servers) = pairs(N);
        let poller = polling::Poller::new().unwrap();
        for (i, s) in servers.iter().enumerate() {
            // SAFETY: every socket outlives the poller's use of it: both live until the
            // end of this function, and the poller is dropped first.
            unsafe {
                poller
                    .add_with_mode(s, polling::Event::readable(i), polling::PollMode::Level)
                    .unwrap()
            };
        }
        let mut events = polling::Events::new();
        let mut buf = [0u8; 4096];
        let mut servers = servers;
        c.bench_function(&format!("ping-pong/polling-direct/{round}"), |b| {
            b.iter(|| {
                ping(&mut clients);
                let mut left = N;
                while left > 0 {
                    events.clear();
                    poller.wait(&mut events, None).unwrap();
                    for ev in events.iter() {
                        let s = &mut servers[ev.key];
                        if let Ok(n) = s.read(&mut buf) {
                            s.write_all(&buf[..n]).unwrap();
                            left -= n;
                        }
                    }
                }
                pong(&mut clients);
            })
        });
        for s in &servers {
            poller.delete(s).unwrap();
        }
    }

    fn reactor(c: &mut Criterion, round: u32) {
        let (mut clients, servers) = pairs(N);
        let mut r: Reactor<UnixStream> = Reactor::new().unwrap();
        for s in servers {
            r.register(s, Interest::READABLE, Mode::Level).unwrap();
        }
        let mut events = Vec::new();
        let mut buf = [0u8; 4096];
        c.bench_function(&format!("ping-pong/herder-reactor/{round}"), |b| {
            b.iter(|| {
                ping(&mut clients);
                let mut left = N;
                while left > 0 {
                    r.poll(&mut events, None).unwrap();
                    for ev in &events {
                        if let Event::Io { key, .. } = *ev {
                            let mut s: &UnixStream = r.get(key).unwrap();
                            if let Ok(n) = s.read(&mut buf) {
                                s.write_all(&buf[..n]).unwrap();
                                left -= n;
                            }
                        }
                    }
                }
                pong(&mut clients);
            })
        });
    }

    /// Echoes, counting the bytes it echoed.
    struct Echo(Rc<Cell<usize>>);
    impl Service for Echo {
        fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
            out.write(input.data());
            self.0.set(self.0.get() + input.len());
            input.consume(input.len());
            Flow::Continue
        }
    }

    fn server(c: &mut Criterion, round: u32) {
        let (mut clients, servers) = pairs(N);
        let echoed = Rc::new(Cell::new(0));
        let e2 = echoed.clone();
        let mut srv = Server::new(ServerConfig::default(), move |_| Echo(e2.clone())).unwrap();
        for s in servers {
            srv.add_connection(s, Echo(echoed.clone()), &[]).unwrap();
        }
        let mut events = Vec::new();
        c.bench_function(&format!("ping-pong/herder-server/{round}"), |b| {
            b.iter(|| {
                ping(&mut clients);
                echoed.set(0);
                while echoed.get() < N {
                    srv.poll(&mut events, None).unwrap();
                }
                pong(&mut clients);
            })
        });
    }

    pub(crate) fn all(c: &mut Criterion) {
        // Interleaved rounds: this machine drifts over minutes, so compare each
        // variant with the baseline of the same round.
        for round in 1..=3 {
            direct(c, round);
            reactor(c, round);
            server(c, round);
        }
    }
}

#[cfg(unix)]
criterion::criterion_group!(benches, unix::all);
#[cfg(unix)]
criterion::criterion_main!(benches);

#[cfg(not(unix))]
fn main() {}
