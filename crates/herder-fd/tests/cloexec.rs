//! Every received descriptor is close-on-exec: an exec'd child does not see it.
#![cfg(unix)]

mod util;

use herder_fd::{Channel, ChannelKind, recv_fds, send_fds};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

const ENTRY: &str = "child_entry";

/// In the "list" role, prints this process's descriptor table.
#[test]
fn child_entry() {
    if util::role().as_deref() == Some("list") {
        let fds: Vec<String> = util::open_fds().iter().map(|fd| fd.to_string()).collect();
        eprintln!("fds: {}", fds.join(","));
        if let Ok(chan) = std::env::var(herder_fd::CHANNEL_ENV) {
            eprintln!("chan: {chan}");
        }
    }
}

/// The descriptors an exec'd copy of this binary finds open.
fn fds_of_exec_child() -> Vec<i32> {
    let out = util::child_command(ENTRY, "list").output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("fds: "))
        .expect("fd list");
    line.split(',').map(|s| s.parse().unwrap()).collect()
}

#[test]
fn received_descriptors_are_close_on_exec_and_not_inherited() {
    let mut received: Vec<OwnedFd> = Vec::new();
    for kind in [ChannelKind::SeqPacket, ChannelKind::Stream] {
        let (mut a, mut b) = Channel::pair_of(kind).unwrap();
        let file = tempfile::tempfile().unwrap();
        a.send(b"f", &[file.as_fd(), file.as_fd()]).unwrap();
        received.extend(b.recv().unwrap().unwrap().into_fds());
        assert!(herder_fd::is_cloexec(&a).unwrap() && herder_fd::is_cloexec(&b).unwrap());
    }
    let (a, b) = UnixDatagram::pair().unwrap();
    let file = tempfile::tempfile().unwrap();
    send_fds(&a, &[IoSlice::new(b"x")], &[file.as_fd()]).unwrap();
    recv_fds(&b, &mut [0; 4], &mut received, 4).unwrap();
    assert_eq!(received.len(), 5);
    for fd in &received {
        assert!(
            herder_fd::is_cloexec(fd).unwrap(),
            "fd {fd:?} is not close-on-exec"
        );
    }

    // A control: a plain dup() is inheritable, and the child does see it.
    // SAFETY: dup of an open descriptor returns a new one that we own.
    let inheritable = unsafe { OwnedFd::from_raw_fd(libc::dup(received[0].as_raw_fd())) };
    assert!(!herder_fd::is_cloexec(&inheritable).unwrap());

    let seen = fds_of_exec_child();
    assert!(
        seen.contains(&inheritable.as_raw_fd()),
        "control fd not seen: {seen:?}"
    );
    for fd in &received {
        assert!(
            !seen.contains(&fd.as_raw_fd()),
            "fd {} leaked into the child: {seen:?}",
            fd.as_raw_fd()
        );
    }
}

#[test]
fn child_end_reaches_only_its_own_child() {
    let (_parent, end) = Channel::pair_for_child().unwrap();
    // While the end waits for its spawn, another child does not inherit it.
    let seen = fds_of_exec_child();
    let mut cmd = util::child_command(ENTRY, "list");
    cmd.stderr(std::process::Stdio::piped());
    let out = end.spawn(&mut cmd).unwrap().wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let field = |name: &str| {
        err.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .to_string()
    };
    let chan: i32 = field("chan: ").parse().unwrap();
    let own: Vec<i32> = field("fds: ")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(
        own.contains(&chan),
        "the spawned child lacks its channel {chan}: {own:?}"
    );
    assert!(
        !seen.contains(&chan),
        "another child inherited the channel {chan}: {seen:?}"
    );
}

#[test]
fn a_command_reused_after_its_child_end_cannot_leak_a_descriptor() {
    let (_parent, end) = Channel::pair_for_child().unwrap();
    let mut cmd = util::child_command(ENTRY, "list");
    end.spawn(&mut cmd).unwrap().wait().unwrap();
    // The channel's number may now name another descriptor; the hook refuses it.
    let _other = tempfile::tempfile().unwrap();
    let err = cmd.spawn().expect_err("a reused command must not spawn");
    assert_eq!(err.raw_os_error(), Some(libc::EBADF));
}
