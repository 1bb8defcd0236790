#!/usr/bin/env bash
# Stage 3: the global model on the resized whole image (mode 0); saved as global.epoch.pth.
# Extra arguments are forwarded (later ones win), e.g. `bash train_global.sh --data_path /data/deepglobe --epochs 10`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_global.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --task_name global --mode 0 --batch_size 6 --sub_batch_size 6 --size_p 508 --size_g 508 --train --val "$@"
