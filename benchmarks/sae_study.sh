#!/usr/bin/env bash
# The SAE results (docs/results/imagenet20-vit-s12/sae.md) from scratch, one thread a process:
#   bash benchmarks/sae_study.sh train [RUNS]   # SAEs of both shared models (run first)
#   bash benchmarks/sae_study.sh vit [RUNS]     # ViT latent paths and their pairs (then these
#   bash benchmarks/sae_study.sh beit [RUNS]    #   two, side by side)
# SAEs: every token of the 400 reference images (RUNS/dev-heldout, as benchmarks/judging.sh
# makes it), 40 of them held out for the quality figures; FFN and residual sites; 24 epochs. CLS-only
# SAEs of the ViT (where its paths read). Latent paths: the first 100 study images (ViT: JAS
# search and knowledge) and the first 50 (BEiT: knowledge), judged by zero, mean and resample
# ablation and paired with the neuron runs of benchmarks/judging.sh (knowledge) and the
# methods page (the JAS search's final JAS: RUNS/s12-dev400-scores).
set -euo pipefail
which=$1
runs=${2:-runs}
D=../shared/data/imagenet20-dev
R=$runs/dev-heldout
VIT=../shared/models/vit-s12-imagenet20
BEIT=../shared/models/beit-s12-imagenet20-meanpool
out=docs/results/imagenet20-vit-s12/sae
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SAE=(--site ffn --latents 3072 --k 32 --epochs 24 --dead-after 8192 --device cpu)
case $which in
  train)
    neuronpath sae train --model $VIT --data "$R" --out "$runs/sae2/vit-ffn-24" "${SAE[@]}" &
    neuronpath sae train --model $BEIT --data "$R" --out "$runs/sae2/beit-ffn-24" "${SAE[@]}"
    wait
    for m in vit:$VIT beit:$BEIT; do   # residual stream after each block, 6 x its 128 coordinates
      neuronpath sae train --model ${m#*:} --data "$R" --out "$runs/sae2/${m%%:*}-resid-24" \
          --site resid --latents 768 --k 32 --epochs 24 --dead-after 8192 --device cpu
    done
    for latents in 256 1024; do
      neuronpath sae train --model $VIT --data "$R" --out "$runs/sae2/vit-cls-$latents" \
          --site ffn --tokens read --latents $latents --k 16 --sae-batch 64 --buffer 1024 \
          --epochs 100 --dead-after 2048 --device cpu
    done ;;
  vit)
    neuronpath find --model $VIT --data $D --out "$runs/sae2/vit-paths" --units sae \
        --sae "$runs/sae2/vit-ffn-24/saes.txt" --methods jas,knowledge --limit 100 \
        --save-scores --device cpu
    neuronpath evaluate "$runs/sae2/vit-paths" --device cpu --ablation zero,mean,resample \
        --metrics prob,logit --reference "$R"
    { python benchmarks/jas_pairs.py "$runs/sae2/vit-paths:jas" "$runs/s12-dev400-scores:jas"
      python benchmarks/jas_pairs.py "$runs/sae2/vit-paths:knowledge" "$runs/judging-vit-mean:knowledge"
    } > $out/vit-jas-pairs.txt
    python benchmarks/faithfulness_pairs.py "$runs/sae2/vit-paths" knowledge knowledge \
        --b-run "$runs/judging-vit-mean" > $out/vit-faithfulness-pairs.txt ;;
  beit)
    neuronpath find --model $BEIT --data $D --out "$runs/sae2/beit-paths" --units sae \
        --sae "$runs/sae2/beit-ffn-24/saes.txt" --methods knowledge --limit 50 \
        --save-scores --device cpu
    neuronpath evaluate "$runs/sae2/beit-paths" --device cpu --ablation zero,mean,resample \
        --metrics prob,logit --reference "$R"
    python benchmarks/jas_pairs.py "$runs/sae2/beit-paths:knowledge" \
        "$runs/judging-beit-mean:knowledge" > $out/beit-jas-pairs.txt
    python benchmarks/faithfulness_pairs.py "$runs/sae2/beit-paths" knowledge knowledge \
        --b-run "$runs/judging-beit-mean" > $out/beit-faithfulness-pairs.txt ;;
  *) echo "expected train, vit or beit, got $which" >&2; exit 2 ;;
esac
