#!/usr/bin/env bash
# scripts/services/slurm.sh {up|down|status} [--purge]
# Single-node SLURM cluster on this machine (Debian 12, root, no systemd needed):
#   munged -> mariadbd (own datadir, 127.0.0.1 only) -> slurmdbd -> slurmctld -> slurmd
# so that sbatch/srun/squeue/sacct (and submitit, which polls sacct) work. See docs/services.md.
#
# Usually called through scripts/services.sh. Environment knobs (explicit values are remembered in
# $AWM_SERVICES_DIR/slurm/settings.env and reused by later runs until set again):
#   SLURM_FAKE_GPUS / AWM_SLURM_FAKE_GPUS  N>0: advertise N fake "gpu" GRES (plain files) so jobs asking
#                                          --gpus-per-node/--gres=gpu:K<=N schedule (no real device). Default 0.
#   AWM_SLURM_CPUS (alias SLURM_CPUS)      CPUs advertised for the node (default: nproc; may exceed it)
#   AWM_SLURM_MEM_MB (alias SLURM_MEM_MB)  RealMemory of the node (default: MemTotal)
#   AWM_SLURM_PARTITION=debug AWM_SLURM_CLUSTER=awm
#   AWM_SLURM_CTLD_PORT=6817 AWM_SLURM_D_PORT=6818 AWM_SLURM_DBD_PORT=6819 AWM_SLURM_DB_PORT=3307
#   AWM_SLURM_FRESH=1                      wipe job state + accounting DB before starting (cluster must be down)
set -euo pipefail
_AWM_SVC_NAME=slurm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/services/lib.sh
. "$HERE/lib.sh"

S=$STATE/slurm
RUN=$S/run                 # pidfiles of the slurm daemons (root)
RECS=$S/pids               # our PID records
SPOOL=$S/spool
LOGD=$S/log
_AWM_SVC_LOGS=$LOGD        # named by every error message (lib.sh)
DBDIR=$S/mysql             # MariaDB datadir (owned by mysql)
DBRUN=$S/mysql-run         # MariaDB socket + pidfile (owned by mysql)
GPUDIR=$S/fakegpu
SETTINGS=$S/settings.env
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
GRESCONF=/etc/slurm/gres.conf
MARK="# awm-services-state: $STATE"
PKGS="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
HOST=$(hostname -s)
DAEMONS="slurmd slurmctld slurmdbd mariadbd munged"   # stop order

