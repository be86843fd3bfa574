//! Both servers, default flags: a byte stream has no boundary a server could see, so
//! a graceful stop, a rolling restart, a binary upgrade and a dead supervisor all
//! keep serving an open exchange (a byte every 100 ms) until the client ends it —
//! every byte echoed — while new connections are refused at once after a stop
//! rather than left in a backlog nobody reads.
//!
//! A rolling restart, a scale-down and an upgrade do better than wait: the retiring
//! workers move their open connections — echo streams at any point, HTTP keep-alive
//! connections between requests — to the workers that stay, which carry on where
//! they stopped, so the old generation is gone at once. Thousands of streams, a
//! request in flight, a receiver killed or out of descriptors: no byte is lost and
//! no connection closed.
#![cfg(target_os = "linux")]

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of the slow exchange, one every [`EVERY`]: 1.5 s in all.
const BYTES: usize = 15;
const EVERY: Duration = Duration::from_millis(100);

/// A client sending one byte at a time and reading its echo before the next.
struct SlowStream {
    echoed: Arc<AtomicUsize>,
    thread: JoinHandle<Result<usize, String>>,
}

impl SlowStream {
    fn start(addr: SocketAddr) -> SlowStream {
        let echoed = Arc::new(AtomicUsize::new(0));
        let count = echoed.clone();
        let thread = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            for i in 0..BYTES {
                let byte = b'a' + (i % 26) as u8;
                let mut back = [0u8; 1];
                c.write_all(&[byte])
                    .and_then(|()| c.read_exact(&mut back))
                    .map_err(|e| format!("after {i} of {BYTES} bytes: {e}"))?;
                if back[0] != byte {
                    return Err(format!("byte {i}: sent {byte}, got {}", back[0]));
                }
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(EVERY);
            }
            // The client ends the exchange; the server then closes its side.
            c.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest)
                .map_err(|e| format!("closing: {e}"))?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the end", rest.len()));
            }
            Ok(BYTES)
        });
        SlowStream { echoed, thread }
    }

    /// Waits (bounded) until `n` bytes came back.
    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.echoed.load(Ordering::SeqCst) < n {
            assert!(
                !self.thread.is_finished(),
                "the stream ended after {} bytes",
                self.echoed.load(Ordering::SeqCst)
            );
            assert!(Instant::now() < deadline, "the stream stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> Result<usize, String> {
        self.thread.join().unwrap()
    }
}

/// How long after `since` new connections to `addr` were first refused (bounded).
fn refused_after(addr: SocketAddr, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return since.elapsed(),
            // Still listening (or queued in a backlog): try again shortly.
            _ => {}
        }
        assert!(Instant::now() < deadline, "new connections never refused");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `pid` has exited (gone, or a zombie of ours — the test may be a
/// subreaper — which is then reaped).
fn exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
    if state == Some('Z') {
        // SAFETY: reaps a zombie child of ours, if it is ours; WNOHANG never blocks.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        return true;
    }
    false
}

