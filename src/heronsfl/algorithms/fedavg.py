"""FedAvg: plain federated learning of the whole model, the FL reference point.

Paper: McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS 2017 (arXiv 1602.05629), Algorithm 1. Every
client trains the whole network with first-order steps on its own data; the server only
averages. Same data, rounds and local steps as the split algorithms, so client memory and MACs
compare directly.

Deviations from the paper: the optimizer is the configured one (Adam by default, SGD in the
paper); averaging is uniform unless train.aggregation = "data-size" (the paper's n_k/n).
"""

from __future__ import annotations

from typing import ClassVar

from heronsfl.algorithms.base import ClientState, SplitAlgorithm, check_finite, task_loss
from heronsfl.messages import Batch, Upload


class FedAvg(SplitAlgorithm):
    name: ClassVar[str] = "fedavg"
    summary: ClassVar[str] = "FL of the whole model: FO client, no server, FedAvg"
    sends_gradients: ClassVar[bool] = False
    uses_aux_head: ClassVar[bool] = False
    uploads_activations: ClassVar[bool] = False
    trains_whole_model: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset({"whole-model"})

    def client_step(self, c: ClientState, batch: Batch) -> Upload | None:
        assert c.optimizer is not None, "an FO client needs its optimizer"
        loss = task_loss(c.model(batch.x), batch.y)
        c.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        c.optimizer.step()
        c.losses.append(check_finite(loss.item(), self._where(c), "lower client_optim.lr"))
        return None