# ---------------------------------------------------------------- settings
settings() {
  local e_gpus=${AWM_SLURM_FAKE_GPUS:-${SLURM_FAKE_GPUS:-}} e_cpus=${AWM_SLURM_CPUS:-${SLURM_CPUS:-}}
  local e_mem=${AWM_SLURM_MEM_MB:-${SLURM_MEM_MB:-}} e_part=${AWM_SLURM_PARTITION:-} e_cluster=${AWM_SLURM_CLUSTER:-}
  local e_ctld=${AWM_SLURM_CTLD_PORT:-} e_d=${AWM_SLURM_D_PORT:-} e_dbd=${AWM_SLURM_DBD_PORT:-} e_db=${AWM_SLURM_DB_PORT:-}
  SL_FAKE_GPUS="" SL_CPUS="" SL_MEM_MB="" SL_PARTITION="" SL_CLUSTER="" SL_DBPASS=""
  SL_CTLD_PORT="" SL_D_PORT="" SL_DBD_PORT="" SL_DB_PORT=""
  load_settings "$SETTINGS"
  SL_FAKE_GPUS=${e_gpus:-${SL_FAKE_GPUS:-0}}
  SL_CPUS=${e_cpus:-$SL_CPUS}                       # empty = automatic (not remembered)
  SL_MEM_MB=${e_mem:-$SL_MEM_MB}
  SL_PARTITION=${e_part:-${SL_PARTITION:-debug}}
  SL_CLUSTER=${e_cluster:-${SL_CLUSTER:-awm}}
  SL_CTLD_PORT=${e_ctld:-${SL_CTLD_PORT:-6817}}
  SL_D_PORT=${e_d:-${SL_D_PORT:-6818}}
  SL_DBD_PORT=${e_dbd:-${SL_DBD_PORT:-6819}}
  SL_DB_PORT=${e_db:-${SL_DB_PORT:-3307}}
  SL_DBPASS=${SL_DBPASS:-$(rand_token 20)}
  [[ $SL_FAKE_GPUS =~ ^[0-9]+$ ]] || die "SLURM_FAKE_GPUS must be a number, got '$SL_FAKE_GPUS'"
  [ -z "$SL_CPUS" ] || [[ $SL_CPUS =~ ^[1-9][0-9]*$ ]] || die "AWM_SLURM_CPUS must be a positive number"
  [ -z "$SL_MEM_MB" ] || [[ $SL_MEM_MB =~ ^[1-9][0-9]*$ ]] || die "AWM_SLURM_MEM_MB must be a positive number"
  # GNU nproc honours OMP_NUM_THREADS (set to 1 by many callers): count the machine, not the caller
  CPUS=${SL_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
  MEM_MB=${SL_MEM_MB:-$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))}
}
save_slurm_settings() {
  mkdir -p "$S"
  save_settings "$SETTINGS" SL_FAKE_GPUS SL_CPUS SL_MEM_MB SL_PARTITION SL_CLUSTER \
    SL_CTLD_PORT SL_D_PORT SL_DBD_PORT SL_DB_PORT SL_DBPASS
  chmod 600 "$SETTINGS"
}

# ---------------------------------------------------------------- liveness
# daemon_pid NAME -> pid of our live daemon (adopting a daemon whose pidfile is in our run dir if the record is lost)
daemon_pid() {
  local name=$1 pf pid
  rec_alive "$RECS" "$name" && return 0
  case $name in
    mariadbd) pf=$DBRUN/mysqld.pid ;;
    munged) return 1 ;;               # /run/munge is global: never adopt a munged we did not record
    *) pf=$RUN/$name.pid ;;
  esac
  pid=$(pid_from_file "$pf" 2>/dev/null) || return 1
  proc_ok "$pid" "$name" || return 1
  record_pid "$RECS" "$name" "$pid" "$name" && echo "$pid"
}
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
node_state() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | sed -n 1p; }
node_ok() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }
ctld_up() { [[ $(scontrol ping 2>/dev/null) == *"is UP"* ]]; }
sacct_ok() { timeout 10 sacct -n -X -j 1 -o JobID >/dev/null 2>&1; }

# ---------------------------------------------------------------- config
gen_conf() {
  local gres_line node_gres=""
  if [ "$SL_FAKE_GPUS" -gt 0 ]; then
    gres_line="GresTypes=gpu"; node_gres=" Gres=gpu:$SL_FAKE_GPUS"
  else
    gres_line="#GresTypes=gpu   (set SLURM_FAKE_GPUS=N for fake GPUs)"
  fi
  cat <<EOF
# generated by awm-platform scripts/services/slurm.sh - single node on localhost, no cgroups. Do not edit:
# it is rewritten on every 'scripts/services.sh up slurm' (knobs: see docs/services.md).
$MARK
ClusterName=$SL_CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=$SL_CTLD_PORT
SlurmdPort=$SL_D_PORT
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$SL_DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGD/jobcomp.log
$gres_line
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB$node_gres State=UNKNOWN
PartitionName=$SL_PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}
gen_dbdconf() {
  cat <<EOF
# generated by awm-platform scripts/services/slurm.sh
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=$SL_DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGD/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$SL_DB_PORT
StorageUser=slurm
StoragePass=$SL_DBPASS
StorageLoc=slurm_acct_db
EOF
}
gen_gresconf() {
  [ "$SL_FAKE_GPUS" -gt 0 ] || return 0
  # gres/gpu needs one File= per GPU (a count-only gres.conf makes the node INVAL); plain files work
  # because no cgroup device constraint is configured.
  printf '# generated by awm-platform scripts/services/slurm.sh\n%s\nAutoDetect=off\nNodeName=%s Name=gpu File=%s/gpu[0-%s]\n' \
    "$MARK" "$HOST" "$GPUDIR" "$((SL_FAKE_GPUS - 1))"
}
# write_if_changed FILE CONTENT MODE -> returns 0 if the file changed
write_if_changed() {
  local f=$1 content=$2 mode=$3
  if [ -f "$f" ] && [ "$(cat "$f")" = "$content" ]; then chmod "$mode" "$f"; return 1; fi
  printf '%s\n' "$content" > "$f.awm-tmp"; chmod "$mode" "$f.awm-tmp"; mv -f "$f.awm-tmp" "$f"
  return 0
}

