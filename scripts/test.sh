#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this):
#   1. install what is missing (venv + project, Debian packages for the services),
#   2. start the real local services (single-node SLURM with slurmdbd, PostgreSQL),
#   3. run pytest (a run that collects no test fails),
#   4. stop the services this script started.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/foundation -x`.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
bash scripts/setup.sh || exit 1

started_services=0
if [ "${AWM_TEST_SERVICES:-1}" = 1 ]; then
  if ! bash scripts/services.sh status all >/dev/null 2>&1; then
    echo "[test] starting local services (SLURM + PostgreSQL)"
    if bash scripts/services.sh up all; then started_services=1
    else echo "[test] WARNING: services failed to start; tests that need them will fail or skip with a reason"; fi
  fi
fi
cleanup() { if [ "$started_services" = 1 ]; then bash scripts/services.sh down all >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "[test] pytest collected no tests: failing"; rc=1; fi
exit "$rc"
