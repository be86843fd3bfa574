//! Both servers at a descriptor limit of 64 (`RLIMIT_NOFILE`, inherited by the
//! workers), started with their default flags, while 200 clients connect and hold
//! their connections: the supervisor still answers `status` and does not spin, and
//! once the clients let go a new connection is served at once and the supervisor's
//! descriptors come back to what it had before.
#![cfg(target_os = "linux")]

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The descriptor limit the servers run under.
const NOFILE: u64 = 64;
/// Clients that connect and hold on: far more than 64 descriptors can serve.
const CLIENTS: usize = 200;

/// One echo round trip on a new connection, each step bounded by `limit`.
fn echoed(addr: SocketAddr, limit: Duration) -> bool {
    let Ok(mut c) = TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(limit));
    let mut back = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut back).is_ok() && &back == b"ping"
}

fn out_of_descriptors_and_back(name: &str) {
    let util::Controlled {
        server,
        ctl,
        dir: _dir,
    } = util::start_controlled_limited(name, &[], NOFILE);
    let (addr, pid) = (server.addr, server.child.id());
    assert!(
        echoed(addr, Duration::from_secs(5)),
        "{name}: served at first"
    );
    std::thread::sleep(Duration::from_millis(200));
    let baseline = util::open_fds(pid);

    // 200 clients connect and hold on. Those the server cannot take may be refused,
    // reset or closed: that is its right; hoarding them is not.
    let held: Vec<TcpStream> = (0..CLIENTS)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "{name}: {} of {CLIENTS} connected; the supervisor has {} descriptors open (baseline {baseline})",
        held.len(),
        util::open_fds(pid)
    );

    // While they are held: the control socket answers,
    let asked = Instant::now();
    let status = util::status_within(&ctl, Duration::from_secs(2));
    println!(
        "{name}: status while held: {} after {:?}",
        if status.is_some() {
            "answered"
        } else {
            "no answer"
        },
        asked.elapsed()
    );
    assert!(
        status.is_some(),
        "{name}: no status on the control socket within 2 s while out of descriptors"
    );
    // and the supervisor does not spin.
    let before = util::cpu_time(pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = util::cpu_time(pid) - before;
    println!("{name}: the supervisor used {spent:?} of CPU in 3 s while held");
    assert!(
        spent < Duration::from_millis(500),
        "{name}: the supervisor used {spent:?} of CPU in 3 s while out of descriptors"
    );

    // The clients let go: a new connection is served at once.
    drop(held);
    let released = Instant::now();
    let mut served = false;
    while released.elapsed() < Duration::from_secs(10) {
        if echoed(addr, Duration::from_millis(500)) {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = released.elapsed();
    println!("{name}: first connection served {took:?} after the release (target 100 ms)");
    assert!(
        served,
        "{name}: no connection served within 10 s of the release"
    );
    assert!(
        took < Duration::from_secs(1),
        "{name}: the first connection after the release was served after {took:?}"
    );

    // The hand-off workers ran out too: they refused what they lost, so the
    // supervisor closed its copies instead of waiting for them.
    if name == "handoff_server" {
        assert!(
            !server.logged("hand-off(s) refused").is_empty(),
            "{name}: no worker refused a lost hand-off"
        );
    }

    // And the supervisor's descriptors come back to where they were.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = util::open_fds(pid);
    while open > baseline + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        open = util::open_fds(pid);
    }
    println!(
        "{name}: the supervisor has {open} descriptors open after the release (baseline {baseline})"
    );
    assert!(
        open <= baseline + 2,
        "{name}: {open} descriptors open after the release, {baseline} before"
    );
    server.stop(name);
}

#[test]
fn handoff_server_recovers_from_descriptor_exhaustion() {
    out_of_descriptors_and_back("handoff_server");
}

#[test]
fn shared_listener_server_recovers_from_descriptor_exhaustion() {
    out_of_descriptors_and_back("shared_listener_server");
}
