#!/usr/bin/env bash
# Stage 2: the medium-context model (mode 2), started from the pre model; saved as medium.epoch.pth.
# Extra arguments are forwarded (later ones win), e.g. `bash train_medium.sh --data_path /data/deepglobe --epochs 10`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_medium.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --task_name medium --mode 2 --batch_size 6 --sub_batch_size 4 --size_p 508 --size_g 508 --pre_path pre.epoch.pth --train --val "$@"
