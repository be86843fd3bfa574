# shellcheck shell=bash
# Source me:  . .ci/env-cross.sh
#
# Environment for cross builds with Debian's Rust 1.96 (rustc-web/cargo-web,
# std rebuilt from rust-web-src via -Zbuild-std) and for running the
# x86_64-pc-windows-gnu test binaries under Wine.  Prepare the machine first
# with .ci/setup-cross.sh (idempotent).
#
# Use "$CROSS_CARGO" (Debian's cargo, /usr/bin/cargo), never plain `cargo`,
# which is rustup's 1.95 and has no std for these targets.  Or use the
# wrapper .ci/cross-cargo.sh, which sources this file and execs $CROSS_CARGO.
#
# NB: this exports RUSTC/RUSTDOC/CARGO_TARGET_DIR for the Debian toolchain;
# don't run rustup's `cargo` in the same shell afterwards (or use the wrapper
# script, which keeps the caller's environment clean).

_herder_ci_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HERDER_REPO_ROOT="$(cd "$_herder_ci_dir/.." && pwd)"

# --- Wine -------------------------------------------------------------------
export WINEPREFIX="${HERDER_WINEPREFIX:-$HOME/.cache/herder-wine}"
export WINEARCH=win64
export WINEDEBUG="${WINEDEBUG:--all}"
# No Mono (.NET) / Gecko (IE) install attempts, no desktop-menu builder.
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml=;winemenubuilder.exe=d}"
unset DISPLAY WAYLAND_DISPLAY

# --- Debian Rust 1.96 toolchain ---------------------------------------------
export CROSS_CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
# -Zbuild-std is unstable: allow it on this stable compiler.
export RUSTC_BOOTSTRAP=1
# Keep 1.96 artifacts away from rustup 1.95's target/ (different compiler
# => incompatible rlibs, and they'd rebuild each other's files endlessly).
export CARGO_TARGET_DIR="${HERDER_CROSS_TARGET_DIR:-$HERDER_REPO_ROOT/target/cross}"

# --- x86_64-pc-windows-gnu ----------------------------------------------------
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$_herder_ci_dir/wine-run.sh"
# windows-gnu C code (cc crate), if any crate builds some:
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar

unset _herder_ci_dir
