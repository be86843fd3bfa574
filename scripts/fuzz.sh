#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ for a bounded time each, with AddressSanitizer and
# debug assertions. Installs cargo-fuzz if it is missing.
#
#   scripts/fuzz.sh                 every target, 30 s each
#   scripts/fuzz.sh 600 http        one target for 10 minutes
#
# New inputs collect in fuzz/corpus/<target> (not committed); fuzz/seeds/<target>
# holds the committed seeds. A failure leaves its input in fuzz/artifacts/<target>;
# rerun it with `cargo fuzz run <target> <that file>`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

secs="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(handoff http control)

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

# The sanitizer flag is unstable: RUSTC_BOOTSTRAP lets a stable toolchain take it,
# so the fuzzers need no nightly.
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "fuzz: $t for ${secs} s"
    log="fuzz/corpus/$t.log"
    if ! cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -max_len=16384 -rss_limit_mb=1024 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $t FAILED (the input is in fuzz/artifacts/$t)"
        exit 1
    fi
    grep -E '^(Done|stat::peak_rss_mb)|^INFO: seed corpus' "$log" || true
done
echo "fuzz: ${targets[*]}: no failure in ${secs} s each"
