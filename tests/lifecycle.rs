//! Both servers through a rolling restart under load (no failed connection, every
//! worker new), a graceful stop with a request in flight (answered, then exit 0), and
//! privilege separation (`--user`).
#![cfg(target_os = "linux")]

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One HTTP request on a new connection; whether the full answer came back.
fn request(addr: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    if c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    c.read_to_string(&mut out).is_ok() && out.ends_with("Hello, world!")
}

#[test]
fn a_rolling_restart_under_load_fails_no_connection() {
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "2", "--protocol", "http"]);
        let before = util::pids(&util::status(&ctl));
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (stop, ok, failed, addr) =
                    (stop.clone(), ok.clone(), failed.clone(), server.addr);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if request(addr) { &ok } else { &failed }.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        while ok.load(Ordering::SeqCst) < 50 {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.signal(libc::SIGHUP);
        // Wait until every worker is new and ready, under load all along.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = util::status(&ctl);
            let now = util::pids(&s);
            let ready = s["workers"].as_array().unwrap().iter().all(|w| {
                w["state"] == "ready" && w["draining"].as_array().is_some_and(Vec::is_empty)
            });
            if ready
                && now.len() == 2
                && now.iter().all(|p| !before.contains(p))
                && s["generation"] == 2
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the reload did not finish: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let served_after = ok.load(Ordering::SeqCst) + 50;
        while ok.load(Ordering::SeqCst) < served_after {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().unwrap();
        }
        assert_eq!(
            failed.load(Ordering::SeqCst),
            0,
            "{name}: failed connections during the reload (of {})",
            ok.load(Ordering::SeqCst)
        );
        server.stop(name);
    }
}

#[test]
fn a_graceful_stop_answers_the_request_in_flight() {
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "2", "--protocol", "http"]);
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // Half a request; a full one on another connection, so that the first has
        // surely reached a worker (connections are taken in order).
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
        assert!(request(server.addr));
        server.signal(libc::SIGTERM);
        // Once the stop has begun, the rest of the request.
        let deadline = Instant::now() + Duration::from_secs(30);
        while util::status(&ctl)["stopping"] != true {
            assert!(Instant::now() < deadline, "{name}: the stop did not begin");
            std::thread::sleep(Duration::from_millis(5));
        }
        c.write_all(b"\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("Hello, world!"),
            "{name}: {out:?}"
        );
        assert_eq!(
            server.wait(Duration::from_secs(30)).code(),
            Some(0),
            "{name}"
        );
    }
}

/// `(real, effective, saved, filesystem)` user ids and the supplementary groups of
/// `pid`, from `/proc/<pid>/status`.
fn ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Groups:"))
}

/// The Unix sockets `pid` holds and the path each is bound to, if any (from
/// `/proc/<pid>/fd` and `/proc/net/unix`).
fn unix_sockets(pid: u32) -> Vec<(u64, Option<String>)> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let bound: std::collections::HashMap<u64, Option<String>> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(6)?.parse().ok()?, f.get(7).map(|p| p.to_string())))
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let inode = l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            let inode: u64 = inode.parse().ok()?;
            Some((inode, bound.get(&inode)?.clone()))
        })
        .collect()
}

