"""Tests for heronsfl.data.datasets: tiny synthetic files, no network, real data if present."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from heronsfl.data import datasets as D
from heronsfl.data.datasets import (
    CIFAR10_CLASSES,
    DIGITS_NORMALIZE,
    ArrayDataset,
    Normalize,
    augment_crop_flip,
    load_cifar10,
    load_digits,
    load_image_folder,
    read_cifar10_official,
)
from heronsfl.errors import DataError

# ----------------------------------------------------------------------------- helpers


def _png(arr: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array: lossless, so decoded pixels compare exactly."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _images(seed: int = 0) -> dict[str, np.ndarray]:
    """Six 5x4 RGB images over 3 classes, named out of order to test sorting."""
    rng = np.random.default_rng(seed)
    names = ["cat/b.png", "cat/a.png", "ant/z.png", "ant/y.png", "bee/1.png", "bee/0.png"]
    return {n: rng.integers(0, 256, (5, 4, 3), dtype=np.uint8) for n in names}


# Sorted by class, then file: the order load_image_folder must return.
_ORDER = ["ant/y.png", "ant/z.png", "bee/0.png", "bee/1.png", "cat/a.png", "cat/b.png"]


def _expected(images: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([images[n] for n in _ORDER])).permute(0, 3, 1, 2)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    return x, y


def _write_zip(path: Path, images: dict[str, np.ndarray]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ant/", b"")  # a directory entry: ignored
        zf.writestr("__MACOSX/ant/._y.png", b"junk")  # macOS metadata: ignored
        zf.writestr("ant/.DS_Store", b"junk")  # dotfile: ignored
        for name, arr in images.items():
            zf.writestr(name, _png(arr))
    return path


def _write_dir(root: Path, images: dict[str, np.ndarray]) -> Path:
    for name, arr in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png(arr))
    (root / "README.txt").write_text("not an image, not a class")
    (root / ".hidden").mkdir()
    return root


def _write_batches(folder: Path, n_per_batch: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Tiny batches in the official pickle format (bytes keys, (N, 3072) uint8 rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
        batches[name] = (data, labels)
    return batches


def _write_tar(tar_path: Path, src: Path) -> str:
    """Pack `src` as cifar-10-batches-py/ into a .tar.gz and return its md5."""
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(src, arcname="cifar-10-batches-py")
    return hashlib.md5(tar_path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- image folders


@pytest.mark.parametrize("kind", ["zip", "dir"])
def test_image_folder_labels_order_and_pixels(tmp_path: Path, kind: str) -> None:
    # Prepare
    images = _images()
    src = (
        _write_zip(tmp_path / "d.zip", images)
        if kind == "zip"
        else _write_dir(tmp_path / "d", images)
    )
    # Execute
    ds = load_image_folder(src)
    # Assert
    x, y = _expected(images)
    assert ds.classes == ("ant", "bee", "cat")
    assert ds.x.dtype == torch.uint8 and ds.x.shape == (6, 3, 5, 4)
    assert torch.equal(ds.y, y)
    assert torch.equal(ds.x, x)
    assert len(ds) == 6


@pytest.mark.parametrize("kind", ["zip", "dir"])
def test_image_folder_cache_written_then_read(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    images = _images()
    src = (
        _write_zip(tmp_path / "d.zip", images)
        if kind == "zip"
        else _write_dir(tmp_path / "d", images)
    )
    cache = tmp_path / "cache"
    first = load_image_folder(src, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1
    assert not list(cache.glob("*.tmp")), "the atomic write leaves no temporary file"

    # Execute: decoding now fails, so the second load can only come from the cache.
    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(D, "_decode_images", no_decode)
    second = load_image_folder(src, cache_dir=cache)
    # Assert
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    assert first.classes == second.classes


def test_image_folder_cache_key_follows_content(tmp_path: Path) -> None:
    # Prepare
    src = _write_dir(tmp_path / "d", _images())
    cache = tmp_path / "cache"
    load_image_folder(src, cache_dir=cache)
    # Execute: a changed file changes the listing (size), so the stale cache is not used.
    (src / "cat" / "a.png").write_bytes(_png(np.zeros((5, 4, 3), np.uint8)))
    ds = load_image_folder(src, cache_dir=cache)
    # Assert
    assert len(list(cache.glob("*.pt"))) == 2
    assert int(ds.x[4].sum()) == 0


def test_corrupt_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    images = _images()
    src = _write_zip(tmp_path / "d.zip", images)
    cache = tmp_path / "cache"
    load_image_folder(src, cache_dir=cache)
    (pt,) = cache.glob("*.pt")
    pt.write_bytes(b"not a torch file")
    # Execute
    with caplog.at_level(logging.WARNING, logger="heronsfl.data.datasets"):
        ds = load_image_folder(src, cache_dir=cache)
    # Assert
    assert "ignoring unreadable cache" in caplog.text
    assert torch.equal(ds.x, _expected(images)[0])
    assert load_image_folder(src, cache_dir=cache).x.shape == (6, 3, 5, 4)  # rewritten, readable


def test_corrupt_zip_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.zip"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(DataError, match="broken.zip.*re-copy or re-download"):
        load_image_folder(bad)


def test_truncated_zip_names_file(tmp_path: Path) -> None:
    good = _write_zip(tmp_path / "good.zip", _images()).read_bytes()
    bad = tmp_path / "cut.zip"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.zip"):
        load_image_folder(bad)


@pytest.mark.parametrize("kind", ["zip", "dir"])
def test_undecodable_image(tmp_path: Path, kind: str) -> None:
    images = {"a/0.png": np.zeros((2, 2, 3), np.uint8)}
    if kind == "zip":
        src = _write_zip(tmp_path / "d.zip", images)
        with zipfile.ZipFile(src, "a") as zf:
            zf.writestr("a/1.jpg", b"\xff\xd8 this is no jpeg")
    else:
        src = _write_dir(tmp_path / "d", images)
        (src / "a" / "1.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    with pytest.raises(DataError, match=r"cannot decode 'a/1.jpg'.*re-copy or re-download"):
        load_image_folder(src)


def test_mixed_sizes_and_empty_and_missing(tmp_path: Path) -> None:
    mixed = {"a/0.png": np.zeros((2, 2, 3), np.uint8), "a/1.png": np.zeros((3, 2, 3), np.uint8)}
    with pytest.raises(DataError, match="share one size"):
        load_image_folder(_write_zip(tmp_path / "m.zip", mixed))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images .* in '.*empty'"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="no image folder or .zip at"):
        load_image_folder(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- CIFAR-10


def test_read_official_folder_and_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    batches = _write_batches(tmp_path / "src")
    md5 = _write_tar(tmp_path / "cifar-10-python.tar.gz", tmp_path / "src")
    monkeypatch.setattr(D, "CIFAR10_MD5", md5)
    want_x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    want_y = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # Execute
    from_dir = read_cifar10_official(tmp_path / "src", "train")
    from_tar = read_cifar10_official(tmp_path / "cifar-10-python.tar.gz", "train")
    test = read_cifar10_official(tmp_path / "src", "test")
    # Assert: each row is the R, G and B planes of one 32x32 image, in order.
    for ds in (from_dir, from_tar):
        assert ds.x.shape == (20, 3, 32, 32) and ds.x.dtype == torch.uint8
        assert torch.equal(ds.x.reshape(20, 3072), torch.from_numpy(want_x))
        assert ds.y.tolist() == want_y and ds.classes == CIFAR10_CLASSES
    assert test.y.tolist() == batches["test_batch"][1]


def test_load_cifar10_official_checks_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_batches(tmp_path / "cifar-10-batches-py")
    # Real sizes: 20 train images is an incomplete copy.
    with pytest.raises(DataError, match="holds 20 train images, expected 50000"):
        load_cifar10(tmp_path, "train")
    # With the expected size lowered to the fake one, the same folder loads.
    monkeypatch.setitem(D.CIFAR10_SIZES, "test", 4)
    ds = load_cifar10(tmp_path, "test")
    assert len(ds) == 4 and ds.x.shape[1:] == (3, 32, 32)


def test_load_cifar10_prefers_image_folder(tmp_path: Path) -> None:
    # Prepare: a 10-class 32x32 zip at root/cifar10/test.zip, beside a (wrong-size) official dir.
    rng = np.random.default_rng(0)
    images = {
        f"{c}/0.png": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in CIFAR10_CLASSES
    }
    (tmp_path / "cifar10").mkdir()
    _write_zip(tmp_path / "cifar10" / "test.zip", images)
    _write_batches(tmp_path / "cifar-10-batches-py")
    # Execute
    ds = load_cifar10(tmp_path, "test", cache_dir=tmp_path / "cache")
    # Assert
    assert ds.classes == CIFAR10_CLASSES and ds.y.tolist() == list(range(10))
    # An image folder that is not CIFAR-shaped is refused.
    _write_zip(tmp_path / "train.zip", _images())
    with pytest.raises(DataError, match="expected 10 classes of \\(3, 32, 32\\)"):
        load_cifar10(tmp_path, "train")


def test_md5_mismatch(tmp_path: Path) -> None:
    _write_batches(tmp_path / "src")
    _write_tar(tmp_path / "cifar-10-python.tar.gz", tmp_path / "src")
    with pytest.raises(DataError, match="md5 .*delete it and re-download"):
        load_cifar10(tmp_path, "test")


def test_missing_everything(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no CIFAR-10 under .*data.root=DIR") as err:
        load_cifar10(tmp_path, "train")
    msg = str(err.value)
    assert "\n" not in msg
    for looked in ["cifar10/train.zip", "cifar10/train/", "train.zip", "cifar-10-batches-py/"]:
        assert looked in msg
    assert "cifar-10-python.tar.gz" in msg and "data.download=true" in msg
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_cifar10(tmp_path, "val")  # type: ignore[arg-type]


def test_download_verifies_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a fake server returning a tiny tarball; no network is touched.
    _write_batches(tmp_path / "src")
    md5 = _write_tar(tmp_path / "served.tar.gz", tmp_path / "src")
    payload = (tmp_path / "served.tar.gz").read_bytes()
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    monkeypatch.setattr(D, "CIFAR10_MD5", md5)
    monkeypatch.setitem(D.CIFAR10_SIZES, "test", 4)
    root = tmp_path / "root"
    # Execute
    ds = load_cifar10(root, "test", download=True)
    # Assert
    assert len(ds) == 4
    assert (root / "cifar-10-python.tar.gz").is_file()
    assert not (root / "cifar-10-python.tar.gz.part").exists()
    # A corrupted download is rejected and its .part removed.
    monkeypatch.setattr(D, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match="md5"):
        load_cifar10(tmp_path / "root2", "test", download=True)
    assert not list((tmp_path / "root2").iterdir())


def _shared_data() -> Path | None:
    """The offline data copy beside the checkout (../shared/data), if this machine has one."""
    for cand in (
        Path("/work/shared/data"),
        Path(__file__).resolve().parents[2].parent / "shared" / "data",
    ):
        if (cand / "cifar10" / "test.zip").is_file():
            return cand
    return None


def test_real_cifar10_test_split(tmp_path: Path) -> None:
    root = _shared_data()
    if root is None:
        pytest.skip("no ../shared/data/cifar10/test.zip on this machine")
    ds = load_cifar10(root, "test", cache_dir=tmp_path)
    assert ds.x.shape == (10_000, 3, 32, 32) and ds.x.dtype == torch.uint8
    assert ds.classes == CIFAR10_CLASSES
    assert torch.bincount(ds.y).tolist() == [1000] * 10
    cached = load_cifar10(root, "test", cache_dir=tmp_path)
    assert torch.equal(cached.x, ds.x) and torch.equal(cached.y, ds.y)


# ----------------------------------------------------------------------------- digits


def test_digits_split() -> None:
    train, test = load_digits("train"), load_digits("test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.x.shape == (1437, 1, 8, 8) and train.x.dtype == torch.uint8
    assert int(train.x.min()) == 0 and int(train.x.max()) == 255
    assert train.classes == tuple("0123456789")
    counts = torch.bincount(test.y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified: 360 / 10 each
    again = load_digits("test")
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)
    # Every value is round(v * 255 / 16) for an integer v in 0..16.
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(train.x).tolist()) <= allowed


def test_digits_normalize_constants_match_train_split() -> None:
    x = load_digits("train").x.float() / 255
    assert DIGITS_NORMALIZE.mean[0] == pytest.approx(x.mean().item(), abs=1e-4)
    assert DIGITS_NORMALIZE.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-4)


# ----------------------------------------------------------------------------- transforms


def test_normalize_formula() -> None:
    # Prepare
    x = torch.randint(
        0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    norm = Normalize(mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    # Execute
    out = norm(x)
    # Assert
    assert out.dtype == torch.float32 and out.shape == x.shape
    xf = x.double() / 255
    for c in range(3):
        want = (xf[:, c] - norm.mean[c]) / norm.std[c]
        assert out[:, c].mean().item() == pytest.approx(want.mean().item(), abs=1e-5)
        assert out[:, c].std().item() == pytest.approx(want.std().item(), rel=1e-5)
        assert torch.allclose(out[:, c].double(), want, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        norm(x.float())
    with pytest.raises(ValueError, match="one mean and one std per channel"):
        Normalize(mean=(0.5,), std=(0.2, 0.3))


def test_augment_shape_dtype_determinism() -> None:
    x = torch.randint(
        0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    a = augment_crop_flip(x, torch.Generator().manual_seed(7))
    b = augment_crop_flip(x, torch.Generator().manual_seed(7))
    c = augment_crop_flip(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_crop_flip(x.float(), torch.Generator().manual_seed(7)).dtype == torch.float32
    assert torch.equal(augment_crop_flip(x.float(), torch.Generator().manual_seed(7)), a.float())
    differs = [not torch.equal(a[i], x[i]) for i in range(64)]
    assert sum(differs) > 32, "with pad=4 most crops move or flip"


def test_augment_is_crop_then_flip() -> None:
    # Prepare: replay the documented draw order (row offsets, column offsets, flips).
    B, pad = 32, 4
    x = torch.randint(
        1, 256, (B, 3, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    g = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    flip = torch.rand(B, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # Execute
    out = augment_crop_flip(x, torch.Generator().manual_seed(3), pad=pad)
    # Assert
    assert 0 < int(flip.sum()) < B, "both flipped and unflipped images occur"
    for i in range(B):
        crop = padded[i, :, oy[i] : oy[i] + 6, ox[i] : ox[i] + 5]
        assert torch.equal(out[i], torch.flip(crop, dims=[-1]) if flip[i] else crop)


def test_augment_pad_zero_only_flips() -> None:
    x = torch.randn(50, 2, 4, 4)
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    flipped = [torch.equal(out[i], torch.flip(x[i], dims=[-1])) for i in range(50)]
    same = [torch.equal(out[i], x[i]) for i in range(50)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert any(flipped) and any(same)
    with pytest.raises(ValueError, match="pad must be >= 0"):
        augment_crop_flip(x, torch.Generator(), pad=-1)


def test_array_dataset_invariants() -> None:
    with pytest.raises(AssertionError, match="uint8"):
        ArrayDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), ("a",))
    with pytest.raises(AssertionError, match="labels span"):
        ArrayDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 3]), ("a", "b"))
