#!/usr/bin/env bash
# Sets up epi_fast from nothing: a virtual environment in .venv, the pinned torch and
# torchvision, the dependencies, and the compiled operators (CPU always; CUDA wherever torch is
# a CUDA build and nvcc exists). Safe to run again: what is installed is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${EPI_FAST_VENV:-.venv}
TORCH_SPEC=${EPI_FAST_TORCH:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
echo "[setup] installing $TORCH_SPEC and the dependencies"
# shellcheck disable=SC2086
"$PY" -m pip install -q $TORCH_SPEC numpy pybind11 ninja cmake pytest hypothesis scipy \
  tqdm matplotlib scikit-learn torch-pruning

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
echo "[setup] building the compiled operators (CUDA_HOME=${CUDA_HOME:-unset})"
"$PY" -m pip install -q --no-build-isolation -e .
"$PY" -m epi_fast.info
