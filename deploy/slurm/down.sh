#!/usr/bin/env bash
# Stop the single-node cluster deploy/slurm/up.sh started, by the PIDs it recorded.
DIR="${CPT_SLURM_DIR:-/tmp/cpt-slurm}"
for name in slurmd slurmctld munged; do
  for f in "$DIR/$name.daemon.pid" "$DIR/$name.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
done
echo "Slurm stopped"
