#!/usr/bin/env bash
# A single-node Slurm cluster with accounting, for the tests marked `slurm` (CI or a workstation).
#
#   scripts/slurm_cluster.sh [--state DIR] start    install what is missing, start, wait until ready
#   scripts/slurm_cluster.sh [--state DIR] status   daemons and node state; exit 0 when up, 3 when not
#   scripts/slurm_cluster.sh [--state DIR] stop     cancel the jobs, stop the daemons by their PIDs
#
# Needs root and Debian (bookworm: Slurm 22.05). Installs slurmctld, slurmd, slurm-client, munge,
# slurmdbd and mariadb-server when missing (no service is started by the packages), then runs
# munged, mariadbd (socket only), slurmdbd, slurmctld and slurmd as plain daemons: no systemd, no
# cgroups. Everything but the munge key lives in the state directory (default /tmp/ganjax-slurm,
# or $GANJAX_SLURM_STATE): configs, logs, PID list, the accounting database. The state is kept by
# `stop` (a restart keeps job ids and accounting); delete the directory for a clean cluster.
# Clients find the cluster through /etc/slurm/slurm.conf, a link to the state's slurm.conf made by
# `start` when no such file exists (removed by `stop`); otherwise `export SLURM_CONF=DIR/slurm.conf`.
# Facts and pitfalls this follows: ../shared/notes/slurm.md.
set -euo pipefail

STATE="${GANJAX_SLURM_STATE:-/tmp/ganjax-slurm}"
COMMAND=""
while (($#)); do
  case "$1" in
    --state) STATE="$2"; shift 2 ;;
    --state=*) STATE="${1#--state=}"; shift ;;
    start | stop | status) COMMAND="$1"; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "slurm_cluster.sh: unknown argument '$1' (start, stop, status, --state DIR)" >&2; exit 2 ;;
  esac
done
[[ -n "$COMMAND" ]] || { echo "usage: slurm_cluster.sh [--state DIR] start|stop|status" >&2; exit 2; }
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
CLUSTER=ganjax
PARTITION=local
PIDS="$STATE/pids"                  # "name pid" per line, in start order
ETC_CONF=/etc/slurm/slurm.conf
export SLURM_CONF="$STATE/slurm.conf"
# slurmdbd connects to mariadb through its socket; the client library reads this variable.
export MYSQL_UNIX_PORT="$STATE/mysql/mysqld.sock"

log() { echo "slurm_cluster: $*"; }
die() { echo "slurm_cluster: error: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Polls a command until it succeeds: wait_for SECONDS DESCRIPTION COMMAND...
wait_for() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout} s waiting for $what (logs in $STATE/log)"
    sleep 0.2
  done
}

