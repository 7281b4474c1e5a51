"""Label exposure: who sends labels to the main server, and what returned gradients reveal.

Every split algorithm in heronsfl uploads its labels with the activations (`Upload.labels`):
the main server computes the task loss, so it must. Local-loss algorithms (HERON-SFL, CSE-FSL,
FSL-SAGE) and synchronous ones (SFLV1/V2) alike; only whole-model FL (FedAvg, MeZO) sends none.

A label-private variant of synchronous SFL (labels kept on the client, as in U-shaped split
learning) would still leak them through the cut gradients the server computes: gradients of
samples of the same class point in similar directions. `gradient_label_inference` measures that
on the gradients an SFLV2 server returns, with two known attacks:

- anchors (Liu & Lyu, "Similarity-based label inference attack against training and inference
  of split learning", arXiv 2203.05222): the attacker knows the label of one sample per class
  and labels every other sample as its most cosine-similar anchor.
- clustering: k-means on the unit-normalized gradients, clusters matched to classes by the
  best one-to-one assignment (an upper bound for an attacker who knows no label at all but can
  name the clusters).

The norm attack of Li et al. (arXiv 2102.08504) needs a binary task with imbalanced classes and
is not applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from heronsfl.algorithms import ALGORITHMS


def label_exposure() -> dict[str, dict[str, bool]]:
    """Per registered algorithm, read from its class: labels uploaded in the clear (every
    algorithm that uploads activations: `Upload` carries them), cut gradients returned."""
    return {
        name: {
            "uploads_labels": cls.uploads_activations,
            "returns_gradients": cls.uploads_activations and cls.sends_gradients,
            "local_loss": cls.uploads_activations and not cls.sends_gradients,
        }
        for name, cls in ALGORITHMS.items()
    }


def gradient_label_inference(
    gradients: Tensor, labels: Tensor, num_classes: int, seed: int
) -> dict[str, Any]:
    """Accuracy of labels inferred from per-sample cut gradients (N, ...) with true labels (N,).

    Anchor accuracy is measured on the samples that are not anchors. Chance is about
    1 / num_classes.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    g = torch.nn.functional.normalize(gradients.flatten(1).double(), dim=1)  # (N, D) unit rows
    y = labels.numpy()
    rng = np.random.default_rng(seed)
    anchors = {}
    for k in range(num_classes):
        members = np.flatnonzero(y == k)
        if len(members):
            anchors[k] = int(rng.choice(members))
    classes = np.array(sorted(anchors))
    sims = g @ g[torch.as_tensor([anchors[k] for k in classes])].T  # (N, K) cosine similarity
    pred = classes[sims.argmax(1).numpy()]
    rest = np.setdiff1d(np.arange(len(y)), list(anchors.values()))
    anchor_acc = float((pred[rest] == y[rest]).mean())

    km = KMeans(n_clusters=num_classes, n_init=10, random_state=seed).fit(g.numpy())
    counts = np.zeros((num_classes, num_classes))
    for c, t in zip(km.labels_, y, strict=True):
        counts[c, t] += 1
    rows, cols = linear_sum_assignment(-counts)  # clusters -> classes, most samples matched
    cluster_acc = float(counts[rows, cols].sum() / len(y))
    return {
        "samples": len(y),
        "anchor_accuracy": anchor_acc,
        "anchors_per_class": 1,
        "cluster_accuracy": cluster_acc,
        "chance": float(np.bincount(y).max() / len(y)),
    }
