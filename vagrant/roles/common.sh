# shellcheck shell=bash
# Shared by the role scripts (router.sh, gateway.sh, node.sh): argument helpers and
# background processes with a pid file and a log in the role's state directory.
# A role script runs inside its network namespace (netns lab) or on its own VM
# (multi-VM mode); it never assumes which.

set -euo pipefail

ROLE=${ROLE:-role}

die() {
  echo "$ROLE: $*" >&2
  exit 1
}

say() { echo "[$ROLE] $*"; }

# need VAR...: fails naming the option behind each empty variable.
need() {
  local v
  for v in "$@"; do
    [ -n "${!v:-}" ] || die "missing --$(echo "$v" | tr '[:upper:]_' '[:lower:]-')"
  done
}

# sysctl_set KEY VALUE: writes /proc/sys directly (procps may be missing).
sysctl_set() {
  echo "$2" >"/proc/sys/${1//.//}"
}

# pid_of NAME: the pid recorded in $STATE_DIR/NAME.pid if that process still runs the
# same program (a stale file after a crash or reboot names nothing).
pid_of() {
  local file="$STATE_DIR/$1.pid" pid exe
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  exe=$(cat "$STATE_DIR/$1.exe" 2>/dev/null || true)
  [ -z "$exe" ] || grep -qF "$exe" "/proc/$pid/cmdline" 2>/dev/null || return 1
  # A zombie has exited already.
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  echo "$pid"
}

# start_bg NAME PROGRAM ARGS...: starts PROGRAM in its own session, stdout and stderr
# appended to $STATE_DIR/NAME.log, pid in $STATE_DIR/NAME.pid. No-op if it runs already.
start_bg() {
  local name=$1
  shift
  if pid=$(pid_of "$name"); then
    say "$name already running (pid $pid)"
    return 0
  fi
  mkdir -p "$STATE_DIR"
  printf '%s' "$1" >"$STATE_DIR/$name.exe"
  setsid "$@" </dev/null >>"$STATE_DIR/$name.log" 2>&1 &
  echo $! >"$STATE_DIR/$name.pid"
  say "$name started (pid $!, log $STATE_DIR/$name.log)"
}

# stop_bg NAME [SIGNAL] [GRACE_SECONDS]: signals the process (default TERM), waits up to
# GRACE seconds (default 10) for it to exit, then SIGKILLs it. Removes the pid file.
stop_bg() {
  local name=$1 sig=${2:-TERM} grace=${3:-10} pid i
  if pid=$(pid_of "$name"); then
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      [ -d "/proc/$pid" ] || break
      [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "$name stopped (SIG$sig, pid $pid)"
  fi
  rm -f "$STATE_DIR/$name.pid" "$STATE_DIR/$name.exe"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 100 ms until it succeeds.
wait_for() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  die "timed out after ${secs}s waiting for $what"
}
