# The body of every sbatch script in slurm/: sourced, then `swinv2_slurm_train OVERRIDES...`.
#
# What it does, and why:
# - Run directory keyed on the job: run_dir=${RUN_ROOT:-runs}/${SLURM_JOB_NAME}-${SLURM_JOB_ID}
#   (unless an override sets run_dir), plus resume=auto. A requeued job keeps its job id, so it
#   finds its own checkpoints and continues; a new submission starts a new run.
# - Ranks are started directly by `srun` (LAUNCHER=srun, the default), one task per GPU, with
#   RANK/LOCAL_RANK/WORLD_SIZE taken from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS and the
#   rendezvous on the first node of the allocation. Signals the batch shell forwards to srun reach
#   every rank on every node, and a rank's exit status (75: "preempted, requeue me") comes back as
#   srun's status. torchrun is the weaker middleman here: it dies of SIGUSR1 unless told to handle
#   it, gives workers a fixed time before SIGKILL, reports any non-zero worker status as 1, and with
#   --max-restarts would restart workers that exited 75 and carry on past a preemption.
#   LAUNCHER=torchrun starts one torchrun per node instead (launch/multi_node.sh, c10d rendezvous on
#   the first node, torchrun told to forward SIGUSR1).
# - Signals: `#SBATCH --signal=B:USR1@120` (time limit coming) and `scancel --signal=USR1 --batch`
#   reach only this shell; Slurm's SIGTERM (scancel, scontrol requeue, preemption) reaches every
#   process. The trap forwards both to the step; the ranks finish their step, save one checkpoint
#   and exit 75. The step runs in the background (`srun & wait`) because bash runs a trap only
#   after its foreground command ends.
# - Exit status 75, or any non-zero status after SIGUSR1: `scontrol requeue` (needs --requeue). After
#   SIGTERM, Slurm is already ending the job and decides itself: preemption with PreemptMode=REQUEUE
#   and `scontrol requeue` requeue it, `scancel` must not.
# - Any other failure (a crashed rank, a lost peer) re-runs the step in the same allocation, up to
#   MAX_RESTARTS times (default 3), resuming from the newest checkpoint, as torchrun --max-restarts
#   would; a lost node makes Slurm requeue the job (--requeue).
# Environment: PYTHON (default: the repository's .venv), RUN_ROOT, LAUNCHER, MAX_RESTARTS,
# MASTER_PORT (default 20000 + job id % 20000), SWINV2_REPO (default: the submission directory).
# shellcheck shell=bash

# Trap handler: forward the signal to the running step; srun passes it on to every task.
_swinv2_forward() {
    _swinv2_signal=$1
    echo "[slurm] batch shell got SIG$1: forwarding it to the ranks"
    if [[ -n $_swinv2_step ]]; then
        kill -s "$1" "$_swinv2_step" 2>/dev/null || true
    fi
}

swinv2_slurm_train() {
    local repo=${SWINV2_REPO:-${SLURM_SUBMIT_DIR:?not inside a Slurm job}}
    cd "$repo" || return
    # shellcheck source=launch/env.sh
    source launch/env.sh

    local -a overrides
    mapfile -t overrides < <(swinv2_overrides "$@")
    local arg run_dir=""
    for arg in "${overrides[@]}"; do
        [[ $arg == run_dir=* ]] && run_dir=${arg#run_dir=}
    done
    if [[ -z $run_dir ]]; then
        run_dir=${RUN_ROOT:-runs}/${SLURM_JOB_NAME}-${SLURM_JOB_ID}
        overrides+=("run_dir=$run_dir")
    fi

    local head_node
    head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    export MASTER_ADDR=$head_node
    local port_base=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
    local launcher=${LAUNCHER:-srun} python
    python=$(swinv2_python)
    echo "[slurm] job $SLURM_JOB_ID ($SLURM_JOB_NAME) restart ${SLURM_RESTART_COUNT:-0}:" \
        "$SLURM_JOB_NUM_NODES node(s), ${SLURM_NTASKS:-?} task(s), head $head_node, launcher $launcher, run_dir $run_dir"

    _swinv2_signal=""
    _swinv2_step=""
    trap '_swinv2_forward USR1' USR1
    trap '_swinv2_forward TERM' TERM

    # 75 until a step says otherwise: a signal that comes before any step ran leaves the run unfinished.
    local attempt=0 status=75
    while [[ -z $_swinv2_signal ]]; do
        export MASTER_PORT=$((port_base + attempt)) # a fresh port: the old store may linger in TIME_WAIT
        if [[ $launcher == torchrun ]]; then
            # MAX_RESTARTS=0: this loop restarts crashed steps; torchrun would also restart workers
            # that exited 75 and train on past a preemption.
            NNODES=$SLURM_JOB_NUM_NODES RDZV_ID=$SLURM_JOB_ID \
                NPROC=${SLURM_NTASKS_PER_NODE:-$((${SLURM_NTASKS:-$SLURM_JOB_NUM_NODES} / SLURM_JOB_NUM_NODES))} \
                MAX_RESTARTS=0 srun --kill-on-bad-exit=1 --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \
                --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}" launch/multi_node.sh "${overrides[@]}" &
        else
            # --kill-on-bad-exit: ranks blocked in a collective with a dead peer would otherwise
            # wait for the NCCL timeout. The others get SIGTERM, then SIGKILL after KillWait.
            # shellcheck disable=SC2016  # expanded by each task's shell, not here
            OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} srun --kill-on-bad-exit=1 bash -c \
                'RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS exec "$@"' \
                rank "$python" -m train "${overrides[@]}" &
        fi
        _swinv2_step=$!
        # `wait` returns early (status > 128) when a trapped signal arrives: wait until the step is gone.
        status=0
        wait "$_swinv2_step" || status=$?
        while kill -0 "$_swinv2_step" 2>/dev/null; do
            status=0
            wait "$_swinv2_step" || status=$?
        done
        _swinv2_step=""
        echo "[slurm] step exited with status $status"
        if [[ $status -eq 0 || $status -eq 75 || -n $_swinv2_signal ]]; then
            break
        fi
        if ((attempt >= ${MAX_RESTARTS:-3})); then
            echo "[slurm] giving up after $attempt restarts"
            return "$status"
        fi
        attempt=$((attempt + 1))
        echo "[slurm] restarting the step from the newest checkpoint ($attempt/${MAX_RESTARTS:-3})"
    done

    if [[ $status -eq 0 ]]; then
        echo "[slurm] finished"
        return 0
    fi
    if [[ $_swinv2_signal == TERM ]]; then
        echo "[slurm] stopped by SIGTERM: Slurm requeues or ends the job itself"
        return "$status"
    fi
    # After our SIGUSR1 any ending counts: torchrun reports its workers' 75 as 1, and a step that
    # failed while stopping still left its newest complete checkpoint to resume from.
    if [[ $status -eq 75 || $_swinv2_signal == USR1 ]]; then
        echo "[slurm] preempted: requeueing job $SLURM_JOB_ID"
        # Slurm answers with SIGTERM to this shell once the job is requeued; nothing runs anymore.
        if ! scontrol requeue "$SLURM_JOB_ID"; then
            echo "[slurm] Slurm refused the requeue (submit with --requeue); to continue, submit again with run_dir=$run_dir"
            return 75
        fi
        return 0
    fi
    return "$status"
}
