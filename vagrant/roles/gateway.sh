#!/usr/bin/env bash
# Gateway role: one-arm dsrgate on the fabric interface. Runs inside the gateway's
# namespace (netns lab) or on the gateway VM (multi-VM mode).
#
#   gateway.sh start  --name G --iface IF --bin DIR --state DIR --router-id A --as N
#                     --peer ADDR... --peer-as N --hold SECONDS --vip4 A --vip6 A
#                     --backend ADDR... [--tunnel-mtu N] [--health-interval D]
#                     [--health-timeout D] [--rise N] [--fall N]
#   gateway.sh stop   --name G --state DIR     (SIGTERM: withdraw, drain, detach)
#   gateway.sh kill   --name G --state DIR     (SIGKILL: a crash, for the demo)
#   gateway.sh status --name G                 (dsrgate status)
#
# The config (written to DIR/dsrgate.toml and checked with `dsrgate check` first) is the
# same on every gateway except for the router ID: the same backends in the same order and
# the same Maglev parameters, so every gateway picks the same node for a flow and a flow
# survives the loss of a gateway. VIPs: VIP4 TCP 80 and 7 and UDP 7, VIP6 TCP 80, all
# health-checked with HTTP GET / on port 80 of each node. Each VIP's backends are the
# --backend addresses of its own family (IPv4-in-IPv4, IPv6-in-IPv6).
ROLE=gateway
# shellcheck source=vagrant/roles/common.sh
. "$(dirname "$0")/common.sh"

cmd=${1:-}
shift || true
NAME="" IFACE="" BIN="" STATE="" ROUTER_ID="" ASN="" PEER_AS="" HOLD=9 VIP4="" VIP6=""
TUNNEL_MTU=1500 INTERVAL=2s TIMEOUT=1s RISE=2 FALL=3
PEERS=() BACKENDS4=() BACKENDS6=()
while [ $# -gt 0 ]; do
  case $1 in
  --name) NAME=$2 ;;
  --iface) IFACE=$2 ;;
  --bin) BIN=$2 ;;
  --state) STATE=$2 ;;
  --router-id) ROUTER_ID=$2 ;;
  --as) ASN=$2 ;;
  --peer) PEERS+=("$2") ;;
  --peer-as) PEER_AS=$2 ;;
  --hold) HOLD=$2 ;;
  --vip4) VIP4=$2 ;;
  --vip6) VIP6=$2 ;;
  --backend) case $2 in *:*) BACKENDS6+=("$2") ;; *) BACKENDS4+=("$2") ;; esac ;;
  --tunnel-mtu) TUNNEL_MTU=$2 ;;
  --health-interval) INTERVAL=$2 ;;
  --health-timeout) TIMEOUT=$2 ;;
  --rise) RISE=$2 ;;
  --fall) FALL=$2 ;;
  *) die "unknown option $1" ;;
  esac
  shift 2
done
need NAME
ROLE="gateway $NAME"
STATE_DIR=${STATE:-/nonexistent}

# vip NAME ADDRESS PROTOCOL PORTS: one [[vips]] table with the backends of the VIP's
# family, and the health check.
vip() {
  local b backends=("${BACKENDS4[@]}")
  [[ $2 == *:* ]] && backends=("${BACKENDS6[@]}")
  cat <<CONF

[[vips]]
name = "$1"
address = "$2"
protocol = "$3"
ports = $4
CONF
  for b in "${backends[@]}"; do
    printf '\n[[vips.backends]]\naddress = "%s"\n' "$b"
  done
  cat <<CONF

[vips.health]
type = "http"
port = 80
path = "/"
interval = "$INTERVAL"
timeout = "$TIMEOUT"
rise = $RISE
fall = $FALL
CONF
}

write_config() {
  local p
  {
    cat <<CONF
# Written by vagrant/roles/gateway.sh for $NAME.

[daemon]
# Keep forwarding this long after the withdrawal on SIGTERM.
drain_time = "2s"

[dataplane]
topology = "one-arm"
upstream_interface = "$IFACE"
flow_table_size = 65536
tunnel_mtu = $TUNNEL_MTU

# Identical on every gateway.
[dataplane.maglev]
m = 65537
seed = 0

[api]
listen = "127.0.0.1:9180"

[bgp]
local_as = $ASN
router_id = "$ROUTER_ID"
CONF
    for p in "${PEERS[@]}"; do
      printf '\n[[bgp.peers]]\naddress = "%s"\nremote_as = %s\nhold_time = "%ss"\n' \
        "$p" "$PEER_AS" "$HOLD"
    done
    vip web4 "$VIP4" tcp "[80, 7]"
    vip echo4 "$VIP4" udp "[7]"
    vip web6 "$VIP6" tcp "[80]"
  } >"$STATE/dsrgate.toml.new"
}

case $cmd in
start)
  need IFACE BIN STATE ROUTER_ID ASN PEER_AS VIP4 VIP6
  [ ${#PEERS[@]} -gt 0 ] || die "missing --peer"
  [ ${#BACKENDS4[@]} -gt 0 ] || die "missing an IPv4 --backend"
  [ ${#BACKENDS6[@]} -gt 0 ] || die "missing an IPv6 --backend"
  mkdir -p "$STATE"
  write_config
  "$BIN/dsrgate" check --config "$STATE/dsrgate.toml.new" | sed "s/^/[$ROLE] /"
  if cmp -s "$STATE/dsrgate.toml.new" "$STATE/dsrgate.toml"; then
    rm "$STATE/dsrgate.toml.new"
  else
    mv "$STATE/dsrgate.toml.new" "$STATE/dsrgate.toml"
    # A running daemon reloads on SIGHUP (and keeps its old config if the new one fails).
    if pid=$(pid_of dsrgate); then
      kill -HUP "$pid"
      say "config changed: dsrgate (pid $pid) reloads it"
    fi
  fi
  start_bg dsrgate "$BIN/dsrgate" run --config "$STATE/dsrgate.toml"
  wait_for 20 "dsrgate's API" "$BIN/dsrgate" status
  ;;
stop)
  need STATE
  # SIGTERM: withdraw, forward for the drain time, detach, exit.
  stop_bg dsrgate TERM 15
  rm -rf "$STATE"
  ;;
kill)
  need STATE
  stop_bg dsrgate KILL 5
  ;;
status)
  need BIN
  "$BIN/dsrgate" status
  ;;
*) die "usage: gateway.sh start|stop|kill|status [options]" ;;
esac
