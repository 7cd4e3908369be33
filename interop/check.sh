#!/usr/bin/env bash
# Optional end-to-end check of the PyTorch interop (not part of `cargo test`): exports each run,
# compares logits in PyTorch, runs PGD in adp and torchattacks, imports torch.save weights, and
# runs APGD-CE and Square in adp and in the AutoAttack authors' code.
#
#   bash interop/check.sh [RUN_DIR ...] [--images N] [--pgd-images N] [--aa-images N] [--eps E] [--data-dir DIR]
#
# Without a run directory it trains a small CNN run on MNIST first (needs `adp data fetch mnist`).
# ADP=/path/to/adp uses that binary instead of building one with cargo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
if [ ! -x "$py" ]; then
  echo "no Python environment at $root/.venv; create it with: bash python/setup.sh" >&2
  exit 2
fi
if [ -z "${ADP:-}" ]; then
  (cd "$root" && cargo build --release --quiet)
  target="${CARGO_TARGET_DIR:-$root/target}"
  case "$target" in /*) ;; *) target="$root/$target" ;; esac
  ADP="$target/release/adp"
fi
cd "$root"
exec "$py" "$root/interop/check.py" --adp "$ADP" "$@"
