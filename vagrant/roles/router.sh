#!/usr/bin/env bash
# Router role: the upstream router, BIRD 2 peering with every gateway and installing the
# VIP routes into the kernel with ECMP over the gateways (L4 hash). Runs inside the
# router's namespace (netns lab) or on the router VM (multi-VM mode).
#
#   router.sh start  --state DIR --router-id A --as N --peer-as N --hold SECONDS
#                    --neighbor ADDR... [--accept PREFIX]...
#   router.sh stop   --state DIR
#   router.sh routes --state DIR --vip ADDR...   (BIRD's routes for the VIPs)
#   router.sh status --state DIR
#
# One BGP session per neighbor address: IPv4 neighbors carry IPv4 routes, IPv6 neighbors
# IPv6 routes (each with a next hop of its own family). Only host routes inside the
# --accept prefixes are imported (default: any host route), so a gateway can attract
# nothing but VIPs.
ROLE=router
# shellcheck source=vagrant/roles/common.sh
. "$(dirname "$0")/common.sh"

cmd=${1:-}
shift || true
STATE="" ROUTER_ID="" ASN="" PEER_AS="" HOLD=9
NEIGHBORS=() ACCEPT=() VIPS=()
while [ $# -gt 0 ]; do
  case $1 in
  --state) STATE=$2 ;;
  --router-id) ROUTER_ID=$2 ;;
  --as) ASN=$2 ;;
  --peer-as) PEER_AS=$2 ;;
  --hold) HOLD=$2 ;;
  --neighbor) NEIGHBORS+=("$2") ;;
  --accept) ACCEPT+=("$2") ;;
  --vip) VIPS+=("$2") ;;
  *) die "unknown option $1" ;;
  esac
  shift 2
done
need STATE
STATE_DIR=$STATE
SOCK=$STATE/bird.ctl

birdc_() { birdc -s "$SOCK" "$@"; }

# accept_filter FAMILY: BIRD's import condition for one family.
accept_filter() {
  local family=$1 len=32 sets=() p
  [ "$family" = 6 ] && len=128
  for p in "${ACCEPT[@]}"; do
    case $p in
    *:*) [ "$family" = 6 ] && sets+=("$p{128,128}") ;;
    *) [ "$family" = 4 ] && sets+=("$p{32,32}") ;;
    esac
  done
  if [ ${#sets[@]} -gt 0 ]; then
    local IFS=,
    echo "net ~ [ ${sets[*]} ]"
  else
    echo "net.len = $len"
  fi
}

write_config() {
  local conf=$STATE/bird.conf n family
  {
    cat <<CONF
# Written by vagrant/roles/router.sh.
log "$STATE/bird.log" all;
router id $ROUTER_ID;

protocol device { scan time 10; }

# ECMP: merge the equal BGP routes from several gateways into one multipath kernel
# route; export only BGP routes (the connected ones are the kernel's already).
protocol kernel { ipv4 { export where source = RTS_BGP; }; merge paths on; }
protocol kernel { ipv6 { export where source = RTS_BGP; }; merge paths on; }

template bgp dsrgate {
  local as $ASN;
  hold time $HOLD;
  connect retry time 2;
  error wait time 1, 10;
}
CONF
    for n in "${NEIGHBORS[@]}"; do
      case $n in
      *:*) family=6 ;;
      *) family=4 ;;
      esac
      cat <<CONF

protocol bgp peer_$(tr -c '[:alnum:]' _ <<<"$n" | sed 's/_*$//') from dsrgate {
  neighbor $n as $PEER_AS;
  ipv$family { import where $(accept_filter $family); export none; };
}
CONF
    done
  } >"$conf.new"
  mv "$conf.new" "$conf"
}

case $cmd in
start)
  need ROUTER_ID ASN PEER_AS
  [ ${#NEIGHBORS[@]} -gt 0 ] || die "missing --neighbor"
  mkdir -p "$STATE"
  sysctl_set net.ipv4.ip_forward 1
  sysctl_set net.ipv6.conf.all.forwarding 1
  # ECMP by L4 hash, so the flows of one client spread over the gateways.
  sysctl_set net.ipv4.fib_multipath_hash_policy 1
  sysctl_set net.ipv6.fib_multipath_hash_policy 1
  write_config
  bird -p -c "$STATE/bird.conf" || die "BIRD rejects $STATE/bird.conf"
  if pid_of bird >/dev/null; then
    birdc_ configure | sed "s/^/[$ROLE] /"
  else
    start_bg bird bird -f -c "$STATE/bird.conf" -s "$SOCK"
    wait_for 10 "BIRD's control socket" birdc_ show status
  fi
  ;;
stop)
  stop_bg bird TERM 5
  rm -rf "$STATE"
  ;;
routes)
  [ ${#VIPS[@]} -gt 0 ] || die "missing --vip"
  for v in "${VIPS[@]}"; do
    case $v in *:*) p=$v/128 ;; *) p=$v/32 ;; esac
    # birdc exits non-zero when the table has no such network.
    birdc_ show route "$p" all | sed -n '/^Table/,$p' || echo "$p: no route"
  done
  ;;
status)
  birdc_ show protocols
  ;;
*) die "usage: router.sh start|stop|routes|status [options]" ;;
esac
