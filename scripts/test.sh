#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this):
#   1. install the Debian tools some tests use (tesseract-ocr, for the OCR benchmark's tesseract engine;
#      chromium + chromium-driver, for the leaderboard's browser test),
#   2. start the real local services (single-node SLURM with slurmdbd, PostgreSQL; their Debian packages
#      are installed when missing), then install what is missing of the venv + project (scripts/setup.sh),
#   3. run pytest with the services REQUIRED (AWM_REQUIRE_SERVICES=1): a test that needs SLURM or
#      PostgreSQL runs or fails, never skips; a run that collects no test fails,
#   4. stop the services this script started.
# If the services or the tools cannot be installed or started, this script fails (non-zero) before
# pytest, saying what failed and where the log is: whoever runs it, a green run means the service tests ran.
# AWM_TEST_SERVICES=0: leave starting/stopping the services to the test fixtures (they are still required).
# AWM_SERVICES_SCRIPT: another services script (tests/services/test_test_command.py uses a failing one).
# AWM_TEST_WORKERS (default 2): pytest-xdist worker processes (`-n N --dist loadgroup`; tests/conftest.py says
#   what one worker runs as a unit: the SLURM tests together, else a module); 0 or 1: one plain pytest process.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/foundation -x`.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export AWM_REQUIRE_SERVICES=1
SERVICES=${AWM_SERVICES_SCRIPT:-scripts/services.sh}
echo "[test] Debian tools the tests use (tesseract-ocr, chromium): installing what is missing"
bash "$SERVICES" tools \
  || { echo "[test] FAILED: '$SERVICES tools' could not install the Debian tools (see the ERROR line above)" >&2; exit 1; }

started_services=0
cleanup() { if [ "$started_services" = 1 ]; then bash "$SERVICES" down all >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
if [ "${AWM_TEST_SERVICES:-1}" = 1 ]; then
  if ! bash "$SERVICES" status all >/dev/null 2>&1; then
    echo "[test] starting local services (SLURM + PostgreSQL)"
    started_services=1   # before 'up': what a failed 'up' half-started is stopped again on exit
    # stdout (KEY=VALUE lines, with the PostgreSQL password) is not needed here: the fixtures ask again
    bash "$SERVICES" up all >/dev/null \
      || { echo "[test] FAILED: the local services did not come up (see the ERROR lines above); not running the tests" >&2
           exit 1; }
  fi
fi

bash scripts/setup.sh || { echo "[test] FAILED: scripts/setup.sh (the venv) did not complete" >&2; exit 1; }

workers=${AWM_TEST_WORKERS:-2}
case $workers in
  ''|*[!0-9]*) echo "[test] FAILED: AWM_TEST_WORKERS=$workers is not a number of worker processes" >&2; exit 1 ;;
esac
parallel=()
if [ "$workers" -gt 1 ]; then parallel=(-n "$workers" --dist loadgroup); fi
echo "[test] pytest on $([ "$workers" -gt 1 ] && echo "$workers worker processes (AWM_TEST_WORKERS)" || echo "one process")"
.venv/bin/python -m pytest -p no:cacheprovider "${parallel[@]}" "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "[test] pytest collected no tests: failing"; rc=1; fi
exit "$rc"
