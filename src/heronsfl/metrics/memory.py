"""Peak memory of one client step: a live-tensor high-water mark that works on CPU and CUDA.

Why not ask the allocator: on CPU PyTorch keeps no peak counter, and process RSS mixes in the
main server (same process in simulation), the Python heap and allocator caching. So we count what
the client really holds, the bytes of its live tensor storages:

    peak_bytes = max over the step of  resident set (registered with ``track``)
                                     + storages allocated by aten ops while the tracker is active
                                     - those storages once freed

The resident set is what lives before the step starts (parameters, their gradients, optimizer
state, the input batch). New storages are seen by a ``TorchDispatchMode`` that inspects every op's
outputs, including the ops autograd's backward and the optimizer run. A storage counts once (keyed
by its C++ StorageImpl), so views and in-place results add nothing.

How frees are seen: PyTorch preserves one Python object per storage for as long as the StorageImpl
lives, so a ``weakref.ref`` callback on ``tensor.untyped_storage()`` fires exactly when the memory
is released. Verified on torch 2.13.0 (and checked by ``tests/metrics/test_memory.py``): the
weakref survives dropping the Python handle while a tensor, a view or an autograd saved tensor
still holds the storage, and fires when the last holder goes. The tracker holds weak references
only, so it never extends a tensor's life.

Not seen (caveats):
    - scratch buffers a kernel allocates below the dispatcher (oneDNN/cuDNN workspaces, im2col,
      GEMM packing) and allocator rounding or caching; on CUDA ``cuda_peak_bytes`` includes them.
    - storages created without an aten op (``torch.from_numpy``, DLPack), unless ``track``-ed.
    - in-place resizes (``resize_``, ``out=``) are re-measured only when the storage is already
      tracked; a resize of an untracked storage is ignored (rare in a training step).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

# A tensor, a module (params + grads + buffers), an optimizer (its state), or nested iterables.
Trackable: TypeAlias = Tensor | nn.Module | torch.optim.Optimizer | Iterable[Any] | None

# Ops whose schema says "output aliases input" although the input was made outside the
# dispatcher: torch.tensor(data) builds its storage in C++ and then calls lift_fresh on it.
_FRESH_ALIASES = frozenset({torch.ops.aten.lift_fresh.default})


def iter_tensors(*objs: Trackable) -> Iterator[Tensor]:
    """Yield the tensors a client holds in ``objs`` (see ``Trackable``); ``None`` is skipped."""
    for obj in objs:
        if obj is None:
            continue
        if isinstance(obj, Tensor):
            yield obj
        elif isinstance(obj, nn.Module):
            params = list(obj.parameters())
            yield from params
            yield from (p.grad for p in params if p.grad is not None)
            yield from obj.buffers()
        elif isinstance(obj, torch.optim.Optimizer):
            # State values may be Python numbers (e.g. SGD momentum off); only tensors hold memory.
            for state in obj.state.values():
                yield from (v for v in state.values() if isinstance(v, Tensor))
        elif isinstance(obj, Mapping):
            yield from iter_tensors(*obj.values())
        elif isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
            yield from iter_tensors(*obj)
        else:
            raise TypeError(
                f"cannot track {type(obj).__name__}; expected a Tensor, nn.Module, "
                "torch.optim.Optimizer, a mapping or an iterable of these"
            )


def resident_bytes(*objs: Trackable) -> int:
    """Bytes of the distinct storages behind ``objs`` (shared or tied tensors count once)."""
    seen: dict[int, int] = {}
    for t in iter_tensors(*objs):
        st = _storage(t)
        if st is not None:
            seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def _storage(t: Tensor) -> torch.UntypedStorage | None:
    """Return the real storage behind ``t``, or None for meta, sparse or zero-byte tensors."""
    if t.device.type == "meta":
        return None
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested or wrapper subclasses
        return None
    return st if st.nbytes() > 0 else None


def _flat_tensors(x: object) -> Iterator[Tensor]:
    """Tensors in an aten op's arguments or results (tensors, possibly in lists or tuples)."""
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, list | tuple):
        for y in x:
            yield from _flat_tensors(y)


