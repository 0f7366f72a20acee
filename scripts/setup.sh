#!/usr/bin/env bash
# Sets up epi_fast from nothing: a virtual environment in .venv, the pinned torch and
# torchvision, the dependencies, and the compiled operators (CPU always; CUDA wherever torch is
# a CUDA build and nvcc exists). Safe to run again: a step whose result is already there is
# skipped, and each step says which (one line each).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${EPI_FAST_VENV:-.venv}
TORCH_SPEC=${EPI_FAST_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
PACKAGES="numpy pybind11 ninja cmake pytest hypothesis scipy tqdm matplotlib scikit-learn torch-pruning transformers accelerate lightning timm torchmetrics pycocotools mnist1d"
# pyproject.toml's build requirements that --no-build-isolation takes from the venv.
BUILD_TOOLS="setuptools>=77 wheel"

if [ -x "$VENV/bin/python" ]; then
  echo "[setup] venv $VENV kept"
else
  echo "[setup] venv $VENV: creating it with $PYTHON"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"

# Which of the wanted packages are missing or at another version ("name==version" must match
# the release, "name>=version" at least it, a bare name be installed).
# shellcheck disable=SC2086
missing=$("$PY" - $TORCH_SPEC $PACKAGES $BUILD_TOOLS <<'PY'
import re
import sys
from importlib import metadata


def release(version):
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


missing = []
for spec in sys.argv[1:]:
    name, op, want = re.match(r"([A-Za-z0-9_.-]+)(==|>=)?(.*)", spec).groups()
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(spec)
        continue
    if (op == "==" and release(have) != release(want)) or (op == ">=" and release(have) < release(want)):
        missing.append(f"{spec} (have {have})")
print(", ".join(missing))
PY
)
if [ -z "$missing" ]; then
  echo "[setup] packages present ($TORCH_SPEC and the dependencies)"
else
  echo "[setup] packages: installing $missing"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $TORCH_SPEC $PACKAGES $BUILD_TOOLS
fi

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi

# The compiled operators are rebuilt unless this tree is installed (editable) in the venv, its
# extension loads against the venv's torch, and the build hash it recorded (setup.py's
# build_hash: the sources, setup.py, torch and the build switches) is the current one.
if stale=$("$PY" - <<'PY'
import json
import runpy
import sys
from importlib import metadata
from pathlib import Path


def stale(reason):
    print(reason)
    sys.exit(1)


root = Path.cwd().resolve()
try:
    dist = metadata.distribution("epi_fast")
except metadata.PackageNotFoundError:
    stale("epi_fast is not installed in this venv")
direct = json.loads(dist.read_text("direct_url.json") or "{}")
if not direct.get("dir_info", {}).get("editable") or direct.get("url") != root.as_uri():
    stale(f"the venv's epi_fast is {direct.get('url') or 'not'} an editable install of {root}")
try:
    from epi_fast.ops._ext import BUILD_INFO
except ImportError as exc:
    stale(f"the compiled operators do not load: {str(exc).splitlines()[0]}")
import torch

if BUILD_INFO.get("build_hash") != runpy.run_path(str(root / "setup.py"), run_name="setup")["build_hash"](
        torch.__version__):
    stale("the sources, setup.py or the build switches changed since the last build")
PY
); then
  echo "[setup] compiled operators up to date (sources unchanged since the last build)"
else
  echo "[setup] building the compiled operators (${stale:-the up-to-date check failed}; CUDA_HOME=${CUDA_HOME:-unset})"
  "$PY" -m pip install -q --no-build-isolation -e .
fi
"$PY" -m epi_fast.info
