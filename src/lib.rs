//! herder: multi-process network servers in Rust — the nginx/Apache process model
//! as a library.
//!
//! This facade re-exports the workspace's crates; depend on a single one if that is
//! all you need:
//!
//! - [`fd`] ([`herder-fd`](https://docs.rs/herder-fd)): descriptors and sockets across
//!   process boundaries.
//! - [`reactor`] ([`herder-reactor`](https://docs.rs/herder-reactor)): the event loop of
//!   each process.
//! - [`pool`] ([`herder-pool`](https://docs.rs/herder-pool)): supervised worker
//!   processes and accept locks.

// No panics on request paths: library code handles every error; the invariants it
// relies on instead are stated where they are (`#[expect]` with a reason).
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub use herder_fd as fd;
pub use herder_pool as pool;
pub use herder_reactor as reactor;

/// The README's example, compiled as a doctest.
#[cfg(all(doctest, unix))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
