#!/bin/sh
# start-cluster.sh - a one-node Slurm cluster on localhost for the tests of
# pipelines/slurm (tests/40-slurm.bats): installs Debian's slurm-wlm and munge
# when missing (root, or sudo), writes a minimal slurm.conf, starts munged,
# slurmctld and slurmd, and waits until the node is idle. Exits 0 with the
# cluster up (or already up), 1 with the daemons' logs otherwise.
#
# Containers have no systemd and often no writable cgroups: the node uses
# proctrack/linuxproc and task/none, no cgroup plugin and no accounting.
# Idempotent: running it again with the cluster up changes nothing.
set -eu

if command -v sinfo >/dev/null 2>&1 && sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
	echo "start-cluster: a cluster is already up"
	exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
	sudo=
elif command -v sudo >/dev/null; then
	sudo=sudo
else
	echo "start-cluster: needs root (or sudo) to install and start Slurm" >&2
	exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
	echo "start-cluster: installing slurm-wlm and munge"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
		slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
# memory in MB the node reports (not a consumable: jobs share it, CR_Core)
mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
conf=/etc/slurm/slurm.conf
state=/var/lib/slurm-gptq
$sudo mkdir -p /etc/slurm "$state/ctld" "$state/d" /var/log/slurm /run/munge
$sudo tee "$conf" >/dev/null <<EOF
# written by gptq tests/slurm/start-cluster.sh: one node, localhost
ClusterName=gptq
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
# no cgroup.conf: a stale one would make slurmd try cgroup plugins
$sudo rm -f /etc/slurm/cgroup.conf

if ! pgrep -x munged >/dev/null; then
	[ -s /etc/munge/munge.key ] || $sudo mungekey --create --force >/dev/null 2>&1 ||
		$sudo /usr/sbin/create-munge-key -f >/dev/null
	$sudo chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
	$sudo chmod 0400 /etc/munge/munge.key
	$sudo runuser -u munge -- /usr/sbin/munged
fi
pgrep -x slurmctld >/dev/null || $sudo slurmctld
pgrep -x slurmd >/dev/null || $sudo slurmd

for _ in $(seq 60); do
	if sinfo -h -o %T 2>/dev/null | grep -q idle; then
		echo "start-cluster: node $host idle ($cpus CPUs, $mem MB)"
		exit 0
	fi
	# a node left down by an earlier run comes back
	$sudo scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
	sleep 1
done
echo "start-cluster: the node did not become idle within a minute" >&2
sinfo -N -l >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
