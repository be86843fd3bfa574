//! Windows system calls of herder-pool: the named mutex behind the accept lock, the
//! named stop event, and the control pipe with its access list.

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

/// A security descriptor from `LocalAlloc`, freed on drop.
pub(crate) struct SecurityDescriptor(windows_sys::Win32::Security::PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is memory this value owns alone and nothing writes to after
// its creation; Windows only reads it. Moving it to another thread is sound.
unsafe impl Send for SecurityDescriptor {}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW
        // with LocalAlloc, freed once.
        unsafe { windows_sys::Win32::Foundation::LocalFree(self.0) };
    }
}

/// The current user's SID as a string (`S-1-5-…`).
fn current_user_sid() -> io::Result<String> {
    use windows_sys::Win32::Security::{GetTokenInformation, TOKEN_QUERY, TOKEN_USER, TokenUser};
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
    let mut token = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of this process; `token` receives a new handle.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let token = owned(token)?;
    // A TOKEN_USER followed by its SID: a u64 buffer keeps it aligned.
    let mut buf = vec![0u64; 64];
    let mut len = 0u32;
    // SAFETY: `buf` is writable for the length given; `len` receives the size used.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buf.as_mut_ptr().cast(),
            (buf.len() * 8) as u32,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: GetTokenInformation wrote a TOKEN_USER at the start of `buf`, aligned.
    let sid = unsafe { (*(buf.as_ptr() as *const TOKEN_USER)).User.Sid };
    let mut text: windows_sys::core::PWSTR = std::ptr::null_mut();
    // SAFETY: `sid` points into `buf`, alive here; `text` receives a LocalAlloc'd
    // NUL-terminated string.
    if unsafe {
        windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW(sid, &mut text)
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `text` is NUL-terminated UTF-16 from the call above.
    let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
    // SAFETY: `len` u16s were just counted before the NUL.
    let s = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) });
    // SAFETY: allocated by ConvertSidToStringSidW with LocalAlloc, freed once.
    unsafe { windows_sys::Win32::Foundation::LocalFree(text.cast()) };
    Ok(s)
}

/// A descriptor whose access list lets only the current user, SYSTEM and the
/// administrators in: what the control pipe is made with (the Unix control socket is
/// mode 0600).
pub(crate) fn owner_only() -> io::Result<SecurityDescriptor> {
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    let sddl = wide(&format!(
        "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{})",
        current_user_sid()?
    ));
    let mut sd = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated UTF-16; `sd` receives a LocalAlloc'd descriptor.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SecurityDescriptor(sd))
}

/// Creates an instance of the byte-mode named pipe `path` (`\\.\pipe\…`) for local
/// clients, not inheritable. `first`: fail if the pipe exists already (another
/// process owns the name).
pub(crate) fn create_pipe(
    path: &str,
    first: bool,
    security: &SecurityDescriptor,
) -> io::Result<OwnedHandle> {
    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
    use windows_sys::Win32::Storage::FileSystem::{
        FILE_FLAG_FIRST_PIPE_INSTANCE, PIPE_ACCESS_DUPLEX,
    };
    use windows_sys::Win32::System::Pipes::{
        CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE,
        PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
    };
    let name = wide(path);
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: security.0,
        bInheritHandle: 0,
    };
    let mode = if first {
        PIPE_ACCESS_DUPLEX | FILE_FLAG_FIRST_PIPE_INSTANCE
    } else {
        PIPE_ACCESS_DUPLEX
    };
    // SAFETY: `name` is NUL-terminated UTF-16, `attributes` and the descriptor it
    // points to outlive the call; the result is a new handle or INVALID_HANDLE_VALUE.
    let handle = unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            mode,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            PIPE_UNLIMITED_INSTANCES,
            64 * 1024,
            64 * 1024,
            0,
            &attributes,
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    owned(handle)
}

/// Whether a named pipe `path` exists (served by some process). `WaitNamedPipeW`
/// tells without taking an instance: it succeeds when one is free and times out when
/// all are busy.
pub(crate) fn pipe_exists(path: &str) -> bool {
    use windows_sys::Win32::Foundation::ERROR_SEM_TIMEOUT;
    let name = wide(path);
    // SAFETY: `name` is NUL-terminated UTF-16; waits at most 1 ms.
    if unsafe { windows_sys::Win32::System::Pipes::WaitNamedPipeW(name.as_ptr(), 1) } != 0 {
        return true;
    }
    // Every instance busy: it exists. Any other error (a bad name) is left to the
    // pipe's creation to report.
    io::Error::last_os_error().raw_os_error() == Some(ERROR_SEM_TIMEOUT as i32)
}

