#!/usr/bin/env bash
# Fuzz targets of every parser: the pipeline (dataplane/fuzz), the BGP decoder (bgp/fuzz),
# the config file, Kubernetes objects, health-check responses, API requests, and the status
# answer `dsrgate status` reads (control/fuzz).
#
#   scripts/fuzz.sh check       compile every target (stable Rust, no sanitizer)
#   scripts/fuzz.sh run [SECS]  run every target for SECS seconds each (default 60)
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets this stable toolchain
# accept them. Crashes are kept under CRATE/fuzz/artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."

CRATES=(dataplane bgp control)

case "${1:-run}" in
  check)
    for c in "${CRATES[@]}"; do
      echo "==> fuzz targets of $c compile"
      # In the workspace's target dir: the fuzz crates' locks pin the workspace's versions,
      # so most of their dependencies are built already.
      CARGO_TARGET_DIR="$PWD/target" cargo check --quiet --locked --manifest-path "$c/fuzz/Cargo.toml" --bins
    done
    ;;
  run)
    secs="${2:-60}"
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    export RUSTC_BOOTSTRAP=1
    for c in "${CRATES[@]}"; do
      # Not `for t in $(cargo fuzz list)`: a failing substitution in a for list is ignored
      # (set -e does not see it), and the loop would fuzz nothing and succeed.
      targets=$(cd "$c" && cargo fuzz list)
      [ -n "$targets" ] || { echo "no fuzz targets in $c/fuzz" >&2 && exit 1; }
      for t in $targets; do
        echo "==> fuzzing $c/$t for ${secs}s"
        (cd "$c" && cargo fuzz run "$t" -- -max_total_time="$secs")
      done
    done
    ;;
  *)
    echo "usage: scripts/fuzz.sh check | run [SECONDS]" >&2
    exit 2
    ;;
esac