# ---------------------------------------------------------------- start helpers
start_munged() {
  if pid=$(daemon_pid munged); then return 0; fi
  if munge_works; then
    log "munged is already running but was not started by us: using it (it will not be stopped by 'down')"
    return 0
  fi
  mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    (mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null) \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  rm -f /run/munge/munged.pid
  log "starting munged (authentication)"
  run_detached "$LOGD/munged.stdout" runuser -u munge -- /usr/sbin/munged \
    || { tail -5 "$LOGD/munged.stdout" /var/log/munge/munged.log >&2 2>/dev/null || true
         die "munged failed to start (logs: $LOGD/munged.stdout, /var/log/munge/munged.log)"; }
  wait_for 10 test -s /run/munge/munged.pid || die "munged wrote no pidfile /run/munge/munged.pid (log: /var/log/munge/munged.log)"
  pid=$(pid_from_file /run/munge/munged.pid) || die "munged's pidfile /run/munge/munged.pid holds no pid"
  proc_ok "$pid" munged || die "munged (pid $pid) is not running"
  record_pid "$RECS" munged "$pid" munged || die "munged (pid $pid) vanished right after starting (log: /var/log/munge/munged.log)"
  wait_for 10 munge_works || die "munge -n | unmunge fails"
  log "munged started (pid $pid)"
  STARTED=1
}