fn wait_exited(pids: &[u32], limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while !pids.iter().all(|p| exited(*p)) {
        assert!(Instant::now() < deadline, "{what}: {pids:?} still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_graceful_stop_serves_an_open_stream_to_its_end_and_refuses_new_connections() {
    for name in util::SERVERS {
        let server = util::start(name, &["--workers", "2"]);
        let stream = SlowStream::start(server.addr);
        stream.wait_for(3);
        let stopped = Instant::now();
        server.signal(libc::SIGTERM);
        let refused = refused_after(server.addr, stopped);
        println!("{name}: new connections refused {refused:?} after SIGTERM");
        assert!(
            refused <= Duration::from_millis(500),
            "{name}: new connections still queued {refused:?} after SIGTERM"
        );
        assert_eq!(stream.finish(), Ok(BYTES), "{name}");
        // Once the exchange is over, nothing holds the server.
        assert_eq!(
            server.wait(Duration::from_secs(10)).code(),
            Some(0),
            "{name}"
        );
    }
}

#[test]
fn a_rolling_restart_serves_an_open_stream_to_its_end() {
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "2"]);
        let before = util::pids(&util::status(&ctl));
        let stream = SlowStream::start(server.addr);
        stream.wait_for(3);
        server.signal(libc::SIGHUP);
        // The new generation serves new connections meanwhile.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = util::status(&ctl);
            let now = util::pids(&s);
            if now.len() == 2 && now.iter().all(|p| !before.contains(p)) {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: no new generation: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(util::echo(server.addr, b"new"), b"new", "{name}");
        assert_eq!(stream.finish(), Ok(BYTES), "{name}");
        // The old workers leave (at once: the stream moves to a new worker).
        let old: Vec<u32> = before.iter().map(|p| *p as u32).collect();
        wait_exited(&old, Duration::from_secs(10), name);
        server.stop(name);
    }
}

#[test]
fn a_binary_upgrade_serves_an_open_stream_to_its_end() {
    // The new supervisors outlive ours: as the subreaper, this test reaps them.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain flag.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "2"]);
        let old = server.child.id();
        let stream = SlowStream::start(server.addr);
        stream.wait_for(3);
        server.signal(libc::SIGUSR2);
        // The new supervisor takes over the control socket once it is ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        let new = loop {
            let pid = util::status(&ctl)["pid"].as_u64().unwrap() as u32;
            if pid != old {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the upgrade never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(util::echo(server.addr, b"new"), b"new", "{name}");
        assert_eq!(stream.finish(), Ok(BYTES), "{name}");
        // The old supervisor leaves (at once: the stream moves to a new worker).
        assert_eq!(
            server.wait(Duration::from_secs(10)).code(),
            Some(0),
            "{name}"
        );
        let workers: Vec<u32> = util::pids(&util::status(&ctl))
            .into_iter()
            .map(|p| p as u32)
            .collect();
        // SAFETY: the new supervisor this test's server started.
        unsafe { libc::kill(new as i32, libc::SIGTERM) };
        let mut all = workers;
        all.push(new);
        wait_exited(&all, Duration::from_secs(30), name);
    }
}

#[test]
fn workers_of_a_dead_supervisor_finish_their_streams_then_exit() {
    for name in util::SERVERS {
        let util::Controlled {
            mut server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "2"]);
        let workers: Vec<u32> = util::pids(&util::status(&ctl))
            .into_iter()
            .map(|p| p as u32)
            .collect();
        let stream = SlowStream::start(server.addr);
        stream.wait_for(3);
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        assert_eq!(stream.finish(), Ok(BYTES), "{name}");
        // Nothing left to serve: no orphan stays.
        wait_exited(&workers, Duration::from_secs(10), name);
    }
}

/// Many open echo streams at once, each sending a byte every [`MANY_EVERY`] and
/// checking its echo: the client side of the connection-moving tests. A stream
/// that is closed, stalls or gets a wrong byte is a failure.
struct ManyStreams {
    stop: Arc<std::sync::atomic::AtomicBool>,
    rounds: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Result<usize, String>>>,
}

const MANY_EVERY: Duration = Duration::from_millis(50);

