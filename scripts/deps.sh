#!/bin/sh
# Installs the Debian 12 packages zmesh builds, tests and benchmarks with. Quick when all are present.
# prometheus provides promtool, which checks the metrics exposition format in the e2e tests.
# libjwt-dev (OpenSSL flavour) and libjansson-dev: zmeshd's bearer tokens (JWT signatures, JSON claims);
# libcurl4-openssl-dev: zmeshd fetches RequestAuthentication jwksUri documents over HTTP(S), as istiod does.
# python3-jwt (PyJWT) checks those tokens in a test with code zmesh did not write.
# containernetworking-plugins (bridge, host-local, loopback in /usr/lib/cni) wire pod namespaces; the CNI tests
# chain zmesh-cni after them as a container runtime would. nftables: the node agent's --nftables rules backend.
# faketime runs ztunnels on a simulated clock (certificate rotation tests).
# clang builds the libFuzzer targets (make fuzz, and the fuzz smoke in make test); libclang-rt-14-dev holds
# libFuzzer and the sanitizer runtimes, which clang only recommends (and --no-install-recommends skips).
# protoc-c (protobuf-c-compiler) generates the C code for proto/ at build time; the well-known types it imports
# (google/protobuf/any.proto ...) are the ones libprotobuf-dev installs under /usr/include, and libprotobuf-c-dev
# is the runtime. python3-grpc-tools (its own protoc, so protobuf-compiler is not needed), python3-protobuf and
# python3-grpcio are the independent peers of the protocol tests.
# libxxhash-dev: xxHash64, the hash Envoy's ring hash and Maglev load balancers use (src/mesh/chash.c).
set -e
PKGS="build-essential pkg-config libssl-dev libnghttp2-dev libyaml-dev libcmocka-dev
      libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev node-llhttp libjwt-dev libjansson-dev libpcre2-dev libcurl4-openssl-dev libxxhash-dev
      python3-pytest python3-h2 python3-cryptography python3-protobuf python3-grpcio python3-grpc-tools
      python3-jwt
      containernetworking-plugins iptables nftables iproute2 tcpdump iperf3 haproxy curl wrk nghttp2-client procps openssl faketime prometheus
      clang libclang-rt-14-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
