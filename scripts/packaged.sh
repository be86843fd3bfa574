#!/usr/bin/env bash
# Builds and tests tests/packaged/ — the smallest hand-off and shared-listener
# servers — against the herder crates as `cargo package` makes them (what crates.io
# would serve), never against the workspace's sources.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo package --workspace --locked --no-verify --quiet
rm -rf target/packaged
mkdir -p target/packaged
for c in herder-fd herder-reactor herder-pool; do
    tar -xzf "target/package/$c-0.1.0.crate" -C target/packaged
done
# `cargo package` gives every file one fixed date: without a fresh one, the build
# below would take the crates for unchanged and reuse a stale build of them.
find target/packaged -type f -exec touch {} +
cd tests/packaged
CARGO_TARGET_DIR=../../target/packaged-build cargo test --locked "$@"