start_mariadb() {
  mkdir -p "$DBDIR" "$DBRUN"
  chown mysql:mysql "$DBDIR" "$DBRUN"; chmod 750 "$DBDIR"; chmod 755 "$DBRUN"
  touch "$LOGD/mysqld.err"; chown mysql:mysql "$LOGD/mysqld.err"
  if pid=$(daemon_pid mariadbd); then return 0; fi
  check_traversable mysql "$DBDIR"
  port_listening "$SL_DB_PORT" && die "port $SL_DB_PORT (MariaDB for slurmdbd) is already in use by another process; set AWM_SLURM_DB_PORT"
  log "starting MariaDB (mariadbd, the accounting database for slurmdbd)"
  if [ ! -d "$DBDIR/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$DBDIR" --auth-root-authentication-method=socket \
      --skip-test-db >"$LOGD/mariadb-install-db.log" 2>&1 \
      || { tail -20 "$LOGD/mariadb-install-db.log" >&2 || true; die "mariadb-install-db failed (log: $LOGD/mariadb-install-db.log)"; }
    log "MariaDB datadir initialised in $DBDIR"
  fi
  rm -f "$DBRUN/mysqld.pid"
  # mariadbd does not fork by itself: run_detached --background
  run_detached --background "$LOGD/mysqld.err" /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DBDIR" \
    --socket="$DBSOCK" --port="$SL_DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$DBRUN/mysqld.pid" --log-error="$LOGD/mysqld.err" --skip-log-bin \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900
  wait_for 30 mariadb-admin --socket="$DBSOCK" ping \
    || { tail -20 "$LOGD/mysqld.err" >&2 || true; die "mariadbd did not come up (log: $LOGD/mysqld.err)"; }
  wait_for 5 test -s "$DBRUN/mysqld.pid" || die "mariadbd wrote no pidfile $DBRUN/mysqld.pid (log: $LOGD/mysqld.err)"
  pid=$(pid_from_file "$DBRUN/mysqld.pid") || die "mariadbd's pidfile $DBRUN/mysqld.pid holds no pid"
  proc_ok "$pid" mariadbd || die "mariadbd (pid $pid) is not running"
  record_pid "$RECS" mariadbd "$pid" mariadbd || die "mariadbd (pid $pid) vanished right after starting (log: $LOGD/mysqld.err)"
  log "mariadbd started (pid $pid, 127.0.0.1:$SL_DB_PORT)"
  STARTED=1
}

# start_slurm_daemon NAME READY-CHECK... : start /usr/sbin/NAME (it daemonises and writes $RUN/NAME.pid)
start_slurm_daemon() {
  local name=$1 pid port; shift
  case $name in slurmctld) port=$SL_CTLD_PORT ;; slurmd) port=$SL_D_PORT ;; slurmdbd) port=$SL_DBD_PORT ;; esac
  port_listening "$port" && die "port $port ($name) is already in use by a process we did not start (another SLURM?); stop it or set AWM_SLURM_*_PORT"
  rm -f "$RUN/$name.pid"
  log "starting $name"
  run_detached "$LOGD/$name.stdout" "/usr/sbin/$name" \
    || { tail -20 "$LOGD/$name.log" "$LOGD/$name.stdout" >&2 2>/dev/null || true
         die "$name failed to start (logs: $LOGD/$name.log, $LOGD/$name.stdout)"; }
  wait_for 10 test -s "$RUN/$name.pid" \
    || { tail -20 "$LOGD/$name.log" >&2 || true; die "$name wrote no pidfile $RUN/$name.pid (log: $LOGD/$name.log)"; }
  pid=$(pid_from_file "$RUN/$name.pid") || die "$name's pidfile $RUN/$name.pid holds no pid"
  wait_for 5 proc_ok "$pid" "$name" \
    || { tail -20 "$LOGD/$name.log" >&2 || true; die "$name (pid $pid) exited (log: $LOGD/$name.log)"; }
  record_pid "$RECS" "$name" "$pid" "$name" || die "$name (pid $pid) vanished before its pid could be recorded (log: $LOGD/$name.log)"
  if [ $# -gt 0 ]; then
    wait_for 30 "$@" || { tail -20 "$LOGD/$name.log" >&2 || true; die "$name (pid $pid) is not ready: $* (log: $LOGD/$name.log)"; }
  fi
  log "$name started (pid $pid)"
  STARTED=1
}

ensure_db_user() {
  mariadb --socket="$DBSOCK" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$SL_DBPASS';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$SL_DBPASS';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$SL_DBPASS';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$SL_DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "could not create the MariaDB user for slurmdbd"
}

any_ours_alive() { local d; for d in $DAEMONS; do daemon_pid "$d" >/dev/null && return 0; done; return 1; }

# conf_owner_check : refuse to clobber a slurm.conf that belongs to a running, foreign SLURM
conf_owner_check() {
  [ -f "$CONF" ] || return 0
  grep -qxF "$MARK" "$CONF" && return 0
  if port_listening "$SL_CTLD_PORT"; then
    local who; who=$(grep -m1 '^# awm-services-state:' "$CONF" || true)
    die "$CONF belongs to another SLURM (${who:-not generated by awm-platform}) whose slurmctld is listening on port $SL_CTLD_PORT; stop it first (or use the same AWM_SERVICES_DIR)"
  fi
  mkdir -p "$S/backup"
  cp -a "$CONF" "$S/backup/slurm.conf.$(date +%Y%m%d%H%M%S)"
  log "replacing $CONF that was not ours (backup in $S/backup/)"
}

