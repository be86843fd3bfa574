//! The worker's side on Unix: the descriptors inherited the systemd way (the
//! listeners, the channel, the scoreboard, the accept lock).

use super::Parts;
use crate::AcceptLockKind;
use crate::accept_lock::{AcceptLock, LOCK_ENV, LOCK_NAME};
use crate::error::Error;
use crate::scoreboard::{Board, SCOREBOARD_NAME};
use crate::scorecard::Scorecard;
use crate::sys;
use herder_fd::Channel;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// The name of the worker's channel to its supervisor among its inherited descriptors.
pub const CHANNEL_NAME: &str = "herder-channel";

/// Adopts what the supervisor handed worker `slot` (its record `record`).
pub(super) fn adopt(slot: usize, record: Option<usize>) -> Result<Parts, Error> {
    let mut fds = listen_fds()?;
    let mut take = |name: &str| {
        let i = fds.iter().position(|(n, _)| n == name)?;
        Some(fds.remove(i).1)
    };
    let channel = match take(CHANNEL_NAME) {
        Some(fd) => Some(Channel::new(fd).map_err(|e| Error::Channel { slot, source: e })?),
        None => None,
    };
    let scorecard = match (take(SCOREBOARD_NAME), record) {
        (Some(fd), Some(index)) => {
            let board = Board::open(std::os::fd::AsFd::as_fd(&fd))
                .map_err(|e| Error::Environment(format!("scoreboard: {e}")))?;
            Scorecard::new(Arc::new(board), index)
        }
        _ => None,
    };
    Ok(Parts {
        channel,
        fds,
        scorecard,
    })
}

/// The pool's accept lock, from the worker's descriptors (`take`); `None` without one.
pub(super) fn accept_lock(
    take: impl FnOnce(&str) -> Option<OwnedFd>,
) -> io::Result<Option<AcceptLock>> {
    let Some(kind) = std::env::var(LOCK_ENV).ok() else {
        return Ok(None);
    };
    let kind: AcceptLockKind = kind.parse()?;
    match take(LOCK_NAME) {
        Some(fd) => AcceptLock::open(kind, fd).map(Some),
        None => Ok(None),
    }
}

/// Parses `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, and adopts the descriptors.
pub(crate) fn listen_fds() -> Result<Vec<(String, OwnedFd)>, Error> {
    let var = |name: &str| std::env::var(name).ok();
    let Some(pid) = var("LISTEN_PID") else {
        return Ok(Vec::new());
    };
    if pid.parse::<u32>().ok() != Some(sys::getpid()) {
        // Meant for another process (systemd's rule).
        return Ok(Vec::new());
    }
    let count: usize = var("LISTEN_FDS")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n <= 1024)
        .ok_or_else(|| Error::Environment("LISTEN_FDS is missing or not a count".into()))?;
    let names: Vec<String> = match var("LISTEN_FDNAMES") {
        Some(n) => n.split(':').map(str::to_string).collect(),
        None => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        return Err(Error::Environment(format!(
            "LISTEN_FDNAMES names {} descriptors, LISTEN_FDS {count}",
            names.len()
        )));
    }
    let fds = sys::adopt_inherited(count)
        .map_err(|e| Error::Environment(format!("inherited descriptor: {e}")))?;
    Ok(names.into_iter().zip(fds).collect())
}
