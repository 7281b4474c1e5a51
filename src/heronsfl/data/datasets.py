"""Datasets held whole in memory as uint8 tensors, and the per-batch transforms applied to them.

Why in memory: CIFAR-10 is 150 MiB as uint8 and sklearn's digits far less, so one tensor per split
lets partitioners index it directly and lets augmentation run vectorized on whole batches, with no
DataLoader workers whose RNG would escape the run's seed tree. Images stay uint8 until
`Normalize`, which keeps memory at a quarter of float32 and makes caches exact.

Nothing here downloads unless a caller passes `download=True`; tests never do.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor

from heronsfl.errors import DataError

logger = logging.getLogger(__name__)

Split = Literal["train", "test"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
# Official label order, which is also alphabetical, so image folders sorted by name agree with it.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# Exact sizes of the official splits; image folders are user-made, so only their shape is checked.
CIFAR10_SIZES: dict[str, int] = {"train": 50_000, "test": 10_000}
_CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR10_TAR = "cifar-10-python.tar.gz"
_CIFAR10_DIR = "cifar-10-batches-py"

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Bump when the decoded layout changes, so stale caches are rebuilt instead of trusted.
_CACHE_VERSION = 1
# Everything Pillow, zipfile and zlib raise for a truncated or corrupt file.
_DECODE_ERRORS = (
    OSError, EOFError, ValueError, SyntaxError, zipfile.BadZipFile, zlib.error,
    Image.DecompressionBombError,
)  # fmt: skip


@dataclass(frozen=True)
class ArrayDataset:
    """A whole split in memory: images `x` (N, C, H, W) uint8, labels `y` (N,) int64 in [0, K)."""

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        # Loaders build these; a violation is a bug in a loader, not a user mistake.
        assert self.x.ndim == 4, f"x must be (N, C, H, W), got shape {tuple(self.x.shape)}"
        assert self.x.dtype == torch.uint8, f"x must be uint8, got {self.x.dtype}"
        assert self.y.ndim == 1 and self.y.dtype == torch.int64, (
            f"y must be (N,) int64, got shape {tuple(self.y.shape)} {self.y.dtype}"
        )
        assert len(self.x) == len(self.y), f"{len(self.x)} images but {len(self.y)} labels"
        assert isinstance(self.classes, tuple), f"classes must be a tuple, got {type(self.classes)}"
        if len(self.y):
            lo, hi = int(self.y.min()), int(self.y.max())
            assert 0 <= lo and hi < len(self.classes), (
                f"labels span [{lo}, {hi}] but there are {len(self.classes)} classes"
            )

    def __len__(self) -> int:
        return len(self.y)


# --------------------------------------------------------------------------- image folders


def load_image_folder(path: str | Path, cache_dir: str | Path | None = None) -> ArrayDataset:
    """Decode `<class>/<file>.(jpg|jpeg|png)` images from a directory or a .zip into memory.

    Classes are the sorted top-level names and label i is the i-th class; files are sorted by
    name within a class. Directory entries, dotfiles and `__MACOSX` are ignored. Decoding the
    50k CIFAR-10 JPEGs takes seconds, so with `cache_dir` the tensors are saved to
    `cache_dir/<sha1>.pt`, keyed by the zip's (absolute path, size, mtime_ns) or the directory's
    sorted (relpath, size, mtime_ns) listing: editing or replacing the data misses the cache.

    Args:
        path: A directory or a .zip file.
        cache_dir: Where to keep decoded tensors; None decodes every time.

    Returns:
        The images as (N, 3, H, W) uint8 RGB with their labels.

    Raises:
        DataError: The path is missing, holds no images, a file is corrupt or undecodable, or
            images differ in size.
    """
    path = Path(path)
    if path.is_dir():
        files = _list_dir(path)
        fingerprint = repr([(rel, size, mtime) for rel, size, mtime in files])
    elif path.is_file():
        if path.suffix.lower() != ".zip":
            raise DataError(
                f"'{path}' is a file but not a .zip; pass a directory of <class>/<file>.jpg "
                "images or a .zip of them"
            )
        st = path.stat()
        fingerprint = repr((str(path.resolve()), st.st_size, st.st_mtime_ns))
    else:
        raise DataError(f"no image folder or .zip at '{path}'; check the path (data.root)")

    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha1(f"v{_CACHE_VERSION}:{fingerprint}".encode()).hexdigest()
        cache_file = Path(cache_dir) / f"{digest}.pt"
        cached = _read_cache(cache_file)
        if cached is not None:
            logger.info("loaded %d images of '%s' from cache %s", len(cached), path, cache_file)
            return cached

    start = time.perf_counter()
    if path.is_dir():
        items = [tuple(rel.split("/")) for rel, _, _ in files]
        ds = _decode_images(items, lambda rel: (path / rel).read_bytes(), path)
    else:
        ds = _decode_zip(path)
    logger.info("decoded %d images of '%s' in %.1f s", len(ds), path, time.perf_counter() - start)
    if cache_file is not None:
        _write_cache(cache_file, ds)
    return ds


def _is_image(parts: tuple[str, ...]) -> bool:
    """A `<class>/<file>` image path that is neither a dotfile nor macOS zip metadata."""
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return len(parts) == 2 and not hidden and parts[1].lower().endswith(_IMAGE_SUFFIXES)


def _list_dir(root: Path) -> list[tuple[str, int, int]]:
    """Sorted (relpath, size, mtime_ns) of the images under `root`; the listing is the cache key."""
    files = []
    for class_dir in root.iterdir():
        if not class_dir.is_dir():
            continue
        for f in class_dir.iterdir():
            if f.is_file() and _is_image((class_dir.name, f.name)):
                st = f.stat()
                files.append((f"{class_dir.name}/{f.name}", st.st_size, st.st_mtime_ns))
    # Sorting "class/name" strings would order "a-b/" before "a/"; sort on the parts instead.
    return sorted(files, key=lambda f: tuple(f[0].split("/")))


def _decode_zip(path: Path) -> ArrayDataset:
    """Decode a zip's image entries, turning every sign of a damaged archive into a DataError."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            items = [p for p in (tuple(n.split("/")) for n in names) if _is_image(p)]
            return _decode_images(items, lambda rel: zf.read(rel), path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(
            f"cannot read zip '{path}' ({type(e).__name__}: {e}); it is truncated or corrupt, "
            "re-copy or re-download it"
        ) from e


def _decode_images(
    items: list[tuple[str, ...]], read: Callable[[str], bytes], origin: Path
) -> ArrayDataset:
    """Decode (class, file) items with `read("class/file")` into one sorted ArrayDataset."""
    items = sorted(items)
    if not items:
        raise DataError(
            f"no images (<class>/<file>.jpg|jpeg|png) in '{origin}'; re-copy or re-download it"
        )
    classes = tuple(sorted({c for c, _ in items}))
    label = {c: i for i, c in enumerate(classes)}
    x: npt.NDArray[np.uint8] | None = None
    first = ""  # the image whose size all others must match
    for i, (cls, name) in enumerate(items):
        rel = f"{cls}/{name}"
        try:
            with Image.open(io.BytesIO(read(rel))) as im:
                arr = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
        except _DECODE_ERRORS as e:
            raise DataError(
                f"cannot decode '{rel}' in '{origin}' ({type(e).__name__}: {e}); "
                f"re-copy or re-download '{origin}'"
            ) from e
        if x is None:
            first = rel
            x = np.empty((len(items), *arr.shape), dtype=np.uint8)  # (N, H, W, 3)
        elif arr.shape != x.shape[1:]:
            raise DataError(
                f"'{rel}' in '{origin}' is {arr.shape[1]}x{arr.shape[0]} but '{first}' is "
                f"{x.shape[2]}x{x.shape[1]}; all images must share one size, resize them first"
            )
        x[i] = arr
    assert x is not None, "items is non-empty, so at least one image was decoded"
    y = torch.tensor([label[c] for c, _ in items], dtype=torch.int64)
    # (N, H, W, 3) -> (N, 3, H, W); contiguous so batches slice without copies later.
    return ArrayDataset(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), y, classes)


