#!/usr/bin/env bash
# One-call GPU check (bench/gpu/README.md, "One-call GPU check"): kernel tests, AOT compile,
# loss / fused-head / trainer benchmarks, and the two teacher backends (transformers and
# vLLM, bench/bench_backends.py: tok/s, load, peak RSS); writes OUT/check.json and OUT/check.md.
# vLLM is not among the carried wheels (too large): the backends stage uses the interpreter
# in DDK_VLLM_PYTHON (default: PYTHON) and, where vLLM does not import there, measures
# transformers alone and reports the stage failed with that reason.
#
#     bash bench/gpu/check.sh [--out DIR] [--budget SECONDS] [--stages a,b]   # on the GPU
#     bash bench/gpu/check.sh --dry-run [--out DIR]   # CPU, tiny shapes, Triton interpreter
#
# On the GPU machine it first installs the carried wheels (.whl/, from
# `bash bench/gpu/prepare.sh --wheels-only`) through `source bench/gpu/setup.sh --wheels-only`
# (no teacher needed), then runs bench/gpu/check.py with what is left of an 8-minute budget.
# The dry run uses the Python it finds (the project's venv) and needs no wheels.
# Environment: PYTHON (default python3). Exit status: check.py's (1 if a stage failed).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
export PYTHONUNBUFFERED=1
dry=0
for a in "$@"; do [[ $a == --dry-run ]] && dry=1; done
py=${PYTHON:-python3}
if (( dry )); then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  echo "check.sh: dry run on CPU ($("$py" -c 'import sys; print(sys.executable)'))"
else
  # shellcheck source=bench/gpu/setup.sh
  source bench/gpu/setup.sh --wheels-only || exit 1
fi
budget=()
if ! (( dry )) && [[ " $* " != *" --budget "* ]]; then
  budget=(--budget $((450 - SECONDS)))  # 7.5 minutes from the start of this script
fi
echo "check.sh: setup took ${SECONDS} s"
exec "$py" bench/gpu/check.py "${budget[@]}" "$@"
