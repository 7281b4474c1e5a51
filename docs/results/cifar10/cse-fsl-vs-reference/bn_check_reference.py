"""The same check on the reference code's saved round-end models (SAVE_DIR/models/*.pt, written
by its main.py): its own model classes, its test transform (ToTensor + ImageNet Normalize),
evaluation of aggregated client -> server in eval mode, then with the server's BatchNorm
statistics re-estimated on the aggregated client's features of 20 training batches (no
augmentation). Run with the reference's src/ and the shims on the path:

    PYTHONPATH=shims:site:FSL-SAGE/src:heronsfl/src python bn_check_reference.py SAVE_DIR DATA_ROOT
"""

import copy
import sys

import models  # noqa: F401  (the reference's registry)
import torch
from models import model_package

from heronsfl.data.datasets import load_cifar10

torch.set_num_threads(1)
save, root = sys.argv[1], sys.argv[2]
pack = model_package("resnet18", "resnet18")
client, server = pack.client(n_channels=3), pack.server(num_classes=10)
aux = pack.auxiliary(server=None, num_classes=10)
client.load_state_dict(torch.load(f"{save}/models/agg_client.pt"))
server.load_state_dict(torch.load(f"{save}/models/server.pt"))
aux.load_state_dict(torch.load(f"{save}/models/auxiliary_model_0.pt"))  # = the aggregated aux
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
test, train = load_cifar10(root, "test"), load_cifar10(root, "train")


def prep(x):
    return (x.float() / 255 - mean) / std


@torch.no_grad()
def evaluate(c, s):
    c.eval(), s.eval(), aux.eval()
    ok = ok_aux = 0
    loss = 0.0
    for i in range(0, len(test.y), 1000):
        x, y = prep(test.x[i : i + 1000]), test.y[i : i + 1000].long()
        h = c(x)
        out = s(h)
        loss += float(torch.nn.functional.nll_loss(out, y, reduction="sum"))
        ok += int((out.argmax(1) == y).sum())
        ok_aux += int((aux.forward_inner(h).argmax(1) == y).sum())
    n = len(test.y)
    return f"accuracy {ok / n:.4f}, loss {loss / n:.4f}, aux accuracy {ok_aux / n:.4f}"


print("as saved:", evaluate(client, server))
new = copy.deepcopy(server)
for m in new.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.reset_running_stats()
        m.momentum = None
new.train()
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for _ in range(20):
        new(client.eval()(prep(train.x[torch.randint(0, len(train.y), (256,), generator=g)])))
print("server BN re-estimated:", evaluate(client, new))
for name, a, b in (
    ("layer3.0.bn1", server.layer3[0].bn1, new.layer3[0].bn1),
    ("layer3.0.downsample.1", server.layer3[0].downsample[1], new.layer3[0].downsample[1]),
):
    r = (a.running_var / b.running_var).median()
    print(f"{name}.running_var as trained / re-estimated, median over channels: {r:.3f}")
