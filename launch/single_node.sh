#!/usr/bin/env bash
# Train on one machine: one worker per GPU (per CPU core without GPUs), or NPROC of them.
#   launch/single_node.sh experiment=simmim_swinv2_base_192 strategy=ddp
#   NPROC=2 launch/single_node.sh experiment=demo_finetune strategy=ddp run_dir=runs/demo-ddp
# When a worker crashes, torchrun restarts the whole group (MAX_RESTARTS times, default 3) and the
# new workers continue from the newest checkpoint: this script adds resume=auto (unless you pass
# resume=...) and the run directory (run_dir=..., or the config's runs/<name>) is the same on every
# restart. Running the same command again later continues that run too; pass a new run_dir= to
# start over. SIGTERM/SIGINT/SIGUSR1 sent to this script reach the workers through torchrun; they
# save a checkpoint and exit 75, torchrun itself exits 1; the same command continues the run later
# (slurm/common.sh does this for batch jobs).
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

mapfile -t overrides < <(swinv2_overrides "$@")
# Restarted workers must not share the rendezvous store with the group before them: they can read
# its stale addresses and fail to connect (gloo "connectFullMesh ... Connection refused", NCCL
# likewise; pytorch/pytorch#135712). With this, each round gets a store of its own.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
# exec: torchrun itself receives the signals sent to this script. By default it forwards only
# TERM/INT/HUP/QUIT and dies of USR1 (orphaning the workers); SIGNALS_TO_HANDLE adds USR1.
# SHUTDOWN_TIMEOUT is how long workers get to save after a signal before torchrun kills them.
exec "$(swinv2_python)" -m torch.distributed.run \
    --standalone \
    --nproc_per_node="${NPROC:-auto}" \
    --max_restarts="${MAX_RESTARTS:-3}" \
    --signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    --shutdown_timeout="${SHUTDOWN_TIMEOUT:-120}" \
    -m train "${overrides[@]}"
