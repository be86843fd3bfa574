//! Windows: socket duplication with `WSADuplicateSocketW` and reconstruction with
//! `WSASocketW(FROM_PROTOCOL_INFO)`. Every FFI call of the crate on Windows is in this
//! file.
//!
//! What this backend provides to the rest of the crate: [`PROTOCOL_INFO_LEN`],
//! [`duplicate_socket`] and [`socket_from_protocol_info`].

use std::io;
use std::mem;
use std::os::windows::io::{AsRawSocket, BorrowedSocket, FromRawSocket, OwnedSocket};
use std::sync::Once;
use windows_sys::Win32::Networking::WinSock::{
    FROM_PROTOCOL_INFO, INVALID_SOCKET, SOCKET, SOCKET_ERROR, WSA_FLAG_NO_HANDLE_INHERIT,
    WSA_FLAG_OVERLAPPED, WSADATA, WSADuplicateSocketW, WSAGetLastError, WSAPROTOCOL_INFOW,
    WSASocketW, WSAStartup,
};

/// The size of a serialised `WSAPROTOCOL_INFOW`.
pub(crate) const PROTOCOL_INFO_LEN: usize = mem::size_of::<WSAPROTOCOL_INFOW>();

fn last_error() -> io::Error {
    // SAFETY: WSAGetLastError only reads thread-local state.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// Initialises Winsock once; the standard library does so only when it first creates
/// a socket itself, which a receiving process may not have done yet.
fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: WSADATA is plain data; WSAStartup fills it. The matching WSACleanup
        // is never called, as in the standard library.
        unsafe {
            let mut data: WSADATA = mem::zeroed();
            WSAStartup(0x202, &mut data);
        }
    });
}

/// `WSADuplicateSocketW`: a description of `socket` from which process `pid` can
/// build its own copy, serialised to bytes.
pub(crate) fn duplicate_socket(
    socket: BorrowedSocket<'_>,
    pid: u32,
) -> io::Result<[u8; PROTOCOL_INFO_LEN]> {
    init();
    // SAFETY: WSAPROTOCOL_INFOW is plain data (integers and arrays of them).
    let mut info: WSAPROTOCOL_INFOW = unsafe { mem::zeroed() };
    // SAFETY: `socket` is a live socket for the duration of the call; `info` is
    // writable.
    let r = unsafe { WSADuplicateSocketW(socket.as_raw_socket() as SOCKET, pid, &mut info) };
    if r == SOCKET_ERROR {
        return Err(last_error());
    }
    let mut out = [0u8; PROTOCOL_INFO_LEN];
    // SAFETY: `info` is PROTOCOL_INFO_LEN bytes of plain data with no padding that
    // matters (any byte pattern reads back as a valid value).
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&info as *const WSAPROTOCOL_INFOW).cast::<u8>(),
            out.as_mut_ptr(),
            PROTOCOL_INFO_LEN,
        )
    };
    Ok(out)
}

/// `WSASocketW(FROM_PROTOCOL_INFO, …)` with `WSA_FLAG_NO_HANDLE_INHERIT`: this
/// process's own socket from a description made for it by [`duplicate_socket`].
pub(crate) fn socket_from_protocol_info(bytes: &[u8]) -> io::Result<OwnedSocket> {
    if bytes.len() != PROTOCOL_INFO_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "protocol info of the wrong size",
        ));
    }
    init();
    // SAFETY: WSAPROTOCOL_INFOW is plain data; every byte pattern is a valid value,
    // and `bytes` has exactly its size.
    let info: WSAPROTOCOL_INFOW = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    // SAFETY: `info` is a live WSAPROTOCOL_INFOW; the call creates a new socket.
    let s = unsafe {
        WSASocketW(
            FROM_PROTOCOL_INFO,
            FROM_PROTOCOL_INFO,
            FROM_PROTOCOL_INFO,
            &info,
            0,
            WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT,
        )
    };
    if s == INVALID_SOCKET {
        return Err(last_error());
    }
    // SAFETY: a new socket that nothing else owns.
    Ok(unsafe { OwnedSocket::from_raw_socket(s as _) })
}

/// `ioctlsocket(FIONBIO)`: switches `socket` between blocking and non-blocking.
pub(crate) fn set_nonblocking(socket: BorrowedSocket<'_>, nonblocking: bool) -> io::Result<()> {
    use windows_sys::Win32::Networking::WinSock::{FIONBIO, ioctlsocket};
    let mut on = u32::from(nonblocking);
    // SAFETY: `socket` is a live socket for the duration of the call; `on` is
    // writable.
    if unsafe { ioctlsocket(socket.as_raw_socket() as SOCKET, FIONBIO, &mut on) } == SOCKET_ERROR {
        return Err(last_error());
    }
    Ok(())
}
