#!/usr/bin/env bash
# Test: mode 4 with the all/medium/global checkpoints and 8-view TTA; writes <prediction_path>/<id>_mask.png.
# Extra arguments are forwarded (later ones win), e.g. `bash test_all.sh --data_path /data/deepglobe --prediction_path out`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash test_all.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --task_name all --mode 4 --batch_size 6 --sub_batch_size 8 --size_p 508 --size_g 508 --pre_path all.epoch.pth --c_path medium.epoch.pth --glo_path global.epoch.pth "$@"
