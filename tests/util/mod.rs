//! Helpers of the end-to-end tests: start an example server as a real process, find
//! its address, stop it.
#![allow(dead_code, unreachable_pub)]

mod client;
// Each test binary uses some of them.
#[allow(unused_imports)]
pub use client::{echo, payload};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Both example servers, for tests that run against each.
pub const SERVERS: [&str; 2] = ["handoff_server", "shared_listener_server"];

/// A running example server.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    /// What the server (and its workers) logged on stderr so far, line by line;
    /// each line is also passed on to the test's stderr.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The path of an example binary, built by `cargo test` next to the test binaries.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(name)
}

/// Starts `name` with `args` on 127.0.0.1 port 0 and waits (30 s at most) for its
/// `listening on` line.
pub fn start(name: &str, args: &[&str]) -> Running {
    start_limited(name, args, None)
}

/// As [`start`], with the server's `RLIMIT_NOFILE` set to `nofile` (its workers
/// inherit it).
pub fn start_limited(name: &str, args: &[&str], nofile: Option<u64>) -> Running {
    raise_nofile();
    let mut cmd = server_command(example(name));
    if let Some(limit) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches no memory but `lim`.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.args(args);
    start_command(name, cmd)
}

/// What every test server starts with: a free loopback port, and warnings only.
pub const SERVER_ARGS: [&str; 4] = ["--listen", "127.0.0.1:0", "--log-level", "warn"];

/// `program` (an example server, or a copy of one) with [`SERVER_ARGS`], to add to
/// and start with [`start_command`].
pub fn server_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(SERVER_ARGS);
    cmd
}

/// A free loopback port (bound and released, for a server to bind again).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `cmd` (a server, or something that runs one) and waits (30 s at most) for
/// its `listening on` line.
pub fn start_command(name: &str, mut cmd: Command) -> Running {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A test that has just written an executable (an upgrade's new binary) can meet
    // `ETXTBSY`: another test thread forked meanwhile, and its child holds the
    // written file open until it execs (close-on-exec). It passes in moments.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("starting {name}: {e}"),
        }
    };
    let stdout = child.stdout.take().unwrap();
    adopt(name, child, stdout)
}

/// Collects `stderr`'s lines (until every writer closed it), passing each on.
fn collect_log(stderr: std::process::ChildStderr) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            lines.lock().unwrap().push(line);
        }
    });
    log
}

/// A started server whose `stdout` is a pipe: waits (30 s at most) for its
/// `listening on` line.
pub fn adopt(name: &str, mut child: Child, stdout: std::process::ChildStdout) -> Running {
    let log = match child.stderr.take() {
        Some(stderr) => collect_log(stderr),
        None => Default::default(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not print its listening line");
        }
    };
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    Running {
        child,
        addr: addr.parse().unwrap(),
        log,
    }
}

impl Running {
    /// The logged lines that contain `text`.
    pub fn logged(&self, text: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .cloned()
            .collect()
    }
}

impl Running {
    /// Sends `sig` to the server (the supervisor only).
    pub fn signal(&self, sig: i32) {
        // SAFETY: signals a child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits (bounded) for the server to exit.
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the server did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Raises this process's soft descriptor limit to the hard one (the servers started
/// from it inherit it): the tests open a thousand connections at once.
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// CPU time (user + system) the process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let (utime, stime): (u64, u64) = (f[11].parse().unwrap(), f[12].parse().unwrap());
    Duration::from_millis((utime + stime) * 1000 / ticks)
}

/// The server's `status` over its control socket.
pub fn status(ctl: &std::path::Path) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(ctl).unwrap();
    c.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    serde_json::from_str(&s).unwrap()
}

/// One count per worker from a `status` reply: `accepted` or `active`.
pub fn counts(status: &serde_json::Value, field: &str) -> Vec<u64> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[field].as_u64().unwrap())
        .collect()
}

/// Sends `request` on a new connection and reads until the server closes it.
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(request).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// One `GET /` with `Connection: close`; its whole answer.
pub fn get(addr: SocketAddr) -> String {
    http(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
}

impl Running {
    /// A graceful stop: `SIGTERM`, then exit code 0 within 30 s.
    pub fn stop(self, what: &str) {
        self.signal(libc::SIGTERM);
        assert_eq!(
            self.wait(Duration::from_secs(30)).code(),
            Some(0),
            "{what}: exit code"
        );
    }
}

/// A server started with a control socket in a temporary directory.
pub struct Controlled {
    pub server: Running,
    pub ctl: std::path::PathBuf,
    /// Kept for the life of the test: dropping it removes the socket.
    pub dir: tempfile::TempDir,
}

/// As [`start`], with `--control` in a fresh temporary directory.
pub fn start_controlled(name: &str, args: &[&str]) -> Controlled {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--control", ctl.to_str().unwrap()]);
    let server = start(name, &all);
    Controlled { server, ctl, dir }
}

/// The workers' pids in a `status` answer, slot by slot.
pub fn pids(status: &serde_json::Value) -> Vec<u64> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_u64())
        .collect()
}

/// The children of `pid` and their states (`Z` for a zombie), from `/proc`.
pub fn children(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        if f[1].parse::<u32>().ok() == Some(pid) {
            out.push((child, f[0].chars().next().unwrap()));
        }
    }
    out
}

/// The resident memory of `pid`, in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// As [`start_controlled`], with the server's `RLIMIT_NOFILE` set to `nofile` (its
/// workers inherit it).
pub fn start_controlled_limited(name: &str, args: &[&str], nofile: u64) -> Controlled {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--control", ctl.to_str().unwrap()]);
    let server = start_limited(name, &all, Some(nofile));
    Controlled { server, ctl, dir }
}

/// The server's `status` over its control socket, or `None` if it does not answer
/// within `limit` (a server out of descriptors may never answer: the test must not
/// hang on it).
pub fn status_within(ctl: &std::path::Path, limit: Duration) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(ctl).ok()?;
    c.set_read_timeout(Some(limit)).ok()?;
    c.set_write_timeout(Some(limit)).ok()?;
    c.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
    c.shutdown(std::net::Shutdown::Write).ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

/// How many descriptors `pid` has open, from `/proc/PID/fd`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}
