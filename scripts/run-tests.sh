#!/bin/sh
# Runs the unit tests (cmocka binaries in <build>/tests), a fuzz smoke (every libFuzzer target in tests/fuzz/,
# built with clang into build/fuzz/, for FUZZ_SMOKE_TIME seconds each; one test per target) and/or the
# end-to-end tests (pytest, as root), then prints one final line: "N passed, N failed".
# usage: scripts/run-tests.sh unit|fuzz|e2e|all <build-dir>
set -u
what=${1:-all}
B=${2:-build}
cd "$(dirname "$0")/.."
passed=0
failed=0
if [ "$what" = unit ] || [ "$what" = all ]; then
    for t in "$B"/tests/test_*; do
        [ -x "$t" ] || continue
        out=$(CMOCKA_MESSAGE_OUTPUT=stdout "$t" 2>&1)
        rc=$?
        p=$(printf '%s\n' "$out" | grep -c '^\[       OK \]')
        # The summary repeats each failed test's name; count them once.
        f=$(printf '%s\n' "$out" | grep '^\[  FAILED  \] ' | grep -v 'test(s)' | sort -u | wc -l)
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
        echo "unit $(basename "$t"): $p passed, $f failed"
        [ "$f" -ne 0 ] && printf '%s\n' "$out" | grep -E 'FAILED|error|Error' | head -20
        passed=$((passed + p))
        failed=$((failed + f))
    done
fi
if [ "$what" = fuzz ] || [ "$what" = all ]; then
    # A few seconds each is enough to catch a target that no longer builds, crashes on its seeds or trips a
    # sanitizer on shallow inputs; real fuzzing is `make fuzz FUZZ_TIME=...`. Targets run FUZZ_SMOKE_JOBS at a
    # time (libFuzzer's time limit is wall-clock, so this halves the wait on two cores, not the work).
    smoke=${FUZZ_SMOKE_TIME:-2}
    jobs=${FUZZ_SMOKE_JOBS:-2}
    targets=$(ls tests/fuzz/fuzz_*.c 2>/dev/null | sed 's|tests/fuzz/\(.*\)\.c|build/fuzz/\1|')
    n=$(printf '%s\n' $targets | grep -c .)
    # The instrumented library is built once and reused; make returns at once when nothing changed.
    if ! blog=$(make --no-print-directory -s -j2 fuzz-build 2>&1); then
        printf '%s\n' "$blog" | tail -20
        echo "fuzz: build failed; counting its $n targets as failed"
        failed=$((failed + n))
    elif [ "$n" -gt 0 ]; then
        out=$(mktemp -d)
        i=0
        for t in $targets; do
            (tests/fuzz/run.sh "$smoke" "$t" >"$out/$(basename "$t").out" 2>&1; echo $? >"$out/$(basename "$t").rc") &
            i=$((i + 1))
            [ $((i % jobs)) -eq 0 ] && wait
        done
        wait
        for t in $targets; do
            cat "$out/$(basename "$t").out"
            if [ "$(cat "$out/$(basename "$t").rc")" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
        done
        rm -rf "$out"
    fi
fi
if [ "$what" = e2e ] || [ "$what" = all ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "e2e: needs root (network namespaces); counted as failed"
        failed=$((failed + 1))
    else
        log=$(mktemp)
        ZMESH_BIN=${ZMESH_BIN:-$B/bin} /usr/bin/python3 -m pytest tests/e2e -q -p no:cacheprovider 2>&1 | tee "$log"
        line=$(grep -E '^[=]* ?[0-9]+ (passed|failed)|^[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s' "$log" | tail -1)
        p=$(printf '%s' "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || true)
        f=$(printf '%s' "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || true)
        e=$(printf '%s' "$line" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+' || true)
        [ -z "$line" ] && f=1
        passed=$((passed + ${p:-0}))
        failed=$((failed + ${f:-0} + ${e:-0}))
        rm -f "$log"
    fi
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
