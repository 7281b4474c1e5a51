"""PeakMemoryTracker against allocations whose sizes we know exactly."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from heronsfl.metrics.memory import PeakMemoryTracker, cuda_peak_bytes, resident_bytes

F32 = 4  # bytes per float32 element


def test_known_allocation_counts_its_bytes_exactly() -> None:
    # Baseline is 0: nothing is tracked, so the peak is exactly the new storage.
    with PeakMemoryTracker() as mem:
        x = torch.empty(1_000_000, dtype=torch.float32)
    assert mem.peak_bytes == 4_000_000
    assert mem.current_bytes == 4_000_000
    del x


def test_freed_storage_is_subtracted() -> None:
    with PeakMemoryTracker() as mem:
        a = torch.empty(1_000_000)
        del a
        b = torch.empty(500_000)
    # a and b were never alive together.
    assert mem.peak_bytes == 4_000_000
    assert mem.current_bytes == 2_000_000
    del b


def test_views_and_in_place_ops_add_nothing() -> None:
    outside = torch.zeros(1000)  # untracked: its views are not allocations either
    with PeakMemoryTracker() as mem:
        a = torch.zeros(1000)
        views = [a.view(10, 100), a[::2], a.reshape(100, 10).t(), a.detach(), outside[1:]]
        a.add_(1).mul_(2)
        torch.add(a, 1, out=a)
        a_bytes = mem.current_bytes
        # A storage lives while any view of it does; this holds only if PyTorch keeps the
        # storage's Python object alive with the StorageImpl (checked on torch 2.13).
        del a
        assert mem.current_bytes == a_bytes
        del views
        assert mem.current_bytes == 0
    assert a_bytes == 1000 * F32
    assert mem.peak_bytes == 1000 * F32


def test_tensor_from_data_is_counted() -> None:
    # torch.tensor builds its storage outside the dispatcher, then calls aten.lift_fresh.
    with PeakMemoryTracker() as mem:
        t = torch.tensor([1.0, 2.0, 3.0])
    assert mem.peak_bytes == 3 * F32
    del t


def test_track_counts_each_storage_once_with_tied_weights() -> None:
    # Prepare: embedding and head share one weight (tied), and only the head has a bias.
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10)
    head.weight = emb.weight
    model = nn.ModuleList([emb, head])
    param_bytes = (10 * 4 + 10) * F32
    # Execute / Assert: duplicates and views of the same storage add nothing.
    mem = PeakMemoryTracker().track(model, emb, [head.weight, head.weight[0]], {"w": emb.weight})
    assert mem.current_bytes == param_bytes
    assert resident_bytes(model, model) == param_bytes
    # Gradients are part of a module's resident set once they exist.
    head(emb(torch.tensor([1, 2]))).sum().backward()
    assert PeakMemoryTracker().track(model).current_bytes == 2 * param_bytes


def test_adam_state_is_counted_when_tracked_and_when_created() -> None:
    # Prepare
    model = nn.Linear(100, 50)
    param_bytes = (100 * 50 + 50) * F32
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 100)).sum().backward()
    # Adam state: exp_avg and exp_avg_sq per parameter, plus a 0-dim fp32 `step` per parameter.
    state_bytes = 2 * param_bytes + 2 * F32
    # Execute: the first step creates the state under the tracker.
    with PeakMemoryTracker().track(model) as mem:
        opt.step()
    # Assert: transients (Adam's denominator) are gone, the state stays.
    assert mem.current_bytes == 2 * param_bytes + state_bytes
    assert mem.peak_bytes > mem.current_bytes
    assert resident_bytes(opt) == state_bytes
    assert PeakMemoryTracker().track(model, opt).current_bytes == 2 * param_bytes + state_bytes


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


def test_backward_peak_exceeds_no_grad_peak() -> None:
    # Prepare
    torch.manual_seed(0)
    model, x = _mlp(), torch.randn(64, 256)
    param_bytes = resident_bytes(model)
    resident = param_bytes + 256 * 64 * F32  # weights, biases and the input batch
    act = 64 * 1024 * F32  # one hidden activation
    logits = 64 * 10 * F32
    # Execute
    with PeakMemoryTracker().track(model, x) as inference, torch.no_grad():
        model(x)
    with PeakMemoryTracker().track(model, x) as train:
        loss = model(x).square().mean()
        loss.backward()
    # Assert. Without autograd nothing is saved, so at most two hidden activations are alive at
    # once (a layer's input and its output) plus the logits; at least one hidden activation must
    # coexist with the next layer's output.
    assert resident + 2 * act <= inference.peak_bytes <= resident + 2 * act + logits
    # With autograd the forward keeps ~3 activations (saved ReLU outputs and a transient), which
    # the gradients outgrow here: the last weight gradient (layer 1) is computed from the
    # gradient of layer 1's output, alive next to all gradients (as large as the weights).
    # Saved activations are freed as backward passes them, so at most one more activation.
    assert resident + param_bytes + act <= train.peak_bytes <= resident + param_bytes + 2 * act
    assert train.peak_bytes > inference.peak_bytes
    # After backward the graph is freed: what remains are the gradients and the 0-dim loss.
    assert train.current_bytes == resident + param_bytes + F32
    del loss


def test_paused_ops_are_not_counted_but_tracked_arrivals_are() -> None:
    with PeakMemoryTracker() as mem:
        with mem.paused():  # e.g. the main server computing in the same process
            grad = torch.ones(250_000)
        assert mem.peak_bytes == 0
        mem.track(grad)  # the gradient "arrives over the network" at the client
        assert mem.current_bytes == 1_000_000
        del grad
        assert mem.current_bytes == 0
    assert mem.peak_bytes == 1_000_000


def test_tracker_holds_no_strong_references_and_is_single_use() -> None:
    with PeakMemoryTracker() as mem:
        x = torch.empty(10)
        ref = weakref.ref(x)
        storage_ref = weakref.ref(x.untyped_storage())
        del x
        assert ref() is None and storage_ref() is None
    with pytest.raises(RuntimeError, match="single-use"):
        mem.__enter__()
    with pytest.raises(TypeError, match="cannot track int"):
        PeakMemoryTracker().track(3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_bytes_matches_tracker_on_a_known_allocation() -> None:
    w = torch.zeros(1024, device="cuda")

    def step() -> None:
        a = torch.empty(1_000_000, device="cuda")
        del a
        torch.empty(500_000, device="cuda")

    step()  # warm-up
    # 4 MB is a multiple of the allocator's 512-byte rounding, so the two agree exactly.
    assert cuda_peak_bytes(step, w) == 4_000_000 + 1024 * F32
    with PeakMemoryTracker().track(w) as mem:
        step()
    assert mem.peak_bytes == 4_000_000 + 1024 * F32
