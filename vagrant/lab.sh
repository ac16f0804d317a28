#!/usr/bin/env bash
# The dsrgate lab: a client, a router (BIRD), two gateways (dsrgate) and three nodes in
# network namespaces on this machine, wired as in vagrant/README.md.
#
#   vagrant/lab.sh up      install what is missing, build, create, start, wait, summarise
#   vagrant/lab.sh demo    the four-step story, checking every claim it makes (brings the
#                          lab up first if it is not: the Quick start's one command)
#   vagrant/lab.sh status  gateways' `dsrgate status`, BIRD's VIP routes, node services
#   vagrant/lab.sh down    stop everything and remove every namespace and file it made
#   vagrant/lab.sh build [all|tools|none]   only install packages and build (the multi-VM
#                          Vagrant mode: gateways need all, clients and nodes the tools)
#
# Root is required. The namespaces come from the same builder the tests use
# (`dsrgate-topo up lab`, tests/src/netns.rs); each role is set up by its script in
# vagrant/roles/, the same scripts the multi-VM Vagrant mode runs on its VMs.
#
# Environment: DSRGATE_LAB_PROFILE=release|debug (which cargo profile to build and run,
# default release), DSRGATE_LAB_BUILD=0 (use the binaries already built, as they are),
# CARGO_TARGET_DIR (as for cargo). DSRGATE_LAB_PREFIX and DSRGATE_LAB_STATE run a second,
# separate instance of the lab: its namespace prefix (default lab-) and state directory
# (default /run/dsrgate-lab); tests/tests/lab.rs runs its own instance that way.
set -euo pipefail

# Debian's plain `su` keeps the user's PATH, without the sbin directories that hold bird,
# birdc and ethtool.
for d in /sbin /usr/sbin; do
  case ":$PATH:" in *":$d:"*) ;; *) PATH=$d:$PATH ;; esac
done
export PATH

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$LAB_DIR")
ROLES=$LAB_DIR/roles
# shellcheck source=vagrant/lab.env
. "$LAB_DIR/lab.env"
LAB_PREFIX=${DSRGATE_LAB_PREFIX:-$LAB_PREFIX}
LAB_STATE=${DSRGATE_LAB_STATE:-$LAB_STATE}
# Short (namespace names show up in interface names and messages) and unlike any other
# instance's: `down` removes every namespace that starts with the prefix.
[[ $LAB_PREFIX =~ ^[a-z][a-z0-9]{0,10}-$ ]] ||
  { echo "lab: DSRGATE_LAB_PREFIX must be a letter, then up to 10 letters or digits, then '-' (not $LAB_PREFIX)" >&2 && exit 2; }
[[ $LAB_STATE == /?* && $LAB_STATE != */ && $LAB_STATE != *..* ]] ||
  { echo "lab: DSRGATE_LAB_STATE must be an absolute directory path (not $LAB_STATE)" >&2 && exit 2; }

