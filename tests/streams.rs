//! Both servers, default flags, the echo protocol: a byte stream has no boundary a
//! server could see, so a graceful stop, a rolling restart, a binary upgrade and a
//! dead supervisor all keep serving an open exchange (a byte every 100 ms) until the
//! client ends it — every byte echoed — while new connections are refused at once
//! after a stop rather than left in a backlog nobody reads.
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
        // The old workers leave once their streams are over.
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
        // The old supervisor leaves once its last stream is over.
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
