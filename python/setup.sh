#!/usr/bin/env bash
# Creates the local virtual environment `.venv/` (repo root) with the pinned PyTorch stack used by
# the optional scripts in interop/ and bench/. Never needed for `cargo build` or `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/pip" install --quiet -r "$root/python/requirements.txt"
"$root/.venv/bin/python" -c 'import torch, torchattacks; print("torch", torch.__version__, "torchattacks", torchattacks.__version__)'
