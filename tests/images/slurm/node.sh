#!/bin/sh
# Start munge, then the SLURM daemon of this container's role in the foreground: `ctl` (slurmctld) or `node`
# (slurmd, named by the container's hostname).
set -eu
runuser -u munge -- /usr/sbin/munged
case "${1:-}" in
    ctl) exec /usr/sbin/slurmctld -D -i ;;
    node) exec /usr/sbin/slurmd -D -N "$(hostname)" ;;
    *) echo "usage: r1kit-slurm-node ctl|node" >&2; exit 2 ;;
esac
