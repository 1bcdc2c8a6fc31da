#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on localhost, for tests/test_slurm.py.
#
#   bash tests/slurm/cluster.sh install   # apt-get install slurm-wlm munge (root, Debian)
#   bash tests/slurm/cluster.sh up        # install if missing, configure, start; idempotent
#   bash tests/slurm/cluster.sh status    # exit 0 when the node answers and is usable
#   bash tests/slurm/cluster.sh down      # stop what `up` started, by PID files
#
# What it builds (the recipe in shared/design/slurm-local.md):
# - munged (only if no munged already answers), key from the Debian package.
# - slurmctld + slurmd as root, no cgroups (proctrack/linuxproc, task/none) and
#   no accounting database (accounting_storage/none): `sacct` does not work
#   here, so Snakemake must use `--slurm-status-command squeue`, which is why
#   MinJobAge is large (finished jobs stay visible to `squeue --states=all`).
# - One node named after `hostname -s` with all its CPUs and 90 % of its
#   memory, in one default partition `debug`.
# - Two *fake* GPUs (GRES gpu:2 backed by /dev/null-like device nodes), so
#   rules declaring `resources: gpu=1` run unchanged through the project's
#   slurm profile (the plugin turns them into `sbatch --gpus=1`) on a machine
#   without GPUs. The jobs see no CUDA device and advss runs on the CPU.
#
# The config must be at /etc/slurm/slurm.conf: the plugin runs each job with
# `srun` inside `sbatch`, and `srun` does not find a config given only through
# SLURM_CONF in the submitting shell. Both files carry a marker line; a
# slurm.conf or gres.conf without it is a real site's config and is never
# overwritten. State, spool, logs and PID files live in $ADVSS_SLURM_DIR
# (default /tmp/advss-slurm).
set -euo pipefail

SCRATCH=${ADVSS_SLURM_DIR:-/tmp/advss-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
MARKER="# written by advss tests/slurm/cluster.sh"
PARTITION=debug
FAKE_GPUS=2  # the /dev/null+/dev/zero fallback below also makes exactly 2
MUNGE_SOCKET_DIR=/run/munge
MUNGE_PID_OURS=$SCRATCH/munged.pid   # present only when we started munged

log() { echo "cluster.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_alive() {  # pid_alive FILE: the PID in FILE is a running slurmctld/slurmd/munged
    local pid comm
    [[ -s $1 ]] || return 1
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a stale file whose PID now belongs to something else.
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ -z $comm || $comm == slurmctld || $comm == slurmd || $comm == munged ]]
}

have_binaries() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null
}

cmd_install() {
    if have_binaries; then
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || die "slurm-wlm/munge are not installed and installing them needs root"
    command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and there is no apt-get"
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 ||
        die "apt-get install slurm-wlm munge failed"
    have_binaries || die "slurm-wlm installed but slurmctld/slurmd/sbatch/munged not on PATH"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        return 0  # a munged (ours from an earlier `up`, or the system's) answers
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    mkdir -p "$MUNGE_SOCKET_DIR" /var/log/munge /var/lib/munge
    chown munge:munge "$MUNGE_SOCKET_DIR" /var/log/munge /var/lib/munge
    # --force: run even though the log directory's ownership is "insecure"
    # for a root-run daemon (it only warns).
    rm -f "$MUNGE_PID_OURS"
    munged --force --pid-file="$MUNGE_PID_OURS" >&2 ||
        die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 1 20); do
        munge_ok && return 0
        sleep 0.25
    done
    die "munged started but 'munge -n | unmunge' fails"
}

write_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc --all)
    # 90 % of physical memory: RealMemory above what slurmd detects drains the node.
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    for f in "$CONF" "$GRES_CONF"; do
        if [[ -e $f ]] && ! grep -qF "$MARKER" "$f"; then
            die "$f exists and was not written by this script; refusing to overwrite a real SLURM config"
        fi
    done
    mkdir -p "$CONF_DIR" "$SCRATCH"/{state,spool,log}
    cat >"$CONF.tmp" <<EOF
