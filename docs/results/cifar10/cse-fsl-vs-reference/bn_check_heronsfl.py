"""Round-end evaluation of a heronsfl run, then the same weights with the server's BatchNorm
running statistics re-estimated on the aggregated client's features of 20 training batches
(no weight changes). Usage (from the repository root):

    python docs/results/cifar10/cse-fsl-vs-reference/bn_check_heronsfl.py RUN_DIR DATA_ROOT
"""

import copy
import sys

import torch

from heronsfl.config import parse_config, read_config
from heronsfl.federation import Federation
from heronsfl.state import load_prefixed
from heronsfl.tasks import load_datasets

torch.set_num_threads(1)
run, root = sys.argv[1], sys.argv[2]
cfg = parse_config(read_config(f"{run}/config.toml", [f"data.root={root}"]))[0]
fed = Federation(cfg)
fed.load_state_dict(torch.load(f"{run}/checkpoint.pt", weights_only=False))
print("round", fed.round, "as logged:", fed.evaluate())
train = load_datasets(cfg, "train")
load_prefixed(fed.averaged(), fed.global_state)
client, server = fed.model.client.eval(), fed.model.server
old = copy.deepcopy(server.state_dict())
for m in server.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
server.train()
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for _ in range(20):
        idx = torch.randint(0, len(train.y), (256,), generator=g)
        server(client(fed.task.preprocess(train.x[idx], False, False, None)))
new = server.state_dict()
print("server BN re-estimated:", fed.evaluate())
for k in ("layer3_0.bn1.running_var", "layer3_0.shortcut.1.running_var"):
    ratio = float((old[k] / new[k]).median())
    print(k, f"as trained / re-estimated, median over channels: {ratio:.3f}")
