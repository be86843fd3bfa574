//! Windows-only parts: waitable handles in a reactor, and sockets kept from child
//! processes.
//!
//! IOCP reports sockets; a Windows program also waits for kernel objects — a child
//! process that exits, an event another process sets. A reactor watches those as
//! well, so that one loop sees them with its sockets and timers, with no thread
//! blocked per handle in the caller's code.

use crate::{Key, Reactor, Source};
use std::io;
use std::os::windows::io::{BorrowedHandle, OwnedHandle};

mod sealed {
    pub trait Sealed {}
}

impl<S: Source> sealed::Sealed for Reactor<S> {}

/// Windows extensions of [`Reactor`].
pub trait ReactorExt: sealed::Sealed {
    /// Takes ownership of a waitable handle — a process, a thread, an event, a
    /// mutex, a semaphore, a waitable timer — and reports
    /// [`Event::Io`](crate::Event::Io) with `readable: true` under the returned key
    /// once the object is signalled. The registration is one-shot: it reports once,
    /// until [`rearm_waitable`](Self::rearm_waitable). (An auto-reset event is reset
    /// by the wait that reports it.)
    ///
    /// # Errors
    ///
    /// What registering the wait returns; [`io::ErrorKind::OutOfMemory`] past
    /// [`MAX_SOURCES`](crate::MAX_SOURCES). On error the handle is closed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use herder_reactor::{Event, Reactor, os::windows::ReactorExt};
    /// use std::os::windows::io::OwnedHandle;
    ///
    /// let child = std::process::Command::new("cmd").args(["/c", "exit"]).spawn()?;
    /// let mut reactor: Reactor<std::net::TcpStream> = Reactor::new()?;
    /// let key = reactor.add_waitable(OwnedHandle::from(child))?;
    /// let mut events = Vec::new();
    /// while !events.iter().any(|e| matches!(e, Event::Io { key: k, .. } if *k == key)) {
    ///     reactor.poll(&mut events, None)?;
    /// }
    /// let _process = reactor.remove_waitable(key)?; // it has exited
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "RegisterWaitForSingleObject")]
    fn add_waitable(&mut self, handle: OwnedHandle) -> io::Result<Key>;

    /// Watches `key`'s handle again after it was reported.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] for a key that is not a waitable handle; what
    /// registering the wait returns.
    fn rearm_waitable(&mut self, key: Key) -> io::Result<()>;

    /// Stops watching `key`'s handle and gives it back.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] for a key that is not a waitable handle.
    fn remove_waitable(&mut self, key: Key) -> io::Result<OwnedHandle>;

    /// The handle watched under `key`.
    fn waitable(&self, key: Key) -> Option<BorrowedHandle<'_>>;
}

impl<S: Source> ReactorExt for Reactor<S> {
    fn add_waitable(&mut self, handle: OwnedHandle) -> io::Result<Key> {
        let index = self.free_slot()?;
        let slot = &mut self.slots[index];
        let key = Key::new(index, slot.generation);
        // SAFETY: the reactor owns `handle` from here on and deletes it from the
        // poller before closing it (in `remove_waitable`, here on error, and in
        // `Drop`).
        if let Err(e) = unsafe { self.poller.add_waitable(&handle, key.0) } {
            let _ = self.poller.delete_waitable(&handle);
            self.free.push(index);
            return Err(e);
        }
        slot.waitable = Some(handle);
        self.len += 1;
        Ok(key)
    }

    fn rearm_waitable(&mut self, key: Key) -> io::Result<()> {
        let handle = self.waitable_slot(key)?;
        self.poller.rearm_waitable(handle, key.0)
    }

    fn remove_waitable(&mut self, key: Key) -> io::Result<OwnedHandle> {
        self.waitable_slot(key)?;
        let slot = &mut self.slots[key.index()];
        let handle = slot.waitable.take().ok_or_else(crate::not_found)?;
        let _ = self.poller.delete_waitable(&handle);
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.index());
        self.len -= 1;
        Ok(handle)
    }

    fn waitable(&self, key: Key) -> Option<BorrowedHandle<'_>> {
        use std::os::windows::io::AsHandle;
        self.waitable_slot(key).ok().map(|h| h.as_handle())
    }
}

impl<S: Source> Reactor<S> {
    /// The handle watched under `key`, if `key` is a live waitable registration.
    fn waitable_slot(&self, key: Key) -> io::Result<&OwnedHandle> {
        let slot = self.slots.get(key.index()).ok_or_else(crate::not_found)?;
        if Key::new(key.index(), slot.generation) != key {
            return Err(crate::not_found());
        }
        slot.waitable.as_ref().ok_or_else(crate::not_found)
    }
}

/// Makes `socket`'s handle not inheritable (`SetHandleInformation`), as a socket
/// accepted on Unix with `SOCK_CLOEXEC` is: a process started later must not get a
/// copy of a connection, which would keep it open as long as that process lives.
/// Accepted sockets may be inheritable, depending on the system; a
/// [`Server`](crate::Server) does this to every connection it accepts.
///
/// # Errors
///
/// What `SetHandleInformation` returns.
pub fn no_inherit(socket: &impl std::os::windows::io::AsSocket) -> io::Result<()> {
    crate::sys::no_inherit(socket)
}
