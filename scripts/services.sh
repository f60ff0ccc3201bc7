#!/usr/bin/env bash
# scripts/services.sh {up|down|status} [slurm|postgres|all] [--purge]
# scripts/services.sh tools
#
# Real local services for tests and CI on one Debian 12 machine (root, systemd not needed):
#   slurm     single-node SLURM (munge, slurmctld, slurmd, slurmdbd + a private MariaDB, so sacct/submitit work)
#   postgres  throwaway PostgreSQL cluster on 127.0.0.1:<free port> with role + databases awm_test mlflow optuna
#
#   up      installs missing Debian packages, writes configs, starts what is not running, waits until ready,
#           then prints KEY=VALUE lines on stdout (logs go to stderr):
#               set -a; eval "$(scripts/services.sh up)"; set +a
#           Idempotent: a second 'up' changes nothing and takes well under a second.
#   down    stops exactly the processes 'up' started (recorded PID + /proc/PID/comm + start time; never by name).
#           --purge also deletes their data (job state, accounting DB, PostgreSQL data dir).
#   status  prints KEY=VALUE lines for what is up; exit 0 if every requested service is up, 1 otherwise.
#   tools   installs the Debian tools some tests use that are not services (tesseract-ocr, for the OCR
#           benchmark's tesseract engine; chromium + chromium-driver, for the leaderboard's browser test);
#           idempotent, quick when they are there.
#
# State lives in ${AWM_SERVICES_DIR:-/var/lib/awm-services}/{slurm,postgres}; SLURM's config must be in
# /etc/slurm (its clients read it from there). Exit codes: 0 ok, 1 failure / not up, 2 usage, 3 cannot run here
# (not root, not Debian/apt). Knobs and pitfalls: docs/services.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SVC=$HERE/services
# shellcheck source=scripts/services/lib.sh
. "$SVC/lib.sh"

usage() { echo "usage: $0 {up|down|status} [slurm|postgres|all] [--purge]  |  $0 tools" >&2; exit 2; }

# Debian packages of `tools` (not services: nothing to start)
TOOL_PKGS="tesseract-ocr tesseract-ocr-eng chromium chromium-driver"

cmd=${1:-}; which=${2:-all}; extra=${3:-}
case $cmd in up|down|status) ;; tools) [ $# -eq 1 ] || usage ;; -h|--help|help) usage ;; *) usage ;; esac
case $which in --purge) extra=--purge; which=all ;; esac
case $which in slurm|postgres|all) ;; *) usage ;; esac
case $extra in "") ;; --purge) [ "$cmd" = down ] || usage ;; *) usage ;; esac
if [ "$which" = all ]; then services="slurm postgres"; else services=$which; fi

run_each() {  # run_each CMD [ARGS]: every service, in order; the exit status is 1 if any failed
  local rc=0 s
  # 9>&-: the daemons they start must not inherit (and so hold forever) the lock below
  for s in $services; do bash "$SVC/$s.sh" "$@" 9>&- || rc=1; done
  return $rc
}

case $cmd in
  tools)
    require_root_debian
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 900 9 || die "could not lock $STATE/.lock within 900 s (another 'up' is installing packages?)"
    # shellcheck disable=SC2086
    ensure_packages $TOOL_PKGS
    log "tools ready: $(tesseract --version 2>&1 | head -1 || true); $(chromium --version 2>/dev/null || true)"
    ;;
  status)
    require_root_debian   # the state dir holds passwords (mode 600): status needs root too
    run_each status || exit 1   # something is down (not an error): each service's lines above say what
    ;;
  up|down)
    require_root_debian
    mkdir -p "$STATE"
    # one 'up'/'down' at a time per state dir (parallel pytest workers, CI steps, the CLI...)
    exec 9>"$STATE/.lock"
    flock -w 900 9 || die "could not lock $STATE/.lock within 900 s (another 'up'/'down' holds it)"
    if [ "$cmd" = up ] && [ "$which" = all ]; then
      # one apt transaction for everything that is missing (faster than one per service)
      pkgs="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
      ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs="$pkgs postgresql"
      # shellcheck disable=SC2086
      ensure_packages $pkgs
    fi
    if [ "$cmd" = down ]; then
      # stop in reverse order of 'up'
      services=$(echo "$services" | tr ' ' '\n' | tac | tr '\n' ' ')
      run_each down ${extra:+"$extra"} || die "'down $which' failed; the ERROR line above says why"
    elif [ "$which" = all ]; then
      # PostgreSQL (~1 s) comes up while SLURM waits for its first scheduling pass; output stays in order
      pg_out=$(mktemp) || die "mktemp failed (is /tmp writable?)"
      pg_rc=0
      bash "$SVC/postgres.sh" up >"$pg_out" 9>&- &
      pg_job=$!
      slurm_rc=0
      bash "$SVC/slurm.sh" up 9>&- || slurm_rc=1
      wait "$pg_job" || pg_rc=1
      cat "$pg_out"; rm -f "$pg_out"
      failed=""
      if [ "$slurm_rc" != 0 ]; then failed="$failed slurm (logs: $STATE/slurm/log)"; fi
      if [ "$pg_rc" != 0 ]; then failed="$failed postgres (log: $STATE/postgres/server.log)"; fi
      if [ -n "$failed" ]; then die "'up all' failed for:$failed; the ERROR lines above say why"; fi
    else
      run_each up || die "'up $which' failed; the ERROR line above says why"
    fi
    ;;
esac
