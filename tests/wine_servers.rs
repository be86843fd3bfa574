//! Both example servers built for Windows, run under Wine with 2 workers on
//! 127.0.0.1 and driven from the Linux side (Wine's sockets are the host's): 200
//! concurrent echo clients byte-exact; `status` over the control pipe shows that both
//! workers accepted connections; a worker terminated with `taskkill /f` is replaced
//! and new connections keep succeeding; a rolling restart brings up a new generation
//! and moves an open byte stream to it;
//! a binary upgrade hands the listener and the control pipe to a new supervisor while
//! the old one serves an open byte stream to its end and exits with 0; `herderctl
//! stop` serves an open byte stream to its end, refuses new connections meanwhile,
//! and ends the server.
//!
//! Needs the Windows build of the examples (`target/cross/x86_64-pc-windows-gnu/
//! debug/examples`, or `HERDER_WINDOWS_EXAMPLES`) and a prepared Wine prefix, both
//! made by `.ci/run`; hence the `wine-tests` feature:
//!
//! ```text
//! cargo test --features wine-tests --test wine_servers
//! ```
#![cfg(unix)]

#[path = "util/client.rs"]
mod client;

use client::{echo, payload};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn windows_example(name: &str) -> PathBuf {
    let dir = std::env::var_os("HERDER_WINDOWS_EXAMPLES").map_or_else(
        || repo().join("target/cross/x86_64-pc-windows-gnu/debug/examples"),
        PathBuf::from,
    );
    let exe = dir.join(format!("{name}.exe"));
    assert!(
        exe.is_file(),
        "{} is missing: build the examples for x86_64-pc-windows-gnu first",
        exe.display()
    );
    exe
}

/// `wine PROGRAM ARGS` through `.ci/wine-run.sh` (the prefix, a time limit), in a
/// process group of its own, output to files: Wine's helper processes can hold
/// inherited pipes open long after the program ended.
fn wine(program: impl AsRef<std::ffi::OsStr>, args: &[&str], out: &Path, err: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new(repo().join(".ci/wine-run.sh"))
        .arg(program)
        .args(args)
        .env("WINE_RUN_TIMEOUT", "300")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(err).unwrap())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Waits for `child` (at most `limit`).