$MARKER
# Single-node test cluster: no cgroups, no accounting database, fake GPUs.
ClusterName=advss-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# Finished jobs stay in slurmctld (and so in 'squeue --states=all') for 10 min:
# the plugin's squeue status polling and the tests' assertions rely on it.
MinJobAge=600
# A node that went down with the daemons comes back on the next 'up'.
ReturnToService=2
DefMemPerCPU=1000
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool
SlurmctldPidFile=$SCRATCH/slurmctld.pid
SlurmdPidFile=$SCRATCH/slurmd.pid
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SCRATCH/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmd counts a GPU only if its File is a character device ("Count=" alone
    # registers 0 GPUs and the node goes INVAL), so the fake GPUs are device
    # nodes with /dev/null's numbers; where mknod is not allowed, /dev/null and
    # /dev/zero themselves serve. Jobs get CUDA_VISIBLE_DEVICES=<index> and
    # simply find no CUDA device.
    local gres_lines="" i dev
    mkdir -p "$SCRATCH/dev"
    for ((i = 0; i < FAKE_GPUS; i++)); do
        dev=$SCRATCH/dev/nvidia$i
        if [[ ! -c $dev ]] && ! mknod "$dev" c 1 3 2>/dev/null; then
            gres_lines=""
            break
        fi
        gres_lines+="NodeName=$host Name=gpu File=$dev"$'\n'
    done
    if [[ -z $gres_lines ]]; then
        gres_lines="NodeName=$host Name=gpu File=/dev/null"$'\n'"NodeName=$host Name=gpu File=/dev/zero"$'\n'
    fi
    {
        echo "$MARKER"
        echo "# Fake GPUs: device files that are not GPUs, so '--gpus=1' can be scheduled."
        echo "AutoDetect=off"
        printf '%s' "$gres_lines"
    } >"$GRES_CONF.tmp"
    # Replace only on change, so an 'up' on a running cluster leaves it alone.
    CONF_CHANGED=0
    for f in "$CONF" "$GRES_CONF"; do
        if cmp -s "$f.tmp" "$f"; then rm -f "$f.tmp"; else mv "$f.tmp" "$f"; CONF_CHANGED=1; fi
    done
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true; }

cmd_status() {
    local ok=0 d
    for d in slurmctld slurmd; do
        if pid_alive "$SCRATCH/$d.pid"; then
            log "$d running (pid $(cat "$SCRATCH/$d.pid"))"
        else
            log "$d not running"
            ok=1
        fi
    done
    if munge_ok; then log "munge answers"; else log "munge does not answer"; ok=1; fi
    if [[ $ok -eq 0 ]]; then
        local state
        state=$(node_state)
        log "node state: ${state:-unknown}"
        case $state in idle* | mixed* | allocated* | completing*) ;; *) ok=1 ;; esac
    fi
    return $ok
}

cmd_up() {
    cmd_install
    [[ $(id -u) -eq 0 ]] || die "starting the test cluster needs root"
    mkdir -p "$SCRATCH"
    write_conf
    if [[ $CONF_CHANGED -eq 1 ]] &&
        { pid_alive "$SCRATCH/slurmctld.pid" || pid_alive "$SCRATCH/slurmd.pid"; }; then
        log "configuration changed: restarting slurmctld and slurmd"
        stop_pidfile slurmd "$SCRATCH/slurmd.pid"
        stop_pidfile slurmctld "$SCRATCH/slurmctld.pid"
    fi
    start_munge
    # The daemons write their PID files only after they have forked, so a stale
    # file from a crashed run is removed first and a missing one means "starting".
    if ! pid_alive "$SCRATCH/slurmctld.pid"; then
        rm -f "$SCRATCH/slurmctld.pid"
        slurmctld -f "$CONF" >&2 || die "slurmctld did not start (see $SCRATCH/log/slurmctld.log)"
    fi
    if ! pid_alive "$SCRATCH/slurmd.pid"; then
        rm -f "$SCRATCH/slurmd.pid"
        slurmd -f "$CONF" >&2 || die "slurmd did not start (see $SCRATCH/log/slurmd.log)"
    fi
    local state="" resumed=0 i d
    for i in $(seq 1 60); do
        for d in slurmctld slurmd; do
            if [[ -s $SCRATCH/$d.pid ]] && ! pid_alive "$SCRATCH/$d.pid"; then state="$d exited"; break 2; fi
            if [[ ! -s $SCRATCH/$d.pid && $i -gt 20 ]]; then state="$d wrote no PID file in 10 s"; break 2; fi
        done
        state=$(node_state)
        case $state in
            idle* | mixed* | allocated* | completing*)
                log "up: node $(hostname -s) is $state; partition $PARTITION; $FAKE_GPUS fake GPUs"
                return 0 ;;
            down* | drain* | fail*)
                if [[ $resumed -eq 0 ]]; then
                    scontrol update NodeName="$(hostname -s)" State=RESUME >&2 || true
                    resumed=1
                fi ;;
        esac
        sleep 0.5
    done
    log "--- tail of slurmctld.log"; tail -n 20 "$SCRATCH/log/slurmctld.log" >&2 || true
    log "--- tail of slurmd.log"; tail -n 20 "$SCRATCH/log/slurmd.log" >&2 || true
    die "node did not become idle (state: ${state:-no answer from slurmctld within 30 s})"
}

stop_pidfile() {  # stop_pidfile NAME FILE
    local name=$1 file=$2 pid
    if ! pid_alive "$file"; then
        rm -f "$file"
        return 0
    fi
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$file"; log "stopped $name (pid $pid)"; return 0; }
        sleep 0.25
    done
    log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$file"
}

cmd_down() {
    stop_pidfile slurmd "$SCRATCH/slurmd.pid"
    stop_pidfile slurmctld "$SCRATCH/slurmctld.pid"
    stop_pidfile munged "$MUNGE_PID_OURS"  # only a munged this script started
}

case ${1:-} in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 {install|up|down|status}" >&2; exit 2 ;;
esac
