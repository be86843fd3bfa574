//! Both example servers on Windows (run under Wine in CI): 2 workers on
//! 127.0.0.1, 200 concurrent echo clients byte-exact, a terminated worker replaced
//! while new connections keep succeeding, both workers serving (each reports its
//! count when it exits), and a graceful stop through the pool's stop event.
#![cfg(windows)]

#[path = "util/client.rs"]
mod client;

use client::{echo, payload};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(format!("{name}.exe"))
}

/// Waits (60 s at most) until a line of `log` satisfies `pred`; returns it.
fn logged(log: &Mutex<Vec<String>>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = log.lock().unwrap().iter().find(|l| pred(l)) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:#?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The worker's pid in a `worker started slot=S pid=P generation=G` log line (the
/// supervisor's own pid is in its span, `pid=P role="supervisor"`).
fn spawned_pid(line: &str) -> u32 {
    line.split(" pid=")
        .last()
        .and_then(|rest| rest.split([',', ' ']).next())
        .unwrap()
        .parse()
        .unwrap()
}

fn terminate(pid: u32) {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_TERMINATE, TerminateProcess};
    // SAFETY: opens a worker of the server this test started, terminates it, closes
    // the handle.
    unsafe {
        let h = OpenProcess(PROCESS_TERMINATE, 0, pid);
        assert!(!h.is_null(), "OpenProcess({pid})");
        assert_ne!(TerminateProcess(h, 9), 0);
        CloseHandle(h);
    }
}

#[test]
fn servers_on_windows() {
    for (name, extra) in [
        ("shared_listener_server", &["--accept", "mutex"][..]),
        ("handoff_server", &[][..]),
    ] {
        one_server(name, extra);
    }
}

fn one_server(name: &'static str, extra: &[&str]) {
    use std::os::windows::process::CommandExt;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x200;
    let mut child = Command::new(example(name))
        .args(["--listen", "127.0.0.1:0", "--workers", "2"])
        .args(extra)
        .creation_flags(CREATE_NEW_PROCESS_GROUP)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            lines.lock().unwrap().push(line);
        }
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{first:?}"))
        .parse()
        .unwrap();

    // 200 clients at once, each with its own payload, byte-exact.
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = payload(i, 32_768);
                assert_eq!(echo(addr, &data), data, "{name}: client {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }

    // Terminate the worker of slot 0: it is replaced, and connections keep working.
    let victim = spawned_pid(&logged(&log, "slot 0 started", |l| {
        l.contains("worker started slot=0 ")
    }));
    terminate(victim);
    logged(&log, "the replacement", |l| {
        l.contains("worker ready slot=0 ") && !l.ends_with(&format!(" pid={victim}"))
    });
    for i in 0..100u64 {
        let data = payload(1000 + i, 2048);
        assert_eq!(echo(addr, &data), data);
    }

    // A graceful stop through the pool's stop event (what a service manager or a
    // tool uses; headless Wine has no console to send Ctrl-Break to); each worker
    // reports what it accepted.
    herder::pool::request_stop(child.id()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no graceful stop: {:#?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{name}: {status:?}");
    // Every writer of stderr (the supervisor and its workers) is gone once it ends.
    reader.join().unwrap();
    let counts: Vec<u64> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.split("worker exits: accepted ").nth(1))
        .filter_map(|r| r.split(',').next()?.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{:#?}", log.lock().unwrap());
    assert!(
        counts.iter().all(|&n| n > 0),
        "{name}: a worker served nothing: {counts:?}"
    );
}
