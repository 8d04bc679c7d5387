#!/usr/bin/env bash
# Train on several machines: run this on every node with the same settings; torchrun's c10d
# rendezvous (hosted by the torchrun on MASTER_ADDR) assigns the node ranks.
#   MASTER_ADDR=node01 NNODES=4 launch/multi_node.sh experiment=simmim_swinv2_giant_192 strategy=fsdp run_dir=/shared/runs/giant
#   NNODES=2:4 ...   elastic: start with 2 to 4 nodes, admit late or replacement nodes
# Settings (environment): MASTER_ADDR (required), MASTER_PORT (29500), NNODES (1), NPROC per node
# (auto: one per GPU), RDZV_ID (a job id shared by the nodes; default swinv2), MAX_RESTARTS (3),
# SHUTDOWN_TIMEOUT (seconds workers get to save after a signal, 120). Put run_dir on a file system
# every node sees. As in single_node.sh, resume=auto is added, so a group restarted after a crashed
# worker or a lost node continues from the newest checkpoint.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

: "${MASTER_ADDR:?set MASTER_ADDR to the host name of the node that hosts the rendezvous}"
mapfile -t overrides < <(swinv2_overrides "$@")
# Restarted workers must not share the rendezvous store with the group before them: they can read
# its stale addresses and fail to connect (gloo "connectFullMesh ... Connection refused", NCCL
# likewise; pytorch/pytorch#135712). With this, each round gets a store of its own.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec "$(swinv2_python)" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --nproc_per_node="${NPROC:-auto}" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" \
    --rdzv_id="${RDZV_ID:-swinv2}" \
    --max_restarts="${MAX_RESTARTS:-3}" \
    --signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    --shutdown_timeout="${SHUTDOWN_TIMEOUT:-120}" \
    -m train "${overrides[@]}"
