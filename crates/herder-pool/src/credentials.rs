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
    fn the_current_user_is_recognised_and_applying_it_is_a_no_op() {
        let (uid, _, gid, _) = crate::sys::current_ids();
        let me = Credentials { uid, gid };
        assert!(me.is_current());
        me.apply().unwrap();
        assert!(!Credentials { uid: uid ^ 1, gid }.is_current());
    }
}
