#!/usr/bin/env bash
# Train the bundled small model from random weights on CPU, evaluate it on a held-out synthetic
# test split, train the GSTRA+LSTE ablation with the same recipe, and write the model with its
# card to src/videopanda_cluster/bundled/videopanda-small/.
#   scripts/train-small-model.sh            # everything (two trainings)
#   NO_ABLATION=1 scripts/train-small-model.sh
# ABLATION_FINDING and LIMITS: sentences for the card, on the ablation and on the model's limits.
# A rerun resumes in $WORK: corpora are kept, finished stages are not trained again (FRESH=1 wipes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VP=.venv/bin/videopanda
WORK=${WORK:-.cache/small-model}
DEST=${DEST:-src/videopanda_cluster/bundled/videopanda-small}
TRAIN="train --workers 0 --hparams small --image-size 112 --llm-layers 2 --system-prompt eval --attention sdpa"
TRAIN+=" --global-batch 16 --micro-batch 16 --seed 0"
# Square frames, large shapes, long moves: at 112 px a shape then spans several STAB tokens.
SYNTH="--size 128x128 --radius 0.16,0.24 --travel 0.6,1.0"
if [[ -n "${FRESH:-}" ]]; then rm -rf "$WORK"; fi
mkdir -p "$WORK"

synth() {  # folder, seed, videos
    if [[ ! -f "$1/synth.json" ]]; then
        rm -rf "$1"
        # shellcheck disable=SC2086
        "$VP" synth "$1" --seed "$2" --videos "$3" $SYNTH > /dev/null
    fi
}
synth "$WORK/corpus" 0 3000
synth "$WORK/heldout" 1 2000  # only its test split (200 videos) is used
# Distillation targets (spec §7.3) from the scene's ground truth (train/scene_teacher.py).
if [[ ! -f "$WORK/teacher/teacher/teacher.json" ]]; then
    "$VP" synth-teacher "$WORK/corpus" --output "$WORK/teacher" --image-size 112 > /dev/null
fi
TRAIN+=" --distill-weight 10 --teacher-store $WORK/teacher"
# Warm start of STAB + projector on the scene's per-cell labels (train/warmup.py).
TRAIN+=" --warmup-steps 1000"

train_and_eval() {  # name, extra train flags
    local name=$1
    shift
    if [[ ! -f "$WORK/$name/model/training.json" ]]; then  # else: trained by an earlier run
        # shellcheck disable=SC2086
        "$VP" $TRAIN --corpus "$WORK/corpus" --output "$WORK/$name" "$@"
    fi
    "$VP" eval run --benchmark msvd-qa --data-root "$WORK/heldout/eval/test" \
        --output "$WORK/eval" --run-id "$name" --checkpoint "$WORK/$name/model" --max-new-tokens 8
    "$VP" eval report "$name" --output "$WORK/eval" > /dev/null
}

train_and_eval full
args=()
if [[ -z "${NO_ABLATION:-}" ]]; then
    train_and_eval no-gstra-lste --ablate no_gstra --ablate no_lste
    args=(--ablation-report "$WORK/eval/eval/no-gstra-lste/report.json"
        --ablation-training "$WORK/no-gstra-lste/model/training.json"
        --ablation-finding "${ABLATION_FINDING:-}")
fi
.venv/bin/python -m videopanda_cluster.train.model_card --model "$WORK/full/model" \
    --report "$WORK/eval/eval/full/report.json" --dest "$DEST" --corpus "$WORK/corpus" \
    --command "scripts/train-small-model.sh (videopanda $TRAIN)" --limits "${LIMITS:-}" \
    "${args[@]}"
