//! Helpers shared by herder-pool's behaviour tests: the test binary itself is the
//! worker, re-run by the pool with `--exact worker_entry`.
#![allow(dead_code, unreachable_pub)]

use herder_pool::{Config, Pool, PoolEvent, Worker};
use std::ffi::OsString;
use std::time::{Duration, Instant};

/// What the worker does, read from this variable.
pub const BEHAVIOUR: &str = "HERDER_POOL_TEST_BEHAVIOUR";

/// A pool config that re-runs this test binary's `worker_entry` as the worker.
pub fn config(workers: usize, behaviour: &str) -> Config {
    let mut c = Config::default();
    c.workers = workers;
    c.args = Some(
        [
            "--exact",
            "worker_entry",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ]
        .map(OsString::from)
        .to_vec(),
    );
    c.env = vec![(BEHAVIOUR.into(), behaviour.into())];
    c.backoff_initial = Duration::from_millis(20);
    c.ready_timeout = Duration::from_secs(20);
    c
}

/// The worker's side, run from each test binary's `worker_entry` test.
pub fn worker_main() {
    let Some(w) = Worker::from_env().expect("worker environment") else {
        return;
    };
    let behaviour = std::env::var(BEHAVIOUR).unwrap_or_default();
    if let Some(stall) = behaviour.strip_prefix("link-echo") {
        // A hand-off worker on herder-pool's WorkerLink, serving echo — or, in slot 0
        // while the file named after `-stall-slot0-while-` exists, ready but never
        // reading its channel (so nothing it is handed is acknowledged).
        let stall = stall
            .strip_prefix("-stall-slot0-while-")
            .is_some_and(|p| w.slot() == 0 && std::path::Path::new(p).exists());
        link_worker(w, stall);
    }
    #[cfg(unix)]
    unix_worker(w, &behaviour);
    // No other behaviour on Windows: the pool's Windows tests have their own.
    #[cfg(windows)]
    std::process::exit(3);
}

/// The behaviours other than `link-echo`, on the Unix pool's worker API.
#[cfg(unix)]
fn unix_worker(mut w: Worker, behaviour: &str) -> ! {
    let behaviour = behaviour.to_string();
    let crash_slot: Option<usize> = behaviour
        .strip_prefix("crash-slot-")
        .and_then(|s| s.parse().ok());
    match behaviour.as_str() {
        "crash" => std::process::exit(3),
        "fatal" => std::process::exit(herder_pool::FATAL_EXIT_CODE),
        "never-ready" => {
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(0);
        }
        _ if crash_slot == Some(w.slot()) => std::process::exit(3),
        // Fails to start for as long as the file exists (a broken deployment, say).
        b if b
            .strip_prefix("crash-while-")
            .is_some_and(|path| std::path::Path::new(path).exists()) =>
        {
            std::process::exit(3)
        }
        _ => {}
    }
    if let Some(card) = w.scorecard() {
        if behaviour == "report-load" {
            card.add_accepted(7);
            card.set_active(3);
        }
        if behaviour == "over-limit" {
            card.add_accepted(100);
        }
        if behaviour == "busy" {
            card.set_active(5);
        }
        if behaviour == "hang-ignore-term" {
            // SAFETY: ignoring a signal has no memory-safety preconditions.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        }
        if !behaviour.starts_with("hang") {
            std::thread::spawn(move || {
                loop {
                    card.heartbeat();
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    }
    if behaviour == "lock-hold" {
        lock_loop(&mut w);
    }
    if behaviour == "accept" {
        // Answer every connection on the slot's own listener with this pid.
        let l = w.take_listener("listener").expect("a listener");
        l.set_nonblocking(false).unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let mut conn = conn.unwrap();
                use std::io::Write;
                let _ = write!(conn, "{}", std::process::id());
            }
        });
    }
    let report = check_inheritance(&mut w);
    w.ready().expect("ready");
    let ch = w.channel().expect("channel");
    if behaviour == "last-words" {
        // Told to go (and more, left unread), many messages, then death at once:
        // more than one read of the channel's, and the reset of a socket closed with
        // unread data.
        ch.recv().expect("told to go");
        for i in 0..150 {
            ch.send(format!("last words {i}").as_bytes(), &[])
                .expect("last words");
        }
        std::process::exit(3);
    }
    ch.send(report.as_bytes(), &[]).expect("report");
    // Serve until the supervisor goes away or asks for a drain.
    while let Ok(Some(msg)) = ch.recv() {
        if herder_pool::is_drain_request(msg.payload()) {
            match behaviour.as_str() {
                "ignore-drain" => continue,
                "slow-drain" => std::thread::sleep(Duration::from_millis(300)),
                _ => {}
            }
            std::process::exit(0);
        }
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(msg.payload());
        ch.send(&reply, &[]).expect("reply");
    }
    std::process::exit(0);
}

#[cfg(unix)]
/// Checks what the worker inherited; returns "ok ..." or what is wrong.
fn check_inheritance(w: &mut Worker) -> String {
    let names: Vec<String> = w.names().map(str::to_string).collect();
    let pid_ok = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let mut listener_ok = true;
    if names.iter().any(|n| n == "web") {
        let l = w.take_listener("web").unwrap();
        listener_ok = l.local_addr().is_ok() && is_cloexec(&l);
        std::mem::forget(l); // keep its descriptor number for the table check
    }
    let fds = open_fds();
    format!(
        "ok slot={} names={} pid_ok={pid_ok} listener_ok={listener_ok} fds={fds:?}",
        w.slot(),
        names.join(",")
    )
}

#[cfg(unix)]
fn is_cloexec(fd: &impl std::os::fd::AsRawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    flags != -1 && flags & libc::FD_CLOEXEC != 0
}

#[cfg(unix)]
/// This process's descriptors.
pub fn open_fds() -> Vec<i32> {
    // Collect first: while the directory is being read, it is a descriptor too.
    let names: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut fds: Vec<i32> = names
        .into_iter()
        // SAFETY: F_GETFD only reads flags; it tells which numbers are open.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect();
    fds.sort_unstable();
    fds
}

/// Polls until `pred` accepts an event (panics after `limit`); returns every event
/// seen up to and including it.
pub fn poll_until(
    pool: &mut Pool,
    limit: Duration,
    mut pred: impl FnMut(&PoolEvent) -> bool,
) -> Vec<PoolEvent> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let mut events = Vec::new();
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out; events so far: {seen:?}");
        pool.poll(&mut events, Some(left.min(Duration::from_millis(100))))
            .unwrap();
        let done = events.iter().any(&mut pred);
        seen.extend(events);
        if done {
            return seen;
        }
    }
}