/// Waits for a client to connect to a pipe instance.
pub(crate) fn connect_pipe(pipe: &OwnedHandle) -> io::Result<()> {
    use windows_sys::Win32::Foundation::ERROR_PIPE_CONNECTED;
    // SAFETY: a valid pipe handle opened without overlapped I/O: this blocks.
    if unsafe {
        windows_sys::Win32::System::Pipes::ConnectNamedPipe(
            pipe.as_raw_handle(),
            std::ptr::null_mut(),
        )
    } != 0
    {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A client that connected between creation and this call.
    if e.raw_os_error() == Some(ERROR_PIPE_CONNECTED as i32) {
        return Ok(());
    }
    Err(e)
}

pub(crate) use crate::mapping::Mapping;

impl Drop for Mapping {
    fn drop(&mut self) {
        use windows_sys::Win32::System::Memory::{MEMORY_MAPPED_VIEW_ADDRESS, UnmapViewOfFile};
        // SAFETY: unmaps exactly the view this value owns (invariant).
        unsafe {
            UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS {
                Value: self.ptr.as_ptr().cast(),
            })
        };
    }
}

/// Shared memory made by the pool: its name, which workers open it by, and the
/// handle that keeps it in existence while workers come and go.
pub(crate) struct SharedMemory {
    pub(crate) name: String,
    _handle: OwnedHandle,
}

/// Creates `len` zero bytes of shared memory backed by the paging file, under a new
/// name in this session's namespace that only the current user, SYSTEM and the
/// administrators may open, and maps it.
pub(crate) fn shared_memory(len: usize) -> io::Result<(SharedMemory, Mapping)> {
    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
    use windows_sys::Win32::System::Memory::{CreateFileMappingW, PAGE_READWRITE};
    let security = owner_only()?;
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: security.0,
        bInheritHandle: 0,
    };
    let size = len as u64;
    // A name nobody else has: the pool's pid and a random part.
    let name = format!(
        "Local\\herder-scoreboard-{}-{:016x}",
        std::process::id(),
        random_u64()
    );
    let wname = wide(&name);
    // SAFETY: no file (the paging file backs it); `attributes` and the descriptor it
    // points to outlive the call; `wname` is NUL-terminated UTF-16.
    let handle = owned(unsafe {
        CreateFileMappingW(
            INVALID_HANDLE_VALUE,
            &attributes,
            PAGE_READWRITE,
            (size >> 32) as u32,
            size as u32,
            wname.as_ptr(),
        )
    })?;
    if io::Error::last_os_error().raw_os_error()
        == Some(windows_sys::Win32::Foundation::ERROR_ALREADY_EXISTS as i32)
    {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    let map = map_view(&handle, len)?;
    Ok((
        SharedMemory {
            name,
            _handle: handle,
        },
        map,
    ))
}

/// Opens the shared memory named `name` and maps its first `len` bytes.
pub(crate) fn map_shared(name: &str, len: usize) -> io::Result<Mapping> {
    use windows_sys::Win32::System::Memory::{FILE_MAP_ALL_ACCESS, OpenFileMappingW};
    let wname = wide(name);
    // SAFETY: `wname` is NUL-terminated UTF-16; the handle is not inherited.
    let handle = owned(unsafe { OpenFileMappingW(FILE_MAP_ALL_ACCESS, 0, wname.as_ptr()) })?;
    // The view keeps the memory alive once the handle is closed.
    map_view(&handle, len)
}

fn map_view(handle: &OwnedHandle, len: usize) -> io::Result<Mapping> {
    use windows_sys::Win32::System::Memory::{FILE_MAP_ALL_ACCESS, MapViewOfFile};
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty mapping",
        ));
    }
    // SAFETY: a valid mapping handle; the system picks the address, and refuses a
    // length beyond the memory's size.
    let view = unsafe { MapViewOfFile(handle.as_raw_handle(), FILE_MAP_ALL_ACCESS, 0, 0, len) };
    let ptr =
        std::ptr::NonNull::new(view.Value.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
    Ok(Mapping { ptr, len })
}

/// Milliseconds since the system started: the same clock in every process.
pub(crate) fn monotonic_ms() -> u64 {
    // SAFETY: no arguments; reads the tick count.
    unsafe { windows_sys::Win32::System::SystemInformation::GetTickCount64() }
}

/// 64 bits from the OS's random source (std seeds its hash keys from it).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x68_65_72_64_65_72);
    h.finish()
}

/// 128 random bits as 32 hex digits: a token whoever presents it is trusted with
/// (a worker's channel, an upgrade's listeners).
pub(crate) fn token() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// The most descriptors this process may hold: Windows sets no such limit on
/// sockets (memory does), so there is no budget to keep.
pub(crate) fn nofile_limit() -> Option<usize> {
    None
}

/// How many descriptors are open: not counted on Windows (see [`nofile_limit`]).
pub(crate) fn open_descriptors() -> Option<usize> {
    None
}

/// Whether `e` says the process or the system ran out of sockets or buffer space
/// (`WSAEMFILE`, `WSAENOBUFS`).
pub(crate) fn is_out_of_descriptors(e: &io::Error) -> bool {
    use windows_sys::Win32::Networking::WinSock::{WSAEMFILE, WSAENOBUFS};
    matches!(e.raw_os_error(), Some(c) if c == WSAEMFILE || c == WSAENOBUFS)
}
