//! Half-close, resets and writes to a vanished peer end only the connection
//! concerned; the loop goes on serving others.

mod util;

use herder_reactor::ServerConfig;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

fn echo_once(addr: std::net::SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(msg).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    back
}

/// A connection the server has accepted and served once.
fn served(addr: std::net::SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    c
}

/// Closes with `SO_LINGER` 0, which sends a reset instead of a FIN.
fn reset(c: TcpStream) {
    socket_linger_zero(&c);
    drop(c);
}

#[cfg(unix)]
fn socket_linger_zero(c: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER takes a linger struct; the pointer and length describe `l`.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

#[cfg(windows)]
fn socket_linger_zero(c: &TcpStream) {
    use std::os::windows::io::AsRawSocket;
    use windows_sys::Win32::Networking::WinSock::{LINGER, SO_LINGER, SOL_SOCKET, setsockopt};
    let l = LINGER {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER takes a LINGER struct; the pointer and length describe `l`.
    let r = unsafe {
        setsockopt(
            c.as_raw_socket() as _,
            SOL_SOCKET,
            SO_LINGER,
            (&l as *const LINGER).cast(),
            std::mem::size_of::<LINGER>() as i32,
        )
    };
    assert_eq!(r, 0);
}

#[test]
fn half_close_flushes_then_closes() {
    let (server, closed) = util::echo_server(ServerConfig::default());
    assert_eq!(echo_once(server.addr, b"half-closed"), b"half-closed");
    util::wait_for("close", || closed.lock().unwrap().len() == 1);
    assert_eq!(closed.lock().unwrap()[0], "Eof");
    server.stop();
}

#[test]
fn resets_and_vanished_peers_do_not_stop_the_loop() {
    let (server, closed) = util::echo_server(ServerConfig::default());

    // A reset while the server has nothing to say.
    let c = served(server.addr);
    reset(c);

    // A peer that sends a lot and resets before reading the echo: the server's
    // write fails (EPIPE / ECONNRESET).
    let mut c = served(server.addr);
    c.write_all(&vec![7u8; 256 * 1024]).unwrap_or(());
    reset(c);

    util::wait_for("both closed", || closed.lock().unwrap().len() == 2);
    // Others are served as before.
    for i in 0..20 {
        let msg = format!("still serving {i}");
        assert_eq!(echo_once(server.addr, msg.as_bytes()), msg.as_bytes());
    }
    let stats = server.stop();
    assert_eq!(stats.accepted, 22);
    let reasons = closed.lock().unwrap().clone();
    assert!(
        reasons[..2].iter().all(|r| r == "Error" || r == "Eof"),
        "{reasons:?}"
    );
    // Linux reports a reset to the reader as ECONNRESET. Wine's sockets at
    // times report it as an end of file instead (seen once in 20-odd runs), so
    // there the reason is not checked; that the loop went on serving is.
    #[cfg(unix)]
    assert!(
        reasons[..2].iter().any(|r| r == "Error"),
        "a reset is an error: {reasons:?}"
    );
}
