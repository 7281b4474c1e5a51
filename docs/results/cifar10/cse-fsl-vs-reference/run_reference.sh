#!/usr/bin/env bash
# One run of the public FSL-SAGE code (commit 437e77b, unmodified) on CPU, 3 clients, with two
# optional changes made from outside its source:
# - INIT=default skips its kaiming_normal_(fan_out) conv initialisation, leaving PyTorch's
#   default conv init;
# - FEDAVG_SERVER=private (environment) gives each client of its `fed_avg` its own copy of the
#   server half. The code as published wraps one shared `server.model` object into every
#   client's model, so its FedAvg trains the back half sequentially on all clients' data and
#   averages only the front half; with private copies it is textbook FedAvg.
#   REF_SRC=.../FSL-SAGE/src REF_PATH=<shims>:<hydra site>:<heronsfl src> [FEDAVG_SERVER=private] \
#     run_reference.sh ALGORITHM ROUNDS SEED INIT(ref|default) SAVE_PREFIX
set -euo pipefail
cd "$REF_SRC"
export PYTHONPATH="$REF_PATH"
exec python - "$@" <<'PY'
import copy, os, runpy, sys, torch
algo, rounds, seed, init, prefix = sys.argv[1:6]
if init == "default":
    torch.nn.init.kaiming_normal_ = lambda t, *a, **k: t
if os.environ.get("FEDAVG_SERVER") == "private":
    from algos import baselines
    from models import config_optimizer, config_lr_scheduler
    shared_init = baselines.FedAvg.__init__

    def private_server_init(self, *args, **kwargs):
        shared_init(self, *args, **kwargs)
        for c in self.clients:  # [client half, shared server half] -> [client half, own copy]
            c.model = torch.nn.Sequential(c.model[0], copy.deepcopy(self.server.model))
            c.optimizer = config_optimizer(c.model.parameters(), c.optimizer_options)
            c.lr_scheduler = config_lr_scheduler(c.optimizer, c.lr_scheduler_options)

    baselines.FedAvg.__init__ = private_server_init
    prefix += "/fedavg-private-server"
sys.argv = ["main.py", "model=resnet18", "dataset=cifar10", f"algorithm={algo}",
            f"rounds={rounds}", "num_clients=3", "device=cpu", f"seed={seed}",
            f"save_dir_prefix={prefix}/init-{init}"]
runpy.run_path("main.py", run_name="__main__")
PY
