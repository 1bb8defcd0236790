#!/usr/bin/env bash
# Stage 5 (ours): the contextual refinement of the stitched prediction, on top of the frozen full model (mode 4)
# and reading the global model's prediction; saved as refine.epoch.pth. The refinement is our design after the
# paper's description (its authors never released theirs); see docs/refinement.md. Apply it at test time with
# `bash test_all.sh --refine_path refine.epoch.pth`.
# Extra arguments are forwarded (later ones win), e.g. `bash train_refine.sh --data_path /data/deepglobe --epochs 5`.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_refine.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --task_name refine --mode 4 --batch_size 6 --sub_batch_size 8 --size_p 508 --size_g 508 --pre_path all.epoch.pth --c_path medium.epoch.pth --glo_path global.epoch.pth --train --val --refine --epochs 10 --lr 5e-4 --weight_decay 0 --refine_crop 256 --refine_crops 8 "$@"
