//! Running unprivileged: the user and group workers (and the supervisor, once it has
//! bound what needs privileges) switch to.

use std::io;

/// A user and group to run as, for privilege separation: a supervisor started as root
/// binds its listeners, then runs its workers as these
/// ([`Config::worker_credentials`](crate::Config::worker_credentials)) and, where it
/// needs root no longer, switches to them itself ([`Credentials::apply`]).
///
/// # Examples
///
/// ```no_run
/// use herder_pool::{Config, Credentials};
/// let nobody = Credentials::lookup("nobody", None)?;
/// let mut config = Config::default();
/// config.worker_credentials = Some(nobody);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The user id.
    pub uid: u32,
    /// The group id; the supplementary groups become just this one.
    pub gid: u32,
}

impl Credentials {
    /// Looks `user` up in the user database (a name, or a numeric id), and `group`
    /// in the group database (a name or a numeric id); without a group, the user's
    /// primary group.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] for an unknown user or group (or a numeric user
    /// without a database entry and no group given), or the lookup's own error.
    pub fn lookup(user: &str, group: Option<&str>) -> io::Result<Credentials> {
        let (uid, primary) = match crate::sys::user_by_name(user)? {
            Some((uid, gid)) => (uid, Some(gid)),
            None => {
                let uid = user
                    .parse::<u32>()
                    .map_err(|_| not_found(format!("no user {user:?}")))?;
                (uid, crate::sys::user_by_id(uid)?.map(|(_, gid)| gid))
            }
        };
        let gid = match group {
            None => primary.ok_or_else(|| {
                not_found(format!("user {user} has no database entry: name a group"))
            })?,
            Some(g) => match crate::sys::group_by_name(g)? {
                Some(gid) => gid,
                None => g
                    .parse::<u32>()
                    .map_err(|_| not_found(format!("no group {g:?}")))?,
            },
        };
        Ok(Credentials { uid, gid })
    }

    /// Whether this process runs as them already: real and effective user and group
    /// ids all match.
    pub fn is_current(&self) -> bool {
        crate::sys::current_ids() == (self.uid, self.uid, self.gid, self.gid)
    }

    /// Switches this process to them for good: the supplementary groups become
    /// `gid` alone, then the group, then the user (real, effective and saved ids).
    /// On Linux the process is then made non-dumpable, so that other processes of
    /// the user — its workers — cannot trace it or read its memory (they can still
    /// signal it). Does nothing if it runs as them already. Descriptors stay open:
    /// bind first.
    ///
    /// # Errors
    ///
    /// What `setgroups`/`setgid`/`setuid` return (`EPERM` without the privilege),
    /// or [`io::ErrorKind::PermissionDenied`] if the old user could be taken back
    /// afterwards.
    pub fn apply(&self) -> io::Result<()> {
        if self.is_current() {
            return Ok(());
        }
        crate::sys::switch_ids(self.uid, self.gid)
    }
}

impl Credentials {
    /// Checks that a process of these credentials can run `program`: every directory
    /// on its path searchable, and the file executable, by the owner, group or other
    /// permission bits that apply to this user and group (root may do anything;
    /// access control lists are not read). A pool checks its program so at start
    /// rather than fail every worker start with `EACCES`.
    ///
    /// # Errors
    ///
    /// `PermissionDenied` naming the first path that stops them, its mode and owner;
    /// what reading the path's metadata returns.
    pub fn check_can_execute(&self, program: &std::path::Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.uid == 0 {
            return Ok(());
        }
        let path = std::fs::canonicalize(program)?;
        let steps: Vec<&std::path::Path> = path.ancestors().collect();
        for (i, p) in steps.iter().rev().enumerate() {
            let meta = std::fs::metadata(p)?;
            let mode = meta.mode();
            let bits = if meta.uid() == self.uid {
                mode >> 6
            } else if meta.gid() == self.gid {
                mode >> 3
            } else {
                mode
            };
            if bits & 1 == 0 {
                let what = if i + 1 == steps.len() {
                    "executable"
                } else {
                    "searchable"
                };
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} (mode {:o}, owner {}:{}) is not {what} by uid {} gid {}: \
                         put the program where that user can reach it",
                        p.display(),
                        mode & 0o7777,
                        meta.uid(),
                        meta.gid(),
                        self.uid,
                        self.gid
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn not_found(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_are_looked_up_by_name_or_id() {
        let root = Credentials::lookup("root", None).unwrap();
        assert_eq!(root, Credentials { uid: 0, gid: 0 });
        assert_eq!(Credentials::lookup("0", None).unwrap(), root);
        assert_eq!(
            Credentials::lookup("root", Some("0")).unwrap(),
            Credentials { uid: 0, gid: 0 }
        );
        assert_eq!(
            Credentials::lookup("4000000", Some("4000001")).unwrap(),
            Credentials {
                uid: 4_000_000,
                gid: 4_000_001
            }
        );
        for (user, group) in [
            ("no-such-user-herder", None),
            ("root", Some("no-such-group-herder")),
            ("4000000", None),
            ("ro\0ot", None),
        ] {
            let e = Credentials::lookup(user, group).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{user} {group:?}: {e}");
        }
    }

    #[test]
    fn a_program_the_user_cannot_reach_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("private");
        std::fs::create_dir(&inner).unwrap();
        let program = inner.join("server");
        std::fs::write(&program, b"").unwrap();
        let set = |p: &std::path::Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(dir.path(), 0o755);
        set(&program, 0o755);
        set(&inner, 0o700);
        let (uid, _, gid, _) = crate::sys::current_ids();
        // Someone else, in no group of the files'.
        let other = Credentials {
            uid: uid ^ 0x4000_0000,
            gid: gid ^ 0x4000_0000,
        };
        let e = other.check_can_execute(&program).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("private (mode 700"), "{e}");
        assert!(e.to_string().contains("not searchable"), "{e}");
        set(&inner, 0o711);
        other.check_can_execute(&program).unwrap();
        set(&program, 0o744);
        let e = other.check_can_execute(&program).unwrap_err();
        assert!(e.to_string().contains("not executable"), "{e}");
        // The owner's bits apply to the owner.
        Credentials { uid, gid }
            .check_can_execute(&program)
            .unwrap();
        Credentials { uid: 0, gid: 0 }
            .check_can_execute(&program)
            .unwrap();
    }

    #[test]
    fn the_current_user_is_recognised_and_applying_it_is_a_no_op() {
        let (uid, _, gid, _) = crate::sys::current_ids();
        let me = Credentials { uid, gid };
        assert!(me.is_current());
        me.apply().unwrap();
        assert!(!Credentials { uid: uid ^ 1, gid }.is_current());
    }
}
