#!/usr/bin/env bash
# The selection x judging matrix on the shared models (a comparison not graded by its own
# selection rule).  Each model is searched twice on the same images -- knowledge, causal and
# learned, the last two choosing with mean ablation in one run and with zero ablation in the
# other -- each run is judged by zero, mean and resample ablation and four metrics, and
# `neuronpath matrix` compares causal and learned with the knowledge path:
#   bash benchmarks/judging.sh vit|beit mean|zero [RUNS]   (one thread each; run both side by side)
#   bash benchmarks/judging.sh vit|beit matrix [RUNS]
# Images: the first LIMIT of the dev folder in find's class-interleaved order (ViT 400, BEiT
# 100); reference: the dev images outside the first 400 (RUNS/dev-heldout, made by
# benchmarks/heldout_images.py from a 400-image run), so no reference image is judged.
set -euo pipefail
which=$1
selected=$2
runs=${3:-runs}
D=../shared/data/imagenet20-dev
R=$runs/dev-heldout
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
case $which in
  vit)  M=../shared/models/vit-s12-imagenet20; limit=400 ;;
  beit) M=../shared/models/beit-s12-imagenet20-meanpool; limit=100 ;;
  *) echo "expected vit or beit, got $which" >&2; exit 2 ;;
esac
if [ "$selected" = matrix ]; then
  neuronpath matrix "$runs/judging-$which-mean" "$runs/judging-$which-zero" \
      --baseline knowledge --out "$runs/judging-$which-matrix"
  exit 0
fi
if [ ! -d "$R" ]; then
  neuronpath find --model ../shared/models/vit-s12-imagenet20 --data $D --methods activation \
      --limit 400 --device cpu --out "$runs/dev400-order"
  python benchmarks/heldout_images.py "$runs/dev400-order" $D "$R"
fi
case $selected in
  mean) extra=(--reference "$R") ;;
  zero) extra=(--causal-ablation zero --learned-ablation zero) ;;
  *) echo "expected mean, zero or matrix, got $selected" >&2; exit 2 ;;
esac
out=$runs/judging-$which-$selected
neuronpath find --model $M --data $D --methods knowledge,causal,learned --limit $limit \
    --device cpu --out "$out" "${extra[@]}"
neuronpath evaluate "$out" --device cpu --ablation zero,mean,resample \
    --metrics prob,logit,logit-diff,kl --controls random --reference "$R"
