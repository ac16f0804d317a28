# shellcheck shell=bash
# Sourced by scripts/test.sh and vagrant/lab.sh: the Debian packages dsrgate needs to build,
# test and run its lab, and the Rust toolchain, installed only when missing (idempotent).

DSRGATE_APT_PACKAGES=(
  clang llvm libclang-dev libelf-dev zlib1g-dev libbpf-dev pkg-config m4 make # BPF C programs
  bird2 iproute2 ethtool iputils-ping tcpdump curl ca-certificates python3     # lab and tests
  systemd                                                                      # systemd-analyze verify of the unit
)

# Needed by the test suite only, not by the lab (vagrant/lab.sh sets DSRGATE_DEPS_NO_TEST=1).
DSRGATE_TEST_APT_PACKAGES=(
  vagrant # `vagrant validate` of vagrant/Vagrantfile (both modes; no provider needed)
  bpftool # the lab test checks that no XDP program it attached is still loaded; daemon_e2e detaches one from outside
)

# Installs the missing packages (as root) and mounts bpffs. Outside root it only reports.
dsrgate_install_deps() {
  if [ "$(id -u)" != 0 ]; then
    echo "not root: not installing packages" >&2
    return 0
  fi
  local missing=() p wanted=("${DSRGATE_APT_PACKAGES[@]}")
  [ "${DSRGATE_DEPS_NO_TEST:-}" = 1 ] || wanted+=("${DSRGATE_TEST_APT_PACKAGES[@]}")
  for p in "${wanted[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
}

# Puts cargo on PATH, installing the stable toolchain with rustup if there is none: Debian
# 12's own rustc is older than the workspace's rust-version. With rustfmt and clippy, which
# the test suite runs; a rustup toolchain that lacks them gets them added.
dsrgate_ensure_cargo() {
  if ! command -v cargo >/dev/null; then
    if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
      echo "==> installing the Rust toolchain (rustup, stable)" >&2
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --component rustfmt,clippy --default-toolchain stable >&2
    fi
    export PATH=$HOME/.cargo/bin:$PATH
  fi
  if ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1 &&
    command -v rustup >/dev/null; then
    rustup component add rustfmt clippy >&2
  fi
}
