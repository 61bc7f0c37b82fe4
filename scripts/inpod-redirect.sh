#!/bin/sh
# Installs (or with --remove, removes) Istio ambient's in-pod redirection rules inside a pod network namespace,
# as istio-cni does (istio/istio cni/pkg/iptables/iptables.go), without DNS capture:
#   - mangle: packets marked 0x539/0xfff by ztunnel set connmark 0x111/0xfff on their connection, and locally
#     generated replies on such connections get the mark back (restore-mark);
#   - nat: inbound TCP (except to 15008) is redirected to 15006, outbound TCP to 15001, both unless ztunnel's
#     own mark 0x539/0xfff is set; kubelet probes (169.254.7.127) are left alone;
#   - policy routing: marked replies (0x111) are delivered locally (table 100) so that they reach ztunnel's
#     transparent sockets that spoof the client's address toward the app.
# Idempotent: installing removes any previous copy first. One iptables-restore per family keeps each install
# atomic. IPv6 rules are installed when the namespace has IPv6 enabled.
# Usage: inpod-redirect.sh <netns> [--remove]     (or: inpod-redirect.sh --remove <netns>)
set -eu

usage() { echo "usage: $0 <netns> [--remove]" >&2; exit 2; }

NS=""
REMOVE=0
for a in "$@"; do
    case "$a" in
        --remove) REMOVE=1 ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) [ -z "$NS" ] || usage; NS="$a" ;;
    esac
done
[ -n "$NS" ] || usage
ip netns list | awk '{print $1}' | grep -qx "$NS" || { echo "$0: no network namespace '$NS'" >&2; exit 1; }

in_ns() { ip netns exec "$NS" "$@"; }

has_v6() {
    [ "$(in_ns cat /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null || echo 1)" = 0 ] && \
        command -v ip6tables-restore >/dev/null 2>&1
}

# Removes every rule and chain this script installs; silent about anything that is already gone.
remove_family() {
    ipt="$1"
    for t in mangle nat; do
        for pair in "PREROUTING ISTIO_PRERT" "OUTPUT ISTIO_OUTPUT"; do
            set -- $pair
            while in_ns "$ipt" -w -t "$t" -D "$1" -j "$2" 2>/dev/null; do :; done
            in_ns "$ipt" -w -t "$t" -F "$2" 2>/dev/null || true
            in_ns "$ipt" -w -t "$t" -X "$2" 2>/dev/null || true
        done
    done
}

remove_routes() {
    fam="$1"
    while in_ns ip "$fam" rule del fwmark 0x111/0xfff pref 32764 lookup 100 2>/dev/null; do :; done
    in_ns ip "$fam" route flush table 100 2>/dev/null || true
}

install_v4() {
    in_ns iptables-restore -w --noflush <<'EOF'
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -j ACCEPT
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
EOF
    in_ns ip -4 rule add fwmark 0x111/0xfff pref 32764 lookup 100
    in_ns ip -4 route add local 0.0.0.0/0 dev lo table 100
}

install_v6() {
    in_ns ip6tables-restore -w --noflush <<'EOF'
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j ACCEPT
-A ISTIO_PRERT ! -d ::1/128 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j ACCEPT
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d ::1/128 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
EOF
    in_ns ip -6 rule add fwmark 0x111/0xfff pref 32764 lookup 100
    in_ns ip -6 route add local ::/0 dev lo table 100
}

remove_family iptables
remove_routes -4
if command -v ip6tables >/dev/null 2>&1; then
    remove_family ip6tables
    remove_routes -6
fi
[ "$REMOVE" = 1 ] && exit 0

install_v4
if has_v6; then
    install_v6
fi
