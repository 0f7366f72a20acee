#!/usr/bin/env bash
# One prepared check of the CUDA half on a lent GPU machine, in at most six minutes:
#
#   scripts/gpu_check.sh [--dry-run] [--skip-build] [--steps a,b,...] [--budget SECONDS] OUTDIR
#
# Steps, in order (each with its own timeout; see PLAN):
#   env        the machine: GPU, driver, toolkit, tools, Python packages
#   deps       torch_pruning where it is missing: the vendored wheel (scripts/vendor/)
#   build      pip install --no-build-isolation --no-deps --no-index -e .  (for this GPU's
#              architecture; where pip may not install, setup.py build_ext --inplace)
#   info       python -m epi_fast.info
#   tests      pytest -m cuda tests/cuda tests/ops (tests/cuda alone where hypothesis is missing)
#   dist       the main job under torchrun with NCCL: --distributed fsdp, then ddp, on 2 GPU ranks
#              where 2 or more GPUs are visible, else on one (a short digits run each)
#   memcheck   compute-sanitizer --tool memcheck  on pytest -m sanitize tests/cuda
#   racecheck  compute-sanitizer --tool racecheck on the same tests
#   synccheck  compute-sanitizer --tool synccheck on the same tests
#   bench      python -m benchmarks --quick --device cuda on ResNet-50 (no MLP sweep, no
#              torch.compile reference: the GPU targets' cases, the AMP train step and the 1-2 GiB
#              layers), within the time left
#   ncu        Nsight Compute's speed-of-light section for the row-sum, group and count kernels
#
# Output: OUTDIR/summary.md (one table row per step: status, seconds, timeout, the key lines)
# and OUTDIR/gpu_check.tar.gz (gpu_check/: summary.md, steps.tsv, logs/<step>.log, info.json,
# build_info.json, pytest_cuda.xml, dist_{fsdp,ddp}_summary.json (the dist step's summary.json),
# benchmarks/results/<gpu>_cuda_quick.{json,md,png}, ncu_speed_of_light.csv). Nothing else is
# written outside a temporary directory, which is removed.
#
# Time: the budget (default 350 s) is split among the steps (PLAN); a step may use what the
# steps before it left unused, never what the steps after it were given, so the whole run ends
# within the budget plus a few seconds for the archive. A step that runs out of time is killed
# and reported as TIMEOUT; the benchmarks are told their share so that they stop and still write
# their results.
#
# A tool that the machine refuses (compute-sanitizer's "Device not supported" on some runtimes,
# ncu without access to the performance counters) or that is missing is reported as REFUSED or
# MISSING, and the other steps still run. Exit status: 1 if a step FAILED or hit its TIMEOUT, 2
# for a usage error or a dry run whose repository checks failed, else 0.
#
# --dry-run prints the plan and checks the prerequisites without a GPU and without writing
# anything: the repository's (hard: the CUDA tests collect, the sanitize selection is not empty,
# the benchmark options exist, the vendored wheel has its hash) and the machine's (reported:
# what the real run would miss). --skip-build uses the extension already built in the tree;
# --steps runs only the named steps (e.g. --steps bench to rerun the benchmarks), which share the
# budget among themselves.
#
# Environment: PYTHON (default python3), GPU_CHECK_TESTS (the pytest paths of the tests step),
# TORCH_CUDA_ARCH_LIST (default: the visible GPU's compute capability), MAX_JOBS (default: all
# cores).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TP_WHEEL="$ROOT/scripts/vendor/torch_pruning-1.6.1-py3-none-any.whl"
TP_SHA256=5cb619e55bb4d1b7ce71be9782865ad4977bfe99c148fdce9c3822eab08a9c08

# step:seconds. The shares add up to 340 of the default 350 s; the rest is for the archive.
PLAN=(env:5 deps:5 build:90 info:10 tests:70 dist:30 memcheck:30 racecheck:20 synccheck:20 bench:50 ncu:10)
DEFAULT_BUDGET=350
PACK_RESERVE=5
KILL_GRACE=5
# What a refusing tool prints (compute-sanitizer on an unsupported device or runtime, ncu
# without counter permissions).
REFUSED='Device not supported|device is not supported|not supported on this (device|platform|GPU)|Unable to find injection library|ERR_NVGPUCTRPERM|does not have permission|Target application terminated before first instrumented API call'

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

