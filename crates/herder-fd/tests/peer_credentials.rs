//! Peer credentials name the process at the other end.
#![cfg(unix)]

use herder_fd::{Channel, peer_credentials};

#[test]
fn credentials_of_the_other_end() {
    let (a, _b) = Channel::pair().unwrap();
    let cred = a.peer_credentials().unwrap();
    // SAFETY: these calls only read the process's ids.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    assert_eq!((cred.uid, cred.gid), (uid, gid));
    if cfg!(any(target_os = "linux", target_vendor = "apple")) {
        assert_eq!(cred.pid, Some(std::process::id()));
    }
}

#[test]
fn a_file_has_no_peer() {
    let f = tempfile::tempfile().unwrap();
    assert!(peer_credentials(&f).is_err());
    assert!(Channel::new(f.into()).is_err(), "a file is not a channel");
}
