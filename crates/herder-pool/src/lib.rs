//! herder worker processes: spawning by re-executing the current binary, descriptor
//! inheritance the systemd way, supervision with restart back-off and a crash-loop
//! breaker, and the worker's side of it all.
//!
//! This crate does not know which protocol its workers speak.
//!
//! # The life of a worker
//!
//! ```text
//!   start ──▶ Starting ──ready──▶ Ready ──exit──▶ restarted at once
//!               │  (ready timeout: killed)        (past 10 in 1 s: a failure)
//!               └──────exit──────▶ a failure
//!                                     │
//!      fatal exit code ──▶ Fatal      ├──▶ Backoff (0, 100 ms, 200 ms, … ≤ 10 s, ±20 %) ──▶ start
//!                                     └──▶ 5 in 30 s: Tripped ── cool-down (10 s, doubling
//!                                          ≤ 5 min) ──▶ one start (half-open)
//! ```
//!
//! A [`Pool`] starts each worker by re-executing this program (never a `fork`
//! without `exec`) with its listeners as descriptors 3, 4, … and `LISTEN_FDS`,
//! `LISTEN_FDNAMES` and `LISTEN_PID` set for that child only — the way systemd hands
//! sockets over — plus a channel to the supervisor. At the top of `main`, the same
//! program calls [`Worker::from_env`] to learn whether it is a worker, takes its
//! listeners and channel, and reports ready with [`Worker::ready`].
//!
//! Exits are noticed at once (a pidfd in the event loop on Linux, `SIGCHLD`
//! elsewhere). A worker that had become ready and dies — killed by an operator or the
//! OOM killer, or hit by a bug — is restarted at once, every time: a pool never
//! empties itself. Back-off (exponential, with jitter) is for failures: workers that
//! cannot start, or ready ones dying faster than [`Config::restart_intensity`] per
//! [`Config::restart_period`]. A slot that fails too often within a window trips its
//! breaker while the others go on, and tries one worker again after a cool-down; a
//! worker that exits with [`FATAL_EXIT_CODE`] is not restarted. A worker failing to
//! start never stops the pool.
//!
//! # Portability
//!
//! One [`Pool`] for every platform, with the same behaviour where the platform
//! allows: on Windows workers are started with `CreateProcess`, each connecting back
//! to the pool over loopback and handed the listeners (and, with
//! [`Pool::send_sockets`], connections) with `WSADuplicateSocketW`; restarts,
//! rolling restarts, recycling, autoscaling, moving live connections, heartbeats,
//! the control requests (over a named pipe) and binary upgrades are the same code.
//! There are no signals (`request_stop` instead).
//! [The platforms page](https://github.com/herder-rs/herder/blob/main/docs/platforms.md)
//! lists the differences.
//!
//! Each worker has a record in a scoreboard in shared memory (an anonymous
//! `memfd` on Linux, nothing left behind by name; a mapping backed by the paging file
//! on Windows): its heartbeat, connections taken and open, written with atomics by
//! the worker ([`Scorecard`]) and read without locks by the supervisor and by its
//! peers (load-aware accepting). A worker whose heartbeat is older than the heartbeat
//! timeout gets `SIGTERM`, then `SIGKILL` after a grace period (on Windows it is
//! terminated), and is replaced.
//!
//! For the shared-listener model, the pool can create an accept lock
//! ([`Config::accept_lock`]): `flock`, `fcntl` record locks, or a robust process-shared
//! `pthread` mutex, each released or handed over by the kernel when its holder dies,
//! so a worker killed while holding it never wedges the others.
//!
//! [`Pool::listen_control`] answers line-delimited JSON requests on a Unix socket
//! (mode 0600, peer uid checked): `status`, `reload`, `scale`, `stop`.

// No panics on request paths: library code handles every error; the invariants it
// relies on instead are stated where they are (`#[expect]` with a reason).
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(unix)]
mod accept_lock;
mod config;
mod control;
#[cfg(unix)]
mod credentials;
mod dispatch;
mod error;
mod event;
mod inherit;
mod link;
mod listener;
mod lock_kind;
mod mapping;
mod message;
mod moves;
mod pool;
mod restart;
mod scoreboard;
mod scorecard;
mod shared;
mod state;
#[cfg(unix)]
pub mod systemd;
mod watch;
mod worker;

#[cfg(unix)]
#[path = "sys/unix/mod.rs"]
mod sys;
#[cfg(windows)]
#[path = "sys/windows.rs"]
mod sys;

#[cfg(windows)]
pub use pool::{control_pipe_path, request_stop};
#[cfg(windows)]
pub use worker::AcceptLock;

#[cfg(unix)]
pub use accept_lock::AcceptLock;
pub use control::Command;
#[cfg(unix)]
pub use credentials::Credentials;
pub use dispatch::{Choice, DispatchStats, Dispatcher};
pub use error::Error;
pub use inherit::inherited_sockets;
pub use link::WorkerLink;
pub use listener::{defer_accept, reuseport_listener, tcp_listener};
pub use lock_kind::AcceptLockKind;
pub use message::is_reserved;
pub use moves::MoveStats;
pub use pool::{
    Autoscale, Config, Descriptor, FATAL_EXIT_CODE, Load, Pool, PoolEvent, State, WorkerInfo,
};
pub use scorecard::{PEER_FRESH, Scorecard};
pub use shared::{SharedListener, Sharing};
pub use watch::Watched;
#[cfg(unix)]
pub use worker::CHANNEL_NAME;
pub use worker::{WORKER_ENV, Worker, is_drain_request, send_ready};

/// The README's examples, compiled as doctests.
#[cfg(all(doctest, unix))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
