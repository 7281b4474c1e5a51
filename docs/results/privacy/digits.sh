#!/usr/bin/env bash
# The digits rows of docs/results/privacy.md: 4 clients' algorithms x defenses
# (the demo preset, shortened to 5 rounds: the 2-core machine was shared), then the inversion attack on each run. Runs go to $RUNS (not committed);
# the attack results (JSON + PNG) to docs/results/privacy/digits/.
set -euo pipefail
RUNS=${RUNS:-runs/privacy/digits}
OUT=docs/results/privacy/digits
mkdir -p "$RUNS" "$OUT"
declare -A ALGO=(
  [heron]="algorithm=heron-sfl" [cse]="algorithm=cse-fsl" [sflv2]="algorithm=sflv2"
  [frozen]="algorithm=heron-sfl model.freeze_client=true"
)
declare -A DEF=(
  [none]="" [noise]="privacy.noise_std=0.5" [nopeek]="privacy.nopeek_weight=1.0"
)
for a in heron cse sflv2 frozen; do
  for d in none noise nopeek; do
    [[ $a == frozen && $d == nopeek ]] && continue  # a frozen client cannot learn a penalty
    name=$a-$d
    heronsfl run demo_cnn_digits rounds=5 ${ALGO[$a]} ${DEF[$d]} device=cpu \
      privacy.keep_client_rounds=true --out "$RUNS/$name" -q
    heronsfl attack inversion "$RUNS/$name" --out "$OUT/$name" --rounds 0,5 --overwrite
  done
done
