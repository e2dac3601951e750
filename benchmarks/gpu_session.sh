#!/usr/bin/env bash
# The GPU measurements of issue 6, prepared for a short session on a lent GPU machine
# (the `device` tool: about 15 minutes of device time in all, at most 10 per command).
#
# The GPU image has jax, flax, optax, orbax and torch but not ml-collections, which the
# configs need, and Pillow, which advseg_jax.data imports.
# Prepare both once on the development machine (Python 3.12 wheels, about 24 MB):
#
#     bash benchmarks/gpu_session.sh deps        # -> .whl/site (ml-collections), .whl/pillow
#
# then carry `.whl` (ignored by git) with the command, one part per call:
#
#     bash benchmarks/gpu_session.sh targets     # advsemi f32 + bf16 vs PyTorch, AdaptSegNet in 24 GB
#     bash benchmarks/gpu_session.sh rest        # supervised + adaptseg vs PyTorch, 1x1 A/B
#
# Results go to $OUT (the device tool's return folder) or runs/gpu_session: one JSON and one
# Markdown table per measurement, env.txt with the versions and the GPU, and log.txt.
# Every measurement has its own time limit, and whatever finished is kept when the call
# runs out of time: compare.py rewrites its JSON after every case ("complete": false until
# the end), and `python benchmarks/speed/compare.py --from_json X.json --variants eager` rebuilds
# the tables from a cut-off run. For a dry run on a CPU, override the shapes, e.g.
# GPU_SESSION_PRESET=cpu-small GPU_SESSION_DEPTH=tiny bash benchmarks/gpu_session.sh targets
# GPU_SESSION_PLAN=1 prints each measurement as "NAME LIMIT_S COMMAND..." (shell-quoted) and
# runs nothing; tests/benchmarks/test_gpu_session_plan.py parses every planned command that way.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-}
PY=${PYTHON:-python3}
out=${OUT:-runs/gpu_session}
preset=${GPU_SESSION_PRESET:-original}
depth_flag=()
[ -n "${GPU_SESSION_DEPTH:-}" ] && depth_flag=(--depth "$GPU_SESSION_DEPTH")

if [ "$part" = deps ]; then
  wheel_for_gpu_image=(--no-deps --only-binary=:all: --python-version 3.12
                       --platform manylinux_2_28_x86_64 --implementation cp)
  "$PY" -m pip install -q "${wheel_for_gpu_image[@]}" --target .whl/site "ml-collections==1.1.0" &&
  "$PY" -m pip install -q "${wheel_for_gpu_image[@]}" --target .whl/pillow "pillow==13.0.0" ||
    { echo "could not prepare .whl (pip install --target failed)" >&2; exit 1; }
  echo "prepared .whl ($(du -sh .whl | cut -f1)); carry .whl with the device command"
  exit 0
fi
if [ "$part" != targets ] && [ "$part" != rest ]; then
  echo "usage: bash benchmarks/gpu_session.sh deps|targets|rest (see the comments at the top)" >&2
  exit 2
fi

# prepare: the carried packages on PYTHONPATH, the import check, env.txt (not in plan mode).
prepare() {
  [ -d .whl/site ] && export PYTHONPATH="$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
  # The carried Pillow only where the image has none (its own build stays in charge otherwise).
  if [ -d .whl/pillow ] && ! "$PY" -c "import PIL" 2>/dev/null; then
    export PYTHONPATH="$PWD/.whl/pillow:$PYTHONPATH"
  fi
  mkdir -p "$out"
  log="$out/log.txt"
  if ! "$PY" -c "import ml_collections, PIL, jax, flax, optax, torch" 2>>"$log"; then
    echo "missing packages (see $log): run 'bash benchmarks/gpu_session.sh deps' here first and" \
         "carry .whl" | tee -a "$log" >&2
    exit 1
  fi
  {
    date -u
    "$PY" -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__); print(jax.devices())"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  } > "$out/env.txt" 2>&1
}

plan_only=${GPU_SESSION_PLAN:-}
[ -n "$plan_only" ] || prepare || exit 1

# run NAME SECONDS COMMAND...: one measurement, its own limit, output kept either way.
run() {
  local name=$1 limit=$2
  shift 2
  if [ -n "$plan_only" ]; then
    printf '%q %q' "$name" "$limit"; printf ' %q' "$@"; printf '\n'
    return 0
  fi
  echo "[$(date -u +%T)] $name (limit ${limit}s): $*" | tee -a "$log"
  timeout "$limit" "$@" > "$out/$name.out" 2>> "$log"
  local rc=$?
  echo "[$(date -u +%T)] $name: exit $rc" | tee -a "$log"
  [ -s "$out/$name.out" ] && cat "$out/$name.out"
  return 0
}

common=(--preset "$preset" "${depth_flag[@]}" --repeats 5 --warmup 2)
if [ "$part" = targets ]; then
  # Targets 1-3: f32 vs eager f32, bf16 vs autocast, bf16 utilisation, on advsemi 10x321x321.
  run advsemi 400 "$PY" benchmarks/speed/compare.py "${common[@]}" --methods advsemi \
      --dtypes float32,bfloat16 --variants eager --cudnn_benchmark \
      --json "$out/advsemi.json" --markdown "$out/advsemi.md"
  # Target 4: the AdaptSegNet full-resolution step in a 24 GB memory pool, float32.
  run adaptseg_24gb 150 "$PY" benchmarks/speed/step_throughput.py "${common[@]}" --methods adaptseg \
      --dtypes float32 --gpu_mem_limit_gb 24 --json "$out/adaptseg_24gb.json"
else
  run supervised_adaptseg 360 "$PY" benchmarks/speed/compare.py "${common[@]}" \
      --methods supervised,adaptseg --dtypes float32,bfloat16 --variants eager \
      --cudnn_benchmark --json "$out/supervised_adaptseg.json" \
      --markdown "$out/supervised_adaptseg.md"
  # RESULTS.md lists the 1x1-as-matrix-product effect on a GPU as not measured.
  run pointwise_ab 200 "$PY" benchmarks/speed/step_ab.py --method advsemi --preset "$preset" \
      "${depth_flag[@]}" --precision bfloat16 --calls 10 \
      --variant dot=model.pointwise_impl=dot --variant conv=model.pointwise_impl=conv \
      --json "$out/pointwise_ab.json"
fi
[ -n "$plan_only" ] || echo "results in $out"
