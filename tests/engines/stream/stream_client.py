"""A client process for the fault tests: streams `steps` uploads, optionally stalling.

python -m tests.engines.stream.stream_client ADDRESS CLIENT_ID STEPS [--stall-after N]
    [--pause-s S]; the run secret comes from HERONSFL_STREAM_SECRET (never on the command line).
Prints `sent STEP` after each upload so the test knows where the client is.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from heronsfl.engines.stream.client import StreamClient
from heronsfl.messages import Upload


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("client_id", type=int)
    p.add_argument("steps", type=int)
    p.add_argument("--stall-after", type=int, default=None, help="go silent after N uploads")
    p.add_argument("--pause-s", type=float, default=0.0, help="sleep between uploads")
    a = p.parse_args()
    with StreamClient(a.address, os.environ["HERONSFL_STREAM_SECRET"], a.client_id, 0) as c:
        for s in range(a.steps):
            if s == a.stall_after:
                print("stalling", flush=True)
                time.sleep(3600)
            up = Upload(
                a.client_id, torch.full((64, 8), float(s), dtype=torch.float16), torch.arange(64)
            )
            c.send(up, s)
            print(f"sent {s}", flush=True)
            time.sleep(a.pause_s)


if __name__ == "__main__":
    main()
