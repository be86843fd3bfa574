//! Windows system calls of herder-pool: the named mutex behind the accept lock, and
//! ending a process.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use windows_sys::Win32::Foundation::{WAIT_ABANDONED, WAIT_OBJECT_0, WAIT_TIMEOUT};
use windows_sys::Win32::System::Threading::{
    CreateEventW, CreateMutexW, EVENT_MODIFY_STATE, MUTEX_MODIFY_STATE, OpenEventW, OpenMutexW,
    ReleaseMutex, SYNCHRONIZATION_SYNCHRONIZE, SetEvent, WaitForSingleObject,
};

fn wide(name: &str) -> Vec<u16> {
    name.encode_utf16().chain(std::iter::once(0)).collect()
}

fn owned(handle: windows_sys::Win32::Foundation::HANDLE) -> io::Result<OwnedHandle> {
    if handle.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new handle this process owns and nothing else closes.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle) })
}

/// Creates the named mutex `name`, not owned, not inheritable.
pub(crate) fn create_mutex(name: &str) -> io::Result<OwnedHandle> {
    let name = wide(name);
    // SAFETY: `name` is NUL-terminated UTF-16; no security attributes (a handle that
    // is not inherited), not initially owned.
    owned(unsafe { CreateMutexW(std::ptr::null(), 0, name.as_ptr()) })
}

/// Opens the named mutex `name` to wait on and release it.
pub(crate) fn open_mutex(name: &str) -> io::Result<OwnedHandle> {
    let name = wide(name);
    // SAFETY: `name` is NUL-terminated UTF-16; the handle is not inherited.
    owned(unsafe {
        OpenMutexW(
            SYNCHRONIZATION_SYNCHRONIZE | MUTEX_MODIFY_STATE,
            0,
            name.as_ptr(),
        )
    })
}

/// What taking a mutex without waiting found.
pub(crate) enum Taken {
    /// Taken.
    Yes,
    /// Taken from a holder that ended without releasing it.
    Abandoned,
    /// Held by another.
    No,
}

/// `WaitForSingleObject` with no wait.
pub(crate) fn try_lock_mutex(mutex: &OwnedHandle) -> io::Result<Taken> {
    // SAFETY: a valid mutex handle; a zero timeout never blocks.
    match unsafe { WaitForSingleObject(mutex.as_raw_handle(), 0) } {
        WAIT_OBJECT_0 => Ok(Taken::Yes),
        WAIT_ABANDONED => Ok(Taken::Abandoned),
        WAIT_TIMEOUT => Ok(Taken::No),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `ReleaseMutex`: this thread must hold it.
pub(crate) fn unlock_mutex(mutex: &OwnedHandle) -> io::Result<()> {
    // SAFETY: a valid mutex handle.
    if unsafe { ReleaseMutex(mutex.as_raw_handle()) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the named auto-reset event `name`, not signaled, not inheritable.
pub(crate) fn create_event(name: &str) -> io::Result<OwnedHandle> {
    let name = wide(name);
    // SAFETY: `name` is NUL-terminated UTF-16; no security attributes (a handle that
    // is not inherited); auto-reset, not signaled.
    owned(unsafe { CreateEventW(std::ptr::null(), 0, 0, name.as_ptr()) })
}

/// Whether the event is signaled (an auto-reset event is reset by the check).
pub(crate) fn event_signaled(event: &OwnedHandle) -> bool {
    // SAFETY: a valid event handle; a zero timeout never blocks.
    unsafe { WaitForSingleObject(event.as_raw_handle(), 0) == WAIT_OBJECT_0 }
}

/// Signals the named event `name`.
pub(crate) fn signal_event(name: &str) -> io::Result<()> {
    let name = wide(name);
    // SAFETY: `name` is NUL-terminated UTF-16; the handle is not inherited.
    let event = owned(unsafe { OpenEventW(EVENT_MODIFY_STATE, 0, name.as_ptr()) })?;
    // SAFETY: a valid event handle with EVENT_MODIFY_STATE.
    if unsafe { SetEvent(event.as_raw_handle()) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
