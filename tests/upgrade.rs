//! Zero-downtime binary upgrade (`SIGUSR2` and `herderctl upgrade`): under a client
//! loop, a new supervisor takes over with every pid new and no connection failed; a
//! binary that exits at start is rolled back from, and the old supervisor goes on.
#![cfg(target_os = "linux")]

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Waits (bounded) until `status` satisfies `pred`, and returns it.
fn wait_status(
    ctl: &std::path::Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The control socket may be between its two owners for a moment.
        if let Ok(s) = std::panic::catch_unwind(|| util::status(ctl)) {
            if pred(&s) {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "{what}: timed out");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn all_ready(s: &serde_json::Value, n: usize) -> bool {
    let w = s["workers"].as_array().unwrap();
    w.len() == n && w.iter().all(|w| w["state"] == "ready")
}

/// Puts `content` at `path` the way a package manager does: a new file renamed over
/// the old one (the running program keeps its own).
fn replace(path: &std::path::Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn an_upgrade_under_load_fails_no_connection_and_a_broken_binary_is_rolled_back() {
    // The new supervisor is the old one's child; once the old one exits it becomes
    // ours, so that this test can stop it and reap it.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain flag.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    for (name, extra) in [
        ("handoff_server", &[][..]),
        ("shared_listener_server", &["--accept", "flock"][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join(name);
        let real = std::fs::read(util::example(name)).unwrap();
        replace(&binary, &real);
        let ctl = dir.path().join("ctl.sock");
        let metrics = format!("127.0.0.1:{}", util::free_port());
        let mut cmd = util::server_command(&binary);
        cmd.args(["--metrics", &metrics]);
        cmd.args(["--workers", "2", "--protocol", "http"])
            .args(extra)
            .arg("--control")
            .arg(&ctl);
        let server = util::start_command(name, cmd);
        let addr = server.addr;
        let old = util::status(&ctl);
        let old_pids = util::pids(&old);

        // Clients: HTTP requests on new connections, all the time. (HTTP, not echo: a
        // draining worker closes a connection between requests, and only HTTP says
        // where a request ends; an echo connection can look idle mid-exchange.)
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let got = std::panic::catch_unwind(|| util::get(addr));
                        if got.is_ok_and(|answer| answer.ends_with("Hello, world!")) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();

        // A binary that exits at start: the upgrade is abandoned, nothing changes.
        replace(&binary, b"#!/bin/sh\nexit 3\n");
        server.signal(libc::SIGUSR2);
        let s = wait_status(&ctl, "the rollback", |s| {
            s["upgrading"].is_null() && s["upgrade_failed"].is_string()
        });
        assert!(
            s["upgrade_failed"]
                .as_str()
                .unwrap()
                .contains("exit status: 3"),
            "{name}: {s}"
        );
        assert_eq!(s["pid"], old["pid"], "{name}: the supervisor changed");
        assert_eq!(util::pids(&s), old_pids, "{name}: the workers changed");

        // The real binary again, through the control socket this time.
        replace(&binary, &real);
        let out = std::process::Command::new(util::example("herderctl"))
            .arg("--control")
            .arg(&ctl)
            .arg("upgrade")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let new = wait_status(&ctl, "the new supervisor", |s| {
            s["pid"] != old["pid"] && all_ready(s, 2)
        });
        // The old supervisor drains and exits by itself.
        assert_eq!(
            server.wait(Duration::from_secs(30)).code(),
            Some(0),
            "{name}: the old supervisor's exit"
        );
        // The metrics listener went over too: the new supervisor answers on it.
        let mut c = std::net::TcpStream::connect(&metrics).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        use std::io::{Read, Write};
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut scraped = String::new();
        c.read_to_string(&mut scraped).unwrap();
        assert!(
            scraped.contains("herder_workers{state=\"ready\"} 2"),
            "{name}: {scraped}"
        );
        let served_before = ok.load(Ordering::Relaxed);
        // Serving goes on under the new supervisor.
        let deadline = Instant::now() + Duration::from_secs(30);
        while ok.load(Ordering::Relaxed) < served_before + 50 {
            assert!(
                Instant::now() < deadline,
                "{name}: no exchange after the upgrade"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let new_pid = new["pid"].as_u64().unwrap() as u32;
        let new_pids = util::pids(&new);
        assert!(
            new_pids.iter().all(|p| !old_pids.contains(p)),
            "{name}: old workers {old_pids:?} remain in {new_pids:?}"
        );
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        println!("upgrade {name}: {ok} exchanges, {failed} failed");
        assert_eq!(failed, 0, "{name}: connections failed across the upgrade");

        // Stop the new supervisor (our child now) and reap it.
        // SAFETY: signals the supervisor this test's server started.
        unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is writable.
        let r = unsafe { libc::waitpid(new_pid as i32, &mut status, 0) };
        assert_eq!(
            r, new_pid as i32,
            "{name}: the new supervisor is not ours to reap"
        );
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{name}: the new supervisor's exit {status:#x}"
        );
    }
}

/// A stop while an upgrade is in progress stops the new supervisor too: it must not
/// outlive the stop the operator asked for.
#[test]
fn a_stop_during_an_upgrade_ends_the_new_supervisor() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain flag.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("handoff_server");
    replace(
        &binary,
        &std::fs::read(util::example("handoff_server")).unwrap(),
    );
    let ctl = dir.path().join("ctl.sock");
    let mut cmd = util::server_command(&binary);
    cmd.args(["--workers", "1"]).arg("--control").arg(&ctl);
    let server = util::start_command("handoff_server", cmd);
    // A new binary that never gets ready.
    replace(&binary, b"#!/bin/sh\nexec sleep 120\n");
    server.signal(libc::SIGUSR2);
    let s = wait_status(&ctl, "the upgrade under way", |s| s["upgrading"].is_u64());
    let new = s["upgrading"].as_u64().unwrap() as i32;
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(30)).code(), Some(0));
    // It was told to stop: either the old supervisor reaped it before exiting, or
    // it became our child (as the subreaper) and is reaped here.
    let mut status = 0;
    // SAFETY: waits for a process that is ours (directly, or as the subreaper).
    let r = unsafe { libc::waitpid(new, &mut status, 0) };
    if r == new {
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM,
            "the new supervisor ended with {status:#x}"
        );
    } else {
        // SAFETY: kill with signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(new, 0) } == 0;
        assert!(!alive, "the new supervisor {new} outlived the stop");
    }
}
