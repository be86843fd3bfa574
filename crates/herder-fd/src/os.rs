//! Platform-only parts of the API.

#[cfg(windows)]
pub mod windows;
