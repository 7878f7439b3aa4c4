#!/usr/bin/env bash
# Launch a stage on N nodes x 8 GPUs with torchrun (run this on every node; NODE_RANK differs per node).
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash configs/slurm/torchrun.sh configs/8xh100/align.yaml
# Lightning picks the ranks up from torchrun (TorchElasticEnvironment). Set trainer.num_nodes to NNODES and,
# for FSDP2 configs, strategy.init_args.data_parallel_size to 8 x NNODES (done below with CLI overrides).
set -euo pipefail
CONFIG=${1:?config yaml}; shift
NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}; MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}; MASTER_PORT=${MASTER_PORT:-29500}
EXTRA=(--trainer.num_nodes "$NNODES")
if grep -q AtomicModelParallelStrategy "$CONFIG"; then
  EXTRA+=(--trainer.strategy.init_args.data_parallel_size "$((8 * NNODES))")
fi
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node 8 \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m elo_lightning.cli fit --config "$CONFIG" "${EXTRA[@]}" "$@"