def _read_cache(file: Path) -> ArrayDataset | None:
    """The cached dataset, or None; a damaged cache only means a slower load, not an error."""
    if not file.is_file():
        return None
    try:
        # weights_only: a cache holds tensors and strings, so refuse anything else it might hold.
        blob = torch.load(file, map_location="cpu", weights_only=True)
        return ArrayDataset(blob["x"], blob["y"], tuple(blob["classes"]))
    except Exception as e:  # any failure, whatever its type, means "rebuild"
        logger.warning(
            "ignoring unreadable cache %s (%s: %s); rebuilding", file, type(e).__name__, e
        )
        return None


def _write_cache(file: Path, ds: ArrayDataset) -> None:
    """Write atomically (tmp + os.replace): a crash or a parallel run never leaves half a file."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"x": ds.x, "y": ds.y, "classes": list(ds.classes)}, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared cache dir needs it readable
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        # The data is already decoded; failing the run over a cache would be worse than no cache.
        logger.warning("could not write cache %s (%s); continuing without it", file, e)


# --------------------------------------------------------------------------- CIFAR-10


def load_cifar10(
    root: str | Path,
    split: Split,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> ArrayDataset:
    """Load a CIFAR-10 split from the first copy found under `root`.

    Looks, in order, for `cifar10/{split}.zip`, `cifar10/{split}/`, `{split}.zip` (image folders,
    e.g. the JPEG zips in shared/data), `cifar-10-batches-py/` and `cifar-10-python.tar.gz` (the
    official python format, read straight from the tarball after its md5 check).

    Args:
        root: Directory holding one of the layouts above.
        split: "train" or "test".
        download: When nothing is found, fetch the official tarball into `root` first.
        cache_dir: Cache for decoded image folders (see `load_image_folder`).

    Returns:
        The split as (N, 3, 32, 32) uint8 with labels in the official order.

    Raises:
        ValueError: `split` is not "train" or "test".
        DataError: No copy is found (and `download` is False), or the copy found is corrupt or
            has the wrong shape, class count or size.
    """
    if split not in _CIFAR10_BATCHES:
        raise ValueError(f"unknown split {split!r}; allowed: 'train', 'test'")
    root = Path(root)
    folders = [root / "cifar10" / f"{split}.zip", root / "cifar10" / split, root / f"{split}.zip"]
    official = [root / _CIFAR10_DIR, root / _CIFAR10_TAR]
    found = next((p for p in folders + official if p.exists()), None)
    if found is None and download:
        found = download_cifar10(root)
    if found is None:
        looked = ", ".join(
            f"{p.relative_to(root)}{'/' if p.suffix == '' else ''}" for p in folders + official
        )
        raise DataError(
            f"no CIFAR-10 under '{root}' (looked for {looked}); pass data.root=DIR holding a "
            "copy, or data.download=true when online"
        )

    if found in folders:
        ds = load_image_folder(found, cache_dir=cache_dir)
    else:
        ds = read_cifar10_official(found, split)
        if len(ds) != CIFAR10_SIZES[split]:
            raise DataError(
                f"'{found}' holds {len(ds)} {split} images, expected {CIFAR10_SIZES[split]}; "
                "it is incomplete, delete it and re-download (data.download=true)"
            )
    if len(ds.classes) != len(CIFAR10_CLASSES) or tuple(ds.x.shape[1:]) != (3, 32, 32):
        raise DataError(
            f"'{found}' has {len(ds.classes)} classes of {tuple(ds.x.shape[1:])} images, "
            "expected 10 classes of (3, 32, 32); point data.root at a CIFAR-10 copy"
        )
    logger.info("CIFAR-10 %s: %d images from '%s'", split, len(ds), found)
    return ds


def read_cifar10_official(source: str | Path, split: Split) -> ArrayDataset:
    """Read a split of the official python format from `cifar-10-batches-py/` or its tarball.

    The format is a set of pickles, and unpickling runs code. This is only reached for a tarball
    whose md5 matches the official release, or a folder the user pointed `root` at, which is as
    trusted as the user's own files. Split sizes are not checked here (`load_cifar10` does), so
    small hand-made batches can be read too.

    Args:
        source: The `cifar-10-batches-py` directory or `cifar-10-python.tar.gz`.
        split: "train" (data_batch_1..5) or "test" (test_batch).

    Returns:
        The split, batches concatenated in order.

    Raises:
        DataError: The md5 does not match, or a batch is missing or malformed.
    """
    source = Path(source)
    names = _CIFAR10_BATCHES[split]
    if source.is_dir():
        blobs = {}
        for name in names:
            if not (source / name).is_file():
                raise DataError(f"'{source}' has no {name}; re-copy or re-download CIFAR-10")
            blobs[name] = (source / name).read_bytes()
    else:
        check_md5(source, CIFAR10_MD5)
        blobs = _read_tar_members(source, names)
    xs, ys = [], []
    for name in names:
        x, y = _parse_batch(blobs[name], f"{source}:{name}")
        xs.append(x)
        ys.append(y)
    return ArrayDataset(torch.cat(xs), torch.cat(ys), CIFAR10_CLASSES)


def _read_tar_members(tar_path: Path, names: list[str]) -> dict[str, bytes]:
    """Read the named batches in one pass: going back in a .tar.gz means decompressing again."""
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path, "r:gz") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in names and base not in blobs:
                    f = tf.extractfile(member)
                    assert f is not None, "extractfile returns a file for regular members"
                    blobs[base] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"cannot read '{tar_path}' ({type(e).__name__}: {e}); delete it and re-download"
        ) from e
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DataError(f"'{tar_path}' lacks {', '.join(missing)}; delete it and re-download")
    return blobs


def _parse_batch(raw: bytes, where: str) -> tuple[Tensor, Tensor]:
    """One pickled batch -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    try:
        # latin1 is how numpy arrays pickled by Python 2 (the official files) must be read.
        batch: Mapping[Any, Any] = pickle.loads(raw, encoding="latin1")
        keys = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(keys["data"], dtype=np.uint8)
        labels = np.asarray(keys["labels"], dtype=np.int64)
        x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # rows are R, G, B planes
    except Exception as e:  # any malformed pickle is one user-facing problem
        raise DataError(
            f"malformed CIFAR-10 batch '{where}' ({type(e).__name__}: {e}); re-copy or re-download"
        ) from e
    if labels.shape != (len(x),) or (len(labels) and not 0 <= labels.min() <= labels.max() < 10):
        raise DataError(
            f"CIFAR-10 batch '{where}' has {len(x)} images but labels of shape {labels.shape} "
            "outside 0..9; re-copy or re-download"
        )
    return x, torch.from_numpy(labels)