/// Privilege separation, as root: `--user nobody` runs the workers as nobody (and
/// nobody's group only), replacements too; the supervisor keeps root unless
/// `--unprivileged-supervisor`; the control socket is 0600 and nobody's processes
/// cannot use it; a worker's only Unix sockets are its channel, bound to no path.
#[test]
fn workers_run_as_nobody() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("HERDER_SKIP_ROOT_TESTS").is_some(),
            "this test switches users and must run as root; set HERDER_SKIP_ROOT_TESTS=1 to skip it"
        );
        eprintln!("skipped: not root (HERDER_SKIP_ROOT_TESTS)");
        return;
    }
    const NOBODY: u32 = 65534;
    let cases: [(&str, &[&str], u32); 3] = [
        ("handoff_server", &[], 0),
        ("handoff_server", &["--unprivileged-supervisor"], NOBODY),
        (
            "shared_listener_server",
            &["--accept", "flock", "--unprivileged-supervisor"],
            NOBODY,
        ),
    ];
    for (name, extra, supervisor_uid) in cases {
        let what = format!("{name} {extra:?}");
        let mut args = vec!["--workers", "2", "--user", "nobody", "--group", "nogroup"];
        args.extend_from_slice(extra);
        // The program where `nobody` can reach it, wherever the checkout is (root's
        // home is closed to others).
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = dir.path().join(name);
        std::fs::copy(util::example(name), &program).unwrap();
        let ctl = dir.path().join("ctl.sock");
        let mut cmd = util::server_command(&program);
        cmd.args(&args).arg("--control").arg(&ctl);
        let server = util::start_command(name, cmd);
        let supervisor = server.child.id();
        assert_eq!(ids(supervisor).0, [supervisor_uid; 4], "{what}: supervisor");
        let workers = util::pids(&util::status(&ctl));
        assert_eq!(workers.len(), 2, "{what}");
        for &w in &workers {
            let (uids, groups) = ids(w as u32);
            assert_eq!(uids, [NOBODY; 4], "{what}: worker {w}");
            assert_eq!(groups, [NOBODY], "{what}: worker {w}'s groups");
            let sockets = unix_sockets(w as u32);
            assert!(!sockets.is_empty(), "{what}: worker {w} has no channel");
            assert!(
                sockets.iter().all(|(_, path)| path.is_none()),
                "{what}: worker {w} holds a Unix socket bound to a path: {sockets:?}"
            );
        }
        // It serves.
        let data = util::payload(7, 64 * 1024);
        assert_eq!(util::echo(server.addr, &data), data, "{what}");
        // The control socket: root's own, 0600, refused to nobody's processes.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(&ctl).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o777, meta.uid()),
            (0o600, 0),
            "{what}"
        );
        use std::os::unix::process::CommandExt;
        let herderctl = dir.path().join("herderctl");
        std::fs::copy(util::example("herderctl"), &herderctl).unwrap();
        let as_nobody = std::process::Command::new(&herderctl)
            .arg("--control")
            .arg(&ctl)
            .arg("stop")
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        assert!(
            !as_nobody.status.success(),
            "{what}: nobody controlled the pool"
        );
        // A worker killed is replaced by another nobody.
        replacement_runs_as_nobody(&ctl, &workers, workers[0], &what);
        server.stop(&what);
    }

    // A program the workers' user cannot reach: the server says so at once, and
    // what to change, rather than retry starts that cannot succeed.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let program = dir.path().join("handoff_server");
    std::fs::copy(util::example("handoff_server"), &program).unwrap();
    let mut child = util::server_command(&program)
        .args(["--workers", "1", "--user", "nobody", "--group", "nogroup"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a server whose workers cannot run the program kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(
        err.contains("cannot run the program") && err.contains("is not searchable by uid 65534"),
        "{err}"
    );
}

/// Kills worker `victim` of `before` and checks that its replacement runs as nobody.
fn replacement_runs_as_nobody(ctl: &std::path::Path, before: &[u64], victim: u64, what: &str) {
    // SAFETY: kill sends a signal to a worker this test's server started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let replacement = loop {
        let s = util::status(ctl);
        let new = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "ready")
            .filter_map(|w| w["pid"].as_u64())
            .find(|p| !before.contains(p));
        if let Some(new) = new {
            break new;
        }
        assert!(Instant::now() < deadline, "{what}: no replacement");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ids(replacement as u32).0, [65534; 4], "{what}: replacement");
}

/// One scrape of `--metrics`: the body, parsed into `name{labels}` → value.
fn scrape(addr: &str, path: &str) -> (String, std::collections::HashMap<String, u64>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let values = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    (head.lines().next().unwrap().to_string(), values)
}

