#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to try the sbatch scripts here (and for tests/test_slurm.py).
#
#   slurm/local_cluster.sh up        # install (apt) if needed, write the config, start munged/slurmctld/slurmd
#   export SLURM_CONF=/tmp/swinv2-slurm/etc/slurm.conf   # printed by `up`
#   sbatch -n2 slurm/train.sbatch data=synthetic strategy=ddp max_steps=20
#   slurm/local_cluster.sh status
#   slurm/local_cluster.sh down      # stop the daemons (logs stay in the directory)
#
# Needs root: slurmd starts jobs as the submitting user. Everything (config, munge key and socket,
# state, spool, logs, pid files) lives under SWINV2_SLURM_DIR (default ${TMPDIR:-/tmp}/swinv2-slurm;
# the socket goes to /tmp/swinv2-munge-PORT when that directory is private); nothing in /etc is
# touched. SWINV2_SLURM_PORT (default 6817; slurmd uses the next port) lets two
# clusters share a machine. Debian/Ubuntu packages: slurmctld slurmd slurm-client munge.
set -euo pipefail

DIR=${SWINV2_SLURM_DIR:-${TMPDIR:-/tmp}/swinv2-slurm}
PORT=${SWINV2_SLURM_PORT:-6817}
CONF=$DIR/etc/slurm.conf
NODE=$(hostname -s)

die() {
    echo "local_cluster: $*" >&2
    exit 1
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install Slurm and munge yourself"
    echo "local_cluster: installing ${missing[*]}"
    # Package scripts cannot start daemons in containers without systemd; we start our own below.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# munged's clients need execute permission for everyone on every directory above its socket, and a
# Unix socket path has at most 107 bytes. A private or deep DIR (pytest's tmp_path) gets a socket
# directory of its own in /tmp instead.
socket_dir() {
    local d=$DIR/munge/run
    if ((${#d} < 80)); then
        while [[ $d != / ]]; do
            [[ -d $d ]] && (((8#$(stat -c %a "$d") & 1) == 0)) && break
            d=$(dirname "$d")
        done
        [[ $d == / ]] && { echo "$DIR/munge/run"; return; }
    fi
    echo "/tmp/swinv2-munge-$PORT"
}

write_config() {
    mkdir -p "$DIR"/{etc,state,spool,log,run} "$DIR"/munge/{key,run,lib,log}
    # munged refuses a key directory others can read, and clients fail with "Socket is
    # inaccessible" when the socket directory is private: 700 for the key, 755 for the socket.
    chmod 700 "$DIR/munge/key" "$DIR/munge/lib" "$DIR/munge/log"
    chmod 755 "$DIR/munge" "$DIR/munge/run"
    SOCKET=$(socket_dir)/munge.socket.2
    mkdir -p "$(dirname "$SOCKET")"
    chmod 755 "$(dirname "$SOCKET")"
    if [[ ! -s $DIR/munge/key/munge.key ]]; then
        (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/key/munge.key")
    fi
    cat >"$CONF" <<EOF
# Written by slurm/local_cluster.sh: a one-node cluster for trying the sbatch scripts.
ClusterName=swinv2local
SlurmctldHost=$NODE
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may start again 10 s after it ended instead of about 121 s.
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroup setup needed: processes are tracked by parent pid, tasks are not bound to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (default 60 s / 30 s): a requeued job starts again promptly.
SchedulerParameters=sched_interval=2,bf_interval=2
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
# Keep finished jobs visible to scontrol for 10 minutes.
MinJobAge=600
NodeName=$NODE CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    [[ $(id -u) -eq 0 ]] || die "'up' needs root (slurmd starts jobs as the submitting user)"
    install_packages
    if pid_alive "$DIR/run/slurmctld.pid"; then
        echo "local_cluster: already running in $DIR"
    else
        write_config
        pid_alive "$DIR/munge/lib/munged.pid" || munged \
            --key-file="$DIR/munge/key/munge.key" --socket="$SOCKET" \
            --pid-file="$DIR/munge/lib/munged.pid" --seed-file="$DIR/munge/lib/munged.seed" \
            --log-file="$DIR/munge/log/munged.log"
        # -c: forget jobs of an earlier cluster in this directory.
        SLURM_CONF=$CONF slurmctld -c -f "$CONF"
        SLURM_CONF=$CONF slurmd -c -f "$CONF"
    fi
    # The node registers within a second or two; jobs submitted before that would wait.
    local state=""
    for _ in $(seq 100); do
        state=$(SLURM_CONF=$CONF sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        [[ $state == idle* || $state == mixed* || $state == allocated* ]] && break
        sleep 0.2
    done
    [[ $state == idle* || $state == mixed* || $state == allocated* ]] ||
        die "node $NODE is '${state:-not responding}' after 20 s; see $DIR/log/slurmctld.log and slurmd.log"
    echo "local_cluster: node $NODE is $state ($(nproc) CPUs)"
    echo "export SLURM_CONF=$CONF"
}

stop() {
    local pidfile pid
    for pidfile in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/munge/lib/munged.pid"; do
        pid_alive "$pidfile" || continue
        pid=$(cat "$pidfile")
        kill -TERM "$pid"
        # slurmctld saves its state on SIGTERM; give each daemon up to 10 s before SIGKILL.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    done
    rm -rf "/tmp/swinv2-munge-$PORT"
    echo "local_cluster: stopped (logs in $DIR/log)"
}

status() {
    local name pidfile
    for name in munged slurmctld slurmd; do
        pidfile=$DIR/run/$name.pid
        [[ $name == munged ]] && pidfile=$DIR/munge/lib/munged.pid
        if pid_alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: stopped"; fi
    done
    if pid_alive "$DIR/run/slurmctld.pid"; then
        SLURM_CONF=$CONF sinfo
        SLURM_CONF=$CONF squeue
        echo "export SLURM_CONF=$CONF"
    fi
}

case ${1:-} in
up) start ;;
down) stop ;;
status) status ;;
*)
    echo "usage: $0 up|down|status   (directory: $DIR)" >&2
    exit 2
    ;;
esac
