# shellcheck shell=bash
# lib.sh - helpers shared by scripts/services.sh, scripts/services/slurm.sh and scripts/services/postgres.sh.
# Sourced, never executed. Conventions:
#   * stdout carries ONLY machine-readable KEY=VALUE lines (values shell-quoted with printf %q, so
#     `eval "$(scripts/services.sh up)"` works); every log line goes to stderr.
#   * every daemon we start is recorded in $STATE/<service>/pids/<name> as "PID STARTTIME COMM";
#     a record counts as alive only if /proc/PID/comm == COMM, the process is not a zombie and its
#     start time (field 22 of /proc/PID/stat) is unchanged, so a recycled PID is never mistaken for ours.

AWM_SERVICES_DIR=${AWM_SERVICES_DIR:-/var/lib/awm-services}
case $AWM_SERVICES_DIR in /*) ;; *) AWM_SERVICES_DIR=$(pwd)/$AWM_SERVICES_DIR ;; esac   # daemons run from /
AWM_SERVICES_DIR=${AWM_SERVICES_DIR%/}
STATE=$AWM_SERVICES_DIR
export AWM_SERVICES_DIR
: "${_AWM_SVC_T0:=$(date +%s%N)}"
export _AWM_SVC_T0
_AWM_SVC_NAME=${_AWM_SVC_NAME:-services}

# Where this script's logs are (each service script sets it): named by every error message.
_AWM_SVC_LOGS=""

log() {
  local ms=$(( ($(date +%s%N) - _AWM_SVC_T0) / 1000000 ))
  printf '[%s %3d.%01ds] %s\n' "$_AWM_SVC_NAME" $((ms / 1000)) $(((ms % 1000) / 100)) "$*" >&2 || true
}
# die MESSAGE : one ERROR line saying what failed and where the logs are, then exit 1
die() {
  local msg=$*
  if [ -n "$_AWM_SVC_LOGS" ] && [[ $msg != *"$_AWM_SVC_LOGS"* ]]; then msg="$msg (logs: $_AWM_SVC_LOGS)"; fi
  log "ERROR: $msg"
  exit 1
}
# Every failure that makes `set -e` exit without a die (a command substitution, a pipeline under pipefail,
# a `[ ... ] && ...` as a function's last statement) still prints what failed, where, and where the logs
# are: an empty error message is a bug. errtrace (-E) makes functions and subshells inherit the trap; only
# the top-level shell reports, so a failure inside `$(...)` is reported once, as the assignment that failed.
_awm_on_err() {
  local rc=$1 line=$2 cmd=$3
  [ "${BASH_SUBSHELL:-0}" = 0 ] || return 0
  log "ERROR: \`$cmd\` failed (exit $rc) at ${BASH_SOURCE[1]##*/}:$line${_AWM_SVC_LOGS:+ (logs: $_AWM_SVC_LOGS)}"
}
set -E
trap '_awm_on_err $? $LINENO "$BASH_COMMAND"' ERR
# kv KEY VALUE -> one eval-able line on stdout
kv() {
  if [[ $2 =~ ^[A-Za-z0-9_./:@+=,%-]*$ ]]; then printf '%s=%s\n' "$1" "$2"; else printf '%s=%q\n' "$1" "$2"; fi
}

require_root_debian() {
  [ "$(id -u)" = 0 ] || { echo "scripts/services.sh must run as root (it installs packages, starts daemons and keeps their passwords in a root-only state dir)" >&2; exit 3; }
  [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1 \
    || { echo "scripts/services.sh needs Debian/Ubuntu with apt-get and dpkg" >&2; exit 3; }
}

# wait_for SECONDS CMD... : run CMD every 0.1 s until it succeeds; the last try's output is shown on failure
wait_for() {
  local t=$1; shift
  local end=$(( $(date +%s%N) + t * 1000000000 ))
  while [ "$(date +%s%N)" -lt "$end" ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  "$@" >&2
}

# ---------------------------------------------------------------- packages
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep "install ok installed" >/dev/null; }

# ensure_packages PKG... : apt-get install the missing ones (no recommends, dpkg lock timeout, one retry after
# `apt-get update`). Daemons are kept from auto-starting via a temporary policy-rc.d if none exists.
ensure_packages() {
  local missing="" p ok
  # one dpkg-query for all of them (each call costs ~50 ms)
  # dpkg-query exits 1 when any of them is unknown (the fresh-machine case): that is an answer, not an error
  ok=" $( (dpkg-query -W -f='${Package}:${Status}\n' "$@" 2>/dev/null || true) | sed -n 's/^\([^:]*\):install ok installed$/\1/p' | tr '\n' ' ') "
  for p in "$@"; do [[ $ok == *" $p "* ]] || missing="$missing $p"; done
  [ -n "$missing" ] || return 0
  log "installing Debian packages:$missing"
  mkdir -p "$STATE"
  local apt="apt-get -o DPkg::Lock::Timeout=600 -q" aptlog="$STATE/apt.log" made_policy=0
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, written by awm-platform scripts/services\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  : > "$aptlog"
  # run_detached: a daemon some postinst starts anyway must not hold our lock or the caller's pipe
  # shellcheck disable=SC2086
  if ! run_detached "$aptlog" $apt install -y --no-install-recommends $missing; then
    log "apt-get install failed; running apt-get update and retrying once"
    run_detached "$aptlog" $apt update || true
    # shellcheck disable=SC2086
    if ! run_detached "$aptlog" $apt install -y --no-install-recommends $missing; then
      if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
      tail -30 "$aptlog" >&2 || true
      die "apt-get install$missing failed (full log: $aptlog)"
    fi
  fi
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  log "packages installed"
}

# ---------------------------------------------------------------- daemons
# run_detached [--background] LOGFILE CMD... : run CMD (a daemon, or a command that starts one) holding
# none of the caller's file descriptors: stdin from /dev/null, stdout and stderr appended to LOGFILE, every
# other inherited descriptor closed, in a session of its own, from /. A daemon that kept the caller's
# stdout or stderr (or any pipe it was handed) would make `services.sh up | tail`, `awm services up | cat`
# or a Python caller reading a pipe wait for EOF as long as the daemon lives.
# Returns CMD's exit status; with --background (for a daemon that does not fork by itself) returns at once.
run_detached() {
  local background=0
  if [ "$1" = --background ]; then background=1; shift; fi
  local logf=$1; shift
  (
    fd=""
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    cd /
    if [ "$background" = 1 ]; then
      setsid "$@" </dev/null >>"$logf" 2>&1 &
      exit 0
    fi
    exec setsid --wait "$@" </dev/null >>"$logf" 2>&1
  )
}

# ---------------------------------------------------------------- processes
# proc_ok PID COMM [STARTTIME] -> 0 if PID is a live (non-zombie) process named COMM (and started at STARTTIME)
proc_ok() {
  local pid=$1 comm=$2 want=${3:-} stat
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }          # drop "PID (COMM) "; the comm may itself contain ") "
  # shellcheck disable=SC2086
  set -- $stat              # $1 = state, $20 = starttime
  case $1 in Z|X|x) return 1 ;; esac
  [ -z "$want" ] || [ "${20}" = "$want" ]
}
# shellcheck disable=SC2086
proc_starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
pid_from_file() { [ -s "$1" ] && head -1 "$1" | tr -dc '0-9'; }

