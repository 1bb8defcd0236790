#!/usr/bin/env bash
# Stage 4: the full model (mode 4) from the pre model, medium and global models frozen; saved as all.epoch.pth.
# Extra arguments are forwarded (later ones win), e.g. `bash train_all.sh --data_path /data/deepglobe --epochs 10`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_all.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --task_name all --mode 4 --batch_size 6 --sub_batch_size 4 --size_p 508 --size_g 508 --pre_path pre.epoch.pth --c_path medium.epoch.pth --glo_path global.epoch.pth --train --val "$@"
