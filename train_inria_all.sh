#!/usr/bin/env bash
# Inria stage 4: the full model (mode 5) starting from all of B10, with B10's and B15's VGG frozen as the x2 / x3 window encoders; saved as all.epoch.pth.
# Extra arguments are forwarded (later ones win), e.g. `bash train_inria_all.sh --data_path /data/inria --resume`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_inria_all.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --dataset inria --task_name all --mode 5 --context 2 --context2 3 --batch_size 6 --sub_batch_size 4 --epochs 100 --start_epoch 50 --size_p 508 --pre_path B10.epoch.pth --c_path B10.epoch.pth --c2_path B15.epoch.pth --train --val "$@"
