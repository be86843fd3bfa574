//! Connection hand-off latency end to end: from `connect` to the first echoed byte,
//! for each configuration of the two example servers — `handoff_server` with each
//! `--dispatch`, `shared_listener_server` with each `--accept` this platform has
//! (Linux: `reuseport`, `exclusive`, `flock`, `fcntl`, `pthread`; elsewhere `fcntl`
//! and `none`).
//!
//! At start the bench builds both examples with
//! `$CARGO build --release --example handoff_server --example shared_listener_server`
//! in the workspace root and takes them from `$CARGO_TARGET_DIR` (else `target/`),
//! `release/examples/`. Each server runs as a child process with
//! `--listen 127.0.0.1:0 --workers 2 --protocol echo --log-level error`, one at a
//! time, and is stopped with `SIGTERM` after its measurement (`SIGKILL` if still
//! there 30 s later), also when the bench panics.
//!
//! Each iteration opens a TCP connection, sets `TCP_NODELAY`, writes one byte, reads
//! the echo and closes. The client sets `SO_LINGER` to 0 before closing, so that the
//! close resets the connection instead of leaving it in `TIME_WAIT`: thousands of
//! connections a second to one address would otherwise run out of ephemeral ports
//! within a run. Each connection also gets a 30 s read timeout, so that a server that
//! never answers fails the bench instead of hanging it. Run with
//! `cargo bench --bench connect -- --warm-up-time 1 --measurement-time 3`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

#[cfg(unix)]
mod unix {
    use criterion::{BenchmarkId, Criterion};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Each server configuration: the example and its strategy flag.
    #[cfg(target_os = "linux")]
    const CONFIGS: &[(&str, &str, &str)] = &[
        ("handoff_server", "--dispatch", "least-loaded"),
        ("handoff_server", "--dispatch", "round-robin"),
        ("shared_listener_server", "--accept", "reuseport"),
        ("shared_listener_server", "--accept", "exclusive"),
        ("shared_listener_server", "--accept", "flock"),
        ("shared_listener_server", "--accept", "fcntl"),
        ("shared_listener_server", "--accept", "pthread"),
    ];
    #[cfg(not(target_os = "linux"))]
    const CONFIGS: &[(&str, &str, &str)] = &[
        ("handoff_server", "--dispatch", "least-loaded"),
        ("handoff_server", "--dispatch", "round-robin"),
        ("shared_listener_server", "--accept", "fcntl"),
        ("shared_listener_server", "--accept", "none"),
    ];

    /// How long a server may take to print its address, and to exit once told to.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// Builds both examples in release mode; returns their directory.
    fn build_examples() -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["build", "--release"])
            .args(["--example", "handoff_server"])
            .args(["--example", "shared_listener_server"])
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("running {cargo:?}: {e}"));
        assert!(status.success(), "building the examples: {status}");
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        target.join("release").join("examples")
    }

    /// A running server, stopped when dropped (a panic included).
    struct Server {
        child: Child,
        what: String,
    }

    impl Server {
        /// Starts `exe` with the common flags and `args`; returns it with the address
        /// from its `listening on ADDR` line.
        fn start(exe: &Path, args: &[&str]) -> (Server, SocketAddr) {
            let what = format!("{} {}", exe.display(), args.join(" "));
            let child = Command::new(exe)
                .args(["--listen", "127.0.0.1:0", "--workers", "2"])
                .args(["--protocol", "echo", "--log-level", "error"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {what}: {e}"));
            let mut server = Server { child, what };
            let stdout = server.child.stdout.take().unwrap();
            let (tx, rx) = mpsc::channel();
            // Reads the first line, then drains the rest so the server never writes
            // to a closed pipe.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let first = reader.read_line(&mut line).map(|_| line);
                let _ = tx.send(first);
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            });
            let line = match rx.recv_timeout(PATIENCE) {
                Ok(Ok(line)) => line,
                other => panic!("{}: no listening line: {other:?}", server.what),
            };
            let addr = line
                .trim()
                .strip_prefix("listening on ")
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{}: unexpected line {line:?}", server.what));
            (server, addr)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // SAFETY: kill only sends a signal; the pid is that of our child, not
            // reaped yet (try_wait above found it running), so it names no other
            // process.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline {
                match self.child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    _ => return,
                }
            }
            eprintln!(
                "{}: still running {PATIENCE:?} after SIGTERM; killing it",
                self.what
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// One connection: connect, one byte there and back, close with a reset.
    fn round_trip(addr: SocketAddr) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }

    pub(crate) fn connect(c: &mut Criterion) {
        let dir = build_examples();
        let mut group = c.benchmark_group("connect");
        for &(example, flag, value) in CONFIGS {
            let (server, addr) = Server::start(&dir.join(example), &[flag, value]);
            group.bench_function(BenchmarkId::new(example, value), |b| {
                b.iter(|| round_trip(addr))
            });
            drop(server);
        }
        group.finish();
    }
}

#[cfg(unix)]
criterion::criterion_group!(benches, unix::connect);
#[cfg(unix)]
criterion::criterion_main!(benches);

#[cfg(not(unix))]
fn main() {}
