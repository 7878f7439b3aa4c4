#!/usr/bin/env bash
# SLURM: one task per GPU; Lightning reads SLURM_* (SLURMEnvironment), no torchrun needed.
#   sbatch --nodes=2 configs/slurm/sbatch.sh configs/8xh100/align.yaml
#SBATCH --job-name=elo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=48:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
CONFIG=${1:?config yaml}; shift
NNODES=${SLURM_JOB_NUM_NODES:-1}
EXTRA=(--trainer.num_nodes "$NNODES")
if grep -q AtomicModelParallelStrategy "$CONFIG"; then
  EXTRA+=(--trainer.strategy.init_args.data_parallel_size "$((8 * NNODES))")
fi
# Resume from the newest COMPLETE checkpoint (interrupted saves are hidden .partial directories):
CKPT_DIR=${CKPT_DIR:-}
if [[ -n "$CKPT_DIR" ]]; then
  LAST=$(python -c "from elo_lightning.checkpoint import latest_checkpoint as l; p=l('$CKPT_DIR'); print(p or '')")
  [[ -n "$LAST" ]] && EXTRA+=(--ckpt_path "$LAST")
fi
srun python -m elo_lightning.cli fit --config "$CONFIG" "${EXTRA[@]}" "$@"