def check_md5(path: str | Path, expected: str) -> None:
    """Raise a DataError unless `path` has md5 `expected` (it catches truncated downloads)."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
    if md5.hexdigest() != expected:
        raise DataError(
            f"'{path}' has md5 {md5.hexdigest()}, expected {expected} (truncated or corrupt); "
            "delete it and re-download (data.download=true)"
        )


def download_cifar10(root: str | Path, url: str = CIFAR10_URL, timeout_s: float = 60.0) -> Path:
    """Download the official tarball to `root/cifar-10-python.tar.gz` via a verified .part file.

    Returns:
        The path of the verified tarball.

    Raises:
        DataError: The download failed or the file's md5 does not match.
    """
    root = Path(root)
    dest = root / _CIFAR10_TAR
    part = dest.with_name(dest.name + ".part")
    logger.info("downloading %s to %s", url, dest)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(part, "wb") as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DataError(
            f"could not download {url} ({e}); copy {_CIFAR10_TAR} into '{root}' by hand, or pass "
            "data.root=DIR holding a copy"
        ) from e
    try:
        check_md5(part, CIFAR10_MD5)
    except DataError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- digits


def load_digits(split: Split) -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, offline) as a fixed 80/20 split.

    The split is stratified with its own fixed seed (random_state=0), not the run seed, so every
    run evaluates on the same 360 test images. Pixel values 0..16 become round(v * 255 / 16).

    Args:
        split: "train" (1437 images) or "test" (360 images).

    Returns:
        The split as (N, 1, 8, 8) uint8, classes "0".."9", in the bundled order.

    Raises:
        ValueError: `split` is not "train" or "test".
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; allowed: 'train', 'test'")
    # Imported here: sklearn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    target = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(target)), test_size=0.2, stratify=target, random_state=0
    )
    idx = np.sort(idx_train if split == "train" else idx_test)
    x = torch.from_numpy(images[idx][:, None].copy())  # (N, 1, 8, 8)
    return ArrayDataset(x, torch.from_numpy(target[idx]), tuple(str(d) for d in range(10)))


# --------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class Normalize:
    """Per-channel `(x / 255 - mean) / std` from uint8 images to float32 model inputs."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(
                f"Normalize needs one mean and one std per channel, got {len(self.mean)} means "
                f"and {len(self.std)} stds"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize std must be > 0 per channel, got {self.std}")

    def __call__(self, x_uint8: Tensor) -> Tensor:
        """Normalize a batch (B, C, H, W) uint8 into float32 on the same device."""
        if x_uint8.dtype != torch.uint8:
            # A float batch is probably already scaled; dividing it by 255 again would be silent.
            raise TypeError(f"Normalize expects uint8 images, got {x_uint8.dtype}")
        if x_uint8.ndim != 4 or x_uint8.shape[1] != len(self.mean):
            raise ValueError(
                f"Normalize expects (B, {len(self.mean)}, H, W), got {tuple(x_uint8.shape)}"
            )
        shape = (1, len(self.mean), 1, 1)  # broadcast over (B, C, H, W)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x_uint8.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x_uint8.device).view(shape)
        return (x_uint8.float() / 255.0 - mean) / std