DRY=0
SKIP_BUILD=0
ONLY=""
BUDGET=$DEFAULT_BUDGET
OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --steps)
      shift
      [ -n "${1:-}" ] || { echo "gpu_check: --steps needs a comma-separated list" >&2; exit 2; }
      ONLY=",$1," ;;
    --budget)
      shift
      [[ "${1:-}" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget needs whole seconds" >&2; exit 2; }
      BUDGET=$1 ;;
    -h|--help) usage ;;
    -*) echo "gpu_check: unknown option $1" >&2; usage ;;
    *) [ -z "$OUTDIR" ] || { echo "gpu_check: one OUTDIR only" >&2; exit 2; }; OUTDIR=$1 ;;
  esac
  shift
done
if [ -z "$OUTDIR" ] && [ "$DRY" = 0 ]; then
  echo "gpu_check: OUTDIR is required" >&2
  usage
fi

PY=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the tree's epi_fast and benchmarks, built or installed
export PYTHONDONTWRITEBYTECODE=1
export TESTS_PATHS=${GPU_CHECK_TESTS:-}
SANITIZE_TESTS="tests/cuda tests/ops/test_masks.py"

# Shares scaled to the budget (a budget other than the default scales every share alike).
declare -A SHARE
ORDER=()
for entry in "${PLAN[@]}"; do
  name=${entry%%:*}
  ORDER+=("$name")
  SHARE[$name]=$(( ${entry##*:} * BUDGET / DEFAULT_BUDGET ))
done
if [ -n "$ONLY" ]; then
  for name in ${ONLY//,/ }; do
    [ -n "${SHARE[$name]+set}" ] || { echo "gpu_check: unknown step $name (steps: ${ORDER[*]})" >&2; exit 2; }
  done
  for name in "${ORDER[@]}"; do  # steps left out have no share: the chosen ones get the time
    [[ "$ONLY" == *",$name,"* ]] || SHARE[$name]=0
  done
fi
selected() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }

log() { echo "[gpu_check] $*"; }

have() { command -v "$1" >/dev/null 2>&1; }

py_has() { "$PY" -c "import $1" >/dev/null 2>&1; }

# -- the steps (run in a child bash under timeout; they see the exported variables) ---------------

step_env() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -a)"
  if have git && git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
    echo "commit: $(git -C "$ROOT" rev-parse HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' (with uncommitted changes)')"
  else
    echo "commit: ? (no git checkout)"
  fi
  echo "cores: $(nproc 2>/dev/null || echo '?')"
  if have nvidia-smi; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
    nvidia-smi
  else
    echo "nvidia-smi: not found"
  fi
  for tool in nvcc compute-sanitizer ncu ninja; do
    if have "$tool"; then echo "$tool: $("$tool" --version 2>&1 | tail -n 1)"; else echo "$tool: not found"; fi
  done
  "$PY" - <<'PY'
import importlib, sys
print("python:", sys.version.split()[0], sys.executable)
import torch
print("torch:", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i}:", torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
missing = []
for name in ("pytest", "hypothesis", "torchvision", "matplotlib", "numpy", "torch_pruning", "ninja", "setuptools"):
    try:
        mod = importlib.import_module(name)
        print(f"{name}: {getattr(mod, '__version__', 'present')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: MISSING ({type(exc).__name__})")
        missing.append(name)
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible to torch"
print(f"NOTE: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"Python packages missing: {', '.join(missing) or 'none'}")
PY
}

step_deps() {
  if "$PY" -c "import torch_pruning" 2>/dev/null; then
    echo "torch_pruning present: $("$PY" -c 'import torch_pruning as t; print(t.__file__)')"
    return 0
  fi
  echo "$TP_SHA256  $TP_WHEEL" | sha256sum -c - || { echo "the vendored wheel's hash does not match"; return 1; }
  if "$PY" -m pip install --no-deps --no-index "$TP_WHEEL"; then
    echo "NOTE: torch_pruning installed from scripts/vendor/"
  else
    echo "NOTE: pip did not install it; imported from the wheel file instead (PYTHONPATH)"
  fi
}

step_build() {
  cd "$ROOT" || return 1
  export EPI_FAST_CUDA=1  # a missing toolkit must fail the build, not quietly skip the kernels
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && have nvidia-smi; then
    TORCH_CUDA_ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u | paste -sd ';')
    export TORCH_CUDA_ARCH_LIST
  fi
  echo "NOTE: TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-the default of setup.py} MAX_JOBS=$MAX_JOBS"
  if "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . ; then
    echo "NOTE: editable install"
    return 0
  fi
  echo "NOTE: pip install -e . failed; building in place (setup.py build_ext --inplace) instead"
  "$PY" setup.py build_ext --inplace
}

step_info() {
  "$PY" -m epi_fast.info > "$STAGE/info.json" || return 1
  cat "$STAGE/info.json"
  cp "$ROOT/epi_fast/_build_info.json" "$STAGE/build_info.json" 2>/dev/null || true
  "$PY" -c "import json, sys; i = json.load(open(sys.argv[1])); sys.exit(0 if i['cuda_kernels_built'] and i['cuda_available'] else 1)" \
    "$STAGE/info.json" || { echo "the CUDA kernels are not built, or no GPU is visible"; return 1; }
}

step_tests() {
  cd "$ROOT" || return 1
  local paths=$TESTS_PATHS
  if [ -z "$paths" ]; then
    # where the cuda-marked tests are (tests/ops: the families' [cuda] cases); the other
    # directories would only be collected, and a module of theirs that needs a package this
    # machine lacks would fail the step without a CUDA test failing
    if "$PY" -c "import hypothesis" 2>/dev/null; then
      paths="tests/cuda tests/ops"
    else
      paths="tests/cuda"
      echo "NOTE: hypothesis is missing: tests/cuda only (the families' cuda property tests need it)"
    fi
  fi
  # shellcheck disable=SC2086
  "$PY" -m pytest -m cuda -q -p no:cacheprovider -o addopts= --continue-on-collection-errors -rfE \
    --durations=15 --junitxml="$STAGE/pytest_cuda.xml" $paths
}

# torchrun's ranks of the main job on the GPUs, NCCL between them: each kind's run must complete
# with backend nccl and every rank's kept counts equal to rank 0's. One rank where the machine
# has one GPU (NCCL's collectives then run within one process, which still takes the NCCL
# code path of the job and of EPIPruner).
step_dist() {
  cd "$ROOT" || return 1
  local gpus n kind rc=0
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())") || return 1
  [ "$gpus" -ge 1 ] || { echo "--distributed with NCCL: no CUDA device is visible"; return 1; }
  n=$(( gpus >= 2 ? 2 : 1 ))
  for kind in fsdp ddp; do
    local out="$STAGE/../dist_$kind"
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$n" -m epi_fast train --distributed "$kind" \
      --device cuda --epochs 4 --batch-size 32 --window 2 --patience 1 --deadline-epoch 2 --track-ratios 0.3 \
      --dist-timeout 60 --no-progress --out "$out" || { echo "--distributed $kind on $n GPU rank(s) failed"; rc=1; continue; }
    cp "$out/summary.json" "$STAGE/dist_${kind}_summary.json"
    "$PY" - "$out/summary.json" <<'PY' || rc=1
import json
import sys

s = json.load(open(sys.argv[1]))
d = s["distributed"]
same = all(r["kept_counts_as_rank0"] and r["prune_epoch"] == s["prune_epoch"] for r in d["ranks"])
print(f"NOTE: --distributed {d['kind']} on {d['world_size']} GPU rank(s), {d['backend']}: {s['status']}, pruned after "
      f"epoch {s['prune_epoch']} ({s['prune_reason']}), every rank alike: {same}, top-1 {s['top1_final']:.3f}")
sys.exit(0 if s["status"] == "completed" and d["backend"] == "nccl" and same else 1)
PY
  done
  return $rc
}

