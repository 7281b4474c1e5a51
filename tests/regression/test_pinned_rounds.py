"""Pinned per-round results of every algorithm on the digits preset (bit for bit).

The numbers were produced by the code at commit a29227a (before the federation core was
reshaped) with `python tests/regression/test_pinned_rounds.py`, which prints them. A change that
moves code between engines and algorithms must leave them exactly as they are; a change that
alters results on purpose updates them in a commit that says why.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from heronsfl.registry import load_config
from heronsfl.runner import run_experiment

BASE = [
    "rounds=2",
    "clients=3",
    "train.local_steps=3",
    "train.upload_every=1",
    "train.batch_size=16",
    "model.width=4",
    "data.train_subset=300",
    "data.test_subset=100",
    "device=cpu",
    "comm.wire_dtype=fp32",
]

CASES: dict[str, list[str]] = {
    "heron-sfl": ["algorithm=heron-sfl"],
    "heron-sfl-seeds": ["algorithm=heron-sfl", "zo.exchange=seeds", "train.upload_every=3"],
    "sflv1": ["algorithm=sflv1"],
    "sflv2": ["algorithm=sflv2"],
    "ho-sfl": ["algorithm=ho-sfl", "zo.num_probes=2"],
    "fsl-sage": ["algorithm=fsl-sage", "fsl_sage.align_every=1", "fsl_sage.buffer_size=32"],
    "fedavg": ["algorithm=fedavg"],
    "mezo": ["algorithm=mezo", "zo.num_probes=2", "zo.exchange=seeds"],
    "cse-fsl": [
        "algorithm=cse-fsl",
        "train.server_order=client-by-client",
        "train.clients_per_round=2",
    ],
}

KEYS = [
    "train/client_loss",
    "train/server_loss",
    "test/accuracy",
    "test/loss",
    "aux/accuracy",
    "comm/uplink_bytes",
    "comm/downlink_bytes",
]

PINNED: dict[str, list[dict[str, float]]] = {
    "heron-sfl": [
        {
            "train/client_loss": 2.3395779132843018,
            "train/server_loss": 2.232831292682224,
            "test/accuracy": 0.17,
            "test/loss": 2.252767333984375,
            "aux/accuracy": 0.19,
            "comm/uplink_bytes": 180096,
            "comm/downlink_bytes": 31488,
        },
        {
            "train/client_loss": 2.319773859447903,
            "train/server_loss": 1.9058114555146959,
            "test/accuracy": 0.29,
            "test/loss": 2.189880676269531,
            "aux/accuracy": 0.16,
            "comm/uplink_bytes": 360192,
            "comm/downlink_bytes": 62976,
        },
    ],
    "heron-sfl-seeds": [
        {
            "train/client_loss": 2.3395779132843018,
            "train/server_loss": 2.379591703414917,
            "test/accuracy": 0.15,
            "test/loss": 2.2850877380371095,
            "aux/accuracy": 0.19,
            "comm/uplink_bytes": 49764,
            "comm/downlink_bytes": 31488,
        },
        {
            "train/client_loss": 2.319773859447903,
            "train/server_loss": 2.2853062947591147,
            "test/accuracy": 0.21,
            "test/loss": 2.263147888183594,
            "aux/accuracy": 0.16,
            "comm/uplink_bytes": 99528,
            "comm/downlink_bytes": 62976,
        },
    ],
    "sflv1": [
        {
            "train/server_loss": 2.3556098408169217,
            "test/accuracy": 0.15,
            "test/loss": 2.273355712890625,
            "comm/uplink_bytes": 149256,
            "comm/downlink_bytes": 148104,
        },
        {
            "train/server_loss": 2.190663946999444,
            "test/accuracy": 0.2,
            "test/loss": 2.2405247497558594,
            "comm/uplink_bytes": 298512,
            "comm/downlink_bytes": 296208,
        },
    ],
    "sflv2": [
        {
            "train/server_loss": 2.216107553905911,
            "test/accuracy": 0.2,
            "test/loss": 2.2409906005859375,
            "comm/uplink_bytes": 149256,
            "comm/downlink_bytes": 148104,
        },
        {
            "train/server_loss": 1.8889598846435547,
            "test/accuracy": 0.41,
            "test/loss": 2.1548635864257815,
            "comm/uplink_bytes": 298512,
            "comm/downlink_bytes": 296208,
        },
    ],
    "ho-sfl": [
        {
            "train/server_loss": 2.228283021185133,
            "test/accuracy": 0.26,
            "test/loss": 2.223255462646484,
            "comm/uplink_bytes": 148680,
            "comm/downlink_bytes": 147528,
        },
        {
            "train/server_loss": 1.8973241911994085,
            "test/accuracy": 0.47,
            "test/loss": 2.0909660339355467,
            "comm/uplink_bytes": 297360,
            "comm/downlink_bytes": 295056,
        },
    ],
    "fsl-sage": [
        {
            "train/client_loss": 2.3386199474334717,
            "train/server_loss": 2.228698147667779,
            "test/accuracy": 0.22,
            "test/loss": 2.2472653198242187,
            "comm/uplink_bytes": 149256,
            "comm/downlink_bytes": 31488,
        },
        {
            "train/client_loss": 2.2646166218651667,
            "train/server_loss": 1.8926623662312825,
            "test/accuracy": 0.33,
            "test/loss": 2.1761358642578124,
            "comm/uplink_bytes": 298512,
            "comm/downlink_bytes": 62976,
        },
    ],
    "fedavg": [
        {
            "train/client_loss": 2.249729765786065,
            "test/accuracy": 0.49,
            "test/loss": 2.1832176208496095,
            "comm/uplink_bytes": 19992,
            "comm/downlink_bytes": 19992,
        },
        {
            "train/client_loss": 1.7985610829459295,
            "test/accuracy": 0.53,
            "test/loss": 2.0005509948730467,
            "comm/uplink_bytes": 39984,
            "comm/downlink_bytes": 39984,
        },
    ],
    "mezo": [
        {
            "train/client_loss": 2.4355471664004855,
            "test/accuracy": 0.07,
            "test/loss": 2.298726348876953,
            "comm/uplink_bytes": 480,
            "comm/downlink_bytes": 19992,
        },
        {
            "train/client_loss": 2.395445638232761,
            "test/accuracy": 0.13,
            "test/loss": 2.2824967956542968,
            "comm/uplink_bytes": 960,
            "comm/downlink_bytes": 39984,
        },
    ],
    "cse-fsl": [
        {
            "train/client_loss": 2.2469276785850525,
            "train/server_loss": 2.332768281300863,
            "test/accuracy": 0.2,
            "test/loss": 2.263528137207031,
            "aux/accuracy": 0.55,
            "comm/uplink_bytes": 120064,
            "comm/downlink_bytes": 20992,
        },
        {
            "train/client_loss": 1.5776540835698445,
            "train/server_loss": 1.9833878477414448,
            "test/accuracy": 0.27,
            "test/loss": 2.2202099609375,
            "aux/accuracy": 0.65,
            "comm/uplink_bytes": 240128,
            "comm/downlink_bytes": 41984,
        },
    ],
}


# CPU kernels split their reductions by thread, so the last bits depend on the thread count:
# the numbers were produced with 2 intra-op threads, and every run here uses 2, whatever the
# machine's core count or OMP_NUM_THREADS.
THREADS = 2


def rounds_of(name: str) -> list[dict[str, Any]]:
    """The pinned keys of every round of case `name`, run in the simulator."""
    cfg = load_config("demo_cnn_digits", [*BASE, *CASES[name]])
    records: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        run_experiment(
            cfg, None, on_round=lambda r: records.append({k: r[k] for k in KEYS if k in r})
        )
    finally:
        torch.set_num_threads(threads)
    return records


@pytest.mark.parametrize("name", list(CASES))
def test_rounds_are_bit_identical(name: str) -> None:
    assert rounds_of(name) == PINNED[name]


if __name__ == "__main__":  # print the current numbers, to update PINNED on purpose
    print(json.dumps({name: rounds_of(name) for name in CASES}, indent=1))