/// The sum of a metric over its labels.
fn total(values: &std::collections::HashMap<String, u64>, name: &str) -> u64 {
    values
        .iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_follow_the_pool() {
    for (name, extra) in [
        ("handoff_server", &[][..]),
        ("shared_listener_server", &[][..]),
        ("shared_listener_server", &["--accept", "flock"][..]),
    ] {
        let locked = !extra.is_empty();
        let metrics = format!("127.0.0.1:{}", util::free_port());
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(
            name,
            &[&["--workers", "2", "--metrics", &metrics][..], extra].concat(),
        );
        for i in 0..5 {
            assert_eq!(util::echo(server.addr, &[i; 10]), [i; 10]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let wait = |what: &str, pred: &dyn Fn(&std::collections::HashMap<String, u64>) -> bool| {
            loop {
                let (status, values) = scrape(&metrics, "/metrics");
                assert_eq!(status, "HTTP/1.1 200 OK", "{name}");
                if pred(&values) {
                    return values;
                }
                assert!(Instant::now() < deadline, "{name}: {what}: {values:?}");
                std::thread::sleep(Duration::from_millis(25));
            }
        };
        let v = wait("5 accepted", &|v| {
            total(v, "herder_worker_accepted_total") == 5
        });
        assert_eq!(v["herder_workers{state=\"ready\"}"], 2, "{name}");
        assert_eq!(v["herder_generation"], 1, "{name}");
        if name == "handoff_server" {
            assert_eq!(v["herder_handoffs_total"], 5, "{name}");
            assert_eq!(v["herder_handoffs_shed_total"], 0, "{name}");
        }
        // With a lock, the worker without it keeps finding it held; without one, never.
        if locked {
            wait("lock waits", &|v| {
                total(v, "herder_worker_accept_lock_waits_total") > 0
            });
        } else {
            assert_eq!(
                total(&v, "herder_worker_accept_lock_waits_total"),
                0,
                "{name}"
            );
        }
        // A worker killed: a restart counted.
        let victim = util::pids(&util::status(&ctl))[0];
        // SAFETY: kills a worker of the server this test started.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        wait("the restart", &|v| {
            total(v, "herder_worker_restarts_total") == 1
                && v["herder_workers{state=\"ready\"}"] == 2
        });
        // A rolling restart: counted, and the generation moves — and an open
        // connection moves to the new generation, counted too.
        let mut held = std::net::TcpStream::connect(server.addr).unwrap();
        held.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let echo = |c: &mut std::net::TcpStream, b: &[u8]| {
            use std::io::{Read, Write};
            c.write_all(b).unwrap();
            let mut back = vec![0u8; b.len()];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, b, "{name}");
        };
        echo(&mut held, b"before");
        server.signal(libc::SIGHUP);
        wait("the reload", &|v| {
            v["herder_reloads_total"] == 1
                && v["herder_generation"] == 2
                && v["herder_connections_moved_total"] == 1
        });
        echo(&mut held, b"after");
        assert_eq!(
            wait("no move kept", &|_| true)["herder_connections_move_kept_total"],
            0,
            "{name}"
        );
        let (status, _) = scrape(&metrics, "/elsewhere");
        assert!(status.starts_with("HTTP/1.1 404"), "{name}: {status}");
        // The client ends its stream, or the stop would serve it to the deadline.
        drop(held);
        server.stop(name);
    }
}

/// `--log-format json`: every line a JSON object; the pool's own lines (from
/// herder-pool, through `tracing`) carry the supervisor's pid and structured fields.
#[test]
fn logs_are_json_lines_with_the_crates_events() {
    let mut cmd = std::process::Command::new(util::example("shared_listener_server"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]);
    let server = util::start_command("shared_listener_server", cmd);
    let supervisor = server.child.id();
    let victim = util::children(supervisor)[0].0;
    // SAFETY: kills a worker of the server this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.logged("restarting it").is_empty() {
        assert!(Instant::now() < deadline, "no line about the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log.clone();
    server.stop("shared_listener_server");
    let lines = log.lock().unwrap().clone();
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let exited = parsed
        .iter()
        .find(|v| v["fields"]["message"] == "worker exited; restarting it")
        .expect("the pool's line about the exit");
    assert_eq!(exited["level"], "WARN");
    assert_eq!(exited["target"], "herder_pool::pool");
    assert_eq!(exited["fields"]["pid"], victim);
    assert_eq!(exited["span"]["pid"], supervisor);
    assert_eq!(exited["span"]["role"], "supervisor");
    assert!(
        parsed
            .iter()
            .any(|v| v["fields"]["message"] == "stopped" && v["span"]["pid"] == supervisor),
        "no line about the stop"
    );
}
