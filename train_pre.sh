#!/usr/bin/env bash
# Stage 1: the local FCN on patches alone (mode 1), saved as pre.epoch.pth.
# Extra arguments are forwarded (later ones win), e.g. `bash train_pre.sh --data_path /data/deepglobe --epochs 10`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_pre.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --task_name pre --mode 1 --batch_size 6 --sub_batch_size 6 --size_p 508 --size_g 508 --train --val "$@"