sanitizer() {
  local tool=$1
  shift
  cd "$ROOT" || return 1
  # shellcheck disable=SC2086
  compute-sanitizer --tool "$tool" --error-exitcode 86 --print-limit 30 "$@" \
    "$PY" -m pytest -m sanitize -q -p no:cacheprovider -o addopts= -x $SANITIZE_TESTS
}

# memcheck with torch's caching allocator off: each tensor is its own allocation, so a read
# past a tensor's end is past an allocation's end, which memcheck sees.
step_memcheck() { PYTORCH_NO_CUDA_MEMORY_CACHING=1 sanitizer memcheck; }
step_racecheck() { sanitizer racecheck; }
step_synccheck() { sanitizer synccheck; }

step_bench() {
  cd "$ROOT" || return 1
  # Stop starting measurements with time left to finish the last one and write the files.
  local budget=$(( STEP_TIMEOUT > 60 ? STEP_TIMEOUT - 25 : STEP_TIMEOUT * 6 / 10 ))
  "$PY" -m benchmarks --quick --device cuda --no-compile --models resnet50 --mlp-params none \
    --budget-s "$budget" --out "$STAGE/benchmarks/results"
}

step_ncu() {
  cd "$ROOT" || return 1
  local cases="$STAGE/../ncu_cases.py"
  cat > "$cases" <<'PY'
import torch
import epi_fast.ops as ops

d = torch.device("cuda")
bn = [torch.randn(512, device=d) for _ in range(50)]
convs = [torch.randn(256, 256, 3, 3, device=d, dtype=torch.float16) for _ in range(8)]
huge = torch.randn(1, 4 << 20, device=d, dtype=torch.float16)
ops.channel_scores(bn, "abs")
ops.channel_scores(convs, "l2")
ops.channel_scores([huge], "l2")
ptr = torch.arange(0, 3 * 20001, 3, device=d)
ops.group_reduce_trusted(torch.randn(60000, device=d), ptr, torch.randint(60000, (60000,), device=d), "mean")
masks = torch.rand(9, 26000, device=d) < 0.5
ops.layer_counts(masks, [260] * 100)
torch.cuda.synchronize()
PY
  ncu --target-processes all --kernel-name "regex:row_sums_kernel|row_partials_kernel|group_reduce_kernel|segment_counts_kernel" \
    --launch-count 8 --section SpeedOfLight --csv "$PY" "$cases" > "$STAGE/ncu_speed_of_light.csv"
  local rc=$?
  head -c 4000 "$STAGE/ncu_speed_of_light.csv"
  return $rc
}

