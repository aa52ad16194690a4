#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start_cluster.sh started, by the PIDs it recorded (newest first).
#
#   tests/slurm/stop_cluster.sh [STATE_DIR] [--purge]   # --purge also removes STATE_DIR
set -uo pipefail

STATE=${FEDSCAPE_SLURM_DIR:-/tmp/fedscape-slurm}
PURGE=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1 ;;
    *) STATE=$arg ;;
  esac
done

say() { echo "[stop_cluster] $*" >&2; }

[ -d "$STATE/pids" ] || { say "no cluster state in $STATE"; exit 0; }
if [ -f "$STATE/env.sh" ]; then
  # shellcheck disable=SC1091
  source "$STATE/env.sh"
  # Jobs first, so that no job step outlives its slurmd.
  scancel --user=root >/dev/null 2>&1 || true
fi

for name in slurmd slurmctld slurmdbd mariadbd munged; do
  file="$STATE/pids/$name.pid"
  [ -f "$file" ] || continue
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name ($pid) ignored SIGTERM for 10s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  rm -f "$file"
done
if [ -f "$STATE/linked_conf" ]; then
  link=$(cat "$STATE/linked_conf")
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$STATE/slurm.conf" ]; then rm -f "$link"; fi
  rm -f "$STATE/linked_conf"
fi
say "stopped the cluster of $STATE"
if [ "$PURGE" -eq 1 ]; then
  rm -rf "$STATE"
fi
exit 0
