#!/usr/bin/env bash
# scripts/services/postgres.sh {up|down|status} [--purge]
# Throwaway PostgreSQL cluster (initdb + pg_ctl, no systemd, no /etc/postgresql entry) listening on
# 127.0.0.1:<free port> with its data in $AWM_SERVICES_DIR/postgres. See docs/services.md.
#
# Usually called through scripts/services.sh. Knobs (remembered in $AWM_SERVICES_DIR/postgres/settings.env):
#   AWM_PG_PORT       port (default: the first free port >= 55432, picked once and remembered)
#   AWM_PG_USER=awm   login role (LOGIN CREATEDB, member of pg_signal_backend, password auth over TCP)
#   AWM_PG_PASSWORD   its password (default: random, generated once)
#   AWM_PG_DBS="awm_test mlflow optuna"   databases created (owned by AWM_PG_USER)
set -euo pipefail
_AWM_SVC_NAME=postgres
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/services/lib.sh
. "$HERE/lib.sh"

P=$STATE/postgres
DATA=$P/data
RECS=$P/pids
SETTINGS=$P/settings.env
LOGF=$P/server.log
_AWM_SVC_LOGS=$LOGF        # named by every error message (lib.sh)

settings() {
  local e_port=${AWM_PG_PORT:-} e_user=${AWM_PG_USER:-} e_pw=${AWM_PG_PASSWORD:-} e_dbs=${AWM_PG_DBS:-}
  PG_PORT="" PG_USER="" PG_PASSWORD="" PG_DBS="" PG_SUPERPASS=""
  load_settings "$SETTINGS"
  PG_PORT=${e_port:-$PG_PORT}
  PG_USER=${e_user:-${PG_USER:-awm}}
  PG_PASSWORD=${e_pw:-${PG_PASSWORD:-$(rand_token 24)}}
  PG_DBS=${e_dbs:-${PG_DBS:-awm_test mlflow optuna}}
  PG_SUPERPASS=${PG_SUPERPASS:-$(rand_token 24)}
  [[ $PG_USER =~ ^[a-z_][a-z0-9_]*$ ]] || die "AWM_PG_USER must match [a-z_][a-z0-9_]*"
  [[ $PG_PASSWORD =~ ^[A-Za-z0-9_.-]+$ ]] || die "AWM_PG_PASSWORD may only contain [A-Za-z0-9_.-] (it goes into URLs)"
  local db
  for db in $PG_DBS; do [[ $db =~ ^[a-z_][a-z0-9_]*$ ]] || die "database name '$db' must match [a-z_][a-z0-9_]*"; done
  SOCKDIR=$(short_sock_dir "$P")
}
save_pg_settings() {
  save_settings "$SETTINGS" PG_PORT PG_USER PG_PASSWORD PG_DBS PG_SUPERPASS
  chmod 600 "$SETTINGS"
}