export -f step_env step_deps step_build step_info step_tests step_dist sanitizer step_memcheck step_racecheck step_synccheck \
  step_bench step_ncu have
export ROOT PY TP_WHEEL TP_SHA256 SANITIZE_TESTS

# What each step needs before it can run (a command on PATH or a Python module); MISSING otherwise.
needs() {
  case "$1" in
    memcheck|racecheck|synccheck) have compute-sanitizer || { echo "compute-sanitizer not found"; return 1; } ;;
    ncu) have ncu || { echo "ncu not found"; return 1; } ;;
    build) have nvcc || [ -x /usr/local/cuda/bin/nvcc ] || { echo "nvcc not found"; return 1; } ;;
    tests) py_has pytest || { echo "pytest is not installed"; return 1; } ;;
  esac
  case "$1" in
    memcheck|racecheck|synccheck) py_has pytest || { echo "pytest is not installed"; return 1; } ;;
  esac
  return 0
}

describe() {
  case "$1" in
    env) echo "the machine: nvidia-smi, nvcc, compute-sanitizer, ncu, Python packages" ;;
    deps) echo "torch_pruning if missing: pip install --no-deps --no-index scripts/vendor/$(basename "$TP_WHEEL") (else PYTHONPATH)" ;;
    build) echo "pip install --no-build-isolation --no-deps --no-index -e .  (EPI_FAST_CUDA=1, arch = the GPU's)" ;;
    info) echo "python -m epi_fast.info" ;;
    tests) echo "pytest -m cuda ${TESTS_PATHS:-tests/cuda tests/ops (tests/cuda alone without hypothesis)}" ;;
    dist) echo "torchrun --nproc-per-node min(2, GPUs) -m epi_fast train --distributed fsdp|ddp --device cuda (NCCL)" ;;
    memcheck|racecheck|synccheck) echo "compute-sanitizer --tool $1 pytest -m sanitize $SANITIZE_TESTS" ;;
    bench) echo "python -m benchmarks --quick --device cuda --no-compile --models resnet50 --mlp-params none --budget-s <share - 25>" ;;
    ncu) echo "ncu --section SpeedOfLight on channel_scores, group_reduce, layer_counts" ;;
  esac
}

