"""How large is weight decay 1e-4 * w next to the aux head's gradient? From the reference code's
own checkpoint (SAVE_DIR/checkpoints/latest.pt, written by its main.py): the aux weights and
the aux Adam's bias-corrected second moment (RMS gradient). Run from FSL-SAGE/src with the
shims on the path (the checkpoint pickles its classes):

    PYTHONPATH=shims:site:src:. python aux_decay_vs_gradient.py SAVE_DIR/checkpoints/latest.pt
"""

import sys

import torch

ck = torch.load(sys.argv[1], weights_only=False, map_location="cpu")
ck = ck if isinstance(ck, dict) else vars(ck)
state = ck["auxiliary_models"][0]
params = [v for k, v in state.items() if "running" not in k and "num_batches" not in k]
moments = ck["auxiliary_optimizers"][0]["state"]
decay = grad = 0.0
for i, p in enumerate(params):
    step = float(moments[i]["step"])
    rms = (moments[i]["exp_avg_sq"] / (1 - 0.999**step)).sqrt()
    decay += float((1e-4 * p).norm() ** 2)
    grad += float(rms.norm() ** 2)
ratio = (decay / grad) ** 0.5
print(f"aux: |1e-4 * w| / |RMS gradient| = {ratio:.4f} ({len(params)} tensors, step {step:.0f})")