/// Polls for `span`, returning every event.
pub fn poll_for(pool: &mut Pool, span: Duration) -> Vec<PoolEvent> {
    let deadline = Instant::now() + span;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut events = Vec::new();
        pool.poll(
            &mut events,
            Some(deadline.saturating_duration_since(Instant::now())),
        )
        .unwrap();
        seen.extend(events);
    }
    seen
}

/// Starts the pool and waits until `n` workers are ready.
pub fn start_ready(pool: &mut Pool, n: usize) -> Vec<PoolEvent> {
    let mut events = Vec::new();
    pool.start(&mut events);
    let mut ready = events
        .iter()
        .filter(|e| matches!(e, PoolEvent::Ready { .. }))
        .count();
    let mut all = events;
    while ready < n {
        let more = poll_until(pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Ready { .. })
        });
        ready += more
            .iter()
            .filter(|e| matches!(e, PoolEvent::Ready { .. }))
            .count();
        all.extend(more);
    }
    all
}

/// Takes the pool's accept lock over and over; after each take, reports it and holds
/// it for 200 ms. Ends when the supervisor goes away.
#[cfg(unix)]
fn lock_loop(w: &mut Worker) -> ! {
    let mut lock = w
        .accept_lock()
        .expect("accept lock")
        .expect("the pool has one");
    // With a shared listener, the holder accepts (and answers with its pid) while it
    // holds the lock — the accept-mutex pattern.
    let listener = w.take_listener("web");
    if let Some(l) = &listener {
        l.set_nonblocking(true).unwrap();
    }
    w.ready().expect("ready");
    let ch = w.channel().expect("channel");
    ch.set_nonblocking(true).unwrap();
    loop {
        match ch.recv() {
            Ok(None) => std::process::exit(0),
            Ok(Some(_)) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => std::process::exit(1),
        }
        if lock.try_lock().expect("try_lock") {
            let _ = ch.send(format!("got {}", std::process::id()).as_bytes(), &[]);
            let until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < until {
                if let Some(Ok((mut conn, _))) = listener.as_ref().map(|l| l.accept()) {
                    use std::io::Write;
                    let _ = write!(conn, "{}", std::process::id());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            lock.unlock().expect("unlock");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Echo.
pub struct Echo;

impl herder_reactor::Service for Echo {
    fn on_data(
        &mut self,
        input: &mut herder_reactor::Input<'_>,
        out: &mut herder_reactor::Output<'_>,
    ) -> herder_reactor::Flow {
        out.write(input.data());
        input.consume(input.len());
        herder_reactor::Flow::Continue
    }

    /// A byte stream with no state: it moves whenever asked.
    fn on_move(&mut self) -> herder_reactor::Move {
        herder_reactor::Move::Now(Vec::new())
    }
}

fn link_worker(mut w: Worker, stall: bool) -> ! {
    let mut server = herder_reactor::Server::new(herder_reactor::ServerConfig::default(), |_| Echo)
        .expect("server");
    let link =
        herder_pool::WorkerLink::ready(&mut w, &mut server, Duration::from_secs(5)).expect("link");
    if stall {
        std::thread::sleep(Duration::from_secs(120));
    }
    link.run(&mut server, |_| Echo).expect("serving");
    std::process::exit(0);
}

/// Kills the current worker of `slot` at once (`SIGKILL`, `TerminateProcess`).
pub fn kill_worker(pool: &mut Pool, slot: usize) {
    #[cfg(unix)]
    pool.signal(slot, libc::SIGKILL).unwrap();
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Threading::{
            OpenProcess, PROCESS_TERMINATE, TerminateProcess,
        };
        let pid = pool.workers()[slot].pid.expect("a worker");
        // SAFETY: opens a process this test's pool started, terminates it, closes
        // the handle.
        unsafe {
            let h = OpenProcess(PROCESS_TERMINATE, 0, pid);
            assert!(!h.is_null(), "OpenProcess({pid})");
            assert_ne!(TerminateProcess(h, 9), 0, "TerminateProcess({pid})");
            CloseHandle(h);
        }
    }
}
