//! The readiness backend under [`Reactor`](crate::Reactor): one type, `Poller`, over
//! epoll on Linux and Android (written here: one `epoll_wait` per loop turn, no more)
//! and over the `polling` crate elsewhere (kqueue, event ports, IOCP).
//!
//! Why epoll is not left to `polling` on Linux: its `wait` re-arms a timerfd and its
//! notification eventfd on every call (`timerfd_settime`, two `epoll_ctl`, a `read`:
//! four system calls per loop turn besides `epoll_wait`), which is what made a
//! keep-alive request cost 2.27 system calls against nginx's 2.06. Here a timeout
//! is `epoll_wait`'s own (rounded up to the millisecond, so a timer never fires
//! early), and the wake-up eventfd is read only when it was written.
//!
//! What a backend provides: `new`, `supports_level`/`supports_edge`, `add`/`modify`
//! (unsafe `add`: the caller deletes the source before closing it), `delete`,
//! `wait` into [`Events`], `notify` from any thread, and on Linux its descriptor
//! (`as_fd`) for the `EPOLLEXCLUSIVE` registrations of `os::linux`.

use crate::{Interest, Mode};

/// One readiness report: a key and what it is ready for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) key: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    pub(crate) hangup: bool,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use epoll::{Events, Poller};
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) use portable::{Events, Poller};

#[cfg(any(target_os = "linux", target_os = "android"))]
mod epoll {
    use super::{Interest, Mode, Ready};
    use polling::AsSource;
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    /// The key of the wake-up eventfd; no source's key is ever `usize::MAX`.
    const WAKE_KEY: usize = usize::MAX;

    /// Events per `epoll_wait`, at most (what `polling` uses too).
    const CAPACITY: usize = 1024;

    fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
        if ret == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// An epoll instance and its wake-up eventfd.
    #[derive(Debug)]
    pub(crate) struct Poller {
        epoll: OwnedFd,
        wake: OwnedFd,
    }

    /// What one wait reported.
    pub(crate) struct Events {
        list: Vec<libc::epoll_event>,
    }

    impl Events {
        pub(crate) fn new() -> Events {
            Events {
                list: Vec::with_capacity(CAPACITY),
            }
        }

        pub(crate) fn clear(&mut self) {
            self.list.clear();
        }

