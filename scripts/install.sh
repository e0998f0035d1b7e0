#!/usr/bin/env bash
# Creates .venv and installs AIBox into it. Safe to run again: pip skips what is there.
# Machines without an NVIDIA GPU get the CPU build of PyTorch; a plain `torch` requirement
# would otherwise pull a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${AIBOX_VENV:-.venv}
extras=${1:-}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi
pip=("$VENV/bin/pip" install -q)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" "torch==2.13.0"
else
    # The CPU wheel index is tried first; where it is unreachable, pip still finds a
    # local CPU wheel through its find-links, or falls back to PyPI's default build.
    "${pip[@]}" --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" 2>/dev/null \
        || "${pip[@]}" "torch==2.13.0"
fi

# llama-cpp-python compiles llama.cpp (about 4 minutes on 2 cores); pip caches the wheel.
# Native CPU flags, minus AMX: on some virtual machines the CPU advertises AMX but the
# kernel does not grant it, and llama.cpp's AMX matmul then crashes on any batch of more
# than one token. NVIDIA machines get the CUDA backend.
if [ -z "${CMAKE_ARGS:-}" ]; then
    if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        export CMAKE_ARGS="-DGGML_CUDA=on"
    elif [ "$(uname -m)" = "x86_64" ]; then
        noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        export CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'"
    fi
fi
if [ -n "$extras" ]; then
    "${pip[@]}" -e ".[$extras]"
else
    "${pip[@]}" -e .
fi
echo "aibox installed in $VENV"
