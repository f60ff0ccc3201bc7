#!/usr/bin/env bash
# Mutation check: plant curated bugs in a temporary copy of this checkout and expect the tests that
# guard against them to fail (scripts/mutants.py has the list). Arguments go to mutants.py, e.g.
#   bash scripts/mutants.sh --list
#   bash scripts/mutants.sh --only loss-type,resume-optimizer
# Exit 0: every plant killed; 1: a plant survived; 2: setup problem or a plant no longer applies.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec .venv/bin/python scripts/mutants.py "$@"
