"""Module states as they travel: several modules flattened under prefixes ("client.", "aux.").

Shared by the engines and by algorithms that move module states themselves (FSL-SAGE).
"""

from __future__ import annotations

from torch import Tensor, nn


def prefixed_state(modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """{"client.0.weight": ..., "aux.1.bias": ...}: one flat state for several modules."""
    return {f"{prefix}.{k}": v for prefix, m in modules.items() for k, v in m.state_dict().items()}


def travelling_state(modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """What crosses the wire: trainable parameters and buffers (BatchNorm statistics).

    Frozen parameters (a frozen client, a LoRA base model) never change, and every party builds
    them itself from the same seed or checkpoint, so they are never sent.
    """
    out = {}
    for prefix, m in modules.items():
        for name, p in m.named_parameters():
            if p.requires_grad:
                out[f"{prefix}.{name}"] = p.detach()
        for name, b in m.named_buffers():
            out[f"{prefix}.{name}"] = b.detach()
    return out


def load_prefixed(modules: dict[str, nn.Module], state: dict[str, Tensor]) -> None:
    """Load a (possibly partial: see travelling_state) prefixed state into the modules."""
    for prefix, m in modules.items():
        n = len(prefix) + 1
        sub = {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        unexpected = m.load_state_dict(sub, strict=False).unexpected_keys
        assert not unexpected, f"state keys {unexpected} do not belong to {prefix!r}"