# -- dry run ---------------------------------------------------------------------------------------

dry_run() {
  local bad=0
  log "plan (budget ${BUDGET} s; each step may also use what earlier steps left unused):"
  for name in "${ORDER[@]}"; do
    printf '  %-10s %4s s  %s\n' "$name" "${SHARE[$name]}" "$(describe "$name")"
  done
  log "repository checks:"
  if echo "$TP_SHA256  $TP_WHEEL" | sha256sum -c - >/dev/null 2>&1; then
    echo "  ok       vendored wheel $(basename "$TP_WHEEL") ($(du -k "$TP_WHEEL" | cut -f1) KiB, sha256 matches)"
  else
    echo "  FAILED   vendored wheel $TP_WHEEL missing or its sha256 differs"; bad=1
  fi
  (cd "$ROOT" && "$PY" - "$SANITIZE_TESTS" <<'PY') || bad=1
import contextlib, io, sys

import pytest

failed = False


def collected(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *args])
    lines = [line for line in out.getvalue().splitlines() if line.endswith("collected") or " collected " in line]
    return lines[-1].strip() if lines else ""


for marker, path in (("cuda", "tests/cuda"), ("sanitize", sys.argv[1])):
    found = collected("-m", marker, *path.split())
    if found and not found.startswith("0"):
        print(f"  ok       pytest -m {marker} {path}: {found}")
    else:
        print(f"  FAILED   pytest -m {marker} {path} collects nothing ({found or 'no report'})")
        failed = True
try:
    from benchmarks.__main__ import parse_args

    parse_args(["--quick", "--device", "cuda", "--no-compile", "--models", "resnet50", "--mlp-params", "none",
                "--budget-s", "30", "--out", "x"])
    print("  ok       python -m benchmarks takes --quick --device --no-compile --models --mlp-params --budget-s --out")
except SystemExit:
    print("  FAILED   python -m benchmarks lacks an option the bench step uses")
    failed = True
sys.exit(1 if failed else 0)
PY
  bash -n "$0" && echo "  ok       this script parses" || bad=1
  log "machine checks (what a real run here would miss; a GPU machine should have all):"
  local item
  for item in timeout tar sha256sum nvidia-smi nvcc compute-sanitizer ncu ninja; do
    if have "$item"; then echo "  ok       $item"; else echo "  missing  $item"; fi
  done
  "$PY" - <<'PY' | sed 's/^/  /'
import importlib.util
import os
import re

spec = importlib.util.find_spec("torch")  # read, not imported: the dry run stays quick
if spec is None or not spec.origin:
    print("missing  torch")
else:
    with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as f:
        text = f.read()
    found = dict(re.findall(r"^(__version__|cuda)\s*(?::\s*\S+\s*)?=\s*['\"]?([^'\"\n]*)", text, re.M))
    print(f"ok       torch {found.get('__version__', '?')} (CUDA build: {found.get('cuda') or 'no'})")
for name, why in (("pytest", "every test step"), ("hypothesis", "the families' cuda property tests in tests/ops"),
                  ("torchvision", "the benchmarks' ResNet-50"), ("matplotlib", "the benchmark plot"),
                  ("torch_pruning", "the pruner tests and benchmarks (else the vendored wheel)"),
                  ("ninja", "a parallel build (the Python package; without it the build is serial and slow)"),
                  ("setuptools", "the build")):
    if importlib.util.find_spec(name) is not None:  # found, not imported (quick)
        print(f"ok       {name}")
    else:
        print(f"missing  {name}: needed for {why}")
PY
  if [ "$bad" = 0 ]; then log "dry run: the repository is ready; nothing was run or written"; return 0; fi
  log "dry run: repository checks FAILED"
  return 2
}

