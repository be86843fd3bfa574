#!/usr/bin/env bash
# wine-run.sh EXE [ARGS...]
# Run one Windows executable under Wine (headless, prefix from
# .ci/env-cross.sh) with a timeout; exits with the program's exit code
# (mod 256, as on any Unix).  Usable as cargo's target runner:
#   CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=<repo>/.ci/wine-run.sh
# Timeout: $WINE_RUN_TIMEOUT seconds (default 900); on timeout exits 124
# and kills the prefix's wineserver (and so every process in the prefix).
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 EXE [ARGS...]" >&2
    exit 2
fi

ci_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$ci_dir/env-cross.sh"

if [ ! -f "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" ]; then
    echo "wine-run.sh: Wine prefix $WINEPREFIX not prepared; run .ci/setup-cross.sh first" >&2
    exit 125
fi

timeout_s="${WINE_RUN_TIMEOUT:-900}"
rc=0
# No `exec`: we want to clean up after a timeout.  stdin is passed through.
timeout --kill-after=15 "$timeout_s" wine "$@" || rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "wine-run.sh: '$1' timed out after ${timeout_s}s; killing wineserver for $WINEPREFIX" >&2
    wineserver -k 2>/dev/null || true
    exit 124
fi
exit "$rc"