# record_pid RECDIR NAME PID COMM : remember a process we started
record_pid() {
  local dir=$1 name=$2 pid=$3 comm=$4 st
  st=$(proc_starttime "$pid") || return 1
  mkdir -p "$dir"
  printf '%s %s %s\n' "$pid" "$st" "$comm" > "$dir/$name.tmp" && mv -f "$dir/$name.tmp" "$dir/$name"
}
# rec_alive RECDIR NAME -> prints the PID if the recorded process is still the one we started
rec_alive() {
  local f=$1/$2 pid st comm
  [ -s "$f" ] || return 1
  read -r pid st comm < "$f" || return 1
  proc_ok "$pid" "$comm" "$st" || return 1
  echo "$pid"
}
# stop_rec RECDIR NAME [SIGNAL] [TIMEOUT_S] : stop a recorded process by PID (never by name); SIGKILL as last resort
stop_rec() {
  local dir=$1 name=$2 sig=${3:-TERM} t=${4:-15} pid st comm i
  if pid=$(rec_alive "$dir" "$name"); then
    read -r pid st comm < "$dir/$name"
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < t * 10; i++)); do proc_ok "$pid" "$comm" "$st" || break; sleep 0.1; done
    if proc_ok "$pid" "$comm" "$st"; then
      log "$name (pid $pid) did not stop within ${t}s -> SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do proc_ok "$pid" "$comm" "$st" || break; sleep 0.1; done
    fi
    log "stopped $name (pid $pid)"
  else
    [ -e "$dir/$name" ] && log "$name: recorded process is gone (stale record removed)"
  fi
  rm -f "$dir/$name"
}

# ---------------------------------------------------------------- ports
# port_listening PORT -> 0 if some socket LISTENs on TCP PORT (any address, v4 or v6)
port_listening() {
  local hex; hex=$(printf ':%04X' "$1")
  awk -v h="$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
# free_port START -> first port >= START nobody listens on
free_port() {
  local p=$1
  while [ "$p" -lt 65000 ]; do port_listening "$p" || { echo "$p"; return 0; }; p=$((p + 1)); done
  return 1
}

# ---------------------------------------------------------------- settings (remembered in the state dir)
# load_settings FILE : source KEY=VALUE lines written by save_settings
# shellcheck source=/dev/null
load_settings() { [ -s "$1" ] && . "$1"; return 0; }
# save_settings FILE VAR... : write the current values of VARs
save_settings() {
  local f=$1 v; shift
  { echo "# remembered by scripts/services (edit, or override with the env var on the next 'up')"
    for v in "$@"; do printf '%s=%q\n' "$v" "${!v}"; done; } > "$f.tmp" && mv -f "$f.tmp" "$f"
}
# rand_token N -> N alphanumeric characters
rand_token() { (set +o pipefail; LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom 2>/dev/null | head -c "${1:-24}"); }

# short_sock_dir DIR -> DIR if a unix socket path in it fits (sun_path is 108 bytes), else a short /tmp dir
short_sock_dir() {
  local d=$1
  if [ "${#d}" -le 80 ]; then echo "$d"; else echo "/tmp/awm-sock-$(printf '%s' "$d" | md5sum | cut -c1-10)"; fi
}

# check_traversable USER DIR : USER must be able to reach DIR (daemons running as mysql/postgres need it)
check_traversable() {
  runuser -u "$1" -- test -x "$2" 2>/dev/null \
    || die "user $1 cannot reach $2: every parent directory needs o+x (choose another AWM_SERVICES_DIR, e.g. under /var/lib or /tmp)"
}
