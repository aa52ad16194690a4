#!/usr/bin/env bash
# Install Debian's SLURM, munge and MariaDB packages for tests/slurm/start_cluster.sh (as root).
# Exits 0 when everything is installed (at once if it already is), non-zero with apt's message
# otherwise; the caller decides whether that skips or fails (tests/workflow/test_slurm.py skips).
set -euo pipefail
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && { echo "[install_packages] already installed: ${PACKAGES[*]}" >&2; exit 0; }
[ "$(id -u)" -eq 0 ] || { echo "[install_packages] needs root to install ${missing[*]}" >&2; exit 2; }
command -v apt-get >/dev/null || { echo "[install_packages] no apt-get on this machine" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
timeout "${APT_TIMEOUT:-240}" apt-get update -qq -o Acquire::Retries=2 -o Acquire::http::Timeout=20
# No daemon is started by the packages' scripts: there is no systemd (start_cluster.sh starts them).
timeout "${APT_TIMEOUT:-240}" apt-get install -y -qq --no-install-recommends -o Acquire::Retries=2 \
  -o Acquire::http::Timeout=20 "${missing[@]}" >/dev/null
echo "[install_packages] installed ${missing[*]} in $(( $(date +%s) - start ))s" >&2