# A PID counts as running when it exists and is not a zombie: PID 1 here reaps exited daemons late,
# so `kill -0` alone still succeeds for a few seconds after a daemon exits.
pid_alive() {
  local pid="$1" state
  [[ -r "/proc/$pid/status" ]] || return 1
  state="$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# The recorded PID is still the daemon we started (and not a reused PID) when its command matches.
pid_is() {
  local pid="$1" name="$2"
  pid_alive "$pid" && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name"* ]]
}

record_pid() { echo "$1 $2" >>"$PIDS"; }

read_pidfile() {
  local file="$1" i
  for ((i = 0; i < 100; i++)); do
    [[ -s "$file" ]] && { tr -d ' \n' <"$file"; return; }
    sleep 0.1
  done
  die "no PID file $file"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Installation

install_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  [[ $EUID -eq 0 ]] || die "installing ${missing[*]} needs root"
  local t0 backup=""
  t0="$(now)"
  log "installing ${missing[*]}"
  # A policy-rc.d that exits 101 keeps the packages' install scripts from starting services; any
  # policy-rc.d already there is put back afterwards.
  if [[ -e /usr/sbin/policy-rc.d ]]; then
    backup="$(mktemp /usr/sbin/policy-rc.d.ganjax.XXXXXX)"
    cp -p /usr/sbin/policy-rc.d "$backup"
  fi
  # shellcheck disable=SC2064  # expand now: the trap must restore this backup
  trap "restore_policy '$backup'" EXIT
  printf '#!/bin/sh\n# Written by ganjax scripts/slurm_cluster.sh during a package install.\nexit 101\n' \
    >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt-get update -q; fi
  if ! "${apt[@]}" "${missing[@]}" >"$STATE/apt.log" 2>&1; then
    # Package lists may be stale (a removed version): refresh once and retry.
    apt-get update -q >>"$STATE/apt.log" 2>&1
    "${apt[@]}" "${missing[@]}" >>"$STATE/apt.log" 2>&1 || { tail -20 "$STATE/apt.log"; die "apt-get install failed"; }
  fi
  restore_policy "$backup"
  trap - EXIT
  log "installed in $(elapsed "$t0") s"
}

restore_policy() {
  local backup="$1"
  if [[ -n "$backup" && -e "$backup" ]]; then
    mv -f "$backup" /usr/sbin/policy-rc.d
  else
    rm -f /usr/sbin/policy-rc.d
  fi
}

# ---------------------------------------------------------------------------------------------
# Configuration

write_configs() {
  local host cpus mem_kb real_mem
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem_kb="$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
  # slurmd drains a node whose memory is below RealMemory: stay 10% below MemTotal.
  real_mem=$((mem_kb * 9 / 10 / 1024))
  mkdir -p "$STATE/log" "$STATE/ctld" "$STATE/slurmd"

  # No cgroups and no systemd: process tracking by /proc, no task binding, no job accounting
  # gather (sacct still has the job states from slurmdbd).
  cat >"$STATE/slurm.conf" <<EOF
# Written by ganjax scripts/slurm_cluster.sh: a single-node cluster for tests.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
# Cancelled jobs get SIGKILL 2 s after SIGTERM (default 30 s).
KillWait=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

  # The database password is made once and kept with the database.
  [[ -s "$STATE/db_password" ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db_password")
  (
    umask 077
    cat >"$STATE/slurmdbd.conf" <<EOF
# Written by ganjax scripts/slurm_cluster.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(cat "$STATE/db_password")
StorageLoc=slurm_acct_db
EOF
  )
  chmod 600 "$STATE/slurmdbd.conf"
}

# ---------------------------------------------------------------------------------------------
# Daemons

start_munge() {
  # Debian's munge package usually creates the key; make one when it did not.
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  if munge_ok; then
    log "munged already running (not ours, left alone)"
    return
  fi
  rm -f /run/munge/munged.pid
  setsid runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid </dev/null \
    >>"$STATE/log/munged.out" 2>&1
  record_pid munged "$(read_pidfile /run/munge/munged.pid)"
  wait_for 10 "munged" munge_ok
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

mysql_root() { mariadb --no-defaults --socket="$MYSQL_UNIX_PORT" -u root "$@"; }

start_mariadb() {
  local datadir="$STATE/mysql"
  if [[ ! -d "$datadir/mysql" ]]; then
    install -d -o mysql -g mysql -m 750 "$datadir"
    mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" --skip-test-db \
      --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1 ||
      { tail -20 "$STATE/log/mariadb-install.log"; die "mariadb-install-db failed"; }
  fi
  # Socket only, small buffers: the accounting database of a test cluster is tiny. mariadbd runs
  # as mysql, so its own files (PID, error log) stay in its data directory.
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$datadir" \
    --socket="$MYSQL_UNIX_PORT" --pid-file="$datadir/mariadbd.pid" --skip-networking \
    --log-error="$datadir/mariadbd.err" --innodb-buffer-pool-size=32M \
    --innodb-log-file-size=16M --skip-log-bin </dev/null >>"$STATE/log/mariadbd.out" 2>&1 &
  local pid="$!"
  record_pid mariadbd "$pid"
  local deadline=$((SECONDS + 60))
  until mysql_root -e 'SELECT 1' >/dev/null 2>&1; do
    if ! pid_alive "$pid" || ((SECONDS >= deadline)); then
      tail -5 "$datadir/mariadbd.err" "$STATE/log/mariadbd.out" 2>/dev/null
      die "mariadbd did not start"
    fi
    sleep 0.2
  done
  mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$(cat "$STATE/db_password")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurm_daemon() {
  local name="$1" pidfile="$STATE/$1.pid"
  rm -f "$pidfile"
  setsid "/usr/sbin/$name" </dev/null >>"$STATE/log/$name.out" 2>&1 ||
    { tail -5 "$STATE/log/$name.log" 2>/dev/null; die "$name did not start"; }
  record_pid "$name" "$(read_pidfile "$pidfile")"
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -1; }
node_is() { [[ "$(node_state)" =~ $1 ]]; }

cluster_up() {
  [[ -s "$PIDS" ]] || return 1
  local name pid
  while read -r name pid; do
    pid_is "$pid" "$name" || return 1
  done <"$PIDS"
  node_is '^(idle|mixed|allocated)'
}

start() {
  local t0
  t0="$(now)"
  if cluster_up; then
    log "already running (state $STATE, node $(node_state))"
    return
  fi
  # A half-started or crashed cluster: stop what is left first.
  [[ -s "$PIDS" ]] && stop_daemons
  [[ $EUID -eq 0 ]] || die "start needs root"
  install_packages
  local t1 port
  t1="$(now)"
  for port in 6817 6818 6819; do
    port_in_use "$port" && die "port $port is in use (another Slurm running?)"
  done
  write_configs
  : >"$PIDS"
  start_munge
  start_mariadb
  start_slurm_daemon slurmdbd
  wait_for 30 "slurmdbd" sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  start_slurm_daemon slurmctld
  start_slurm_daemon slurmd
  wait_for 60 "an idle node" node_is '^(idle|drain)'
  # A node drained by an earlier run (e.g. a step that would not die) comes back.
  if [[ "$(node_state)" == drain* ]]; then
    scontrol update nodename="$(hostname -s)" state=resume
    wait_for 30 "an idle node" node_is '^idle$'
  fi
  wait_for 30 "sacct" sacct -n -X -S now
  link_conf
  log "up in $(elapsed "$t1") s (total $(elapsed "$t0") s): partition $PARTITION, $(nproc) CPUs," \
    "SLURM_CONF=$SLURM_CONF"
}

link_conf() {
  if [[ ! -e "$ETC_CONF" && ! -L "$ETC_CONF" ]]; then
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -s "$SLURM_CONF" "$ETC_CONF"
  elif [[ "$(readlink "$ETC_CONF" || true)" != "$SLURM_CONF" ]]; then
    log "note: $ETC_CONF is not ours; clients need: export SLURM_CONF=$SLURM_CONF"
  fi
}

# Stops the recorded daemons, last started first: SIGTERM, then SIGKILL after 15 s.
stop_daemons() {
  [[ -s "$PIDS" ]] || return 0
  local lines=() i name pid deadline
  mapfile -t lines <"$PIDS"
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    read -r name pid <<<"${lines[i]}"
    pid_is "$pid" "$name" || continue
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if pid_alive "$pid"; then
      log "$name ($pid) ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while pid_alive "$pid"; do sleep 0.1; done
    fi
  done
  rm -f "$PIDS"
}

stop() {
  local t0
  t0="$(now)"
  if [[ ! -s "$PIDS" ]]; then
    log "not running (state $STATE)"
    unlink_conf
    return
  fi
  # Cancel the jobs first, so that no job step outlives its slurmd.
  if cluster_up && [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
    scancel --full --partition="$PARTITION" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while [[ -n "$(squeue -h -o %i 2>/dev/null)" ]] && ((SECONDS < deadline)); do sleep 0.2; done
  fi
  stop_daemons
  unlink_conf
  log "stopped in $(elapsed "$t0") s"
}

unlink_conf() {
  if [[ -L "$ETC_CONF" && "$(readlink "$ETC_CONF")" == "$SLURM_CONF" ]]; then rm -f "$ETC_CONF"; fi
}

status() {
  if [[ ! -s "$PIDS" ]]; then
    log "not running (state $STATE)"
    return 3
  fi
  local name pid ok=0
  while read -r name pid; do
    if pid_is "$pid" "$name"; then echo "$name $pid running"; else echo "$name $pid gone"; ok=3; fi
  done <"$PIDS"
  sinfo -N -o '%N %P %T %C' 2>/dev/null || ok=3
  return "$ok"
}

case "$COMMAND" in
  start) start ;;
  stop) stop ;;
  status) status ;;
esac
