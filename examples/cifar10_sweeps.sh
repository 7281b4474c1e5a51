#!/usr/bin/env bash
# All CIFAR-10 runs of docs/results/cifar10.md, most informative first, from the repository root
# (data in ../shared/data). Resumable: rerun the same command after a stop and every sweep
# skips its finished runs and continues an unfinished one from its last completed round.
#
#   examples/cifar10_sweeps.sh [OUT]        # OUT defaults to runs/cifar10
out="${1:-runs/cifar10}"
for grid in heron_control baselines heron_adam_paper_lr heron_zo_sgd; do
  heronsfl sweep "examples/cifar10_${grid}.toml" --out "${out}/${grid}"  # a failed run: go on
done
