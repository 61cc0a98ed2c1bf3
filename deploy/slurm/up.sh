#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (munged, slurmctld, slurmd), for cpt's tests and
# for trying its Slurm executors locally. Installs Debian's slurm-wlm and munge when they are missing
# (needs root). Idempotent: a cluster already up is left as it is. Stop it with deploy/slurm/down.sh.
#
#   bash deploy/slurm/up.sh            # then: export SLURM_CONF=<printed path>; sinfo
set -euo pipefail
DIR="${CPT_SLURM_DIR:-/tmp/cpt-slurm}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$DIR"/state "$DIR"/spool "$DIR"/log

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

export SLURM_CONF="$DIR/slurm.conf"
if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null \
   && sinfo -h -o "%t" 2>/dev/null | grep -qE "idle|mix|alloc"; then
  echo "Slurm already up: export SLURM_CONF=$SLURM_CONF"
  exit 0
fi

HOST="$(hostname -s)"
CPUS="$(nproc)"
MEMORY_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEMORY_MB@|$MEMORY_MB|g" \
    -e "s|@DIR@|$DIR|g" "$HERE/slurm.conf.in" > "$SLURM_CONF"

# munge: its key comes with the package; the daemon runs as the munge user
if [ ! -f /etc/munge/munge.key ]; then
  mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge: /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge: /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then  # no working munged: start one
  runuser -u munge -- munged --foreground --force > "$DIR/log/munged.log" 2>&1 &
  echo $! > "$DIR/munged.pid"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# a fresh cluster every time: no jobs or node states (a drained node) of an earlier one come back
rm -rf "${DIR:?}"/state/* "${DIR:?}"/spool/*
slurmctld -D -c -i > "$DIR/log/slurmctld.out" 2>&1 &
echo $! > "$DIR/slurmctld.daemon.pid"
sleep 1
slurmd -D > "$DIR/log/slurmd.out" 2>&1 &
echo $! > "$DIR/slurmd.daemon.pid"

for _ in $(seq 60); do
  if sinfo -h -o "%t" 2>/dev/null | grep -q idle; then
    echo "Slurm up: node $HOST idle; export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "Slurm did not come up; logs in $DIR/log:" >&2
tail -n 20 "$DIR"/log/*.log "$DIR"/log/*.out >&2 || true
exit 1
