//! systemd integration of the example servers: socket activation under
//! `systemd-socket-activate`, the `sd_notify` messages on a `NOTIFY_SOCKET` made here,
//! and malformed activation variables refused.
#![cfg(target_os = "linux")]

mod util;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `systemd-socket-activate` for the example `name` on a free loopback port,
/// and waits until the tool says it listens there. A port taken by another process
/// in between makes the tool exit: then another port is tried.
fn activate(name: &str, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    for _ in 0..5 {
        let listen = format!("127.0.0.1:{}", util::free_port());
        let mut child = Command::new("systemd-socket-activate")
            .args(["--listen", &listen, "--fdname=web"])
            .arg(util::example(name))
            .args(["--workers", "2", "--log-level", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (Debian's systemd package)");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("Listening on") => return (child, listen),
                Ok(_) => continue,
                // The tool ended (the port was taken) or said nothing in time.
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{name}: systemd-socket-activate never listened");
}

#[test]
fn socket_activation_serves_on_the_passed_socket() {
    for (name, extra) in [
        ("handoff_server", &[][..]),
        ("shared_listener_server", &["--accept", "exclusive"][..]),
    ] {
        let (mut child, listen) = activate(name, extra);
        // The tool starts the server at the first connection.
        let first = std::net::TcpStream::connect(&listen).unwrap();
        // Hand the child over to the usual helper: it reads the listening line.
        let stdout = child.stdout.take().unwrap();
        let server = util::adopt(name, child, stdout);
        assert_eq!(
            server.addr.to_string(),
            listen,
            "{name} listens where systemd bound"
        );
        // The connection made before the server started waited in the backlog.
        drop(first);
        let data = util::payload(3, 100_000);
        for _ in 0..20 {
            assert_eq!(util::echo(server.addr, &data), data, "{name}");
        }
        server.stop(name);
    }
}

/// Reads notifications until one has every `want` line, or 30 s pass.
fn expect(socket: &UnixDatagram, want: &[&str], seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no notification with {want:?}; got {seen:#?}"
        );
        socket.set_read_timeout(Some(left)).unwrap();
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg.clone());
        if want
            .iter()
            .all(|w| msg.lines().any(|l| l == *w || l.starts_with(w)))
        {
            return msg;
        }
    }
}

fn field<'a>(msg: &'a str, key: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {msg:?}"))
}

fn monotonic_usec() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is writable; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32).as_micros()
}

#[test]
fn the_supervisor_notifies_systemd() {
    for name in util::SERVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let mut cmd = util::server_command(util::example(name));
        cmd.args(["--workers", "2"])
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000");
        let server = util::start_command(name, cmd);
        let pid = server.child.id();
        let mut seen = Vec::new();
        let ready = expect(&socket, &["READY=1", "MAINPID=", "STATUS="], &mut seen);
        assert_eq!(field(&ready, "MAINPID="), pid.to_string(), "{name}");
        assert_eq!(
            field(&ready, "STATUS="),
            "2 of 2 workers ready, generation 1",
            "{name}"
        );
        // The watchdog, at half of WATCHDOG_USEC.
        expect(&socket, &["WATCHDOG=1"], &mut seen);
        expect(&socket, &["WATCHDOG=1"], &mut seen);
        // The workers do not see the variables.
        for (worker, _) in util::children(pid) {
            let env = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
            for var in env.split(|&b| b == 0) {
                assert!(
                    !var.starts_with(b"NOTIFY_SOCKET=") && !var.starts_with(b"WATCHDOG_"),
                    "{name}: worker {worker} has {}",
                    String::from_utf8_lossy(var)
                );
            }
        }
        // A rolling restart: RELOADING=1 with the time it began, then READY=1.
        let before = monotonic_usec();
        server.signal(libc::SIGHUP);
        let reloading = expect(&socket, &["RELOADING=1", "MONOTONIC_USEC="], &mut seen);
        let at: u128 = field(&reloading, "MONOTONIC_USEC=").parse().unwrap();
        assert!(
            before <= at && at <= monotonic_usec(),
            "{name}: MONOTONIC_USEC {at} is not the reload's time"
        );
        let reloaded = expect(&socket, &["READY=1"], &mut seen);
        assert!(!reloaded.contains("MAINPID="), "{name}: {reloaded:?}");
        // A graceful stop.
        server.signal(libc::SIGTERM);
        expect(&socket, &["STOPPING=1"], &mut seen);
        assert_eq!(
            server.wait(Duration::from_secs(30)).code(),
            Some(0),
            "{name}"
        );
        // In order: nothing after STOPPING=1 but status.
        let stopping = seen.iter().position(|m| m.contains("STOPPING=1")).unwrap();
        assert!(
            seen[..stopping]
                .iter()
                .filter(|m| m.contains("READY=1"))
                .count()
                == 2,
            "{name}: {seen:#?}"
        );
    }
}

