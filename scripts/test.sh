#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine as root: installs what it needs
# (Debian packages and, if missing, the Rust toolchain; idempotent), then runs formatting, lints, unit, property, fixture and namespace tests,
# and a build of every fuzz target. Namespace/BPF/BIRD tests need root; with CI=true a missing
# prerequisite fails the run instead of skipping. Every skipped test is listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's plain `su` keeps the user's PATH, without the sbin directories that hold bird,
# birdc, ethtool and bpftool (the tests run them by name).
for d in /sbin /usr/sbin; do
  case ":$PATH:" in *":$d:"*) ;; *) PATH=$d:$PATH ;; esac
done
export PATH

# Each test that skips appends a line here (tests/src/lib.rs, require_privileges*): libtest
# shows a passing test's stderr only with --nocapture, so the list is printed at the end,
# also when the run fails.
DSRGATE_TEST_SKIP_LOG=$(mktemp -t dsrgate-skips.XXXXXX)
export DSRGATE_TEST_SKIP_LOG
report_skips() {
  local n
  n=$(wc -l <"$DSRGATE_TEST_SKIP_LOG")
  if [ "$n" -gt 0 ]; then
    printf '\n==> %s test(s) skipped:\n' "$n"
    sed 's/^/  /' "$DSRGATE_TEST_SKIP_LOG"
  else
    printf '\n==> no test skipped\n'
  fi
  rm -f "$DSRGATE_TEST_SKIP_LOG"
}
trap report_skips EXIT

# shellcheck source=scripts/deps.sh
. scripts/deps.sh

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
  # shellcheck disable=SC2119 # no extra packages
  dsrgate_install_deps
  dsrgate_ensure_cargo
elif [ "${CI:-}" = true ]; then
  echo "CI=true but not root: the namespace, BPF and BIRD tests cannot run" >&2
  exit 1
else
  echo "not root: privileged tests will skip" >&2
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, property, fixture, namespace and interop tests)"
cargo test --workspace --locked --no-fail-fast

step "fuzz targets compile (run them with scripts/fuzz.sh run)"
scripts/fuzz.sh check