fn wait(child: &mut Child, what: &str, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a short Windows (or Wine builtin) program to its end; its output.
fn run(dir: &Path, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    match try_run(dir, program, args) {
        Ok(stdout) => stdout,
        Err(why) => panic!("{args:?}: {why}"),
    }
}

/// Runs a short Windows (or Wine builtin) program to its end; its output, or why it
/// failed.
fn try_run(
    dir: &Path,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
) -> Result<String, String> {
    let (out, err) = (dir.join("run.out"), dir.join("run.err"));
    let mut child = wine(program, args, &out, &err);
    let status = wait(&mut child, &format!("{args:?}"), Duration::from_secs(120));
    let stdout = std::fs::read_to_string(&out).unwrap();
    match status.success() {
        true => Ok(stdout),
        false => Err(format!(
            "{status}\n{stdout}\n{}",
            std::fs::read_to_string(&err).unwrap_or_default()
        )),
    }
}

/// A server under Wine (2 workers unless `extra` says otherwise), its process group
/// ended if the test fails midway.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    control: String,
    addr: SocketAddr,
    /// The supervisor an upgrade started: Wine starts it outside this test's
    /// process group, so it is ended by its Windows pid.
    successor: Option<u64>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // (Only on a failure: after a stop it is gone, and its pid may be another's.)
        if let Some(pid) = self.successor.filter(|_| std::thread::panicking()) {
            let args = ["/f", "/t", "/pid", &pid.to_string()];
            let _ = try_run(self.dir.path(), "taskkill", &args);
        }
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: signals the process group this test started.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// A server that did not print its address: how it ended (`None`: it still ran at
/// the deadline) and what it printed.
struct NotListening {
    ended: Option<std::process::ExitStatus>,
    out: String,
    err: String,
}

impl Server {
    /// Starts `name` with `extra` flags and waits for its `listening on` line. A
    /// start that ends without a word (seen once in CI on the third server in a
    /// row: Wine's process creation failing, as with the upgrades below) is
    /// tried again, twice at most, as an operator would; the exit is shown.
    fn start(name: &str, extra: &[&str]) -> Server {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Server::try_start(name, extra) {
                Ok(server) => return server,
                Err(NotListening {
                    ended: Some(status),
                    out,
                    err,
                }) if attempt < 3 && out.is_empty() && err.is_empty() => {
                    eprintln!("{name}: exited before a word ({status}); starting it again");
                }
                Err(NotListening { ended, out, err }) => {
                    panic!("{name}: no `listening on` line (exit: {ended:?}): {out:?} {err}")
                }
            }
        }
    }

    /// As [`start`](Self::start), once.
    fn try_start(name: &str, extra: &[&str]) -> Result<Server, NotListening> {
        let dir = tempfile::tempdir().unwrap();
        let control = format!(
            "herder-wine-{name}-{}-{}",
            std::process::id(),
            extra.join("")
        );
        let mut args = vec!["--listen", "127.0.0.1:0"];
        if !extra.contains(&"--workers") {
            args.extend(["--workers", "2"]);
        }
        args.extend(["--log-level", "warn", "--control", &control]);
        args.extend_from_slice(extra);
        let out = dir.path().join("server.out");
        let child = wine(
            windows_example(name),
            &args,
            &out,
            &dir.path().join("server.err"),
        );
        let mut server = Server {
            child,
            dir,
            control,
            addr: "0.0.0.0:0".parse().unwrap(),
            successor: None,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        server.addr = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("listening on ")) {
                break addr.trim().parse().unwrap();
            }
            let ended = server.child.try_wait().unwrap();
            if ended.is_some() || Instant::now() >= deadline {
                // Dropping `server` ends the process group if it still runs.
                return Err(NotListening {
                    ended,
                    out: text,
                    err: server.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.err")).unwrap_or_default()
    }

    /// `herderctl --control NAME ARGS`, under Wine.
    fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["--control", self.control.as_str()];
        all.extend_from_slice(args);
        run(self.dir.path(), windows_example("herderctl"), &all)
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ctl(&["status", "--json"])).unwrap()
    }

    /// `status`, if a supervisor answers on the pipe.
    fn try_status(&self) -> Option<Value> {
        let all = ["--control", self.control.as_str(), "status", "--json"];
        let text = try_run(self.dir.path(), windows_example("herderctl"), &all).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Asks for `status` until `pred` accepts it (60 s at most).
    fn status_until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: {s}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn workers(s: &Value) -> &Vec<Value> {
    s["workers"].as_array().unwrap()
}

fn field(s: &Value, name: &str) -> Vec<u64> {
    workers(s)
        .iter()
        .map(|w| w[name].as_u64().unwrap_or(0))
        .collect()
}

/// Every worker ready, of `generation`.
fn settled(s: &Value, generation: u64) -> bool {
    workers(s)
        .iter()
        .all(|w| w["state"] == "ready" && w["generation"] == generation)
        && workers(s).len() == 2
}

#[test]
fn windows_servers_under_wine() {
    for (name, extra) in [
        ("shared_listener_server", &["--accept", "mutex"][..]),
        ("handoff_server", &["--dispatch", "least-loaded"][..]),
        ("handoff_server", &["--dispatch", "round-robin"][..]),
    ] {
        one_server(name, extra);
    }
}

fn one_server(name: &str, extra: &[&str]) {
    let server = Server::start(name, extra);
    let addr = server.addr;

    // 200 clients at once from Linux, each with its own payload, byte-exact.
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = payload(i, 32_768);
                echo(addr, &data) == data
            })
        })
        .collect();
    let exact = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .filter(|&ok| ok)
        .count();
    assert_eq!(exact, 200, "{name}: byte-exact echoes");

    // Both workers served, as `status` says (the workers report their counts).
    let s = server.status_until("200 connections counted", |s| {
        field(s, "accepted").iter().sum::<u64>() >= 200
    });
    let accepted = field(&s, "accepted");
    println!("{name} {extra:?}: accepted per worker {accepted:?}");
    assert!(
        accepted.iter().all(|&n| n > 0),
        "{name}: a worker served nothing: {s}"
    );
    if extra.contains(&"mutex") {
        // Turns the workers found the named mutex held by the other.
        let waits = server.status_until("lock waits counted", |s| {
            field(s, "lock_waits").iter().sum::<u64>() > 0
        });
        println!("{name}: lock waits {:?}", field(&waits, "lock_waits"));
    }

    // `taskkill /f` the worker of slot 0: it is replaced, connections keep working.
    let victim = workers(&s)[0]["pid"].as_u64().unwrap();
    run(
        server.dir.path(),
        "taskkill",
        &["/f", "/pid", &victim.to_string()],
    );
    let s = server.status_until("the replacement", |s| {
        let w = &workers(s)[0];
        w["pid"].as_u64().is_some_and(|p| p != victim) && w["state"] == "ready"
    });
    assert!(workers(&s)[0]["restarts"].as_u64().unwrap() >= 1, "{s}");
    for i in 0..100u64 {
        let data = payload(1000 + i, 2048);
        assert_eq!(echo(addr, &data), data, "{name}: after the replacement");
    }

    // A rolling restart, with a byte stream open: new workers of generation 2, the
    // old ones gone at once, the stream moved to a new worker and served on.
    use std::io::{Read, Write};
    let exchange = |stream: &mut std::net::TcpStream, byte: u8| {
        let mut back = [0u8; 1];
        stream.write_all(&[byte]).unwrap();
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back[0], byte, "{name}: the open stream");
    };
    let mut open = std::net::TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    exchange(&mut open, b'r');
    let before: Vec<u64> = field(&s, "pid");
    assert_eq!(server.ctl(&["reload"]).trim(), "ok");
    let s = server.status_until("generation 2", |s| {
        settled(s, 2)
            && workers(s)
                .iter()
                .all(|w| w["draining"].as_array().is_some_and(Vec::is_empty))
    });
    assert!(
        field(&s, "pid").iter().all(|p| !before.contains(p)),
        "{name}: old workers remain: {s}"
    );
    assert!(s["moved"].as_u64() >= Some(1), "{name}: nothing moved: {s}");
    for &byte in b"eload" {
        exchange(&mut open, byte);
    }
    drop(open);
    for i in 0..50u64 {
        let data = payload(2000 + i, 2048);
        assert_eq!(echo(addr, &data), data, "{name}: after the reload");
    }

    // A binary upgrade through the control pipe, with a byte stream open: a new
    // supervisor (the same program) takes the listener and, once its workers are
    // ready, the control pipe over; the old one's worker moves the open stream to
    // the new supervisor's workers, and the old supervisor exits with 0 while the
    // stream is still open and served.
    let old = s["pid"].as_u64().unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    exchange(&mut stream, b'u');
    // Wine's `CreateProcess` now and then fails with an internal error (1359); the
    // pool reports that as a failed upgrade and goes on, as it should, and the
    // operator asks again: so does this test, twice at most.
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        let all = ["--control", server.control.as_str(), "upgrade"];
        match try_run(server.dir.path(), windows_example("herderctl"), &all) {
            Err(why) if tries < 3 && why.contains("starting the new program") => {
                println!("{name}: upgrade refused ({}); asking again", why.trim());
            }
            Err(why) => panic!("{name}: upgrade: {why}"),
            Ok(answer) => break answer,
        }
    };
    assert!(!answer.contains("error"), "{name}: {answer}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let s = loop {
        // Between the old supervisor closing the pipe and the new one opening it,
        // nobody answers: ask again.
        if let Some(s) = server
            .try_status()
            .filter(|s| s["pid"] != old && settled(s, 1))
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no new supervisor\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let new = s["pid"].as_u64().unwrap();
    println!("{name}: upgraded from supervisor {old} to {new}");
    let mut server = server;
    server.successor = Some(new);
    let status = wait(
        &mut server.child,
        "the old supervisor, the stream still open",
        Duration::from_secs(60),
    );
    assert!(status.success(), "{name}: {status}\n{}", server.log());
    for &byte in b"pgrade" {
        let mut back = [0u8; 1];
        let r = stream
            .write_all(&[byte])
            .and_then(|()| stream.read_exact(&mut back));
        assert!(
            r.is_ok() && back[0] == byte,
            "{name}: the moved stream: {r:?}\n{}",
            server.log()
        );
    }
    let s = server.status();
    assert!(
        s["moved"].as_u64() >= Some(1),
        "{name}: nothing moved here: {s}"
    );
    for i in 0..50u64 {
        let data = payload(3000 + i, 2048);
        assert_eq!(echo(addr, &data), data, "{name}: after the upgrade");
    }
    drop(stream);

    // A graceful stop through the control pipe, with a byte stream open: the stream
    // is served to its end, new connections are refused meanwhile, and the server
    // exits once the stream closes.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut exchange = |byte: u8| {
        let mut back = [0u8; 1];
        stream.write_all(&[byte]).unwrap();
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back[0], byte, "{name}: the open stream");
    };
    exchange(b'a');
    assert_eq!(server.ctl(&["stop"]).trim(), "ok");
    let stopped = Instant::now();
    let mut refused = None;
    for &byte in b"bcdefghij" {
        std::thread::sleep(Duration::from_millis(100));
        exchange(byte);
        if refused.is_none()
            && std::net::TcpStream::connect(addr)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            refused = Some(stopped.elapsed());
        }
    }
    println!("{name}: new connections refused {refused:?} after the stop");
    assert!(
        refused.is_some(),
        "{name}: new connections still accepted 1 s after the stop"
    );
    drop(stream);
    // The new supervisor is no child of this test's: it is gone once nobody answers
    // on the pipe.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.try_status().is_some() {
        assert!(
            Instant::now() < deadline,
            "{name}: still running after the stop"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `handoff_server --max-connections 1` with one worker: while a connection is open,
/// the next is closed by the supervisor (shed); once it closes, connections are
/// served again.
#[test]
fn the_windows_handoff_server_sheds_over_its_limit() {
    use std::io::{Read, Write};
    // A free port for the metrics endpoint (bound and released here).
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let server = Server::start(
        "handoff_server",
        &[
            "--workers",
            "1",
            "--max-connections",
            "1",
            "--metrics",
            &metrics_addr,
        ],
    );
    let addr = server.addr;
    let mut held = std::net::TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    held.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    held.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"x", "the first connection is served");

    // Over the limit: closed without a byte.
    let mut shed = std::net::TcpStream::connect(addr).unwrap();
    shed.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    match shed.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // Logged as it is shed (the client may see the close first).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("shedding") {
        assert!(Instant::now() < deadline, "not logged: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // And counted, on the metrics endpoint as on Unix.
    let metrics = get_metrics(&metrics_addr);
    for line in [
        "herder_handoffs_shed_total 1",
        "herder_generation 1",
        "herder_handoffs_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} in {metrics}");
    }

    // The held one still works; once it is closed (and the worker has said so),
    // connections are served again.
    held.write_all(b"y").unwrap();
    held.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"y");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let data = payload(7, 100);
        let served = std::panic::catch_unwind(|| echo(addr, &data) == data);
        if served.unwrap_or(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served again: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.ctl(&["stop"]).trim(), "ok");
    let mut server = server;
    let status = wait(&mut server.child, "the stop", Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", server.log());
}

/// `GET /metrics` from a server's metrics endpoint: the body.
fn get_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}
