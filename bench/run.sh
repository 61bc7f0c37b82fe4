#!/bin/sh
# Runs the zmesh benchmarks (direct TCP vs HAProxy mTLS pair vs zmesh). Needs root; see bench/README.md.
# Usage: bench/run.sh [options]          throughput/latency/CPU (bench.py), then connection rate and memory
#                                        (conns.py); options go to both, each ignores the other's
#        bench/run.sh tput [options]     bench.py only: [--only direct,haproxy,zmesh] [--time N] [--repeat N] ...
#        bench/run.sh conns [options]    conns.py only: [--only ...] [--rate-time N] [--conns N] [--repeat N] ...
#        bench/run.sh cp [options]       cp.py only (control plane, zmeshd): [--only ztunnels,sim,scale,ca] ...
#        bench/run.sh pods [options]     pods.py only (shared-mode ztunnel RSS per pod): [--pods N] ...
#        bench/run.sh waypoint [options] waypoint.py only (HTTP through the waypoint vs L4): [--time S] ...
set -e
cd "$(dirname "$0")/.."
case "$1" in
    tput) shift; exec /usr/bin/python3 bench/bench.py "$@" ;;
    conns) shift; exec /usr/bin/python3 bench/conns.py "$@" ;;
    cp) shift; exec /usr/bin/python3 bench/cp.py "$@" ;;
    pods) shift; exec /usr/bin/python3 bench/pods.py "$@" ;;
    enrol) shift; exec /usr/bin/python3 bench/enrol.py "$@" ;;
    waypoint) shift; exec /usr/bin/python3 bench/waypoint.py "$@" ;;
esac
# Both: conns.py accepts bench.py's options (and ignores those it does not know) when ZMESH_BENCH_BOTH is set;
# bench.py gets only its own, so conns.py's own options need `bench/run.sh conns`.
rc=0
/usr/bin/python3 bench/bench.py "$@" || rc=$?
ZMESH_BENCH_BOTH=1 /usr/bin/python3 bench/conns.py "$@" || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
exit "$rc"