        pub(crate) fn iter(&self) -> impl Iterator<Item = Ready> + '_ {
            let read = (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLPRI) as u32;
            let write = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
            self.list
                .iter()
                .filter(|e| e.u64 as usize != WAKE_KEY)
                .map(move |e| {
                    let flags = e.events;
                    Ready {
                        key: e.u64 as usize,
                        readable: flags & read != 0,
                        writable: flags & write != 0,
                        hangup: flags & libc::EPOLLHUP as u32 != 0,
                    }
                })
        }
    }

    /// The epoll flags of `interest` in `mode`; no interest is armed oneshot, so
    /// that hang-ups and errors (which epoll always reports) wake no poll.
    fn flags(interest: Interest, mode: Mode) -> u32 {
        let mut f = match mode {
            _ if interest == Interest::NONE => libc::EPOLLONESHOT,
            Mode::Level => 0,
            Mode::Edge => libc::EPOLLET,
            Mode::Oneshot => libc::EPOLLONESHOT,
        };
        if interest.readable {
            f |= libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLPRI;
        }
        if interest.writable {
            f |= libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR;
        }
        f as u32
    }

    impl Poller {
        pub(crate) fn new() -> io::Result<Poller> {
            // SAFETY: epoll_create1 and eventfd take flags only; each returns a new
            // descriptor, owned at once.
            let epoll =
                unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
            // SAFETY: as above.
            let wake = unsafe {
                OwnedFd::from_raw_fd(cvt(libc::eventfd(
                    0,
                    libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
                ))?)
            };
            let poller = Poller { epoll, wake };
            poller.ctl(
                libc::EPOLL_CTL_ADD,
                poller.wake.as_fd(),
                WAKE_KEY,
                libc::EPOLLIN as u32,
            )?;
            Ok(poller)
        }

        pub(crate) fn supports_level(&self) -> bool {
            true
        }

        pub(crate) fn supports_edge(&self) -> bool {
            true
        }

        pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
            self.epoll.as_fd()
        }

        fn ctl(
            &self,
            op: libc::c_int,
            fd: BorrowedFd<'_>,
            key: usize,
            events: u32,
        ) -> io::Result<()> {
            let mut ev = libc::epoll_event {
                events,
                u64: key as u64,
            };
            // SAFETY: both descriptors are open for the call; `ev` is a valid
            // epoll_event (ignored by EPOLL_CTL_DEL).
            cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) })?;
            Ok(())
        }

        /// Adds `source`. A registration the set still holds for the same open
        /// file under the same number — left by a close while another copy of the
        /// descriptor lived on — is taken over (`EEXIST`, then `EPOLL_CTL_MOD`, as
        /// libuv does).
        ///
        /// # Safety
        ///
        /// `source` must be deleted from the poller before it is closed, unless
        /// nothing more can be reported for it: its descriptor has no other copy
        /// (the close of the last one removes it from the epoll set), or its
        /// registration has no interest left (a one-shot registration that
        /// reported). This backend keeps no state of its own for a source.
        pub(crate) unsafe fn add<S: AsSource + ?Sized>(
            &self,
            source: &S,
            key: usize,
            interest: Interest,
            mode: Mode,
        ) -> io::Result<()> {
            let events = flags(interest, mode);
            match self.ctl(libc::EPOLL_CTL_ADD, source.source(), key, events) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.ctl(libc::EPOLL_CTL_MOD, source.source(), key, events)
                }
                other => other,
            }
        }

        pub(crate) fn modify<S: AsSource + ?Sized>(
            &self,
            source: &S,
            key: usize,
            interest: Interest,
            mode: Mode,
        ) -> io::Result<()> {
            self.ctl(
                libc::EPOLL_CTL_MOD,
                source.source(),
                key,
                flags(interest, mode),
            )
        }

        pub(crate) fn delete<S: AsSource + ?Sized>(&self, source: &S) -> io::Result<()> {
            self.ctl(libc::EPOLL_CTL_DEL, source.source(), 0, 0)
        }

        /// Waits up to `timeout` (rounded up to the millisecond; `None`: no limit)
        /// and fills `events`. `EINTR` comes back as an error of kind `Interrupted`.
        pub(crate) fn wait(
            &self,
            events: &mut Events,
            timeout: Option<Duration>,
        ) -> io::Result<()> {
            events.list.clear();
            let ms = match timeout {
                None => -1,
                Some(t) => {
                    let ms = t.as_nanos().div_ceil(1_000_000);
                    ms.min(libc::c_int::MAX as u128) as libc::c_int
                }
            };
            // SAFETY: the buffer has room for `CAPACITY` events, which is what the
            // kernel is told; it writes at most that many and says how many.
            let n = cvt(unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.list.as_mut_ptr(),
                    CAPACITY as libc::c_int,
                    ms,
                )
            })?;
            // SAFETY: the kernel initialised the first `n` entries.
            unsafe { events.list.set_len(n as usize) };
            if events.list.iter().any(|e| e.u64 as usize == WAKE_KEY) {
                let mut buf = [0u8; 8];
                // SAFETY: reads into an 8-byte buffer of ours; the eventfd is
                // non-blocking, so an empty one only says `EAGAIN`.
                unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            }
            Ok(())
        }

        /// Wakes the current or the next `wait`.
        pub(crate) fn notify(&self) -> io::Result<()> {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes of ours to the eventfd. A full counter
            // (`EAGAIN`) is awake already.
            let r = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
            if r == -1 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
            Ok(())
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod portable {
    use super::{Interest, Mode, Ready};
    use polling::{AsSource, PollMode};
    use std::io;
    use std::time::Duration;

    /// `polling`'s poller: kqueue, event ports, IOCP.
    #[derive(Debug)]
    pub(crate) struct Poller(polling::Poller);

    /// What one wait reported.
    pub(crate) struct Events(polling::Events);

    impl Events {
        pub(crate) fn new() -> Events {
            Events(polling::Events::new())
        }

        pub(crate) fn clear(&mut self) {
            self.0.clear();
        }

        pub(crate) fn iter(&self) -> impl Iterator<Item = Ready> + '_ {
            self.0.iter().map(|e| Ready {
                key: e.key,
                readable: e.readable,
                writable: e.writable,
                hangup: e.is_interrupt(),
            })
        }
    }

    fn mode(interest: Interest, mode: Mode) -> PollMode {
        match mode {
            _ if interest == Interest::NONE => PollMode::Oneshot,
            Mode::Level => PollMode::Level,
            Mode::Edge => PollMode::Edge,
            Mode::Oneshot => PollMode::Oneshot,
        }
    }

    fn event(key: usize, interest: Interest) -> polling::Event {
        polling::Event::new(key, interest.readable, interest.writable)
    }

    #[cfg(unix)]
    fn raw<S: AsSource + ?Sized>(s: &S) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        s.source().as_raw_fd()
    }

    #[cfg(windows)]
    fn raw<S: AsSource + ?Sized>(s: &S) -> std::os::windows::io::RawSocket {
        use std::os::windows::io::AsRawSocket;
        s.source().as_raw_socket()
    }

    impl Poller {
        pub(crate) fn new() -> io::Result<Poller> {
            polling::Poller::new().map(Poller)
        }

        pub(crate) fn supports_level(&self) -> bool {
            self.0.supports_level()
        }

        pub(crate) fn supports_edge(&self) -> bool {
            self.0.supports_edge()
        }

        /// # Safety
        ///
        /// `source` must be deleted from the poller before it is closed.
        pub(crate) unsafe fn add<S: AsSource + ?Sized>(
            &self,
            source: &S,
            key: usize,
            interest: Interest,
            m: Mode,
        ) -> io::Result<()> {
            // SAFETY: the caller's promise is `add_with_mode`'s.
            unsafe {
                self.0
                    .add_with_mode(raw(source), event(key, interest), mode(interest, m))
            }
        }

        pub(crate) fn modify<S: AsSource + ?Sized>(
            &self,
            source: &S,
            key: usize,
            interest: Interest,
            m: Mode,
        ) -> io::Result<()> {
            self.0
                .modify_with_mode(source.source(), event(key, interest), mode(interest, m))
        }

        pub(crate) fn delete<S: AsSource + ?Sized>(&self, source: &S) -> io::Result<()> {
            self.0.delete(source.source())
        }

        pub(crate) fn wait(
            &self,
            events: &mut Events,
            timeout: Option<Duration>,
        ) -> io::Result<()> {
            self.0.wait(&mut events.0, timeout).map(|_| ())
        }

        pub(crate) fn notify(&self) -> io::Result<()> {
            self.0.notify()
        }

        /// Watches a waitable handle (a process, an event): reported readable, once,
        /// when it is signalled.
        ///
        /// # Safety
        ///
        /// `handle` must be deleted from the poller before it is closed.
        #[cfg(windows)]
        pub(crate) unsafe fn add_waitable(
            &self,
            handle: &std::os::windows::io::OwnedHandle,
            key: usize,
        ) -> io::Result<()> {
            use polling::os::iocp::PollerIocpExt;
            // SAFETY: the caller's promise is `add_waitable`'s.
            unsafe {
                self.0
                    .add_waitable(handle, polling::Event::readable(key), PollMode::Oneshot)
            }
        }

        /// Arms a waitable handle again after it was reported.
        #[cfg(windows)]
        pub(crate) fn rearm_waitable(
            &self,
            handle: &std::os::windows::io::OwnedHandle,
            key: usize,
        ) -> io::Result<()> {
            use polling::os::iocp::PollerIocpExt;
            self.0
                .modify_waitable(handle, polling::Event::readable(key), PollMode::Oneshot)
        }

        /// Stops watching a waitable handle.
        #[cfg(windows)]
        pub(crate) fn delete_waitable(
            &self,
            handle: &std::os::windows::io::OwnedHandle,
        ) -> io::Result<()> {
            use polling::os::iocp::PollerIocpExt;
            self.0.remove_waitable(handle)
        }
    }
}
