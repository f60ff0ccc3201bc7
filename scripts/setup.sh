#!/usr/bin/env bash
# Create ./.venv with the platform installed (idempotent; fast when already done).
#
# torch is installed FIRST and pinned (torch==2.13.0: the CPU wheel on CI machines); the
# project's own range for torch is then already satisfied, so pip never pulls a CUDA build.
# GPU machines: install the torch build you want before running this (AWM_TORCH_SPEC="").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${AWM_VENV:-.venv}
TORCH_SPEC=${AWM_TORCH_SPEC-torch==2.13.0}
EXTRAS=${AWM_EXTRAS:-dev,postgres,ocr}

pipq() {  # quiet unless it fails (setuptools' editable-install warnings are noise here)
  local log; log=$(mktemp)
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
  pipq -U pip setuptools wheel
fi
if [ -n "$TORCH_SPEC" ] && ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC"
  pipq "$TORCH_SPEC"
fi
stamp="$VENV/.awm-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing awm-platform[$EXTRAS] (editable)"
  pipq -e ".[$EXTRAS]"
  "$VENV/bin/python" -c "import torch, sys; v=torch.__version__; sys.exit(0 if ('+cu' not in v or '${TORCH_SPEC}'=='') else f'CUDA torch {v} was pulled in')"
  touch "$stamp"
fi
"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check; exit 1; }
echo "[setup] ready: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'), $("$VENV/bin/awm" version | sed 's/^/awm-platform /')"