# pgbin -> bin dir of the server version matching the data dir (or the newest installed one)
pgbin() {
  local v
  if [ -s "$DATA/PG_VERSION" ]; then
    v=$(cat "$DATA/PG_VERSION") || die "cannot read $DATA/PG_VERSION"
    [ -x "/usr/lib/postgresql/$v/bin/postgres" ] || die "data dir $DATA is PostgreSQL $v but only $(ls /usr/lib/postgresql 2>/dev/null | tr '\n' ' ')is installed; 'scripts/services.sh down postgres --purge' starts over"
    echo "/usr/lib/postgresql/$v/bin"
  else
    # no server installed: print nothing (the caller says so); `ls` failing must not end the script here
    { ls -d /usr/lib/postgresql/*/bin 2>/dev/null || true; } | sort -V | tail -1
  fi
}
as_pg() { (cd / && runuser -u postgres -- "$@"); }
psql_su() { as_pg "$PGBIN/psql" -X -h "$SOCKDIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
url() { echo "postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$1"; }
pg_pid() {
  rec_alive "$RECS" postgres && return 0
  # adopt a postmaster running on our data dir whose record got lost
  local pid; pid=$(pid_from_file "$DATA/postmaster.pid" 2>/dev/null) || return 1
  proc_ok "$pid" postgres || return 1
  record_pid "$RECS" postgres "$pid" postgres && echo "$pid"
}
accepts() {  # password login over TCP, exactly like the clients will do
  PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=3 "$PGBIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" \
    -d "${PG_DBS%% *}" -qtAc 'SELECT 1' 2>/dev/null | grep -x 1 >/dev/null
}

print_env() {
  local first=${PG_DBS%% *} db
  kv AWM_SERVICES_DIR "$STATE"
  kv AWM_POSTGRES_UP 1
  kv AWM_POSTGRES_HOST 127.0.0.1
  kv AWM_POSTGRES_PORT "$PG_PORT"
  kv AWM_POSTGRES_USER "$PG_USER"
  kv AWM_POSTGRES_PASSWORD "$PG_PASSWORD"
  kv AWM_POSTGRES_DBS "${PG_DBS// /,}"
  kv AWM_POSTGRES_ADMIN_URL "$(url postgres)"
  for db in $PG_DBS; do kv "AWM_POSTGRES_URL_${db^^}" "$(url "$db")"; done
  kv AWM_TEST_POSTGRES_URL "$(url "$first")"
  [[ " $PG_DBS " == *" mlflow "* ]] && kv AWM_MLFLOW_POSTGRES_URL "$(url mlflow)"
  [[ " $PG_DBS " == *" optuna "* ]] && kv AWM_OPTUNA_POSTGRES_URL "$(url optuna)"
  kv AWM_POSTGRES_PID "$(pg_pid)"
}

cmd_up() {
  require_root_debian
  if [ -z "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ]; then
    ensure_packages postgresql
  fi
  mkdir -p "$P"
  settings
  runuser -u postgres -- test -x "$STATE" 2>/dev/null || chmod 755 "$STATE"
  chown postgres:postgres "$P"; chmod 700 "$P"
  check_traversable postgres "$P"
  PGBIN=$(pgbin) || exit 1   # pgbin said why
  [ -n "$PGBIN" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)"
  mkdir -p "$RECS"
  if [ "$SOCKDIR" != "$P" ]; then mkdir -p "$SOCKDIR"; chown postgres:postgres "$SOCKDIR"; chmod 700 "$SOCKDIR"; fi

  local pid started=0
  if pid=$(pg_pid); then
    # running: its port is the truth (the settings file may have been edited)
    local live_port; live_port=$(sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true)
    if [ -n "$live_port" ]; then PG_PORT=$live_port; fi
  else
    if [ -z "$PG_PORT" ]; then
      PG_PORT=$(free_port 55432) || die "no free TCP port >= 55432"
      log "picked free port $PG_PORT"
    elif port_listening "$PG_PORT"; then
      if [ -n "${AWM_PG_PORT:-}" ]; then die "AWM_PG_PORT=$PG_PORT is already in use"; fi
      local old=$PG_PORT
      PG_PORT=$(free_port $((old + 1))) || die "no free TCP port"
      log "remembered port $old is taken by another process: using $PG_PORT instead"
    fi
    save_pg_settings
    if [ ! -s "$DATA/PG_VERSION" ]; then
      local pw; pw=$(mktemp "$P/.pw.XXXXXX") || die "cannot create a temporary file in $P"
      printf '%s\n' "$PG_SUPERPASS" > "$pw"; chown postgres "$pw"
      as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 --no-sync >"$P/initdb.log" 2>&1 \
        || { rm -f "$pw"; tail -20 "$P/initdb.log" >&2 || true; die "initdb failed (log: $P/initdb.log)"; }
      rm -f "$pw"
      log "initdb done ($("$PGBIN/postgres" --version))"
    fi
    # settings that must not come from a global postgresql.conf: we pass everything on the command line
    # run_detached: the postmaster must not hold our caller's pipes (pg_ctl's own output: pg_ctl.log)
    run_detached "$P/pg_ctl.log" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -l "$LOGF" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $SOCKDIR \
-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start \
      || { tail -20 "$LOGF" "$P/pg_ctl.log" >&2 2>/dev/null || true; die "pg_ctl start failed (logs: $LOGF, $P/pg_ctl.log)"; }
    pid=$(pid_from_file "$DATA/postmaster.pid") || die "pg_ctl reported a start but $DATA/postmaster.pid holds no pid"
    proc_ok "$pid" postgres || die "postgres (pid $pid) is not running"
    record_pid "$RECS" postgres "$pid" postgres || die "postgres (pid $pid) vanished right after starting"
    log "postgres started (pid $pid, 127.0.0.1:$PG_PORT)"
    started=1
  fi
  save_pg_settings

  # role + databases (cheap; done on every up so that a changed AWM_PG_DBS/PASSWORD takes effect)
  psql_su -c "DO \$\$BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
        CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
      ELSE
        ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
      END IF; END\$\$;" >/dev/null || die "could not create role $PG_USER"
  # the tests drop their databases WITH (FORCE), which must end every session there, an autovacuum
  # worker's too: PostgreSQL 15 lets only a member of pg_signal_backend end a process of no role
  psql_su -c "GRANT pg_signal_backend TO $PG_USER" >/dev/null || die "could not grant pg_signal_backend to $PG_USER"
  local have db
  have=$(psql_su -c "SELECT datname FROM pg_database") || die "could not list the databases"
  have=" $(echo "$have" | tr '\n' ' ') "
  for db in $PG_DBS; do
    if [[ $have != *" $db "* ]]; then
      psql_su -c "CREATE DATABASE $db OWNER $PG_USER" >/dev/null || die "could not create database $db"
      log "created database $db"
    fi
  done
  wait_for 10 accepts || die "PostgreSQL does not accept password logins on 127.0.0.1:$PG_PORT (log: $LOGF)"
  [ "$started" = 1 ] || log "already running (pid $pid, 127.0.0.1:$PG_PORT)"
  print_env
}

cmd_down() {
  require_root_debian
  # SIGINT = "fast" shutdown: abort transactions, disconnect clients, checkpoint, exit
  stop_rec "$RECS" postgres INT 30
  if [ "${1:-}" = --purge ]; then
    settings 2>/dev/null || true
    rm -rf "$P"
    [ -n "${SOCKDIR:-}" ] && [ "$SOCKDIR" != "$P" ] && rm -rf "$SOCKDIR"
    log "purged $P"
  fi
  kv AWM_POSTGRES_UP 0
}

cmd_status() {
  settings 2>/dev/null || true
  local pid
  if pid=$(pg_pid 2>/dev/null); then
    PGBIN=$(pgbin)
    local live_port; live_port=$(sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true)
    PG_PORT=${live_port:-$PG_PORT}
    if accepts; then
      log "up (pid $pid, 127.0.0.1:$PG_PORT, databases: $PG_DBS)"
      print_env
      return 0
    fi
    log "postgres (pid $pid) runs but does not accept logins on 127.0.0.1:$PG_PORT"
  else
    log "not running"
  fi
  kv AWM_POSTGRES_UP 0
  return 1
}

case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status || exit 1 ;;   # 1 = not up: not an error to report
  *) echo "usage: $0 {up|down [--purge]|status}" >&2; exit 2 ;;
esac
