#!/usr/bin/env bash
# Start a throw-away one-node SLURM cluster (munged, mariadbd, slurmdbd, slurmctld, slurmd) as root,
# without systemd, with every file under one state directory.
#
#   sudo tests/slurm/start_cluster.sh [STATE_DIR]      # default /tmp/fedscape-slurm
#   source STATE_DIR/env.sh                             # SLURM_CONF for sbatch/squeue/sacct
#   ... snakemake --profile slurm ...
#   sudo tests/slurm/stop_cluster.sh [STATE_DIR]        # kills the daemons started here, by PID
#
# Needs Debian's packages: slurmctld slurmd slurm-client munge slurmdbd mariadb-server
# (tests/slurm/install_packages.sh). Nothing outside STATE_DIR is written: the daemons use their own
# munge socket, database directory, ports and config (SLURM_CONF), so a real SLURM on the same
# machine is left alone. The node is declared larger than the machine (SlurmdParameters=
# config_overrides: CPUS cpus, MEM_MB memory, GPUS placeholder GPUs) so that the repository's
# profile can be used as typed: jobs ask for GPUs and memory that a CI machine does not have.
set -euo pipefail

STATE=${1:-${FEDSCAPE_SLURM_DIR:-/tmp/fedscape-slurm}}
CLUSTER=${FEDSCAPE_SLURM_CLUSTER:-fedscape}
PARTITION=${FEDSCAPE_SLURM_PARTITION:-debug}           # the default partition
GPU_PARTITION=${FEDSCAPE_SLURM_GPU_PARTITION:-gpu}     # a second partition over the same node
ACCOUNT=${FEDSCAPE_SLURM_ACCOUNT:-fedscape}
CPUS=${FEDSCAPE_SLURM_CPUS:-16}
MEM_MB=${FEDSCAPE_SLURM_MEM_MB:-128000}
GPUS=${FEDSCAPE_SLURM_GPUS:-2}
PORT_BASE=${FEDSCAPE_SLURM_PORT_BASE:-26817}  # slurmctld, slurmd, slurmdbd, mariadb = base + 0..3
NODE=$(hostname -s)

