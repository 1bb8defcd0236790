#!/usr/bin/env bash
# Inria test: mode 5 with all/B10/B15 and 8-view TTA on offical_crossvali; writes <prediction_path>/<id>_mask.png (white buildings on black).
# Extra arguments are forwarded (later ones win), e.g. `bash test_inria.sh --data_path /data/inria --resume`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash test_inria.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --dataset inria --task_name all --mode 5 --context 2 --context2 3 --batch_size 6 --sub_batch_size 16 --size_p 508 --pre_path all.epoch.pth --c_path B10.epoch.pth --c2_path B15.epoch.pth "$@"
