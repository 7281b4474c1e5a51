from __future__ import annotations

import pytest

from heronsfl.config import to_toml
from heronsfl.errors import ConfigError
from heronsfl.registry import load_config, with_overrides


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


def test_an_algorithm_section_round_trips_and_is_checked_with_the_rest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Prepare: FSL-SAGE declares [fsl_sage] next to its code; config.py does not know it.
    cfg = load_config(None, ["algorithm=fsl-sage", "fsl_sage.align_every=3"])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    # Execute
    with pytest.raises(ConfigError) as e:
        load_config(None, ["algorithm=fsl-sag", "fsl_sage.align_evry=3", "fsl_sage.align_lr=0"])
    # Assert: the section is read, written and read back; every problem at once
    assert cfg.section("fsl_sage").align_every == 3 and "[fsl_sage]" in path.read_text()
    assert load_config(path) == cfg
    assert len(e.value.problems) == 3
    assert "did you mean 'align_every'" in str(e.value) and "unknown algorithm" in str(e.value)
    assert "fsl_sage.align_lr = 0.0 must be > 0" in str(e.value)


def test_one_probes_knob_and_the_old_key_names_it() -> None:
    from heronsfl.algorithms import get_algorithm

    cfg = load_config(None, ["algorithm=ho-sfl"])
    assert cfg.zo.num_probes == 0 and get_algorithm("ho-sfl")(cfg).num_probes == 5  # the paper's
    assert get_algorithm("heron-sfl")(cfg).num_probes == 1
    with pytest.raises(
        ConfigError, match=r"ho_sfl.num_probes is now zo.num_probes .*zo.num_probes=3"
    ):
        load_config(None, ["algorithm=ho-sfl", "ho_sfl.num_probes=3"])
