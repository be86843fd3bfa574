//! Users and groups: lookups (`get*_r`), the current ids, switching.

use super::cvt;
use std::ffi::CString;
use std::io;

/// Runs a `get*_r` lookup with a buffer that grows on `ERANGE`; `Ok(false)` when the
/// entry does not exist.
fn lookup_r(mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, bool)) -> io::Result<bool> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let (r, found) = call(&mut buf);
        match r {
            0 => return Ok(found),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            libc::EINTR => continue,
            // Some C libraries say "no such entry" this way (a container without
            // /etc/passwd, say).
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(false),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// `getpwnam_r`: the user's id and primary group.
pub(crate) fn user_by_name(name: &str) -> io::Result<Option<(u32, u32)>> {
    let Ok(name) = CString::new(name) else {
        return Ok(None);
    };
    let mut ids = None;
    lookup_r(|buf| {
        // SAFETY: passwd is plain data; getpwnam_r writes it and its strings into
        // `buf` (within its length) and sets `out` to it or to null.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: as above.
        let r = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if r == 0 && !out.is_null() {
            ids = Some((pw.pw_uid, pw.pw_gid));
        }
        (r, !out.is_null())
    })?;
    Ok(ids)
}

/// `getpwuid_r`: the user's id and primary group.
pub(crate) fn user_by_id(uid: u32) -> io::Result<Option<(u32, u32)>> {
    let mut ids = None;
    lookup_r(|buf| {
        // SAFETY: as in `user_by_name`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: as in `user_by_name`.
        let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        if r == 0 && !out.is_null() {
            ids = Some((pw.pw_uid, pw.pw_gid));
        }
        (r, !out.is_null())
    })?;
    Ok(ids)
}

/// `getgrnam_r`: the group's id.
pub(crate) fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    let Ok(name) = CString::new(name) else {
        return Ok(None);
    };
    let mut gid = None;
    lookup_r(|buf| {
        // SAFETY: group is plain data; getgrnam_r writes it and its strings into
        // `buf` (within its length) and sets `out` to it or to null.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: as above.
        let r = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if r == 0 && !out.is_null() {
            gid = Some(gr.gr_gid);
        }
        (r, !out.is_null())
    })?;
    Ok(gid)
}

/// Real and effective user ids, real and effective group ids.
pub(crate) fn current_ids() -> (u32, u32, u32, u32) {
    // SAFETY: these calls have no preconditions and cannot fail.
    unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    }
}

/// Switches to `uid`/`gid` for good (supplementary groups, group, then user), makes
/// the process non-dumpable (Linux), and checks that the old user cannot be taken
/// back.
pub(crate) fn switch_ids(uid: u32, gid: u32) -> io::Result<()> {
    let (ruid, euid, _, _) = current_ids();
    // SAFETY: setgroups reads one gid from a valid pointer; setgid/setuid take plain
    // ids.
    unsafe {
        cvt(libc::setgroups(1, &gid))?;
        cvt(libc::setgid(gid))?;
        cvt(libc::setuid(uid))?;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: PR_SET_DUMPABLE takes a plain value. Not dumpable: processes of the new
    // user (a worker, say) cannot trace this one or read its memory.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
    }
    if uid != 0 && (ruid == 0 || euid == 0) {
        // SAFETY: as above; this must fail now.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "root could be taken back after switching users",
            ));
        }
    }
    Ok(())
}
