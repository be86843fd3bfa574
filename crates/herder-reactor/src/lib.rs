//! The herder event loop: readiness (over the `polling` crate), timers, a waker,
//! signals as events and buffered connections with back-pressure, in one process.
//!
//! This crate does not know how a socket arrived: it serves descriptors handed over
//! by `herder-fd`, accepted from a shared listener, or opened any other way.
//!
//! It is not written yet; this placeholder reserves the name and its place in the
//! workspace.