class _AllocationMode(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch leaves it untyped
    """Forwards every op's outputs to the tracker; the op itself runs unchanged."""

    def __init__(self, tracker: PeakMemoryTracker) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._tracker = tracker

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self._tracker._paused:
            self._tracker._record(func, args, kwargs, out)
        return out


class PeakMemoryTracker:
    """High-water mark of the client's live tensor bytes during one step (see module docstring).

    Usage::

        with PeakMemoryTracker().track(model, optimizer, x, y) as mem:
            loss = F.cross_entropy(model(x), y); loss.backward(); optimizer.step()
            with mem.paused():           # the server, in the same process, is not the client
                grad = server(acts)
            mem.track(grad)              # but what it sends back now lives on the client
        record["client/peak_mem_bytes"] = mem.peak_bytes

    A tracker is single-use. After exit, ``peak_bytes`` and ``current_bytes`` are frozen and the
    weak references are dropped. Not thread-safe (frees seen from other threads are still counted).
    """

    def __init__(self) -> None:
        # StorageImpl address -> (nbytes, weakref to its Python storage object).
        self._live: dict[int, tuple[int, weakref.ref[torch.UntypedStorage]]] = {}
        self._current = 0
        self._peak = 0
        self._paused = 0
        self._mode: _AllocationMode | None = None
        self._done = False

    @property
    def peak_bytes(self) -> int:
        """Largest ``current_bytes`` seen since construction (resident set included)."""
        return self._peak

    @property
    def current_bytes(self) -> int:
        """Bytes of tracked storages alive now (at exit, once the tracker has exited)."""
        return self._current

    def track(self, *objs: Trackable) -> PeakMemoryTracker:
        """Register storages that the client holds but that were not allocated under the tracker.

        Call it before entering for the resident set, or while active for tensors that arrive
        from outside (a gradient "received over the network"). Already tracked storages add
        nothing. Returns ``self`` so that ``with PeakMemoryTracker().track(...) as mem`` works.
        """
        if self._done:
            raise RuntimeError("this PeakMemoryTracker has exited; create a new one per step")
        for t in iter_tensors(*objs):
            st = _storage(t)
            if st is not None:
                self._add(st)
        return self

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Ops run inside are not counted (e.g. server compute in the same process).

        Frees of tracked storages are still counted: that memory really is gone.
        """
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __enter__(self) -> PeakMemoryTracker:
        if self._done or self._mode is not None:
            raise RuntimeError("a PeakMemoryTracker is single-use; create a new one per step")
        self._mode = _AllocationMode(self)
        self._mode.__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._mode is not None, "__exit__ without __enter__"
        self._mode.__exit__(exc_type, exc, tb)  # type: ignore[no-untyped-call]
        self._done = True
        # Dropping the weakrefs also drops their callbacks: later frees no longer touch us.
        self._live.clear()

    def _record(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """Count the storages of ``out`` that the op newly allocated."""
        input_keys: set[int] | None = None
        for t in _flat_tensors(out):
            st = _storage(t)
            if st is None:
                continue
            key = st._cdata
            if key in self._live:  # view or in-place result of a counted storage
                self._add(st)  # re-measures it, in case the op resized it
                continue
            if func not in _FRESH_ALIASES:
                # A view or in-place result of an *untracked* storage (server tensor, constant)
                # is not an allocation either. Computed lazily: most outputs are new or tracked.
                if input_keys is None:
                    inputs = (*_flat_tensors(args), *_flat_tensors(list(kwargs.values())))
                    input_keys = {s._cdata for s in map(_storage, inputs) if s is not None}
                if key in input_keys:
                    continue
            self._add(st)

    def _add(self, st: torch.UntypedStorage) -> None:
        key, nbytes = st._cdata, st.nbytes()
        entry = self._live.get(key)
        if entry is not None:
            self._current += nbytes - entry[0]  # usually 0; nonzero after an in-place resize
            self._live[key] = (nbytes, entry[1])
        else:
            ref = weakref.ref(st, functools.partial(self._on_free, key))
            self._live[key] = (nbytes, ref)
            self._current += nbytes
        self._peak = max(self._peak, self._current)

    def _on_free(self, key: int, ref: weakref.ref[torch.UntypedStorage]) -> None:
        entry = self._live.get(key)
        # The identity check guards against a new storage that reused the freed address.
        if entry is not None and entry[1] is ref:
            del self._live[key]
            self._current -= entry[0]


def cuda_peak_bytes(
    fn: Callable[[], object],
    *resident: Trackable,
    device: torch.device | int | None = None,
) -> int:
    """Peak bytes of ``fn`` from the CUDA caching allocator, defined like ``PeakMemoryTracker``.

    Returns ``max_memory_allocated - memory_allocated_before + resident_bytes(*resident)``: new
    allocations at their high-water mark plus the resident set passed in (which is assumed to be
    on ``device``). Unlike the tracker it also sees kernel workspaces and 512-byte rounding, so it
    reads a little higher. Run ``fn`` once before measuring: the first call allocates the cuBLAS
    workspace and cuDNN autotuning buffers that later steps reuse.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_peak_bytes needs a CUDA device; on CPU use PeakMemoryTracker")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)  # the peak is only final once queued kernels have run
    return torch.cuda.max_memory_allocated(device) - before + resident_bytes(*resident)


def process_peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM), for a networked client or server process.

    Not getrusage's ru_maxrss: Linux carries that across exec from the forking parent, so a
    freshly started child would report its parent's peak. Unlike the tracker above it counts
    everything the process holds (interpreter, libraries, allocator caches), which is what a
    device owner sees. 0 where the kernel does not say (no /proc: not Linux).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
