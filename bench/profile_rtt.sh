#!/bin/sh
# Profiles 1-byte round trips (bench/rtt.c, zm-rtt) through each proxy pair on the benchmark topology: on-CPU
# time, syscalls and epoll wakeups per round trip (strace -c -f), perf cpu-clock shares (both proxies, the
# client, the echo server; netfilter's share), both ztunnels under callgrind (instructions per round trip by
# function and library, TLS record handling), and the capture rules' cost on a direct connection.
# Needs root, strace, perf, valgrind. Results: build/bench/profile-rtt/ (summary.json, raw strace/perf/callgrind
# files) and a summary on stdout. See bench/README.md, "Latency floor".
# Usage: bench/profile_rtt.sh [--only direct,floor,haproxy,zmesh] [--prof-count N] [--cg-count N]
#                             [--prof-rounds N] [--no-perf] [--no-callgrind] [--ztunnel-workers N]
set -e
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/bench.py --profile-rtt "$@"
