#!/usr/bin/env bash
# Inria stage 1: the FCN on patches alone (mode 1, the release's "Bfcn"), epochs 51-100 of a 100-epoch schedule; saved as Bfcn.epoch.pth.
# Extra arguments are forwarded (later ones win), e.g. `bash train_inria_pre.sh --data_path /data/inria --resume`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_inria_pre.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --dataset inria --task_name Bfcn --mode 1 --batch_size 6 --sub_batch_size 6 --epochs 100 --start_epoch 50 --size_p 508 --train --val "$@"
