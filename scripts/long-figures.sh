#!/usr/bin/env bash
# The figures of RELIABILITY.md §12 and of the performance issue that are too long for CI, from
# one command. Each step prints its own table or FIGURE lines; the README quotes the latest run.
#
#   scripts/long-figures.sh            # everything (about 75 minutes: the fuzz runs dominate)
#   SKIP_FUZZ=1 scripts/long-figures.sh
#
#   1. load harness, every scenario incl. 1 000 and 10 000 idle MITM connections (F-22)
#   2. soak, 120 s of mixed traffic: no unexpected error, RSS and tasks flat (F-21)
#   3. fuzzing, 10 minutes per target (F-2)
set -uo pipefail
cd "$(dirname "$0")/.."
status=0

echo "=== load harness (issue 5, F-22)"
cargo bench --bench load -- --json target/load.json || status=1

echo "=== soak (F-21)"
cargo bench --bench soak -- --seconds "${SOAK_SECONDS:-120}" || status=1

if [ -z "${SKIP_FUZZ:-}" ]; then
    echo "=== fuzz (F-2)"
    scripts/fuzz-long.sh || status=1
fi
exit $status
