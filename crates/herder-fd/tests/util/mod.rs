//! Helpers shared by herder-fd's behaviour tests.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::os::fd::RawFd;
use std::process::{Child, Command, Stdio};

/// The environment variable that puts the test binary in a child role.
pub const ROLE_ENV: &str = "HERDER_FD_TEST_ROLE";

/// The role this process was started in, if any.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A command that re-runs this test binary, running only the test `entry` (which
/// dispatches on the role) in a child role.
pub fn child_command(entry: &str, role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Waits for `child` (bounded: it is killed after 60 s) and asserts it succeeded.
pub fn wait_ok(mut child: Child, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "{what}: child failed with {status}");
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: child did not finish in 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The descriptors open in this process, from `/proc/self/fd` (Linux) or by probing
/// with `fcntl` (elsewhere).
pub fn open_fds() -> Vec<RawFd> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let dir = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
        let dir_fd_probe = std::fs::File::open("/proc/self/fd").expect("probe");
        let probe = dir_fd_probe.as_raw_fd();
        let mut fds: Vec<RawFd> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        drop(dir_fd_probe);
        // The directory being read is itself an open descriptor; so is the probe.
        fds.retain(|&fd| fd != probe && is_open(fd));
        fds.sort_unstable();
        fds
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        (0..4096).filter(|&fd| is_open(fd)).collect()
    }
}

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer only reads flags, or fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Sets this process's soft `RLIMIT_NOFILE`.
pub fn set_nofile_limit(soft: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = soft as libc::rlim_t;
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
