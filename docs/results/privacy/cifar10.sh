#!/usr/bin/env bash
# The CIFAR-10 rows of docs/results/privacy.md: the fsl_sage_resnet18_cifar10 split (client =
# ImageNet stem + layer1 + layer2, cut 128x4x4; 3 clients), shortened to 2 rounds of 20 local
# steps and a 2,000-image test subset (the 2-core machine was shared with a long CIFAR-10
# sweep), then the inversion attack on each run. PRESET pins the preset's values as they were
# when these were measured (batch 128, FP16 wire, no weight decay, round-robin server order). Runs go to $RUNS (not committed); attack results (JSON + PNG)
# to docs/results/privacy/cifar10/.
set -euo pipefail
RUNS=${RUNS:-runs/privacy/cifar10}
DATA=${DATA:-../shared/data}
OUT=docs/results/privacy/cifar10
mkdir -p "$RUNS" "$OUT"
declare -A ALGO=(
  [heron]="algorithm=heron-sfl" [cse]="algorithm=cse-fsl" [sflv2]="algorithm=sflv2"
  [frozen]="algorithm=heron-sfl model.freeze_client=true"
)
declare -A DEF=(
  [none]="" [noise]="privacy.noise_std=0.5" [nopeek]="privacy.nopeek_weight=1.0"
)
PRESET="train.batch_size=128 train.server_order=round-robin comm.wire_dtype=fp16
  client_optim.weight_decay=0 server_optim.weight_decay=0"
ATTACK="--decoder-steps 200 --decoder-width 64 --unsplit-steps 100 --images 128 --overwrite"
# In order of priority: every algorithm undefended, then the defenses.
for name in heron-none cse-none sflv2-none frozen-none heron-noise heron-nopeek \
            cse-noise cse-nopeek sflv2-noise sflv2-nopeek frozen-noise; do
  a=${name%-*} d=${name#*-}
  # Finished runs and attacks are skipped, so the script can be restarted.
  [[ -f "$RUNS/$name/summary.json" ]] ||
    heronsfl run fsl_sage_resnet18_cifar10 $PRESET ${ALGO[$a]} ${DEF[$d]} data.root="$DATA" \
      device=cpu rounds=2 train.local_steps=20 data.test_subset=2000 \
      privacy.keep_client_rounds=true --out "$RUNS/$name" -q
  rounds=2
  [[ $a == heron ]] && rounds=0,2
  [[ -f "$OUT/$name/inversion.json" ]] ||
    heronsfl attack inversion "$RUNS/$name" --out "$OUT/$name" --rounds $rounds $ATTACK
done