impl ManyStreams {
    /// Opens `n` streams to `addr` over `threads` client threads and starts them:
    /// echo streams, or `http` keep-alive connections with a request each round.
    fn start(addr: SocketAddr, n: usize, threads: usize, http: bool) -> ManyStreams {
        util::raise_nofile();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let mut conns: Vec<Vec<TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
        for i in 0..n {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.set_nodelay(true).unwrap();
            conns[i % threads].push(c);
        }
        let threads = conns
            .into_iter()
            .enumerate()
            .map(|(t, mut conns)| {
                let stop = stop.clone();
                let rounds = rounds.clone();
                std::thread::spawn(move || {
                    let mut round = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let byte = b'a' + (round % 26) as u8;
                        let request: &[u8] = match http {
                            true => REQUEST,
                            false => std::slice::from_ref(&byte),
                        };
                        for (i, c) in conns.iter_mut().enumerate() {
                            c.write_all(request)
                                .map_err(|e| format!("thread {t} conn {i} round {round}: {e}"))?;
                        }
                        for (i, c) in conns.iter_mut().enumerate() {
                            if http {
                                read_response(c).map_err(|e| {
                                    format!("thread {t} conn {i} round {round}: {e}")
                                })?;
                                continue;
                            }
                            let mut back = [0u8; 1];
                            c.read_exact(&mut back)
                                .map_err(|e| format!("thread {t} conn {i} round {round}: {e}"))?;
                            if back[0] != byte {
                                return Err(format!(
                                    "thread {t} conn {i} round {round}: sent {byte}, got {}",
                                    back[0]
                                ));
                            }
                        }
                        round += 1;
                        if t == 0 {
                            rounds.store(round, Ordering::SeqCst);
                        }
                        std::thread::sleep(MANY_EVERY);
                    }
                    // The client ends each exchange; the server closes its side.
                    for (i, c) in conns.iter_mut().enumerate() {
                        if http {
                            c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                                .map_err(|e| format!("thread {t} conn {i} closing: {e}"))?;
                        }
                        c.shutdown(Shutdown::Write).unwrap();
                        let mut rest = Vec::new();
                        c.read_to_end(&mut rest)
                            .map_err(|e| format!("thread {t} conn {i} closing: {e}"))?;
                    }
                    Ok(round * conns.len())
                })
            })
            .collect();
        ManyStreams {
            stop,
            rounds,
            threads,
        }
    }

    /// Waits (bounded) for `n` more whole rounds, failing early if a thread failed.
    fn rounds(&self, n: usize) {
        let target = self.rounds.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.rounds.load(Ordering::SeqCst) < target {
            assert!(
                !self.threads.iter().any(|t| t.is_finished()),
                "a client thread ended early"
            );
            assert!(Instant::now() < deadline, "the streams stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ends every stream; the bytes echoed in all, or the first failure.
    fn finish(self) -> Result<usize, String> {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = 0;
        for t in self.threads {
            total += t.join().unwrap()?;
        }
        Ok(total)
    }
}

/// A keep-alive request.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Reads one response of the HTTP demo: `200`, kept alive, its whole body.
fn read_response(c: &mut TcpStream) -> Result<(), String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(0) => return Err(format!("closed after {} bytes of a head", head.len())),
            Ok(_) => head.push(b[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") || head.contains("connection: close") {
        return Err(format!("unexpected response: {head:?}"));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no content-length")?;
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).map_err(|e| e.to_string())
}

/// Asks the server on `ctl` to run `workers` workers; its answer.
fn scale(ctl: &std::path::Path, workers: usize) -> String {
    let mut c = std::os::unix::net::UnixStream::connect(ctl).unwrap();
    c.write_all(format!("{{\"cmd\":\"scale\",\"workers\":{workers}}}\n").as_bytes())
        .unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    answer
}

/// Checks that the workers in `status` hold `open` connections and that no move
/// was kept by an old worker, then ends the streams: every byte echoed.
fn held_by_workers_then_finish(
    name: &str,
    status: &serde_json::Value,
    open: usize,
    streams: ManyStreams,
) {
    let owned: u64 = active_by_pid(status).iter().map(|(_, a)| a).sum();
    assert_eq!(
        owned, open as u64,
        "{name}: connections held by the workers: {status}"
    );
    assert_eq!(status["moves_kept"], 0, "{name}");
    let echoed = streams.finish();
    assert!(echoed.is_ok(), "{name}: {echoed:?}");
}

/// Open connections per worker, by pid, from `status`.
fn active_by_pid(status: &serde_json::Value) -> Vec<(u64, u64)> {
    let pids = util::pids(status);
    let active = util::counts(status, "active");
    pids.into_iter().zip(active).collect()
}

/// Waits (bounded) until the workers of `status` are all new (none of `before`) and
/// `before` have all exited; returns how long that took from `since`.
fn old_generation_gone(ctl: &std::path::Path, before: &[u64], since: Instant) -> Duration {
    let old: Vec<u32> = before.iter().map(|p| *p as u32).collect();
    wait_exited(&old, Duration::from_secs(20), "the old generation");
    let gone = since.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = util::pids(&util::status(ctl));
        if !now.is_empty() && now.iter().all(|p| !before.contains(p)) {
            return gone;
        }
        assert!(Instant::now() < deadline, "no new generation");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_reload_moves_open_streams_to_the_new_workers_without_a_lost_byte() {
    const OPEN: usize = 2000;
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &[]);
        let before = util::pids(&util::status(&ctl));
        let streams = ManyStreams::start(server.addr, OPEN, 8, false);
        streams.rounds(3);
        let reloaded = Instant::now();
        server.signal(libc::SIGHUP);
        let gone = old_generation_gone(&ctl, &before, reloaded);
        // Still streaming, now on the new workers.
        streams.rounds(3);
        let status = util::status(&ctl);
        println!(
            "{name}: {OPEN} streams; old generation gone {gone:?} after SIGHUP; moved {}, kept {}; new workers hold {:?}",
            status["moved"],
            status["moves_kept"],
            active_by_pid(&status)
        );
        held_by_workers_then_finish(name, &status, OPEN, streams);
        server.stop(name);
    }
}

#[test]
fn a_reload_moves_keep_alive_connections_and_those_with_a_request_in_flight_after_it() {
    const OPEN: usize = 300;
    const IN_FLIGHT: usize = 20;
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--protocol", "http"]);
        let before = util::pids(&util::status(&ctl));
        let streams = ManyStreams::start(server.addr, OPEN, 4, true);
        // Connections with half a request sent when the reload starts.
        let mut busy: Vec<TcpStream> = (0..IN_FLIGHT)
            .map(|_| {
                let mut c = TcpStream::connect(server.addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(REQUEST).unwrap();
                read_response(&mut c).unwrap();
                c.write_all(&REQUEST[..10]).unwrap();
                c
            })
            .collect();
        streams.rounds(3);
        let reloaded = Instant::now();
        server.signal(libc::SIGHUP);
        // The old workers wait for the requests in flight, and answer them.
        streams.rounds(3);
        let old: Vec<u32> = before.iter().map(|p| *p as u32).collect();
        assert!(
            !old.iter().all(|p| exited(*p)),
            "{name}: the old generation left with requests in flight"
        );
        for c in &mut busy {
            c.write_all(&REQUEST[10..]).unwrap();
            read_response(c).unwrap();
        }
        let gone = old_generation_gone(&ctl, &before, reloaded);
        // Moved after their response: served by the new workers from here on.
        for c in &mut busy {
            c.write_all(REQUEST).unwrap();
            read_response(c).unwrap();
        }
        streams.rounds(3);
        let status = util::status(&ctl);
        println!(
            "{name}: {OPEN} keep-alive connections and {IN_FLIGHT} with a request in flight; old generation gone {gone:?} after SIGHUP; moved {}, kept {}",
            status["moved"], status["moves_kept"]
        );
        held_by_workers_then_finish(name, &status, OPEN + IN_FLIGHT, streams);
        drop(busy);
        server.stop(name);
    }
}

#[test]
fn scaling_down_moves_open_streams_to_the_workers_that_stay() {
    const OPEN: usize = 400;
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "4"]);
        let before = util::pids(&util::status(&ctl));
        assert_eq!(before.len(), 4, "{name}");
        let streams = ManyStreams::start(server.addr, OPEN, 4, false);
        streams.rounds(3);
        let answer = scale(&ctl, 2);
        assert!(answer.contains("\"ok\":true"), "{name}: {answer}");
        let retired: Vec<u32> = before[2..].iter().map(|p| *p as u32).collect();
        wait_exited(&retired, Duration::from_secs(20), name);
        streams.rounds(3);
        let status = util::status(&ctl);
        assert_eq!(
            util::pids(&status),
            before[..2],
            "{name}: the first two stay"
        );
        held_by_workers_then_finish(name, &status, OPEN, streams);
        server.stop(name);
    }
}

