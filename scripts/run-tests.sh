#!/bin/sh
# Runs the unit tests (cmocka binaries in <build>/tests) and/or the end-to-end tests (pytest, as root),
# then prints one final line: "N passed, N failed".
# usage: scripts/run-tests.sh unit|e2e|all <build-dir>
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
