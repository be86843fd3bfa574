//! Platform-only parts of the API, as sealed extension traits.

#[cfg(any(target_os = "linux", target_os = "android"))]
pub mod linux;
#[cfg(windows)]
pub mod windows;
