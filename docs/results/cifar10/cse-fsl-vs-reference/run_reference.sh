#!/usr/bin/env bash
# One run of the public FSL-SAGE code (commit 437e77b, unmodified) on CPU, 3 clients, with one
# optional change made from outside its source: INIT=default skips its
# kaiming_normal_(fan_out) conv initialisation, leaving PyTorch's default conv init.
#   REF_SRC=.../FSL-SAGE/src REF_PATH=<shims>:<hydra site>:<heronsfl src> \
#     run_reference.sh ALGORITHM ROUNDS SEED INIT(ref|default) SAVE_PREFIX
set -euo pipefail
cd "$REF_SRC"
export PYTHONPATH="$REF_PATH"
exec python - "$@" <<'PY'
import runpy, sys, torch
algo, rounds, seed, init, prefix = sys.argv[1:6]
if init == "default":
    torch.nn.init.kaiming_normal_ = lambda t, *a, **k: t
sys.argv = ["main.py", "model=resnet18", "dataset=cifar10", f"algorithm={algo}",
            f"rounds={rounds}", "num_clients=3", "device=cpu", f"seed={seed}",
            f"save_dir_prefix={prefix}/init-{init}"]
runpy.run_path("main.py", run_name="__main__")
PY
