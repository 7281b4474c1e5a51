"""Fixtures for the Flower engine: the run config exactly as Flower builds it, and a runner
that serves a config over the in-process LocalGrid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.common.config import get_fused_config_from_dir

from heronsfl.config import RunConfig
from heronsfl.engines.flower import client_app
from heronsfl.engines.flower.codec import settings_from_run_config
from heronsfl.engines.flower.deploy import write_app
from heronsfl.engines.flower.protocol import DeployOptions
from heronsfl.engines.flower.server_app import FlowerServer
from heronsfl.federation import Federation
from tests.engines.flower.local_grid import LocalGrid

# Keys whose value is a duration, and the prefixes of those only a networked run has.
ENGINE_KEYS = {"round_s", "wall_s"}
ENGINE_PREFIXES = ("flower/", "stream/", "deploy/")


def flower_run_config(app_dir: Path, cfg: RunConfig, opts: DeployOptions) -> dict[str, Any]:
    """What a ServerApp/ClientApp finds in context.run_config for the app `deploy` writes."""
    write_app(app_dir, cfg, opts)
    return dict(get_fused_config_from_dir(app_dir, {}))


def node_configs(cfg: RunConfig) -> list[dict[str, Any]]:
    return [{"partition-id": i, "num-partitions": cfg.clients} for i in range(cfg.clients)]


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., tuple[FlowerServer, LocalGrid]]:
    """serve(cfg, name, before_send=None, nodes=None, **opts) -> (server, grid) after run()."""

    def _serve(
        cfg: RunConfig,
        name: str = "run",
        before_send: Callable[[str, list[int]], None] | None = None,
        nodes: list[dict[str, Any]] | None = None,
        silent: set[int] = frozenset(),  # type: ignore[assignment]
        **opts: Any,
    ) -> tuple[FlowerServer, LocalGrid]:
        options = DeployOptions(out=str(tmp_path / name), **opts)
        run_config = flower_run_config(tmp_path / f"{name}-app", cfg, options)
        grid = LocalGrid(client_app.app, run_config, nodes or node_configs(cfg), before_send)
        grid.silent |= set(silent)
        server = FlowerServer(grid, *settings_from_run_config(run_config))
        server.run()
        return server, grid

    return _serve


def assert_same_models(a: Federation, b: Federation) -> None:
    """Bit-identical global client (+ aux) state and main-server model."""
    assert a.global_state.keys() == b.global_state.keys()
    for key, value in a.global_state.items():
        assert torch.equal(value, b.global_state[key]), key
    sa, sb = a.model.server.state_dict(), b.model.server.state_dict()
    for key, value in sa.items():
        assert torch.equal(value, sb[key]), key


def algorithm_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ENGINE_KEYS and not k.startswith(ENGINE_PREFIXES)}
        for r in records
    ]
