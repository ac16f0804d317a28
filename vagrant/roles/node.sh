#!/usr/bin/env bash
# Node role: a backend behind the gateways. Runs inside the node's network namespace
# (netns lab) or on the node's VM (multi-VM mode).
#
#   node.sh start   --name N --iface IF --bin DIR --state DIR --vip ADDR... --router4 A
#                   --router6 A [--reply-to PREFIX]... [--decap xdp|ipip] [--mtu N]
#   node.sh stop    --name N --iface IF --bin DIR --state DIR [--decap xdp|ipip]
#   node.sh service-start | service-stop --name N --bin DIR --state DIR
#   node.sh status  --name N --iface IF --state DIR
#
# start: the VIPs on lo (so the node accepts the decapsulated packets and answers from
# the VIP), replies routed via the router (never through a gateway: DSR), loose rp_filter
# (tunnelled packets arrive from the client's address on a path the reply won't take),
# arp_ignore/arp_announce (the node never claims a VIP on the fabric),
# the fabric MTU (room for the tunnel header), the decapsulator (dsrgate's XDP program,
# or the kernel's ipip/ip6tnl devices where those modules exist), and the service:
# dsrgate-node with HTTP on 80 and TCP/UDP echo on 7. Idempotent.
ROLE=node
# shellcheck source=vagrant/roles/common.sh
. "$(dirname "$0")/common.sh"

cmd=${1:-}
shift || true
NAME="" IFACE="" BIN="" STATE="" ROUTER4="" ROUTER6="" DECAP=xdp MTU=""
VIPS=() REPLY_TO=()
while [ $# -gt 0 ]; do
  case $1 in
  --name) NAME=$2 ;;
  --iface) IFACE=$2 ;;
  --bin) BIN=$2 ;;
  --state) STATE=$2 ;;
  --vip) VIPS+=("$2") ;;
  --router4) ROUTER4=$2 ;;
  --router6) ROUTER6=$2 ;;
  --reply-to) REPLY_TO+=("$2") ;;
  --decap) DECAP=$2 ;;
  --mtu) MTU=$2 ;;
  *) die "unknown option $1" ;;
  esac
  shift 2
done
need NAME STATE
ROLE="node $NAME"
STATE_DIR=$STATE
case $DECAP in xdp | ipip) ;; *) die "--decap must be xdp or ipip, not $DECAP" ;; esac

service_start() {
  need BIN
  start_bg service "$BIN/dsrgate-node" --name "$NAME"
  # Answers on its own fabric address once listening (the VIPs are on lo).
  wait_for 10 "dsrgate-node on port 80" bash -c 'exec 3<>/dev/tcp/127.0.0.1/80'
}

decap_on() {
  case $DECAP in
  xdp)
    "$BIN/dsrgate" decap attach --iface "$IFACE" | sed "s/^/[$ROLE] /"
    ;;
  ipip)
    # IPv4-in-IPv4 arrives on tunl0, IPv6-in-IPv6 and IPv4-in-IPv6 on ip6tnl0 (the modules'
    # fallback devices, which accept tunnelled packets from any source; ip6tnl0 takes only
    # IPv6 inside until its mode is "any").
    modprobe ipip
    modprobe ip6_tunnel
    ip link set dev tunl0 up
    ip -6 tunnel change ip6tnl0 mode any
    ip link set dev ip6tnl0 up
    sysctl_set net.ipv4.conf.tunl0.rp_filter 2
    say "decap through the kernel's tunl0 and ip6tnl0"
    ;;
  esac
}

decap_off() {
  case $DECAP in
  xdp)
    if ip -o link show dev "$IFACE" 2>/dev/null | grep -q ' prog/xdp'; then
      if [ -x "$BIN/dsrgate" ]; then
        "$BIN/dsrgate" decap detach --iface "$IFACE" | sed "s/^/[$ROLE] /"
      else
        # The binaries are gone (cargo clean, another profile): the decapsulator is an
        # ordinary netlink attachment in either mode, which ip removes as well.
        ip link set dev "$IFACE" xdpgeneric off 2>/dev/null || true
        ip link set dev "$IFACE" xdpdrv off 2>/dev/null || true
        say "no $BIN/dsrgate: XDP program removed from $IFACE with ip"
      fi
    fi
    ;;
  ipip)
    ip link set dev tunl0 down 2>/dev/null || true
    ip link set dev ip6tnl0 down 2>/dev/null || true
    ;;
  esac
}

case $cmd in
start)
  need IFACE BIN ROUTER4 ROUTER6
  [ ${#VIPS[@]} -gt 0 ] || die "missing --vip"
  [ ${#REPLY_TO[@]} -gt 0 ] || REPLY_TO=(default)
  ip link set dev lo up
  for vip in "${VIPS[@]}"; do
    case $vip in
    *:*) ip -6 addr replace "$vip/128" dev lo nodad ;;
    *) ip addr replace "$vip/32" dev lo ;;
    esac
  done
  for dst in "${REPLY_TO[@]}"; do
    case $dst in
    default)
      ip route replace default via "$ROUTER4"
      ip -6 route replace default via "$ROUTER6"
      ;;
    *:*) ip -6 route replace "$dst" via "$ROUTER6" ;;
    *) ip route replace "$dst" via "$ROUTER4" ;;
    esac
  done
  for conf in all default "$IFACE"; do
    sysctl_set "net.ipv4.conf.$conf.rp_filter" 2
    # The VIPs are the node's own addresses but not its to advertise: answer ARP only for
    # addresses on the asking interface, and never use a VIP as an ARP source.
    sysctl_set "net.ipv4.conf.$conf.arp_ignore" 1
    sysctl_set "net.ipv4.conf.$conf.arp_announce" 2
  done
  [ -z "$MTU" ] || ip link set dev "$IFACE" mtu "$MTU"
  decap_on
  service_start
  ;;
stop)
  need IFACE BIN
  stop_bg service
  decap_off
  rm -rf "$STATE"
  ;;
service-start) service_start ;;
service-stop) stop_bg service TERM 5 ;;
status)
  need IFACE
  if pid=$(pid_of service); then
    svc="running (pid $pid)"
  else
    svc="STOPPED"
  fi
  case $DECAP in
  xdp) prog=$(ip -o link show dev "$IFACE" | grep -o 'prog/xdp id [0-9]*' || echo "no XDP program") ;;
  ipip) prog=$(ip -o link show dev tunl0 | grep -o 'state [A-Z]*' || echo "no tunl0") ;;
  esac
  echo "$NAME: dsrgate-node $svc; decap ($DECAP) on $IFACE: $prog"
  ;;
*) die "usage: node.sh start|stop|service-start|service-stop|status [options]" ;;
esac
