#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests and for trying the sbatch scripts.
#
#   slurm/local-cluster/cluster.sh [start]   install (if missing) and start munged, slurmctld, slurmd; wait for an
#                                    idle node; print the SLURM_CONF line to use. Idempotent.
#   slurm/local-cluster/cluster.sh stop      stop the daemons it started (by their pid files)
#   slurm/local-cluster/cluster.sh status    exit 0 if the cluster answers, print sinfo
#
# Root only (it installs packages and runs the daemons as root). Everything it writes lives in
# $GIGATRON_SLURM_DIR (default /tmp/gigatron-slurm): slurm.conf, state, spool, logs, pid files.
# The last line of `start` is `export SLURM_CONF=...`, so `eval "$(slurm/local-cluster/cluster.sh | tail -n1)"` works.
#
# Test-cluster settings, not for production: AuthInfo=cred_expire (default here 5 s, SLURM's minimum,
# instead of its 120 s) also sets how long a requeued job waits before it may run again, which keeps the
# preemption test short; the partition lets jobs share the cores (OverSubscribe=FORCE). Override with GIGATRON_SLURM_CRED_EXPIRE; ports with GIGATRON_SLURM_PORT (slurmctld,
# slurmd gets +1).
set -euo pipefail

DIR="${GIGATRON_SLURM_DIR:-/tmp/gigatron-slurm}"
CONF="$DIR/slurm.conf"
CRED_EXPIRE="${GIGATRON_SLURM_CRED_EXPIRE:-5}"
PORT="${GIGATRON_SLURM_PORT:-6817}"
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "local_cluster: $*" >&2; }
die() { log "$*"; exit 1; }

pid_alive() {  # pid file -> 0 if its process runs
    [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y "${PACKAGES[@]}" >"$DIR/apt.log" 2>&1; then
        apt-get update >>"$DIR/apt.log" 2>&1 || true
        apt-get install -y "${PACKAGES[@]}" >>"$DIR/apt.log" 2>&1 \
            || die "apt-get install ${PACKAGES[*]} failed; see $DIR/apt.log"
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    [[ -f /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (the munge package creates it)"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    # --force: start despite permission warnings of a container's file system; it runs as root here.
    munged --force
    touch "$DIR/munged.started"
    for _ in $(seq 50); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    die "munged does not answer (munge -n | unmunge fails)"
}

real_memory_mb() {
    local mem
    mem="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
    if [[ -z "$mem" ]]; then
        mem=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024))
    fi
    echo "$mem"
}

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem="$(real_memory_mb)"
    mkdir -p "$DIR/state" "$DIR/spool"
    cat >"$CONF" <<EOF
# Written by slurm/local-cluster/cluster.sh: a single-node test cluster.
ClusterName=gigatron-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=30
MinJobAge=300
# A test cluster: look at pending (e.g. requeued) jobs every second or two, not every 30-60 s.
SchedulerParameters=sched_interval=2,bf_interval=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
# OverSubscribe: jobs share the cores, so a test session's jobs overlap their scheduling and requeue
# waits instead of queueing behind each other on a 2-core machine.
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
}

node_state() {
    SLURM_CONF="$CONF" sinfo -h -N -o %T 2>/dev/null | head -n1
}

start() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (it installs packages and runs slurmctld/slurmd as root)"
    mkdir -p "$DIR"
    install_packages
    start_munge
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && [[ -f "$CONF" ]]; then
        log "already running ($CONF)"
    else
        stop_daemons
        rm -rf "$DIR/state" "$DIR/spool"
        write_conf
        slurmctld -f "$CONF"
        slurmd -f "$CONF"
    fi
    local state=""
    for _ in $(seq 120); do
        state="$(node_state)"
        case "$state" in
            idle* | mixed* | allocated*) break ;;
            drain* | down*)
                SLURM_CONF="$CONF" scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    case "$state" in
        idle* | mixed* | allocated*) ;;
        *) die "node not ready after 60 s (state '${state:-no answer}'); see $DIR/slurmctld.log and $DIR/slurmd.log" ;;
    esac
    SLURM_CONF="$CONF" sinfo >&2
    echo "export SLURM_CONF=$CONF"
}

stop_daemons() {
    local name pidfile pid
    for name in slurmd slurmctld; do
        pidfile="$DIR/$name.pid"
        if pid_alive "$pidfile"; then
            pid="$(cat "$pidfile")"
            kill "$pid"
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
        rm -f "$pidfile"
    done
}

stop() {
    stop_daemons
    if [[ -f "$DIR/munged.started" && -f /run/munge/munged.pid ]]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        rm -f "$DIR/munged.started"
    fi
    log "stopped"
}

status() {
    if ! pid_alive "$DIR/slurmctld.pid" || ! pid_alive "$DIR/slurmd.pid"; then
        log "not running"
        return 1
    fi
    SLURM_CONF="$CONF" sinfo
    echo "export SLURM_CONF=$CONF"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
