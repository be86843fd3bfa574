//! Hands TCP connections from one process to another with herder-fd.
//!
//! The parent listens on 127.0.0.1 (port 0 by default), starts a copy of this
//! program as its worker with a channel between them, accepts connections and hands
//! each one to the worker together with a connection id, the peer address and the
//! bytes it has already read. The worker echoes every connection, prefixed with its
//! pid, on its own. With `--demo N` the parent also plays N clients and checks the
//! replies, then exits; without it, it serves until interrupted:
//!
//! ```text
//! cargo run --example fd_handoff -- --demo 5
//! cargo run --example fd_handoff -- --listen 127.0.0.1:7000   # then: nc 127.0.0.1 7000
//! ```

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!(
        "fd_handoff uses Unix channels; on Windows see herder_fd::Channel and the windows_handoff test."
    );
}

#[cfg(unix)]
mod unix {
    use anyhow::{Context, bail};
    use herder_fd::{Channel, Handoff};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::process::Command;

    pub(crate) fn main() -> anyhow::Result<()> {
        if let Some(ch) = Channel::from_env().context("adopting the channel")? {
            return worker(ch);
        }
        let mut listen = "127.0.0.1:0".to_string();
        let mut demo = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--listen" => listen = args.next().context("--listen needs an address")?,
                "--demo" => {
                    demo = Some(
                        args.next()
                            .context("--demo needs a count")?
                            .parse::<u64>()?,
                    )
                }
                "-h" | "--help" => {
                    println!("usage: fd_handoff [--listen ADDR] [--demo N]");
                    return Ok(());
                }
                other => bail!("unknown argument {other:?}; try --help"),
            }
        }
        let listener = TcpListener::bind(&listen).with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let (mut ch, end) = Channel::pair_for_child()?;
        let mut child = end.spawn(&mut Command::new(std::env::current_exe()?))?;
        println!("listening on {addr}");
        eprintln!(
            "parent {}: worker {} started",
            std::process::id(),
            child.id()
        );

        let clients = demo.map(|n| std::thread::spawn(move || play_clients(addr, n)));
        let mut id = 0;
        for conn in listener.incoming() {
            let mut conn = conn?;
            id += 1;
            let peer = conn.peer_addr().ok();
            // Read what has already arrived, to show the "bytes already read" field.
            conn.set_nonblocking(true)?;
            let mut early = [0u8; 64];
            let n = conn.read(&mut early).unwrap_or(0);
            conn.set_nonblocking(false)?;
            ch.send_socket(
                &conn,
                &Handoff {
                    id,
                    peer,
                    data: &early[..n],
                },
            )?;
            drop(conn);
            if demo == Some(id) {
                break;
            }
        }
        if let Some(clients) = clients {
            clients.join().expect("client thread")?;
        }
        drop(ch); // the worker sees end of stream and exits
        let status = child.wait()?;
        if !status.success() {
            bail!("worker exited with {status}");
        }
        Ok(())
    }

    fn worker(mut ch: Channel) -> anyhow::Result<()> {
        while let Some(got) = ch.recv_socket()? {
            let (id, peer, data) = (got.id, got.peer, got.data.clone());
            let mut conn = got
                .into_tcp_stream()
                .map_err(|_| anyhow::anyhow!("not a TCP stream"))?;
            eprintln!(
                "worker {}: connection #{id} from {peer:?}",
                std::process::id()
            );
            std::thread::spawn(move || -> std::io::Result<()> {
                write!(conn, "worker {} echoes #{id}: ", std::process::id())?;
                conn.write_all(&data)?;
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf)? {
                        0 => return Ok(()),
                        n => conn.write_all(&buf[..n])?,
                    }
                }
            });
        }
        Ok(())
    }

    fn play_clients(addr: std::net::SocketAddr, n: u64) -> anyhow::Result<()> {
        for i in 1..=n {
            let mut c = TcpStream::connect(addr)?;
            write!(c, "hello {i}")?;
            c.shutdown(Shutdown::Write)?;
            let mut reply = String::new();
            c.read_to_string(&mut reply)?;
            println!("client {i}: {reply}");
            if !reply.ends_with(&format!("hello {i}")) {
                bail!("client {i}: unexpected reply {reply:?}");
            }
        }
        Ok(())
    }
}
