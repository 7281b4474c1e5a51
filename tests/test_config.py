from __future__ import annotations

import pytest

from heronsfl.config import load_config, to_toml, with_overrides
from heronsfl.errors import ConfigError


def test_overrides_are_cast_to_field_types() -> None:
    cfg = load_config(None, ["rounds=3", "zo.mu=1e-2", "data.augment=false", "model.cut=layer2.0"])
    assert cfg.rounds == 3 and cfg.zo.mu == 0.01 and cfg.data.augment is False
    assert cfg.model.cut == "layer2.0"


def test_toml_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(None, ["algorithm=cse-fsl", "zo.num_probes=4", 'data.root=a "b"'])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


def test_unknown_table_and_wrong_types_are_all_reported() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["zoo.mu=1", "clients=1.5", "data.download=maybe"])
    assert len(e.value.problems) == 3
    assert "did you mean 'zo'" in str(e.value)


def test_with_overrides_keeps_other_fields() -> None:
    base = load_config(None, ["rounds=7"])
    assert with_overrides(base, ["seed=3"]).rounds == 7
