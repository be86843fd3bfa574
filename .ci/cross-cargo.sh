#!/usr/bin/env bash
# Run Debian's cargo 1.96 with the cross environment of .ci/env-cross.sh.
#   .ci/cross-cargo.sh test  --target x86_64-pc-windows-gnu -Zbuild-std --locked
#   .ci/cross-cargo.sh check --target x86_64-apple-darwin   -Zbuild-std=std,panic_abort --locked
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env-cross.sh"
exec "$CROSS_CARGO" "$@"
