//! herder worker processes: spawning by re-executing the current binary, descriptor
//! inheritance the systemd way, supervision with restart back-off, readiness,
//! heartbeats, scaling, drain and reload, the shared-memory scoreboard, accept locks
//! and the control socket.
//!
//! This crate does not know which protocol its workers speak.
//!
//! It is not written yet; this placeholder reserves the name and its place in the
//! workspace.
