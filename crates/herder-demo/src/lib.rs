//! What herder's example servers, benches, fuzz targets and tests share. Not
//! published: the library is `herder-fd`, `herder-reactor` and `herder-pool`; this
//! crate is the demo built on them.
//!
//! - [`protocol`]: the demo services, echo and a small HTTP/1.1 server, as
//!   herder-reactor [`Service`](herder_reactor::Service)s.
//!
//! With the default feature `servers`:
//!
//! - [`flags`]: the command line both example servers take, and the pool and
//!   worker settings that follow from it.
//! - [`unix`] (Unix) and `windows` (Windows), one of them also named [`common`]: the
//!   rest of what the example servers share — logging, the listener, the
//!   supervisor's loop with the Prometheus endpoint ([`metrics`]).

// No panics on request paths: library code handles every error; the invariants it
// relies on instead are stated where they are (`#[expect]` with a reason).
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

/// Logs through `tracing`: 0 error, 1 warn, 2 info, 3 debug.
#[cfg(feature = "servers")]
#[macro_export]
macro_rules! log {
    (0, $($arg:tt)*) => { $crate::__tracing::error!($($arg)*) };
    (1, $($arg:tt)*) => { $crate::__tracing::warn!($($arg)*) };
    (2, $($arg:tt)*) => { $crate::__tracing::info!($($arg)*) };
    (3, $($arg:tt)*) => { $crate::__tracing::debug!($($arg)*) };
}

#[cfg(feature = "servers")]
#[doc(hidden)]
pub use tracing as __tracing;

#[cfg(feature = "servers")]
pub mod flags;
#[cfg(feature = "servers")]
mod inherited;
#[cfg(feature = "servers")]
mod logging;
#[cfg(feature = "servers")]
pub mod metrics;
pub mod protocol;
#[cfg(feature = "servers")]
mod supervise;
#[cfg(all(unix, feature = "servers"))]
pub mod unix;
#[cfg(all(windows, feature = "servers"))]
pub mod windows;

/// What the example servers share on this platform, under one name: [`unix`], or
/// `windows` on Windows, which offer the same functions where the platform allows.
#[cfg(all(unix, feature = "servers"))]
pub use unix as common;
#[cfg(all(windows, feature = "servers"))]
pub use windows as common;