#[test]
fn a_worker_out_of_descriptors_takes_what_it_can_and_the_rest_stays_with_the_retiring_worker() {
    // 2 workers of 128 descriptors, 160 streams: the one that stays cannot take
    // all of the other's.
    const OPEN: usize = 160;
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled_limited(name, &["--workers", "2"], 128);
        let before = util::pids(&util::status(&ctl));
        let streams = ManyStreams::start(server.addr, OPEN, 4, false);
        streams.rounds(3);
        let held = active_by_pid(&util::status(&ctl));
        assert_eq!(
            held.iter().map(|(_, a)| a).sum::<u64>(),
            OPEN as u64,
            "{name}: {held:?}"
        );
        scale(&ctl, 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            let s = util::status(&ctl);
            if s["moves_kept"].as_u64() > Some(0) && s["moved"].as_u64() > Some(0) {
                break s;
            }
            assert!(Instant::now() < deadline, "{name}: no move settled: {s}");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Every stream goes on: on the worker that stays, or on the retiring one.
        streams.rounds(5);
        let retiring = before[1] as u32;
        assert!(
            !exited(retiring),
            "{name}: the retiring worker left its streams"
        );
        println!(
            "{name}: {OPEN} streams, 128 descriptors per worker: moved {}, kept {}",
            status["moved"], status["moves_kept"]
        );
        let echoed = streams.finish();
        assert!(echoed.is_ok(), "{name}: {echoed:?}");
        // Its streams over, the retiring worker leaves.
        wait_exited(&[retiring], Duration::from_secs(10), name);
        server.stop(name);
    }
}