say() { echo "[start_cluster] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the daemons run as root in this throw-away cluster)"
for exe in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr sinfo; do
  command -v "$exe" >/dev/null || [ -x "/usr/sbin/$exe" ] || die "$exe not found: install slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
done
export PATH="$PATH:/usr/sbin:/sbin"

if [ -f "$STATE/pids/slurmctld.pid" ] && kill -0 "$(cat "$STATE/pids/slurmctld.pid")" 2>/dev/null; then
  die "a cluster is already running from $STATE (stop it with tests/slurm/stop_cluster.sh $STATE)"
fi
rm -rf "$STATE"
mkdir -p "$STATE"/{pids,log,munge,mysql,ctld,spool,gpu}
chmod 755 "$STATE" "$STATE"/*
chmod 700 "$STATE/munge"
START=$(date +%s)

# Start a daemon in the foreground of a background job, its stdio on a log file, and record its PID.
spawn() {
  local name=$1
  shift
  setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
  echo $! >"$STATE/pids/$name.pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND until it succeeds
  local seconds=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + seconds))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if timeout 5 "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.3
  done
  say "$what did not come up in ${seconds}s; logs:"
  tail -n 20 "$STATE"/log/* >&2 || true
  exit 1
}

# -- munge --------------------------------------------------------------------------------------
# SLURM 22.05's clients do not pass AuthInfo=socket= on to their slurmdbd connections, so munged
# serves the default socket; a munged that already answers there is reused (and not stopped later).
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "reusing the munged that answers on the default socket"
else
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  if [ -r /etc/munge/munge.key ]; then
    KEY=/etc/munge/munge.key
  else
    KEY="$STATE/munge/munge.key"
    dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none
    chmod 400 "$KEY"
  fi
  spawn munged munged --foreground --force --key-file="$KEY" --pid-file="$STATE/munge/munged.pid" \
    --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
  wait_for 10 munged bash -c "munge -n | unmunge"
fi

# -- mariadb (accounting storage, so that sacct works) --------------------------------------------
DB_PORT=$((PORT_BASE + 3))
DB_SOCKET="$STATE/mysql.sock"
mariadb-install-db --user=root --datadir="$STATE/mysql" --skip-test-db --auth-root-authentication-method=socket \
  >"$STATE/log/mariadb-install-db.out" 2>&1 || { tail -n 20 "$STATE/log/mariadb-install-db.out" >&2; die "mariadb-install-db failed"; }
spawn mariadbd mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$DB_SOCKET" \
  --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$STATE/mysql.pid" --log-error="$STATE/log/mariadbd.log" \
  --innodb-buffer-pool-size=32M --skip-log-bin
wait_for 30 mariadbd mariadb --no-defaults --socket="$DB_SOCKET" -e "SELECT 1"
mariadb --no-defaults --socket="$DB_SOCKET" <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# -- configuration ----------------------------------------------------------------------------------
GPU_FILES=""
if [ "$GPUS" -gt 0 ]; then
  # Placeholder device files: SLURM needs File= for a GPU gres; nothing opens them on a CPU machine.
  for i in $(seq 0 $((GPUS - 1))); do touch "$STATE/gpu/nvidia$i"; done
  GPU_FILES="$STATE/gpu/nvidia[0-$((GPUS - 1))]"
  echo "NodeName=$NODE Name=gpu File=$GPU_FILES" >"$STATE/gres.conf"
  NODE_GRES="Gres=gpu:$GPUS"
else
  : >"$STATE/gres.conf"
  NODE_GRES=""
fi

cat >"$STATE/slurm.conf" <<CONF
# Written by tests/slurm/start_cluster.sh: a one-node throw-away cluster.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmdDebug=info
SlurmctldDebug=info
# No systemd and no cgroup hierarchy to manage: track processes by parent id.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
# Keep finished jobs visible to squeue for a while (sacct has them for good).
MinJobAge=600
SchedulerParameters=sched_interval=1
# A job at its time limit gets SIGTERM, then SIGKILL 5 s later (default 30 s): quick time-limit tests.
KillWait=5
OverTimeLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT_BASE + 2))
AccountingStorageTRES=gres/gpu
# sacct shows the executor plugin's comment (rule_<name>_wildcards_...): which rule a job ran.
AccountingStoreFlags=job_comment
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PARTITION Nodes=ALL Default=NO MaxTime=INFINITE State=UP
CONF

cat >"$STATE/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT_BASE + 2))
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 600 "$STATE/slurmdbd.conf"

export SLURM_CONF="$STATE/slurm.conf"
# The executor plugin's job steps drop SLURM_* variables (SLURM_CONF too) before their nested srun,
# which then reads the default /etc/slurm/slurm.conf: link it to this cluster's config unless a real
# file is there (a link left by an earlier cluster is replaced; stop_cluster.sh removes ours).
if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
  mkdir -p /etc/slurm
  ln -sfn "$STATE/slurm.conf" /etc/slurm/slurm.conf
  echo /etc/slurm/slurm.conf >"$STATE/linked_conf"
else
  say "WARNING: /etc/slurm/slurm.conf exists: job steps of the executor plugin will read it, not $SLURM_CONF"
fi
cat >"$STATE/env.sh" <<ENV
# source this file to talk to the cluster in $STATE
export SLURM_CONF="$SLURM_CONF"
export PATH="\$PATH:/usr/sbin:/sbin"
ENV

# -- slurmdbd, accounts, slurmctld, slurmd -----------------------------------------------------------
spawn slurmdbd slurmdbd -D
wait_for 30 slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=fedscape Organization=fedscape >/dev/null
sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
spawn slurmctld slurmctld -D -i
wait_for 30 slurmctld scontrol ping
spawn slurmd slurmd -D -N "$NODE"
wait_for 30 "node $NODE" bash -c "sinfo -h -N -o '%T' | grep -E -q '^(idle|mixed|allocated)'"

say "cluster '$CLUSTER' up in $(( $(date +%s) - START ))s: partitions $PARTITION (default) and $GPU_PARTITION," \
  "account $ACCOUNT, node $NODE" \
  "(${CPUS} CPUs, ${MEM_MB} MB, ${GPUS} GPUs declared); source $STATE/env.sh"