if [ "$DRY" = 1 ]; then
  dry_run
  exit $?
fi

# -- the real run ----------------------------------------------------------------------------------

mkdir -p "$OUTDIR" || { echo "gpu_check: cannot create $OUTDIR" >&2; exit 2; }
OUTDIR=$(cd "$OUTDIR" && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$TMP"' EXIT
export STAGE="$TMP/gpu_check"
mkdir -p "$STAGE/logs" "$STAGE/benchmarks/results"
printf 'step\tstatus\tseconds\ttimeout\tnote\n' > "$STAGE/steps.tsv"
START=$SECONDS
DEADLINE=$(( START + BUDGET - PACK_RESERVE ))
FAILED=0

later_shares() {  # the shares of the steps after $1
  local total=0 seen=0 name
  for name in "${ORDER[@]}"; do
    [ "$seen" = 1 ] && total=$(( total + SHARE[$name] ))
    [ "$name" = "$1" ] && seen=1
  done
  echo "$total"
}

record() {  # name status seconds timeout note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(echo "$5" | tr '\t\n' '  ' | cut -c1-300)" >> "$STAGE/steps.tsv"
  log "$1: $2 (${3} s of ${4} s)${5:+ - $5}"
}

# Steps whose tool a machine may refuse (the others fail as themselves).
refusable() { case "$1" in memcheck|racecheck|synccheck|ncu) return 0 ;; *) return 1 ;; esac; }

# The line of a step's log that says most about it.
key_line() {
  local name=$1 file=$2 line=""
  case "$name" in
    tests|memcheck|racecheck|synccheck)
      line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error|deselected).* in [0-9.]+s|no tests ran' "$file" | tail -n 1 | tr -d '=')
      if [ "$name" != tests ]; then
        local summary
        summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|hazard' "$file" | tail -n 1 | sed 's/^=* *//')
        line="${summary:+$summary; }$line"
      fi ;;
    info) line=$(grep -E '"cuda_(kernels_built|arch_list|device)"' "$file" | tr -s ' \n' ' ') ;;
    bench) line=$(grep -E '^\[(PASS|FAIL|n/a)\]' "$file" | tr '\n' ';' | cut -c1-250) ;;
    dist) line=$(grep -E '^NOTE: --distributed' "$file" | tr '\n' ';' | cut -c1-250) ;;
  esac
  [ -n "$line" ] || line=$(grep -E '^NOTE:' "$file" | tail -n 1)
  [ -n "$line" ] || line=$(grep -v '^\s*$' "$file" | tail -n 1)
  echo "$line"
}

for name in "${ORDER[@]}"; do
  file="$STAGE/logs/$name.log"
  now=$SECONDS
  timeout_s=$(( DEADLINE - now - $(later_shares "$name") ))
  if ! selected "$name"; then
    echo "not run: not in --steps" > "$file"
    record "$name" "skipped" 0 0 "not in --steps"
    continue
  fi
  if [ "$name" = build ] && [ "$SKIP_BUILD" = 1 ]; then
    echo "--skip-build: the extension already built in the tree is used" > "$file"
    record "$name" "skipped" 0 0 "--skip-build"
    continue
  fi
  if [ "$timeout_s" -lt 3 ]; then
    echo "not run: ${timeout_s} s left for it" > "$file"
    record "$name" "SKIPPED" 0 "$timeout_s" "not enough time left"
    continue
  fi
  if ! why=$(needs "$name"); then
    echo "not run: $why" > "$file"
    record "$name" "MISSING" 0 "$timeout_s" "$why"
    continue
  fi
  export STEP_TIMEOUT=$timeout_s
  began=$SECONDS
  timeout --kill-after="$KILL_GRACE" "$timeout_s" bash -c "step_$name" > "$file" 2>&1
  rc=$?
  took=$(( SECONDS - began ))
  if [ "$name" = deps ] && [ "$rc" = 0 ] && ! py_has torch_pruning; then
    # pip refused to install it: the later steps import it from the wheel itself (set here, in
    # this shell, for every later step to see)
    export PYTHONPATH="$PYTHONPATH:$TP_WHEEL"
    py_has torch_pruning || echo "torch_pruning does not import from $TP_WHEEL either" >> "$file"
  fi
  note=$(key_line "$name" "$file")
  if [ "$rc" = 0 ]; then
    status="ok"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    status="TIMEOUT"
    note="killed after ${timeout_s} s; ${note}"
    FAILED=1
  elif refusable "$name" && grep -Eqi "$REFUSED" "$file"; then
    status="REFUSED"
    note="$(grep -Ei -m1 "$REFUSED" "$file" | sed 's/^=* *//')"
  else
    status="FAILED (rc $rc)"
    FAILED=1
  fi
  record "$name" "$status" "$took" "$timeout_s" "$note"
  if [ "$name" = info ] && [ -s "$STAGE/info.json" ]; then cat "$STAGE/info.json"; fi
