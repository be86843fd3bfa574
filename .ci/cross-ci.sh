#!/usr/bin/env bash
# Cross-target CI steps, run from anywhere:
#   .ci/cross-ci.sh [extra cargo args, default: --workspace]
# 1. setup (idempotent), 2. cargo check for x86_64-apple-darwin and
# x86_64-unknown-freebsd, 3. cargo test for x86_64-pc-windows-gnu under Wine.
# Uses Debian's cargo/rustc 1.96 with -Zbuild-std; artifacts in target/cross.
# First run on a machine: ~1 min apt + ~15 s wine prefix + ~35-45 s std build
# per target; later runs: only the project's own crates.
set -euo pipefail
ci_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ci_dir/setup-cross.sh"
. "$ci_dir/env-cross.sh"
cd "$HERDER_REPO_ROOT"

args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--workspace)
BUILD_STD=(-Zbuild-std=std,panic_abort)

# Make sure no wine process outlives this script, whatever happens.
trap 'wineserver -k 2>/dev/null || true' EXIT

for t in x86_64-apple-darwin x86_64-unknown-freebsd; do
    echo "cross-ci: cargo check --target $t"
    "$CROSS_CARGO" check --locked --all-targets --target "$t" "${BUILD_STD[@]}" "${args[@]}"
done

echo "cross-ci: cargo test --target x86_64-pc-windows-gnu (under wine)"
"$CROSS_CARGO" test --locked --target x86_64-pc-windows-gnu "${BUILD_STD[@]}" "${args[@]}"

wineserver -w   # wine's helper processes exit a few seconds after the last program
echo "cross-ci: all cross targets OK"