#[test]
fn malformed_activation_is_refused_and_foreign_variables_ignored() {
    let server = util::example("handoff_server");
    // Descriptor 3 is a file, not a socket; LISTEN_PID is the shell's pid, which the
    // server keeps through `exec`.
    for (setup, expected) in [
        ("exec 3</dev/null; LISTEN_FDS=1", "not a socket"),
        ("LISTEN_FDS=one", "LISTEN_FDS"),
        (
            "exec 3</dev/null; LISTEN_FDS=1 LISTEN_FDNAMES=a:b",
            "LISTEN_FDNAMES",
        ),
    ] {
        let script = format!("{setup} LISTEN_PID=$$ exec \"$0\" --listen 127.0.0.1:0 --workers 1");
        let out = Command::new("sh")
            .args(["-c", &script])
            .arg(&server)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setup}: started anyway");
        assert!(stderr.contains(expected), "{setup}: {stderr}");
    }
    // Variables meant for another process are not ours: the server binds by itself.
    let mut cmd = util::server_command(&server);
    cmd.args(["--workers", "1"])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1");
    let running = util::start_command("handoff_server", cmd);
    assert_eq!(util::echo(running.addr, b"ok"), b"ok");
    running.stop("handoff_server");
}

/// Starts `name` on `listener` the way systemd's socket activation does: the socket
/// as descriptor 3, `LISTEN_FDS`, `LISTEN_FDNAMES` and this child's `LISTEN_PID`.
fn start_on(name: &str, listener: &std::net::TcpListener) -> util::Running {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    // The shell learns its pid and keeps it through `exec`.
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(util::example(name))
        .args(["--workers", "2", "--log-level", "warn"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web");
    // SAFETY: dup2 and fcntl are async-signal-safe; the descriptor outlives the
    // spawn.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it instead.
            let r = match fd {
                3 => libc::fcntl(3, libc::F_SETFD, 0),
                _ => libc::dup2(fd, 3),
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    util::start_command(name, cmd)
}

/// Connects 5 clients to `addr` while no supervisor serves it, each sending a line:
/// they wait in the socket's backlog.
fn queue(name: &str, addr: std::net::SocketAddr) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..5)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("{name}: connection {i} refused: {e}"));
            c.write_all(format!("queued {i}").as_bytes()).unwrap();
            c
        })
        .collect()
}

/// Each of `queued` gets its line echoed whole, then the end of the stream.
fn expect_served(name: &str, queued: Vec<std::net::TcpStream>) {
    use std::io::Read;
    for (i, mut c) in queued.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back)
            .unwrap_or_else(|e| panic!("{name}: connection {i}: {e}"));
        assert_eq!(back, format!("queued {i}"), "{name}");
    }
}

/// The supervisor dies while systemd (here: the test) keeps the listening socket: the
/// workers finish and leave, connections made meanwhile wait in the socket's backlog,
/// and the supervisor started next on the same socket serves them all: none refused.
#[test]
fn a_supervisor_restarted_on_the_same_socket_serves_what_queued_meanwhile() {
    for name in util::SERVERS {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut first = start_on(name, &listener);
        assert_eq!(util::echo(addr, b"first"), b"first", "{name}");
        first.child.kill().unwrap();
        first.child.wait().unwrap();
        let queued = queue(name, addr);
        let second = start_on(name, &listener);
        expect_served(name, queued);
        second.stop(name);
    }
}

/// Under systemd without a socket unit: the supervisor hands the listener it bound to
/// systemd's descriptor store (`FDSTORE=1`, here a datagram socket the test binds),
/// so that when it dies the socket lives on in systemd, connections queue there, and
/// the next supervisor — started with the stored socket — serves them: none refused.
#[test]
fn a_bound_listener_goes_to_the_descriptor_store_and_outlives_its_supervisor() {
    for name in util::SERVERS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let mut cmd = util::server_command(util::example(name));
        cmd.args(["--workers", "2"]).env("NOTIFY_SOCKET", &path);
        let mut first = util::start_command(name, cmd);
        let addr = first.addr;
        // The store message, among the others.
        let deadline = Instant::now() + Duration::from_secs(30);
        let stored = loop {
            assert!(Instant::now() < deadline, "{name}: nothing stored");
            socket
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let (mut buf, mut fds) = ([0u8; 4096], Vec::new());
            let Ok(n) = herder_fd::recv_fds(&socket, &mut buf, &mut fds, 4) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == "FDSTORE=1") {
                assert!(msg.lines().any(|l| l == "FDNAME=herder-listener"), "{msg}");
                assert_eq!(fds.len(), 1, "{name}: {msg}");
                break std::net::TcpListener::from(fds.pop().unwrap());
            }
        };
        assert_eq!(stored.local_addr().unwrap(), addr, "{name}");
        first.child.kill().unwrap();
        first.child.wait().unwrap();
        let queued = queue(name, addr);
        let second = start_on(name, &stored);
        expect_served(name, queued);
        second.stop(name);
    }
}
