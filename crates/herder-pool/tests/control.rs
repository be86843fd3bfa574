//! The control socket: status, scale, reload and stop as line-delimited JSON, garbage
//! refused, mode 0600, and a stale socket file replaced.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Command, Pool, PoolEvent};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

#[test]
fn worker_entry() {
    util::worker_main();
}

/// Sends each request and collects each response line.
fn client(
    path: std::path::PathBuf,
    requests: Vec<&'static str>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut out = Vec::new();
        for req in requests {
            c.write_all(req.as_bytes()).unwrap();
            c.write_all(b"\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            out.push(line);
        }
        out
    })
}

#[test]
fn status_scale_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    // A stale socket left by a dead supervisor is replaced. (Stale once nobody holds
    // it: a worker another test forks at this moment holds a copy of every descriptor
    // until its exec closes them.)
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&path).is_ok_and(|_| Instant::now() < deadline) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut pool = Pool::new(util::config(2, "ready"), Vec::new()).unwrap();
    pool.listen_control(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    util::start_ready(&mut pool, 2);

    let requests = vec![
        r#"{"cmd":"status"}"#,
        "this is not json",
        r#"{"cmd":"scale","workers":3}"#,
        r#"{"cmd":"reload"}"#,
        r#"{"cmd":"stop"}"#,
    ];
    let handle = client(path.clone(), requests);
    let mut commands = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(handle.is_finished() && pool.is_stopped()) {
        assert!(Instant::now() < deadline, "control session did not finish");
        let mut events = Vec::new();
        pool.poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        for e in events {
            if let PoolEvent::Command(c) = e {
                commands.push(c);
            }
        }
    }
    let replies = handle.join().unwrap();
    let status: serde_json::Value = serde_json::from_str(&replies[0]).unwrap();
    assert_eq!(status["ok"], true);
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w["slot"], i);
        assert_eq!(w["state"], "ready");
        assert!(w["pid"].as_u64().unwrap() > 0);
        for field in ["generation", "accepted", "active", "restarts", "last_exit"] {
            assert!(w.get(field).is_some(), "status lacks {field}");
        }
    }
    let bad: serde_json::Value = serde_json::from_str(&replies[1]).unwrap();
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("not JSON"));
    let scaled: serde_json::Value = serde_json::from_str(&replies[2]).unwrap();
    assert_eq!(
        (scaled["ok"].clone(), scaled["workers"].clone()),
        (true.into(), 3.into())
    );
    let reload: serde_json::Value = serde_json::from_str(&replies[3]).unwrap();
    assert_eq!(reload["generation"], 2);
    assert_eq!(replies[4].trim(), r#"{"ok":true}"#);
    assert_eq!(
        commands,
        [
            Command::Status,
            Command::Scale(3),
            Command::Reload,
            Command::Stop
        ]
    );
    drop(pool);
    assert!(!path.exists(), "the socket file is removed");
}

#[test]
fn a_live_control_socket_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let mut first = Pool::new(util::config(1, "ready"), Vec::new()).unwrap();
    first.listen_control(&path).unwrap();
    let mut second = Pool::new(util::config(1, "ready"), Vec::new()).unwrap();
    let err = second.listen_control(&path).unwrap_err();
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::AddrInUse
    );
}

#[test]
fn a_path_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let mut pool = Pool::new(util::config(1, "ready"), Vec::new()).unwrap();
    assert!(pool.listen_control(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

/// Another user's process is not answered even when the socket file lets it connect:
/// the supervisor checks the peer's uid. Runs as root (as CI does), to act as nobody.
#[test]
fn another_users_connection_is_closed_unanswered() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("HERDER_SKIP_ROOT_TESTS").is_some(),
            "this test acts as another user and must run as root; set HERDER_SKIP_ROOT_TESTS=1 to skip it"
        );
        eprintln!("skipped: not root (HERDER_SKIP_ROOT_TESTS)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let mut pool = Pool::new(util::config(1, "ready"), Vec::new()).unwrap();
    pool.listen_control(&path).unwrap();
    util::start_ready(&mut pool, 1);
    // Loosen the directory and the file, so that only the uid check stands.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let ask = |as_nobody: bool| {
        let path = path.clone();
        std::thread::spawn(move || {
            // The raw system call changes this thread's effective uid only (libc's
            // wrapper would change every thread's); the real and saved uids stay
            // root's, so the thread can switch back.
            let set_euid = |uid: libc::uid_t| {
                const KEEP: libc::uid_t = libc::uid_t::MAX;
                // SAFETY: setresuid takes plain ids and affects only this thread.
                let r = unsafe { libc::syscall(libc::SYS_setresuid, KEEP, uid, KEEP) };
                assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
            };
            if as_nobody {
                set_euid(65534);
            }
            let c = UnixStream::connect(&path);
            if as_nobody {
                set_euid(0);
            }
            let mut c = c.unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            // The pool may close nobody's connection before the request is written:
            // a failed write is an unanswered request too.
            let mut line = String::new();
            if c.write_all(b"{\"cmd\":\"status\"}\n").is_ok() {
                let _ = BufReader::new(c).read_line(&mut line);
            }
            line
        })
    };
    let nobody = ask(true);
    let root = ask(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(nobody.is_finished() && root.is_finished()) {
        assert!(Instant::now() < deadline, "the clients did not finish");
        pool.poll(&mut Vec::new(), Some(Duration::from_millis(20)))
            .unwrap();
    }
    assert_eq!(nobody.join().unwrap(), "", "nobody was answered");
    let answer: serde_json::Value = serde_json::from_str(&root.join().unwrap()).unwrap();
    assert_eq!(answer["ok"], true, "root was not answered: {answer}");
}
