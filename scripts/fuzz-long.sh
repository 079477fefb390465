#!/usr/bin/env bash
# Run every fuzz target for 10 minutes (RELIABILITY.md F-2), one after another, and print the
# executions and crashes of each. Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (libFuzzer
# needs nightly-only flags) and no sanitizer (the crate forbids unsafe code; see fuzz/README.md).
#
#   scripts/fuzz-long.sh               # all six targets, 600 s each (about an hour)
#   FUZZ_SECONDS=60 scripts/fuzz-long.sh sse_openai usage_json
#
# New corpus entries land in fuzz/corpus/<target>/ (minimize with `cargo fuzz cmin` before
# committing); crashes in fuzz/artifacts/<target>/, which `cargo test` replays as well. Exits
# non-zero if any target crashed or failed to run.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_PER_TARGET="${FUZZ_SECONDS:-600}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(connect_target proxy_authorization sse_openai sse_anthropic usage_json base_url)
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

LOGS="$(mktemp -d)"
failed=0
printf '%-20s %12s %10s %8s %8s\n' target execs exec/s seconds crashes
for t in "${TARGETS[@]}"; do
    before=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
    start=$(date +%s)
    RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run -s none "$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$LOGS/$t.log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    after=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOGS/$t.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$LOGS/$t.log" | tail -1)
    crashes=$((after - before))
    printf '%-20s %12s %10s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$took" "$crashes"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        echo "  $t: exit $rc; log $LOGS/$t.log" >&2
        grep -E 'panicked|invariant broken|ERROR: libFuzzer' "$LOGS/$t.log" | head -5 >&2
    fi
done
echo "logs: $LOGS"
exit "$failed"