PROFILE=${DSRGATE_LAB_PROFILE:-release}
case $PROFILE in
release | debug) ;;
*) echo "DSRGATE_LAB_PROFILE must be release or debug" >&2 && exit 2 ;;
esac
# Absolute: cargo resolves a relative CARGO_TARGET_DIR against the workspace ($REPO), where
# it builds, not against the caller's directory.
TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET == /* ]] || TARGET=$REPO/$TARGET
BIN=$TARGET/$PROFILE
STATE=$LAB_STATE
GATEWAYS=$(seq 1 "$LAB_GATEWAYS")
NODES=$(seq 1 "$LAB_NODES")

say() { printf '%s\n' "$*"; }
die() {
  printf 'lab: %s\n' "$*" >&2
  exit 1
}

fab4() { printf '%s.%d\n' "$LAB_FABRIC4" "$1"; }
fab6() { printf '%s:%x\n' "$LAB_FABRIC6" "$1"; }
gw_host() { echo $((1 + $1)); }
node_host() { echo $((10 + $1)); }

# in_ns NAME CMD...: runs CMD in namespace ${LAB_PREFIX}NAME (lab-NAME by default).
in_ns() {
  local ns=$LAB_PREFIX$1
  shift
  ip netns exec "$ns" "$@"
}

ns_exists() { [ -e "/run/netns/$LAB_PREFIX$1" ]; }

# ---------------------------------------------------------------------------------------
# Role invocations: the lab's addresses and tunings handed to the role scripts.

node_role() {
  local n=$1 cmd=$2
  shift 2
  in_ns "node$n" bash "$ROLES/node.sh" "$cmd" --name "node$n" --iface eth0 --bin "$BIN" \
    --state "$STATE/node$n" --decap xdp "$@"
}

node_start() {
  node_role "$1" start --vip "$LAB_VIP4" --vip "$LAB_VIP6" --router4 "$(fab4 1)" \
    --router6 "$(fab6 1)" --mtu "$LAB_FABRIC_MTU"
}

router_role() {
  local cmd=$1
  shift
  in_ns router bash "$ROLES/router.sh" "$cmd" --state "$STATE/router" "$@"
}

router_start() {
  local args=() g
  for g in $GATEWAYS; do
    args+=(--neighbor "$(fab4 "$(gw_host "$g")")" --neighbor "$(fab6 "$(gw_host "$g")")")
  done
  router_role start --router-id "$(fab4 1)" --as "$LAB_ROUTER_AS" \
    --peer-as "$LAB_GATEWAY_AS" --hold "$LAB_BGP_HOLD" \
    --accept "$LAB_VIP_POOL4" --accept "$LAB_VIP_POOL6" "${args[@]}"
}

gw_role() {
  local g=$1 cmd=$2
  shift 2
  in_ns "gw$g" bash "$ROLES/gateway.sh" "$cmd" --name "gw$g" --bin "$BIN" --state "$STATE/gw$g" "$@"
}

gw_start() {
  local g=$1 args=() n
  for n in $NODES; do
    args+=(--backend "$(fab4 "$(node_host "$n")")" --backend "$(fab6 "$(node_host "$n")")")
  done
  gw_role "$g" start --iface eth0 --router-id "$(fab4 "$(gw_host "$g")")" \
    --as "$LAB_GATEWAY_AS" --peer "$(fab4 1)" --peer "$(fab6 1)" \
    --peer-as "$LAB_ROUTER_AS" --hold "$LAB_BGP_HOLD" --vip4 "$LAB_VIP4" --vip6 "$LAB_VIP6" \
    --tunnel-mtu "$LAB_FABRIC_MTU" --health-interval "$LAB_HEALTH_INTERVAL" \
    --health-timeout "$LAB_HEALTH_TIMEOUT" --rise "$LAB_HEALTH_RISE" --fall "$LAB_HEALTH_FALL" \
    "${args[@]}"
}

birdc_() { birdc -s "$STATE/router/bird.ctl" "$@"; }

# ---------------------------------------------------------------------------------------
# Facts about the running lab.

# vip_gateways VIP: the gateway numbers the router's kernel routes VIP through (ECMP).
vip_gateways() {
  local vip=$1 fam=-4 g out
  [[ $vip == *:* ]] && fam=-6
  out=$(ip -n "${LAB_PREFIX}router" "$fam" route show "$vip" 2>/dev/null || true)
  for g in $GATEWAYS; do
    local a
    if [ "$fam" = -6 ]; then a=$(fab6 "$(gw_host "$g")"); else a=$(fab4 "$(gw_host "$g")"); fi
    if grep -q "via $a " <<<"$out "; then printf 'gw%s ' "$g"; fi
  done
}

# bird_has PREFIX: BIRD's table has PREFIX.
bird_has() { birdc_ show route "$1" 2>/dev/null | grep -q "^$1 "; }

# gw_status_py GW PYTHON: runs PYTHON with `s` = the gateway's /status JSON.
gw_status_py() {
  in_ns "gw$1" python3 -c "
import json, urllib.request
s = json.load(urllib.request.urlopen('http://127.0.0.1:9180/status', timeout=2))
$2"
}

# members GW: the node addresses with Maglev slots for VIP4 port 80, on that gateway.
members() {
  gw_status_py "$1" "
v = [v for v in s['vips'] if v['name'] == 'web4' and v['port'] == 80][0]
print(' '.join(sorted(b['address'] for b in v['backends'] if b['slots'] > 0)))" 2>/dev/null
}

is_count() { [[ $1 =~ ^[0-9]+$ ]]; }

# gw_packets GW: VIP packets the gateway has forwarded ("?" if its API does not answer).
gw_packets() {
  gw_status_py "$1" "print(sum(v['packets'] for v in s['vips']))" 2>/dev/null || echo "?"
}

node_names() {
  local n
  for n in "$@"; do printf '%s ' "$(fab4 "$(node_host "$n")")"; done | sed 's/ $//'
}

# until_true SECONDS CMD...: polls every 50 ms; prints the time it took (ms) on success.
until_true() {
  local secs=$1 start now
  shift
  start=$(date +%s%N)
  while true; do
    if "$@" >/dev/null 2>&1; then
      now=$(date +%s%N)
      echo $(((now - start) / 1000000))
      return 0
    fi
    now=$(date +%s%N)
    [ $(((now - start) / 1000000000)) -lt "$secs" ] || return 1
    sleep 0.05
  done
}

ecmp_both() {
  local v=$1 want g
  want=$(for g in $GATEWAYS; do printf 'gw%s ' "$g"; done)
  [ "$(vip_gateways "$v")" = "$want" ]
}

announced_everywhere() { ecmp_both "$LAB_VIP4" && ecmp_both "$LAB_VIP6"; }

# ---------------------------------------------------------------------------------------
# up

# build [all|tools]: all = dsrgate and the tools (dsrgate-topo, -node, -client).
build() {
  local what=${1:-all} flag=() pkgs=(-p control -p dsrgate-tests) bins b
  bins=(dsrgate dsrgate-topo dsrgate-node dsrgate-client)
  if [ "$what" = tools ]; then
    pkgs=(-p dsrgate-tests)
    bins=(dsrgate-topo dsrgate-node dsrgate-client)
  fi
  if [ "${DSRGATE_LAB_BUILD:-1}" = 0 ]; then
    say "==> using the $PROFILE binaries in $BIN as they are (DSRGATE_LAB_BUILD=0)"
  else
    [ "$PROFILE" = release ] && flag=(--release)
    cpu_fallback
    say "==> building the $PROFILE binaries (${bins[*]})"
    dsrgate_ensure_cargo
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build "${flag[@]}" "${pkgs[@]}" --bins)
  fi
  for b in "${bins[@]}"; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing after the build"
  done
}

# The CPU features of x86-64-v3, which .cargo/config.toml builds for, as /proc/cpuinfo
# names them (abm is LZCNT).
V3_FLAGS=(avx avx2 bmi1 bmi2 f16c fma movbe abm xsave)

# cpu_fallback: on an x86-64 CPU without them (a VM under Hyper-V or with a generic CPU
# model often hides AVX2 and BMI2), builds for baseline x86-64 instead, so that the
# binaries do not die with SIGILL. An explicit RUSTFLAGS is left alone.
cpu_fallback() {
  [ "$(uname -m)" = x86_64 ] || return 0
  local f missing=() flags
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for f in "${V3_FLAGS[@]}"; do
    [[ $flags == *" $f "* ]] || missing+=("$f")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  if [ -n "${RUSTFLAGS:-}" ]; then
    say "==> this CPU lacks ${missing[*]} (x86-64-v3); building with your RUSTFLAGS=$RUSTFLAGS"
    return 0
  fi
  say "==> this CPU lacks ${missing[*]}, which x86-64-v3 (the default build) needs:"
  say "    building for baseline x86-64 (RUSTFLAGS=\"-C target-cpu=x86-64\"; a few % slower)"
  export RUSTFLAGS="-C target-cpu=x86-64"
}

install_deps() {
  # shellcheck source=scripts/deps.sh
  . "$REPO/scripts/deps.sh"
  # shellcheck disable=SC2119 # no extra packages
  DSRGATE_DEPS_NO_TEST=1 dsrgate_install_deps
}

cmd_build() {
  case ${1:-all} in
  all | tools)
    # Not `install_deps && build`: a function left of && runs without errexit, so a
    # failed apt-get would be ignored.
    install_deps
    build "${1:-all}"
    ;;
  none) install_deps ;;
  *) die "build what? all, tools or none" ;;
  esac
}

cmd_up() {
  install_deps
  build all
  mkdir -p "$STATE"

  # What `down` uses when the profile or target directory differs from up's.
  printf '%s\n' "$BIN" >"$STATE/bin"

  say "==> topology (dsrgate-topo up lab $LAB_PREFIX)"
  "$BIN/dsrgate-topo" up lab "$LAB_PREFIX"

  local n g
  say "==> nodes: decapsulator, VIPs on lo, dsrgate-node"
  for n in $NODES; do node_start "$n"; done
  say "==> router: BIRD, AS $LAB_ROUTER_AS"
  router_start
  say "==> gateways: dsrgate, AS $LAB_GATEWAY_AS"
  for g in $GATEWAYS; do gw_start "$g"; done

  say "==> waiting until both gateways announce both VIPs and the router uses them (ECMP)"
  local ms
  ms=$(until_true 60 announced_everywhere) || {
    cmd_status || true
    die "the VIPs were not announced by every gateway within 60 s"
  }
  say "    announced and routed after ${ms} ms"
  echo
  cmd_status
  echo
  say "The lab is up. Next: vagrant/lab.sh demo (or status, down)."
}

# ---------------------------------------------------------------------------------------
# status

cmd_status() {
  ns_exists router || die "the lab is not up (no namespace ${LAB_PREFIX}router)"
  local g n
  for g in $GATEWAYS; do
    say "--- gw$g: dsrgate status"
    gw_role "$g" status || say "(gw$g: no answer from dsrgate)"
  done
  say "--- router: BIRD's routes for the VIPs"
  router_role routes --vip "$LAB_VIP4" --vip "$LAB_VIP6" || true
  say "--- router: kernel routes (ECMP)"
  ip -n "${LAB_PREFIX}router" -4 route show "$LAB_VIP4" || true
  ip -n "${LAB_PREFIX}router" -6 route show "$LAB_VIP6" || true
  say "--- nodes"
  for n in $NODES; do node_role "$n" status; done
}

# ---------------------------------------------------------------------------------------
# demo

DEMO_FAILED=0
step() { printf '\n=== Step %s\n' "$*"; }
tell() { fold -s -w 88 <<<"$*" | sed 's/ *$//; s/^/    /'; }
ok() { printf '  ok: %s\n' "$*"; }
fail() {
  printf '  FAILED: %s\n' "$*"
  DEMO_FAILED=1
}
client() { in_ns client "$BIN/dsrgate-client" "$@"; }

# conn_map: "node PORT" lines for every established TCP echo connection from the client.
conn_map() {
  local n
  for n in $NODES; do
    in_ns "node$n" ss -Htn state established '( sport = :7 )' |
      awk -v node="node$n" '{p=$4; sub(/.*:/, "", p); print node, p}'
  done | sort
}

# per_node MAPFILE: "node1 7, node2 6, node3 7".
per_node() {
  awk '{c[$1]++} END {for (n in c) printf "%s %d\n", n, c[n]}' "$1" | sort |
    awk '{printf "%s%s %d", (NR>1?", ":""), $1, $2} END {print ""}'
}

# hold_bg NAME CONNS SECONDS: long-lived echo connections in the background.
hold_bg() {
  client hold --vip "$LAB_VIP4" --port 7 --conns "$2" --seconds "$3" --expect-survivors 0 \
    >"$STATE/demo/$1.txt" 2>&1 &
  HOLD_PID=$!
}

# hold_results NAME: "port result" lines from a finished hold run.
hold_results() {
  awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ && $5 == "ms" {r=$6; for (i=7;i<=NF;i++) r=r" "$i; print $2, r}' \
    "$STATE/demo/$1.txt"
}

demo_step1() {
  step "1: 30 requests to each VIP (and 30 UDP datagrams)"
  tell "The client ($LAB_CLIENT4 and $LAB_CLIENT6, in ${LAB_PREFIX}client) opens 30 fresh \
connections to each VIP. The router spreads them over gw1 and gw2 (ECMP on the L4 hash); \
each gateway picks a node with Maglev and sends the packet there inside an IP-in-IP \
tunnel; the node answers the client directly (Direct Server Return)."
  local g before=() after=()
  for g in $GATEWAYS; do before+=("$(gw_packets "$g")"); done
  if client http --vip "$LAB_VIP4" --count 30 --expect-nodes node1,node2,node3 \
    --expect-client "$LAB_CLIENT4"; then
    ok "IPv4: all three nodes served, and every one saw the client's own address"
  else fail "IPv4 requests"; fi
  if client http --vip "$LAB_VIP6" --count 30 --expect-nodes node1,node2,node3 \
    --expect-client "$LAB_CLIENT6"; then
    ok "IPv6: all three nodes served, and every one saw the client's own address"
  else fail "IPv6 requests"; fi
  if client udp --vip "$LAB_VIP4" --port 7 --count 30; then
    ok "UDP: every datagram was echoed, from the VIP itself"
  else fail "UDP echo"; fi
  # A worker publishes its counters at most every 100 ms while busy and about once a second
  # when idle, so a burst shorter than 100 ms shows only after the next idle publish: wait
  # for that, then poll (for up to 3 s more) until both gateways show traffic.
  sleep 1.2
  local counts=() all_carried=0 d _
  for _ in $(seq 60); do
    after=()
    for g in $GATEWAYS; do after+=("$(gw_packets "$g")"); done
    counts=()
    all_carried=1
    for g in $GATEWAYS; do
      # gw_packets prints "?" when the gateway's API did not answer: no count, not an
      # arithmetic error that would end the demo without a word.
      if is_count "${after[g - 1]}" && is_count "${before[g - 1]}"; then
        d=$((after[g - 1] - before[g - 1]))
      else
        d="?"
      fi
      counts+=("gw$g $d")
      [ "$d" != "?" ] && [ "$d" -gt 0 ] || all_carried=0
    done
    [ "$all_carried" = 1 ] && break
    sleep 0.05
  done
  if [ "$all_carried" = 1 ]; then
    local list
    list=$(printf '%s, ' "${counts[@]}")
    ok "both gateways carried client packets (ECMP): ${list%, }; the replies never pass a gateway"
  else fail "not every gateway carried client packets: ${counts[*]}"; fi
}

demo_step2() {
  step "2: stop the HTTP service on node2"
  tell "Twelve long-lived TCP echo connections run meanwhile (one message every 100 ms \
each). Then node2's service stops: the gateways' HTTP health checks fail, node2 leaves \
the Maglev set, and new connections go to node1 and node3 only. The connections already \
on node1 and node3 keep going (each gateway remembers its flows, and Maglev moves only \
node2's share)."
  hold_bg step2 12 8
  sleep 2
  conn_map >"$STATE/demo/step2-map.txt"
  tell "Echo connections per node: $(per_node "$STATE/demo/step2-map.txt")"
  node_role 2 service-stop
  local ms g want
  want=$(node_names 1 3)
  for g in $GATEWAYS; do
    if ms=$(until_true 20 test_members "$g" "$want"); then
      ok "gw$g: node2 left the Maglev set ${ms} ms after the service stopped"
    else fail "gw$g still has node2 in its Maglev set: $(members "$g")"; fi
  done
  if client http --vip "$LAB_VIP4" --count 30 --expect-nodes node1,node3 \
    --expect-client "$LAB_CLIENT4"; then
    ok "new connections reach node1 and node3 only"
  else fail "requests after node2 left"; fi
  wait "$HOLD_PID" || true
  local port result node others=0 others_ok=0 on2=0
  while read -r port result; do
    node=$(awk -v p="$port" '$2 == p {print $1}' "$STATE/demo/step2-map.txt")
    if [ "$node" = node2 ]; then
      on2=$((on2 + 1))
    else
      others=$((others + 1))
      [ "$result" = ok ] && others_ok=$((others_ok + 1))
    fi
  done < <(hold_results step2)
  tell "$on2 connections were on node2 and ended with its service."
  if [ "$others" -gt 0 ] && [ "$others_ok" = "$others" ]; then
    ok "all $others connections on node1 and node3 kept going"
  else
    fail "$others_ok of $others connections on node1 and node3 kept going"
    cat "$STATE/demo/step2.txt"
  fi
}

test_members() { [ "$(members "$1")" = "$2" ]; }

no_vip_anywhere() {
  ! bird_has "$LAB_VIP4/32" && ! bird_has "$LAB_VIP6/128" &&
    [ -z "$(vip_gateways "$LAB_VIP4")" ] && [ -z "$(vip_gateways "$LAB_VIP6")" ]
}

demo_step3() {
  step "3: stop the service on every node, then start it again"
  tell "With no healthy node left, a gateway has nothing to send VIP traffic to, so it \
withdraws the VIP from BGP at once, and the router stops sending it there."
  local n ms
  for n in 1 3; do node_role "$n" service-stop; done
  if ms=$(until_true 20 no_vip_anywhere); then
    ok "both gateways withdrew; BIRD and the router's kernel lost both VIPs ${ms} ms after the last service stopped"
  else fail "the VIPs are still routed: $(vip_gateways "$LAB_VIP4")"; fi
  router_role routes --vip "$LAB_VIP4" --vip "$LAB_VIP6" | sed 's/^/    /'
  gw_status_py 1 "
for v in s['vips']:
    print('    gw1: %s %s/%s: %s (%s)' % (v['name'], v['protocol'], v['port'],
        'announced' if v['announced'] else 'withdrawn', v['reason']))" || true
  if client http --vip "$LAB_VIP4" --count 1 --timeout-ms 1000 >/dev/null; then
    fail "a request still succeeded"
  else ok "a request to $LAB_VIP4 now fails: the router has no route"; fi
  tell "Start the services again: after two good health checks the nodes are back, and \
the gateways announce the VIPs again."
  for n in $NODES; do node_role "$n" service-start; done
  if ms=$(until_true 30 announced_everywhere); then
    ok "both VIPs are announced and routed through both gateways again after ${ms} ms"
  else fail "the VIPs did not come back: $(vip_gateways "$LAB_VIP4")"; fi
  local g all
  # shellcheck disable=SC2086 # one argument per node
  all=$(node_names $NODES)
  for g in $GATEWAYS; do
    until_true 10 test_members "$g" "$all" >/dev/null ||
      fail "gw$g Maglev set is $(members "$g"), not all nodes"
  done
  if client http --vip "$LAB_VIP4" --count 30 --expect-nodes node1,node2,node3 \
    --expect-client "$LAB_CLIENT4"; then
    ok "requests reach all three nodes again"
  else fail "requests after the restart"; fi
}

gw1_dropped() { [ "$(vip_gateways "$LAB_VIP4")" = "gw2 " ]; }

demo_step4() {
  step "4: kill gw1 with SIGKILL while long-lived connections are open"
  tell "Twenty TCP echo connections run for 20 seconds, a message every 100 ms each; \
the router spreads them over both gateways. gw1 then dies without a word (SIGKILL: no \
withdrawal, no drain). Its BGP session closes, the router drops gw1, and gw1's \
connections move to gw2. gw2 has never seen them, but it builds the same Maglev table \
from the same backends, so it sends each one to the node that already holds it."
  hold_bg step4 20 20
  sleep 1
  local p1 p2
  p1=$(gw_packets 1)
  sleep 2
  p2=$(gw_packets 1)
  conn_map >"$STATE/demo/step4-before.txt"
  tell "Echo connections per node before: $(per_node "$STATE/demo/step4-before.txt")"
  if is_count "$p1" && is_count "$p2" && [ "$p2" -gt "$p1" ]; then
    ok "gw1 carries some of them ($((p2 - p1)) packets in 2 s)"
  else fail "gw1 carries none of these connections ($p1 -> $p2 packets)"; fi
  tell "The router routes $LAB_VIP4 via: $(vip_gateways "$LAB_VIP4")"
  gw_role 1 kill
  local ms
  if ms=$(until_true 30 gw1_dropped); then
    ok "the router dropped gw1 ${ms} ms after the kill; all VIP traffic goes through gw2"
  else fail "the router still routes via gw1"; fi
  tell "The router routes $LAB_VIP4 via: $(vip_gateways "$LAB_VIP4")"
  sleep 12
  conn_map >"$STATE/demo/step4-after.txt"
  wait "$HOLD_PID" || true
  tell "Echo connections per node after: $(per_node "$STATE/demo/step4-after.txt")"
  if cmp -s "$STATE/demo/step4-before.txt" "$STATE/demo/step4-after.txt"; then
    ok "every connection is on the same node as before"
  else fail "connections moved between nodes"; fi
  sed -n 's/^survived/  survived/p; s/^longest/  longest/p' "$STATE/demo/step4.txt"
  local total survived
  total=$(hold_results step4 | wc -l)
  survived=$(hold_results step4 | awk '$2 == "ok"' | wc -l)
  if [ "$total" -gt 0 ] && [ "$survived" = "$total" ]; then
    ok "$survived of $total connections survived the loss of gw1"
  else
    fail "$survived of $total connections survived the loss of gw1"
    cat "$STATE/demo/step4.txt"
  fi
  tell "Restart gw1: it peers again and the router spreads over both gateways."
  gw_start 1
  if ms=$(until_true 30 announced_everywhere); then
    ok "gw1 is back in the router's ECMP route after ${ms} ms"
  else fail "gw1 did not come back"; fi
}

cmd_demo() {
  if ! ns_exists router; then
    say "==> the lab is not up: bringing it up first"
    cmd_up
  fi
  announced_everywhere || die "the lab is not healthy (VIPs not routed via every gateway); see vagrant/lab.sh status"
  mkdir -p "$STATE/demo"
  demo_step1
  demo_step2
  demo_step3
  demo_step4
  echo
  if [ "$DEMO_FAILED" = 0 ]; then
    say "Demo finished: every step did what it said."
  else
    say "Demo finished with FAILED steps (see above)."
  fi
  say "The lab is still up: vagrant/lab.sh status to look at it, vagrant/lab.sh down to remove it."
  [ "$DEMO_FAILED" = 0 ]
}

# ---------------------------------------------------------------------------------------
# down

# remove_namespaces: every namespace with the prefix, killing what runs inside (as
# `dsrgate-topo down` does, in shell, for when that binary is not there).
remove_namespaces() {
  local ns pid
  for ns in $(cd /run/netns 2>/dev/null && compgen -G "${LAB_PREFIX}*"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
}

cmd_down() {
  local g n
  # The binaries `up` ran, if they are still there (the profile or target directory of
  # this call may differ, or `cargo clean` may have removed them).
  if [ -f "$STATE/bin" ] && [ -x "$(cat "$STATE/bin")/dsrgate" ]; then BIN=$(cat "$STATE/bin"); fi
  if ns_exists router || compgen -G "/run/netns/${LAB_PREFIX}*" >/dev/null; then
    # A role that fails to stop cleanly does not stop `down`: deleting its namespace below
    # kills its processes and removes its XDP program with the interface.
    say "==> stopping the gateways (withdraw, drain, detach)"
    for g in $GATEWAYS; do
      if ns_exists "gw$g"; then gw_role "$g" stop || say "(gw$g did not stop cleanly)" & fi
    done
    wait
    if ns_exists router; then router_role stop || say "(the router did not stop cleanly)"; fi
    for n in $NODES; do
      if ns_exists "node$n"; then node_role "$n" stop || say "(node$n did not stop cleanly)"; fi
    done
    say "==> removing the namespaces"
    if [ -x "$BIN/dsrgate-topo" ]; then
      "$BIN/dsrgate-topo" down "$LAB_PREFIX"
    else
      say "    ($BIN/dsrgate-topo is missing: removing them with ip netns)"
      remove_namespaces
    fi
  fi
  rm -rf "$STATE"
  if compgen -G "/run/netns/${LAB_PREFIX}*" >/dev/null; then
    die "namespaces left: $(cd /run/netns && compgen -G "${LAB_PREFIX}*" | tr '\n' ' ')"
  fi
  say "The lab is down: no ${LAB_PREFIX} namespace, process or XDP program is left."
}

[ "$(id -u)" = 0 ] || die "run as root (namespaces, XDP, BIRD)"
case ${1:-} in
up) cmd_up ;;
demo) cmd_demo ;;
status) cmd_status ;;
down) cmd_down ;;
build) cmd_build "${2:-all}" ;;
*)
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
  ;;
esac