#[test]
fn a_binary_upgrade_moves_open_streams_to_the_new_supervisors_workers() {
    const OPEN: usize = 1000;
    // The new supervisors outlive ours: as the subreaper, this test reaps them.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain flag.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &[]);
        let old = server.child.id();
        let before = util::pids(&util::status(&ctl));
        let streams = ManyStreams::start(server.addr, OPEN, 4, false);
        streams.rounds(3);
        let upgraded = Instant::now();
        server.signal(libc::SIGUSR2);
        // The old supervisor leaves with its workers while the streams go on.
        assert_eq!(
            server.wait(Duration::from_secs(20)).code(),
            Some(0),
            "{name}"
        );
        let gone = upgraded.elapsed();
        let old_workers: Vec<u32> = before.iter().map(|p| *p as u32).collect();
        wait_exited(&old_workers, Duration::from_secs(10), name);
        streams.rounds(3);
        let status = util::status(&ctl);
        let new = status["pid"].as_u64().unwrap() as u32;
        assert_ne!(new, old, "{name}");
        println!(
            "{name}: {OPEN} streams; old supervisor gone {gone:?} after SIGUSR2; the new one moved {} in, its workers hold {:?}",
            status["moved"],
            active_by_pid(&status)
        );
        held_by_workers_then_finish(name, &status, OPEN, streams);
        let workers: Vec<u32> = util::pids(&status).into_iter().map(|p| p as u32).collect();
        // SAFETY: the new supervisor this test's server started.
        unsafe { libc::kill(new as i32, libc::SIGTERM) };
        let mut all = workers;
        all.push(new);
        wait_exited(&all, Duration::from_secs(30), name);
    }
}
