#!/bin/sh
# Runs the zmesh benchmark (direct TCP vs HAProxy mTLS pair vs zmesh). Needs root; see bench/README.md.
# Usage: bench/run.sh [--only direct,haproxy,zmesh] [--time N] [--rtt-count N] [--haproxy-threads 1|2]
set -e
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/bench.py "$@"
