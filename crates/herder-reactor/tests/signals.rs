//! Each signal arrives as an event in the loop; the previous dispositions come back
//! when the reactor goes. One test, because a process has one set of dispositions.
#![cfg(unix)]

mod util;

use herder_reactor::{Event, Reactor, Signal};
use std::net::TcpStream;
use std::time::Duration;

fn handler_of(sig: i32) -> libc::sighandler_t {
    // SAFETY: queries the current disposition without changing it.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

#[test]
fn every_signal_is_an_event_and_dispositions_are_restored() {
    let before: Vec<_> = Signal::ALL.iter().map(|s| handler_of(s.as_raw())).collect();
    {
        let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
        r.watch_signals(&Signal::ALL).unwrap();
        // A second reactor cannot take the process's signals meanwhile.
        let mut other: Reactor<TcpStream> = Reactor::new().unwrap();
        assert_eq!(
            other.watch_signals(&[Signal::User1]).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );

        for sig in Signal::ALL {
            // SAFETY: sends a signal to this process, whose handler is now ours.
            assert_eq!(unsafe { libc::kill(libc::getpid(), sig.as_raw()) }, 0);
            util::poll_until(&mut r, Duration::from_secs(10), |e| {
                *e == Event::Signal(sig)
            });
        }

        // Repeated deliveries between two polls coalesce.
        for _ in 0..5 {
            // SAFETY: as above.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
        }
        let events = util::poll_until(&mut r, Duration::from_secs(10), |e| {
            *e == Event::Signal(Signal::User2)
        });
        assert_eq!(
            events
                .iter()
                .filter(|e| **e == Event::Signal(Signal::User2))
                .count(),
            1
        );

        // A child's exit is a SIGCHLD.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        util::poll_until(&mut r, Duration::from_secs(10), |e| {
            *e == Event::Signal(Signal::Child)
        });
        child.wait().unwrap();
    }
    let after: Vec<_> = Signal::ALL.iter().map(|s| handler_of(s.as_raw())).collect();
    assert_eq!(before, after, "dispositions restored");

    // The pipe is free again for the next reactor.
    let mut again: Reactor<TcpStream> = Reactor::new().unwrap();
    again.watch_signals(&[Signal::User1]).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
    util::poll_until(&mut again, Duration::from_secs(10), |e| {
        *e == Event::Signal(Signal::User1)
    });
}