done

# -- summary and archive ---------------------------------------------------------------------------

gpu=$(grep -m1 -Eo 'cuda:0: [^(]*' "$STAGE/logs/env.log" 2>/dev/null | sed 's/cuda:0: //; s/ *$//')
{
  echo "# epi_fast GPU check: ${gpu:-no GPU seen}"
  echo
  echo "- $(grep -m1 '^date:' "$STAGE/logs/env.log" 2>/dev/null || echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)")"
  echo "- $(grep -m1 '^commit:' "$STAGE/logs/env.log" 2>/dev/null || echo "commit: ?")"
  echo "- $(grep -m1 '^torch:' "$STAGE/logs/env.log" 2>/dev/null || echo "torch: ?")"
  echo "- budget ${BUDGET} s, used $(( SECONDS - START )) s; exit status $FAILED (1: a step FAILED or hit its TIMEOUT)"
  echo
  echo "| step | status | seconds | timeout | notes |"
  echo "| --- | --- | --- | --- | --- |"
  tail -n +2 "$STAGE/steps.tsv" | while IFS=$'\t' read -r s st sec to note; do
    echo "| $s | $st | $sec | $to | ${note//|//} |"
  done
  echo
  echo "## Failures and refusals (first lines of each log)"
  echo
  tail -n +2 "$STAGE/steps.tsv" | while IFS=$'\t' read -r s st _ _ _; do
    case "$st" in ok|skipped) continue ;; esac
    echo "### $s: $st"
    echo
    echo '```'
    lines=$(grep -E 'FAILED|ERROR|Error|error:|Traceback|not supported|not found|not run|killed' "$STAGE/logs/$s.log" | head -n 15)
    if [ -n "$lines" ]; then echo "$lines"; else tail -n 10 "$STAGE/logs/$s.log"; fi
    echo '```'
    echo
  done
  if ls "$STAGE"/benchmarks/results/*_cuda_quick.md >/dev/null 2>&1; then
    echo "## Benchmark targets"
    echo
    grep -E '^\[(PASS|FAIL|n/a)\]' "$STAGE/logs/bench.log" | sed 's/^/- /'
    echo
  fi
  echo "## Archive"
  echo
  echo "gpu_check.tar.gz: gpu_check/{summary.md, steps.tsv, logs/, info.json, build_info.json, pytest_cuda.xml,"
  echo "dist_{fsdp,ddp}_summary.json, benchmarks/results/<gpu>_cuda_quick.{json,md,png}, ncu_speed_of_light.csv}"
  echo "(what the steps produced):"
  echo
  (cd "$TMP" && find gpu_check -type f | sort | sed 's/^/- /')
} > "$STAGE/summary.md"

tar -czf "$OUTDIR/.gpu_check.tar.gz.tmp" -C "$TMP" gpu_check && mv -f "$OUTDIR/.gpu_check.tar.gz.tmp" "$OUTDIR/gpu_check.tar.gz"
cp "$STAGE/summary.md" "$OUTDIR/.summary.md.tmp" && mv -f "$OUTDIR/.summary.md.tmp" "$OUTDIR/summary.md"
log "wrote $OUTDIR/summary.md and $OUTDIR/gpu_check.tar.gz in $(( SECONDS - START )) s"
exit "$FAILED"