# The values usually quoted for the official pickles. The shared JPEG copy measures mean
# (0.49125, 0.48209, 0.44652), std (0.24523, 0.24278, 0.26063): close enough not to matter.
CIFAR10_NORMALIZE = Normalize(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
# Computed once from load_digits("train"): x.float().div(255) over all 1437*8*8 pixels,
# .mean() and population .std(unbiased=False), rounded to 4 decimals.
DIGITS_NORMALIZE = Normalize(mean=(0.3054,), std=(0.3760,))


def augment_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Standard CIFAR augmentation: zero-pad, random crop back to H x W, horizontal flip p=0.5.

    Each image gets its own offsets and flip, drawn from `generator` in a fixed order (row
    offsets, column offsets, flips), so equal generator states give equal batches. The crop
    and flip are one gather on the padded batch, with no Python loop over images.

    Args:
        x: Images (B, C, H, W), uint8 or float.
        generator: Source of the offsets and flips (e.g. a client's generator).
        pad: Zero padding per side; offsets are drawn from 0..2*pad.

    Returns:
        The augmented batch, same shape, dtype and device as `x`.

    Raises:
        ValueError: `x` is not 4-D or `pad` is negative.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_crop_flip expects (B, C, H, W), got {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    B, C, H, W = x.shape
    gdev, dev = generator.device, x.device
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=gdev).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=gdev).to(dev)
    flip = (torch.rand(B, generator=generator, device=gdev) < 0.5).to(dev)

    padded = x.new_zeros((B, C, H + 2 * pad, W + 2 * pad))
    padded[:, :, pad : pad + H, pad : pad + W] = x
    rows = oy[:, None] + torch.arange(H, device=dev)  # (B, H) rows of each crop
    cols = ox[:, None] + torch.arange(W, device=dev)  # (B, W) columns of each crop
    # A horizontal flip of the crop is the same columns read right to left.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)
