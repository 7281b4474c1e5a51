#!/usr/bin/env bash
# The digits rows of docs/results/privacy.md: each algorithm x defense on the demo preset
# (shortened to 5 rounds: the 2-core machine was shared), then the inversion attack on each run.
# Runs go to $RUNS (not committed); attack results (JSON + PNG) to docs/results/privacy/digits/.
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
ATTACK="--decoder-steps 200 --unsplit-steps 200 --images 256 --overwrite"
for d in none noise nopeek; do
  for a in heron cse sflv2 frozen; do
    [[ $a == frozen && $d == nopeek ]] && continue  # a frozen client cannot learn a penalty
    name=$a-$d
    # Finished runs and attacks are skipped, so the script can be restarted.
    [[ -f "$RUNS/$name/summary.json" ]] ||
      heronsfl run demo_cnn_digits rounds=5 ${ALGO[$a]} ${DEF[$d]} device=cpu \
        privacy.keep_client_rounds=true --out "$RUNS/$name" -q
    # Round 0 (the common initialisation) once per defense; round 5 for every run.
    rounds=5
    [[ $a == heron ]] && rounds=0,5
    [[ -f "$OUT/$name/inversion.json" ]] ||
      heronsfl attack inversion "$RUNS/$name" --out "$OUT/$name" --rounds $rounds $ATTACK
  done
done
