#!/usr/bin/env bash
# The ground-truth results from scratch, one model at a time, on one thread:
#   bash benchmarks/ground_truth.sh vit|beit|demo|demo-refused|vit-first20 [RUNS]
# plants (verified or refused), the six ranking methods and causal/learned on each plant's
# triggered images, and the across-plant summaries, under RUNS (default runs/).
set -euo pipefail
which=$1
runs=${2:-runs}
D=../shared/data/imagenet20-dev
M=jas,activation,knowledge,influence-pattern,jas-mean,delta-activation
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$runs"
case $which in
  vit)  neuronpath plant --model ../shared/models/vit-s12-imagenet20 --data $D \
            --out "$runs/gt-vit" --plants 3 --device cpu
        plants=("$runs"/gt-vit/seed-*); limit=40 ;;
  beit) neuronpath plant --model ../shared/models/beit-s12-imagenet20-meanpool --data $D \
            --out "$runs/gt-beit" --plants 3 --target n03888257 --device cpu
        plants=("$runs"/gt-beit/seed-*); limit=40 ;;
  demo) W=$(python -c "from neuronpath.models.demo import shipped_model_dir; print(shipped_model_dir())")
        DIGITS=~/.cache/neuronpath/digits-v1/test   # written by neuronpath demo
        for t in 0 7; do
          neuronpath plant --model "$W" --data $DIGITS --out "$runs/gt-demo-t$t" --target $t \
              --layers 2,4 --seeds 0,1,2,3,4 --calibration 10 --per-class 10 \
              --trigger-size 0.5 --device cpu
        done
        plants=("$runs"/gt-demo-t*/seed-*); limit=45 ;;
  demo-refused)  # the 8 demo configurations the links check refuses (each tried, none written)
        W=$(python -c "from neuronpath.models.demo import shipped_model_dir; print(shipped_model_dir())")
        DIGITS=~/.cache/neuronpath/digits-v1/test
        for tl in 1:2,4 2:2,4 3:2,4 4:2,4 6:2,4 8:2,4 5:1,3,5 9:2,3,5; do
          t=${tl%%:*}; layers=${tl#*:}
          neuronpath plant --model "$W" --data $DIGITS --out "$runs/gt-demo-retry/t$t" \
              --target $t --layers $layers --seed 0 --calibration 10 --per-class 10 \
              --trigger-size 0.5 --device cpu || echo "target $t, layers $layers: refused"
        done
        exit 0 ;;
  vit-first20)  # the first 20 dev images of each class (another image set for the CLS model)
        python - "$D" "$runs/dev-first20" <<'PY'
import sys
from pathlib import Path
source, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
for folder in sorted(p for p in source.iterdir() if p.is_dir()):
    (out / folder.name).mkdir(parents=True, exist_ok=True)
    for image in sorted(folder.iterdir())[:20]:
        link = out / folder.name / image.name
        if not link.exists():
            link.symlink_to(image)
PY
        neuronpath plant --model ../shared/models/vit-s12-imagenet20 --data "$runs/dev-first20" \
            --out "$runs/gt-vit-first20" --device cpu
        exit 0 ;;
  *) echo "expected vit, beit, demo, demo-refused or vit-first20, got $which" >&2; exit 2 ;;
esac
found=(); found_cl=()
for d in "${plants[@]}"; do
  name=$(basename "$(dirname "$d")")-$(basename "$d")
  neuronpath find --model "$d" --data "$d/images" --reference "$d/clean" --methods $M \
      --limit $limit --save-scores --out "$runs/find-$name" --device cpu
  neuronpath find --model "$d" --data "$d/images" --reference "$d/clean" --methods causal,learned \
      --limit $limit --save-scores --out "$runs/findcl-$name" --device cpu
  found+=("$runs/find-$name"); found_cl+=("$runs/findcl-$name")
done
neuronpath benchmark "${found[@]}" --out "$runs/summary-$which"
neuronpath benchmark "${found_cl[@]}" --out "$runs/summary-cl-$which"
