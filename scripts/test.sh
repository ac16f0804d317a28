#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine as root: installs what it needs
# (idempotent), then runs formatting, lints, unit, property, fixture and namespace tests,
# and short fuzz runs. Namespace/BPF/BIRD tests need root; with CI=true a missing
# prerequisite fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(clang llvm libclang-dev libelf-dev zlib1g-dev libbpf-dev pkg-config m4 make
  bird2 iproute2 ethtool iputils-ping tcpdump python3 curl ca-certificates)

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    step "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
elif [ "${CI:-}" = true ]; then
  echo "CI=true but not root: the namespace, BPF and BIRD tests cannot run" >&2
  exit 1
else
  echo "not root: skipping package installation; privileged tests will skip" >&2
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, property, fixture, namespace and interop tests)"
cargo test --workspace --locked --no-fail-fast
