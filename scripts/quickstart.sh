#!/usr/bin/env bash
# The README's first command: a real sweep end to end on CPU (tiny model, JPEG
# compressibility, 6 trials over train.beta and train.ghuber_power, 2 in parallel, local
# executor, SQLite stores, embedded MLflow). Prints the best trial, where its LoRA is and how
# to open the MLflow UI.   Usage: scripts/quickstart.sh [extra `awm sweep start` options]
set -euo pipefail
cd "$(dirname "$0")/.."
export AWM_HOME="${AWM_HOME:-$PWD/.awm}"
# 2 cores shared by the orchestrator and 2 trials: one thread each (stack notes, P1)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
AWM="${AWM:-$PWD/.venv/bin/awm}"
[ -x "$AWM" ] || AWM=awm
MODEL="$AWM_HOME/models/tiny"
if [ ! -f "$MODEL/model_index.json" ]; then
  echo "making the tiny model in $MODEL"
  "$AWM" model make-tiny "$MODEL"
fi
STUDY="${STUDY:-quickstart-$(date +%Y%m%d-%H%M%S)}"
"$AWM" sweep start configs/quickstart_sweep.yaml --cluster local --study "$STUDY" \
  --set "pretrained.model=$MODEL" "$@"
echo "next: score every checkpoint on OCR and list the results (about 3 min):"
echo "  AWM_HOME=$AWM_HOME $AWM eval schedule --once --benchmarks ocr --wait && AWM_HOME=$AWM_HOME $AWM eval list"
