//! Measures the memory a herder-reactor server spends per idle connection.
//!
//! Starts a copy of itself as an echo server (a `Server` with one listener on
//! 127.0.0.1), opens N connections to it (10 000 by default), makes one round trip on
//! each so that every one is accepted and served, and prints the server process's
//! resident memory (`VmRSS`) before and after, per connection:
//!
//! ```text
//! cargo run --release --example idle_connections -- 10000
//! ```
//!
//! Kernel memory for the sockets themselves is not in a process's RSS and is not
//! counted.

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("idle_connections reads /proc and runs on Linux only");
}

#[cfg(target_os = "linux")]
mod linux {
    use anyhow::{Context, bail};
    use herder_reactor::{Flow, Input, Output, Server, ServerConfig, Service};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Command, Stdio};

    const ROLE: &str = "HERDER_IDLE_SERVER";

    struct Echo;
    impl Service for Echo {
        fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
            out.write(input.data());
            input.consume(input.len());
            Flow::Continue
        }
    }

    fn raise_nofile() -> anyhow::Result<u64> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write one rlimit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                bail!("getrlimit: {}", std::io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is u32 on some 32-bit targets
        Ok(lim.rlim_cur as u64)
    }

    fn rss_kib(pid: u32) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?)
    }

    fn server() -> anyhow::Result<()> {
        raise_nofile()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let mut server = Server::new(ServerConfig::default(), |_| Echo)?;
        server.add_listener(listener)?;
        let mut events = Vec::new();
        // Serves until the parent closes our stdin.
        let stdin_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stdin_closed.clone();
        let waker = server.waker();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = waker.wake();
        });
        while !stdin_closed.load(std::sync::atomic::Ordering::SeqCst) {
            server.poll(&mut events, None)?;
        }
        Ok(())
    }

    pub(crate) fn main() -> anyhow::Result<()> {
        if std::env::var_os(ROLE).is_some() {
            return server();
        }
        let n: usize = std::env::args()
            .nth(1)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(10_000);
        let limit = raise_nofile()?;
        if (n as u64) + 64 > limit {
            bail!("{n} connections need more descriptors than RLIMIT_NOFILE allows ({limit})");
        }
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .context("no listening line")?
            .to_string();
        let pid = child.id();

        // One connection first, so the loop's own buffers are allocated before.
        let mut warm = TcpStream::connect(&addr)?;
        round_trip(&mut warm)?;
        let before = rss_kib(pid)?;

        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(TcpStream::connect(&addr)?);
        }
        for c in &mut conns {
            round_trip(c)?;
        }
        let after = rss_kib(pid)?;
        let per_conn = (after.saturating_sub(before) * 1024) as f64 / n as f64;
        println!("idle connections: {n}");
        println!("server RSS before: {before} KiB, after: {after} KiB");
        println!("per idle connection: {per_conn:.0} bytes");

        drop(conns);
        drop(child.stdin.take());
        let status = child.wait()?;
        if !status.success() {
            bail!("server exited with {status}");
        }
        Ok(())
    }

    fn round_trip(c: &mut TcpStream) -> anyhow::Result<()> {
        c.write_all(b"x")?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)?;
        Ok(())
    }
}
