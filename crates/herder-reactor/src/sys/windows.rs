//! Windows system calls of herder-reactor.

use std::io;
use std::os::windows::io::{AsRawSocket, AsSocket};

/// Makes `socket`'s handle not inheritable: a process started later (a worker, say)
/// must not get a copy of a connection, which would keep it open as long as that
/// process lives. (Accepted sockets may be inheritable, depending on the system.)
pub(crate) fn no_inherit(socket: &impl AsSocket) -> io::Result<()> {
    use windows_sys::Win32::Foundation::{HANDLE, HANDLE_FLAG_INHERIT, SetHandleInformation};
    // SAFETY: a live socket, whose handle is a kernel handle; only its inherit flag
    // changes.
    let ok = unsafe {
        SetHandleInformation(
            socket.as_socket().as_raw_socket() as HANDLE,
            HANDLE_FLAG_INHERIT,
            0,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
