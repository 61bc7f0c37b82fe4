#!/bin/sh
# Runs libFuzzer targets (built by `make fuzz-build` into build/fuzz/), each for a number of seconds, seeded
# from tests/fuzz/corpus/<target>/ when that directory exists. Prints one line per target and exits non-zero
# when any target failed (a crash, a leak, a sanitizer report, a contract abort, or a missing binary).
#
# usage: tests/fuzz/run.sh [-keep] <seconds> <fuzz binary>...
#   -keep  grow <build dir>/corpus/<target>/ across runs (make fuzz); without it new inputs go to a temporary
#          directory that is deleted afterwards, so a smoke run costs the same every time (make test).
# A failing input is saved as <build dir>/artifacts/<target>/crash-<sha1> (or leak-, timeout-, oom-); the
# line printed says how to replay it.
set -u
cd "$(dirname "$0")/../.."
keep=0
if [ "${1:-}" = -keep ]; then
    keep=1
    shift
fi
secs=${1:?usage: tests/fuzz/run.sh [-keep] <seconds> <fuzz binary>...}
shift
# A single input that runs this long is a hang; it is reported as a failure instead of eating the budget.
PER_INPUT_TIMEOUT=10
failed=0
for bin in "$@"; do
    name=$(basename "$bin")
    dir=$(dirname "$bin")
    if [ ! -x "$bin" ]; then
        echo "fuzz $name: FAILED (no binary $bin; run make fuzz-build)"
        failed=$((failed + 1))
        continue
    fi
    art="$dir/artifacts/$name"
    mkdir -p "$art"
    if [ "$keep" -eq 1 ]; then
        work="$dir/corpus/$name"
        mkdir -p "$work"
    else
        work=$(mktemp -d "${TMPDIR:-/tmp}/zmesh-fuzz-$name-XXXXXX")
    fi
    seeds=""
    [ -d "tests/fuzz/corpus/$name" ] && seeds="tests/fuzz/corpus/$name"
    log="$dir/$name.log"
    # The first corpus directory receives new inputs; the seed directory is only read.
    "$bin" -max_total_time="$secs" -timeout="$PER_INPUT_TIMEOUT" -print_final_stats=1 \
        -artifact_prefix="$art/" "$work" $seeds >"$log" 2>&1
    rc=$?
    runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1)
    [ "$keep" -eq 1 ] || rm -rf "$work"
    if [ "$rc" -eq 0 ] && [ -n "$runs" ]; then
        echo "fuzz $name: ok, $runs runs in ${secs}s${seeds:+ (seeds: $seeds)}"
    else
        a=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //')
        echo "fuzz $name: FAILED (exit $rc; log $log${a:+; replay: $bin $a})"
        grep -E 'ERROR|SUMMARY|runtime error|deadly signal' "$log" | head -5
        failed=$((failed + 1))
    fi
done
[ "$failed" -eq 0 ]