print_env() {
  kv AWM_SERVICES_DIR "$STATE"
  kv AWM_SLURM_UP 1
  kv AWM_SLURM_CONF "$CONF"
  kv AWM_SLURM_CLUSTER "$SL_CLUSTER"
  kv AWM_SLURM_PARTITION "$SL_PARTITION"
  kv AWM_SLURM_NODE "$HOST"
  kv AWM_SLURM_CPUS "$CPUS"
  kv AWM_SLURM_MEM_MB "$MEM_MB"
  kv AWM_SLURM_FAKE_GPUS "$SL_FAKE_GPUS"
  kv AWM_SLURM_LOG_DIR "$LOGD"
  local d pid
  for d in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid=$(daemon_pid "$d"); then kv "AWM_SLURM_PID_${d^^}" "$pid"
    elif [ "$d" = munged ] && munge_works; then kv AWM_SLURM_PID_MUNGED external
    fi
  done
}

# ================================================================ up
cmd_up() {
  require_root_debian
  # shellcheck disable=SC2086
  ensure_packages $PKGS
  mkdir -p "$S"
  settings
  DBSOCK=$(short_sock_dir "$DBRUN")/mysqld.sock
  mkdir -p "$RUN" "$RECS" "$SPOOL/ctld" "$SPOOL/d" "$LOGD" /etc/slurm
  chmod 755 "$STATE" "$S" 2>/dev/null || true

  # state from another hostname (e.g. a copied image) cannot be reused: the node name is part of it
  if [ -s "$S/hostname" ] && [ "$(cat "$S/hostname")" != "$HOST" ]; then
    any_ours_alive && die "the hostname changed ($(cat "$S/hostname") -> $HOST) while our daemons run; run 'scripts/services.sh down slurm' first"
    log "hostname changed ($(cat "$S/hostname") -> $HOST): wiping job state and accounting DB"
    rm -rf "${SPOOL:?}"/ctld/* "${SPOOL:?}"/d/* "$DBDIR"
  fi
  if [ "${AWM_SLURM_FRESH:-${SLURM_FRESH:-0}}" = 1 ]; then
    any_ours_alive && die "AWM_SLURM_FRESH=1 needs the cluster down first ('scripts/services.sh down slurm')"
    rm -rf "${SPOOL:?}"/ctld/* "${SPOOL:?}"/d/* "$DBDIR"
    log "wiped job state and accounting DB (AWM_SLURM_FRESH=1)"
  fi
  echo "$HOST" > "$S/hostname"
  save_slurm_settings

  # ---- config (restart slurmctld + slurmd when it changed under running daemons; reconfigure is not
  #      enough for node CPU/GRES changes)
  conf_owner_check
  local changed=0 dbd_changed=0
  if [ "$SL_FAKE_GPUS" -gt 0 ]; then
    mkdir -p "$GPUDIR"
    for ((i = 0; i < SL_FAKE_GPUS; i++)); do [ -e "$GPUDIR/gpu$i" ] || : > "$GPUDIR/gpu$i"; done
  fi
  write_if_changed "$CONF" "$(gen_conf)" 644 && changed=1
  write_if_changed "$DBDCONF" "$(gen_dbdconf)" 600 && dbd_changed=1
  if [ "$SL_FAKE_GPUS" -gt 0 ]; then
    write_if_changed "$GRESCONF" "$(gen_gresconf)" 644 && changed=1
  elif [ -f "$GRESCONF" ]; then
    rm -f "$GRESCONF"; changed=1
  fi
  if [ "$changed" = 1 ] || [ "$dbd_changed" = 1 ]; then
    local restart=""
    daemon_pid slurmd >/dev/null && restart="$restart slurmd"
    daemon_pid slurmctld >/dev/null && restart="$restart slurmctld"
    [ "$dbd_changed" = 1 ] && daemon_pid slurmdbd >/dev/null && restart="$restart slurmdbd"
    if [ -n "$restart" ]; then
      log "config changed: restarting$restart"
      for d in $restart; do stop_rec "$RECS" "$d"; done
    fi
  fi

  STARTED=0
  start_munged
  start_mariadb
  if ! daemon_pid slurmdbd >/dev/null; then
    ensure_db_user
    start_slurm_daemon slurmdbd sacctmgr -n list cluster
  fi
  daemon_pid slurmctld >/dev/null || start_slurm_daemon slurmctld ctld_up
  daemon_pid slurmd >/dev/null || start_slurm_daemon slurmd

  if ! wait_for 5 node_ok; then
    log "node $HOST is $(node_state || true): resuming it"
    scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
    wait_for 30 node_ok || { sinfo -R >&2; tail -20 "$LOGD/slurmd.log" "$LOGD/slurmctld.log" >&2; die "node $HOST did not become idle"; }
  fi

  if [ "$STARTED" = 1 ]; then
    # end-to-end probes: srun (munge + step launch), then a batch job (what submitit uses) that must show
    # up as COMPLETED in sacct (accounting works, and the scheduler has made its first pass)
    timeout 60 srun -N1 -n1 -t 1 -J awm_services_probe true || die "srun probe failed (logs: $LOGD)"
    local jid
    jid=$(sbatch --parsable -J awm_services_probe -t 1 -o /dev/null --wrap true) || die "sbatch probe failed"
    probe_done() { [[ $(sacct -n -X -P -j "$jid" -o State 2>/dev/null) == COMPLETED* ]]; }
    wait_for 60 probe_done || { scontrol show job "$jid" >&2; die "probe job $jid did not show COMPLETED in sacct"; }
    log "probe jobs ok (sacct reports batch job $jid COMPLETED)"
  else
    ctld_up || die "slurmctld does not answer 'scontrol ping'"
    wait_for 10 sacct_ok || die "sacct does not work (slurmdbd: $LOGD/slurmdbd.log)"
  fi
  log "cluster up: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ' ')"
  print_env
}

# ================================================================ down
cmd_down() {
  require_root_debian
  local purge=0
  [ "${1:-}" = --purge ] && purge=1
  if daemon_pid slurmctld >/dev/null && ctld_up; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ') || jobs=""
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 150; i++)); do [ -z "$(squeue -h -t R,CG,S 2>/dev/null)" ] && break; sleep 0.1; done
    fi
  fi
  local d
  for d in $DAEMONS; do
    if [ -e "$RECS/$d" ]; then stop_rec "$RECS" "$d"
    else log "$d: not started by us, left alone"
    fi
  done
  if [ "$purge" = 1 ]; then
    rm -rf "$SPOOL" "$DBDIR" "$LOGD" "$RUN" "$GPUDIR"
    log "purged job state, accounting DB and logs under $S"
  fi
  kv AWM_SLURM_UP 0
}

# ================================================================ status
cmd_status() {
  local ok=1 d pid
  settings 2>/dev/null || true
  for d in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid=$(daemon_pid "$d" 2>/dev/null); then
      kv "AWM_SLURM_PID_${d^^}" "$pid"
    elif [ "$d" = munged ] && command -v munge >/dev/null && munge_works; then
      kv AWM_SLURM_PID_MUNGED external
    else
      log "$d: not running"; ok=0
    fi
  done
  if [ "$ok" = 1 ]; then
    ctld_up || { log "slurmctld does not answer"; ok=0; }
    node_ok || { log "node $HOST state: $(node_state || echo unknown)"; ok=0; }
    sacct_ok || { log "sacct fails"; ok=0; }
  fi
  if [ "$ok" = 1 ]; then
    log "up: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ' ')"
    kv AWM_SLURM_UP 1
    kv AWM_SLURM_PARTITION "$SL_PARTITION"
    kv AWM_SLURM_CLUSTER "$SL_CLUSTER"
    kv AWM_SLURM_NODE "$HOST"
    kv AWM_SLURM_CPUS "$CPUS"
    kv AWM_SLURM_FAKE_GPUS "$SL_FAKE_GPUS"
    return 0
  fi
  kv AWM_SLURM_UP 0
  return 1
}

case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status || exit 1 ;;   # 1 = not up: not an error to report
  *) echo "usage: $0 {up|down [--purge]|status}" >&2; exit 2 ;;
esac
