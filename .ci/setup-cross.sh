#!/usr/bin/env bash
# Idempotent machine setup for cross-target checks and Windows tests under
# Wine.  Safe to run many times; prints what it does.
#   1. apt-installs Debian's Rust 1.96 (rustc-web, cargo-web, rust-web-src),
#      the MinGW-w64 linker and Wine 8 (only what is missing).
#   2. creates a headless 64-bit Wine prefix at $WINEPREFIX
#      (${HERDER_WINEPREFIX:-$HOME/.cache/herder-wine}).
#   3. builds .ci/prng/bcryptprimitives.dll (ProcessPrng shim: Rust std needs
#      it, Wine 8 lacks it) and installs it into the prefix's system32.
# Afterwards: `. .ci/env-cross.sh` or use .ci/cross-cargo.sh / .ci/wine-run.sh.
set -euo pipefail

ci_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$ci_dir/env-cross.sh"

say() { echo "setup-cross: $*"; }

# --- 1. packages --------------------------------------------------------------
pkgs=(rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 wine wine64)
missing=()
for p in "${pkgs[@]}"; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    say "installing: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
else
    say "packages present: ${pkgs[*]}"
fi

for tool in "$CROSS_CARGO" "$RUSTC" x86_64-w64-mingw32-gcc wine wineboot wineserver; do
    command -v "$tool" >/dev/null || { say "ERROR: $tool not found after install" >&2; exit 1; }
done
say "$("$CROSS_CARGO" --version); $("$RUSTC" --version); $(wine --version)"

# --- 2. Wine prefix -----------------------------------------------------------
if [ -f "$WINEPREFIX/system.reg" ] && [ -d "$WINEPREFIX/drive_c/windows/system32" ]; then
    say "wine prefix present: $WINEPREFIX"
else
    say "creating wine prefix $WINEPREFIX (headless wineboot -i)"
    mkdir -p "$(dirname "$WINEPREFIX")"
    # The 'syswow64\rundll32.exe ... c0000135' line is expected (no wine32).
    wineboot -i
    wineserver -w   # let wineboot finish writing the registry
fi

# --- 3. ProcessPrng shim --------------------------------------------------------
src="$ci_dir/prng/bcryptprimitives.c"
def="$ci_dir/prng/bcryptprimitives.def"
dst="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
stamp="$WINEPREFIX/.herder-bcryptprimitives.sha256"
want="$(cat "$src" "$def" | sha256sum | cut -d' ' -f1)"
if [ -f "$dst" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "bcryptprimitives.dll shim up to date"
else
    say "building bcryptprimitives.dll shim -> $dst"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    x86_64-w64-mingw32-gcc -O2 -shared -s -Wl,--no-insert-timestamp \
        -o "$tmp/bcryptprimitives.dll" "$src" "$def" -ladvapi32
    cp "$tmp/bcryptprimitives.dll" "$dst"
    echo "$want" > "$stamp"
fi

say "done. For cross builds:  . $ci_dir/env-cross.sh  (or use $ci_dir/cross-cargo.sh)"
say "  WINEPREFIX=$WINEPREFIX WINEDEBUG=$WINEDEBUG WINEDLLOVERRIDES=$WINEDLLOVERRIDES"
say "  CROSS_CARGO=$CROSS_CARGO RUSTC=$RUSTC RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
say "  CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=$CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER"
say "  CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER"
