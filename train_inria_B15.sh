#!/usr/bin/env bash
# Inria stage 3: the same with the x3 window (mode 2, context 3) from Bfcn; saved as B15.epoch.pth.
# Extra arguments are forwarded (later ones win), e.g. `bash train_inria_B15.sh --data_path /data/inria --resume`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_inria_B15.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --dataset inria --task_name B15 --mode 2 --context 3 --batch_size 6 --sub_batch_size 4 --epochs 100 --start_epoch 50 --size_p 508 --pre_path Bfcn.epoch.pth --train --val "$@"
