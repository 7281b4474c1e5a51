"""The algorithm registry: one module per algorithm, one line here."""

from __future__ import annotations

from heronsfl.algorithms.base import SplitAlgorithm
from heronsfl.algorithms.cse_fsl import CSEFSL
from heronsfl.algorithms.fedavg import FedAvg
from heronsfl.algorithms.fsl_sage import FSLSAGE
from heronsfl.algorithms.heron_sfl import HeronSFL
from heronsfl.algorithms.ho_sfl import HOSFL
from heronsfl.algorithms.mezo import MeZO
from heronsfl.algorithms.sflv1 import SFLV1
from heronsfl.algorithms.sflv2 import SFLV2
from heronsfl.algorithms.splitlora import SplitLoRA

ALGORITHMS: dict[str, type[SplitAlgorithm]] = {
    "heron-sfl": HeronSFL,
    "sflv1": SFLV1,
    "sflv2": SFLV2,
    "cse-fsl": CSEFSL,
    "fsl-sage": FSLSAGE,
    "ho-sfl": HOSFL,
    "fedavg": FedAvg,
    "mezo": MeZO,
    "splitlora": SplitLoRA,
}


def get_algorithm(name: str) -> type[SplitAlgorithm]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
