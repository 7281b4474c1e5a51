"""MeZO-FL: fully zeroth-order federated learning of the whole model, the pure-ZO reference.

MeZO: Malladi, Gao, Nichani, Damian, Lee, Chen, Arora, "Fine-Tuning Language Models with Just
Forward Passes", NeurIPS 2023 (arXiv 2305.17333), Algorithm 1, used as each client's local
optimizer; the server averages the models (FedAvg). It is HERON-SFL's client update applied to
the whole network with no cut, no aux head and no main server, so the ZO code is shared.

Deviations: the MeZO paper uses ZO-SGD with the central estimator; here the estimator, the
direction distribution and the optimizer follow the `zo` and `client_optim` config like HERON-SFL
(set zo.estimator = "central", client_optim.name = "sgd" for the paper's exact update).
"""

from __future__ import annotations

from typing import ClassVar

from heronsfl.algorithms.heron_sfl import HeronSFL


class MeZO(HeronSFL):
    name: ClassVar[str] = "mezo"
    summary: ClassVar[str] = "FL of the whole model with ZO (MeZO) clients, no server"
    uses_aux_head: ClassVar[bool] = False
    uploads_activations: ClassVar[bool] = False
    trains_whole_model: ClassVar[bool] = True
    supports_nopeek: ClassVar[bool] = False  # no cut, no activations to decorrelate
    requires: ClassVar[frozenset[str]] = frozenset({"whole-model"})
