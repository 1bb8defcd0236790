#!/usr/bin/env bash
# Inria stage 5 (ours): the contextual refinement on top of the frozen full model (mode 5, all/B10/B15). The Inria
# release has no global model, so this refinement reads the image and the merged prediction only (pass
# --glo_path with a mode-0 Inria model to add that context). Saved as refine.epoch.pth; apply it with
# `bash test_inria.sh --refine_path refine.epoch.pth`. Our design, see docs/refinement.md.
# Extra arguments are forwarded (later ones win). Multi-GPU: LAUNCH="torchrun --nproc_per_node=4" bash train_inria_refine.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${LAUNCH:-}" ]; then LAUNCH=python3; [ -x "$here/.venv/bin/python" ] && LAUNCH="$here/.venv/bin/python"; fi
exec $LAUNCH "$here/train_deep_globe.py" --dataset inria --task_name refine --mode 5 --context 2 --context2 3 --batch_size 6 --sub_batch_size 8 --size_p 508 --pre_path all.epoch.pth --c_path B10.epoch.pth --c2_path B15.epoch.pth --train --val --refine --epochs 10 --lr 5e-4 --weight_decay 0 --refine_crop 256 --refine_crops 8 --save_each_epoch_from 0 "$@"
