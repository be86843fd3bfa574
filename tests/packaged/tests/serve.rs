//! Both smallest servers, built from the packaged crates, driven by real clients:
//! every echo exact, a killed worker replaced without a failed connection for
//! others, and a graceful stop that exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `program` on a free loopback port with 2 workers; its address.
fn start(program: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(program)
        .args(["127.0.0.1:0", "2"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no `listening on` line");
    let addr = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    (child, addr)
}

fn echo(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    back
}

/// Worker pids: the supervisor's children, from `/proc`.
fn children(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = rest.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == pid && !rest.starts_with('Z') {
            kids.push(child);
        }
    }
    kids
}

fn exercise(program: &str) {
    let (mut child, addr) = start(program);
    for i in 0..50 {
        let data = format!("client {i} ").repeat(100);
        assert_eq!(echo(addr, data.as_bytes()), data.as_bytes(), "{program}");
    }
    // A worker killed: new connections are served all the while.
    let kids = children(child.id());
    assert_eq!(kids.len(), 2, "{program}: {kids:?}");
    // SAFETY: a worker of the server this test started.
    unsafe { libc::kill(kids[0] as i32, libc::SIGKILL) };
    for i in 0..50 {
        let data = format!("after {i}");
        assert_eq!(echo(addr, data.as_bytes()), data.as_bytes(), "{program}");
    }
    // SAFETY: the server this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} did not stop");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{program}: {status}");
}

#[test]
fn the_smallest_handoff_server_serves() {
    exercise(env!("CARGO_BIN_EXE_handoff"));
}

#[test]
fn the_smallest_shared_listener_server_serves() {
    exercise(env!("CARGO_BIN_EXE_shared"));
}
