"""Readers of downloaded data: IDX files (hand-written bytes, and the shipped Fashion-MNIST)
and image folders (PNG files written by Pillow), with every error they promise."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from xai_feedback.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    ImageDataset,
    confound_dataset,
    load_fashion_mnist,
    load_idx,
    load_image_folder,
    read_idx,
)
from xai_feedback.errors import DataError, DTypeError, MissingDataError, RangeError, ShapeError

# ------------------------------------------------------------------------------ IDX by hand


def _idx(array: np.ndarray, code: int) -> bytes:
    """IDX bytes of ``array``: magic 0 0 code ndim, big-endian uint32 sizes, big-endian data."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


IMAGES = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 20  # (N=2, H=2, W=3)
LABELS = np.array([3, 1], dtype=np.uint8)


def _write_split(folder: Path, prefix: str, *, gz: bool, images=IMAGES, labels=LABELS) -> None:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array, code in (("images-idx3", images, 8), ("labels-idx1", labels, 8)):
        data = _idx(array, code)
        name = f"{prefix}-{kind}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def test_read_idx_known_bytes_raw_and_gzipped(tmp_path: Path) -> None:
    raw = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "b.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c").write_bytes(gzip.compress(raw))  # gzip recognized by content, not name
    for name in ("a", "b.gz", "c"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.tolist() == [7, 2, 1]
        assert not out.flags.writeable
    images = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 10, 11, 12, 13])
    (tmp_path / "d").write_bytes(images)
    assert read_idx(str(tmp_path / "d")).tolist() == [[[10, 11]], [[12, 13]]]


@pytest.mark.parametrize(
    ("code", "dtype"),
    [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)
def test_read_idx_every_type_big_endian(tmp_path: Path, code: int, dtype: type) -> None:
    array = np.array([[-3, 2], [1, 100]], dtype=dtype)
    (tmp_path / "x").write_bytes(_idx(array, code))
    out = read_idx(tmp_path / "x")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert np.array_equal(out, array)
    # the bytes are big-endian: int16 -3 is ff fd
    if code == 0x0B:
        assert (tmp_path / "x").read_bytes()[12:14] == b"\xff\xfd"


def test_read_idx_errors(tmp_path: Path) -> None:
    good = _idx(np.zeros((2, 2, 2), dtype=np.uint8), 8)
    cases = {
        "truncated": (good[:-1], "truncated"),
        "trailing": (good + b"\x00", "trailing bytes"),
        "magic": (b"\x00\x01" + good[2:], "magic number"),
        "type": (b"\x00\x00\x07" + good[3:], "magic number"),
        "short": (b"\x00\x00", "magic number"),
        "header": (good[:9], "header"),
        "gz_cut": (gzip.compress(good)[:-9], "gzip"),
        "gz_bad": (gzip.compress(good)[:10] + b"\xff" * 20, "gzip"),
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=needle) as info:
            read_idx(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
        assert isinstance(info.value, ValueError)
    with pytest.raises(MissingDataError, match="does not exist") as missing:
        read_idx(tmp_path / "nope")
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(DTypeError, match="`path`"):
        read_idx(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_idx_known_arrays(tmp_path: Path, gz: bool) -> None:
    _write_split(tmp_path / "data", "t10k", gz=gz)
    data = load_idx(tmp_path / "data", "test", dtype=torch.float64)
    assert isinstance(data, ImageDataset)
    assert data.images.shape == (2, 1, 2, 3) and data.images.dtype == torch.float64
    assert torch.equal(data.images[:, 0] * 255, torch.from_numpy(IMAGES).double())
    assert data.labels.tolist() == [3, 1] and data.labels.dtype == torch.int64
    assert data.masks is None and data.name == "data/test" and data.classes == ()
    named = load_idx(tmp_path / "data", "test", classes=[f"c{k}" for k in range(4)])
    assert named.classes == ("c0", "c1", "c2", "c3") and named.images.dtype == torch.float32


def test_load_idx_prefers_gz_and_errors(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", gz=True)
    _write_split(tmp_path, "train", gz=False, labels=np.array([0, 0], dtype=np.uint8))
    assert load_idx(tmp_path).labels.tolist() == [3, 1]  # the .gz files win
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist") as info:
        load_idx(tmp_path, "test")
    assert "t10k-images-idx3-ubyte.gz" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(MissingDataError, match="does not exist"):
        load_idx(tmp_path / "absent")
    # counts that disagree, images that are not 3-D unsigned bytes, labels that are not 1-D
    bad = {
        "count": (IMAGES, np.array([1, 2, 3], dtype=np.uint8), "as many labels as images"),
        "images": (IMAGES[0], LABELS, "3-D IDX array"),
        "labels": (IMAGES, LABELS[:, None], "1-D IDX array"),
    }
    for name, (images, labels, needle) in bad.items():
        _write_split(tmp_path / name, "train", gz=True, images=images, labels=labels)
        with pytest.raises(DataError, match=needle):
            load_idx(tmp_path / name)
    with pytest.raises(DataError, match="must name every label"):
        load_idx(tmp_path, classes=("a", "b"))
    with pytest.raises(RangeError, match="`split`"):
        load_idx(tmp_path, "val")  # type: ignore[arg-type]
    with pytest.raises(RangeError, match="`dtype`"):
        load_idx(tmp_path, dtype=torch.int64)
    with pytest.raises(DTypeError, match="`classes`"):
        load_idx(tmp_path, classes="ab")


def test_load_fashion_mnist_from_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = np.arange(10, dtype=np.uint8)
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    _write_split(tmp_path, "train", gz=True, images=images, labels=labels)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    data = load_fashion_mnist("train")
    assert data.classes == FASHION_MNIST_CLASSES and data.name == "fashion-mnist/train"
    assert data.classes[int(data.labels[9])] == "Ankle boot"
    # an explicit directory wins over the variable
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "elsewhere")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(MissingDataError, match="zalandoresearch/fashion-mnist"):
        load_fashion_mnist("test")


# ---------------------------------------------------- the shipped Fashion-MNIST (Debian)

# Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1) recompresses the files, so the
# .gz checksums are the package's; the decompressed files are the standard release: their
# MD5s are those torchvision's FashionMNIST checked for the uncompressed files.
FASHION_GZ_SHA256 = {
    "train-images-idx3-ubyte": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_RAW_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
SHIPPED = Path(FASHION_MNIST_DIR)


def _shipped() -> Path:
    missing = [f"{n}.gz" for n in FASHION_GZ_SHA256 if not (SHIPPED / f"{n}.gz").is_file()]
    if missing:
        pytest.skip(
            f"Fashion-MNIST is not installed in {SHIPPED} (missing {', '.join(missing)}): "
            "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), as .ci/run "
            "does, to run the tests on the shipped data"
        )
    return SHIPPED


def test_shipped_fashion_mnist_files_are_the_standard_release() -> None:
    folder = _shipped()
    for name, expected in FASHION_GZ_SHA256.items():
        packed = (folder / f"{name}.gz").read_bytes()
        assert hashlib.sha256(packed).hexdigest() == expected, name
        raw = gzip.decompress(packed)
        assert hashlib.sha256(raw).hexdigest() == FASHION_RAW_SHA256[name], name
        assert hashlib.md5(raw, usedforsecurity=False).hexdigest() == FASHION_RAW_MD5[name], name


def test_shipped_fashion_mnist_loads() -> None:
    _shipped()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.float32
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes == FASHION_MNIST_CLASSES and len(FASHION_MNIST_CLASSES) == 10
    assert test.classes[int(test.labels[0])] == "Ankle boot"  # the release's first test image
    # the same data through load_idx from the folder, and a confound on it
    again = load_idx(SHIPPED, "test", classes=FASHION_MNIST_CLASSES)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    small = test.subset(torch.arange(50))
    drawn = confound_dataset(small, "background")
    assert drawn.masks is not None and 0.2 < float(drawn.masks.float().mean()) < 0.9
    level = drawn.images[:, 0][drawn.masks].split(drawn.masks.flatten(1).sum(1).tolist())
    assert torch.allclose(torch.stack([v[0] for v in level]), 0.05 * small.labels.float())


# --------------------------------------------------------------------------- image folders


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (6, 4)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.new("L", size, 0)
    mask.paste(255, box)  # (left, upper, right, lower)
    mask.save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    pytest.importorskip("PIL", reason="load_image_folder needs Pillow (the `data` extra)")
    root = tmp_path / "photos"
    _png(root / "b_dog" / "1.png", (0, 0, 255))
    _png(root / "b_dog" / "0.PNG", (0, 255, 0))  # extensions are case-insensitive
    _png(root / "b_dog" / "sub" / "2.png", (10, 20, 30))  # nested folders are read
    _png(root / "a_cat" / "x.png", (255, 0, 0))
    (root / "a_cat" / "notes.txt").write_text("not an image")
    _png(root / "a_cat" / ".hidden.png", (1, 1, 1))
    _png(root / ".git" / "y.png", (1, 1, 1))
    return root


def test_image_folder_labels_classes_and_pixels(folder: Path) -> None:
    data = load_image_folder(folder)
    assert data.classes == ("a_cat", "b_dog") and data.labels.tolist() == [0, 1, 1, 1]
    assert data.images.shape == (4, 3, 4, 6) and data.images.dtype == torch.float32
    colors = data.images[:, :, 0, 0] * 255
    expected = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]  # sorted paths
    assert torch.equal(colors, torch.tensor(expected, dtype=torch.float32))
    assert bool((data.images == data.images[:, :, :1, :1]).all())  # uniform images
    assert data.masks is None and data.name == "photos" and data.num_classes == 2
    gray = load_image_folder(folder, mode="L", size=(8, 5), dtype=torch.float64)
    assert gray.images.shape == (4, 1, 8, 5) and gray.images.dtype == torch.float64
    assert abs(float(gray.images[0, 0, 0, 0]) * 255 - 76) < 1  # L = 0.299 R
    assert load_image_folder(folder, size=7).images.shape == (4, 3, 7, 7)
    assert len(load_image_folder(folder, extensions=(".PNG",))) == 4
    # the result subsets and moves with its class names
    assert data.subset(torch.tensor([0])).classes == data.classes
    assert data.to(dtype=torch.float64).classes == data.classes


def test_image_folder_masks(folder: Path, tmp_path: Path) -> None:
    from PIL import Image

    masks = tmp_path / "masks"
    _mask(masks / "a_cat" / "x.png", (0, 0, 2, 1))
    _mask(masks / "b_dog" / "0.PNG", (4, 2, 6, 4))
    _mask(masks / "b_dog" / "1.png", (0, 0, 0, 0))
    _mask(masks / "b_dog" / "sub" / "2.png", (0, 0, 6, 4))
    data = load_image_folder(folder, masks=masks)
    assert data.masks is not None and data.masks.dtype == torch.bool
    assert data.masks.shape == (4, 4, 6)
    assert data.masks.flatten(1).sum(1).tolist() == [2, 4, 0, 24]
    assert bool(data.masks[0, 0, :2].all()) and bool(data.masks[1, 2:, 4:].all())
    # resized with the images (nearest): a 2x2 corner of a 4x6 mask is a 4x4 corner at 8x12
    big = load_image_folder(folder, masks=masks, size=(8, 12))
    assert big.masks is not None and big.masks.flatten(1).sum(1).tolist() == [8, 16, 0, 96]
    # an RGB mask counts any nonzero channel; a JPEG photo may have a PNG mask
    Image.new("RGB", (6, 4), (0, 0, 1)).save(masks / "b_dog" / "1.png")
    Image.new("RGB", (6, 4), (9, 9, 9)).save(folder / "a_cat" / "z.jpg")
    _mask(masks / "a_cat" / "z.png", (5, 3, 6, 4))
    again = load_image_folder(folder, masks=masks)
    assert again.masks is not None and again.masks.flatten(1).sum(1).tolist() == [2, 1, 4, 24, 24]


def test_image_folder_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="`root`"):
        load_image_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without sub-folders"):
        load_image_folder(tmp_path / "empty")
    (folder / "c_empty").mkdir()
    with pytest.raises(DataError, match="c_empty"):
        load_image_folder(folder)
    (folder / "c_empty").rmdir()
    _png(folder / "a_cat" / "big.png", (0, 0, 0), size=(5, 5))
    with pytest.raises(ShapeError, match=r"big\.png") as info:
        load_image_folder(folder)
    assert "size=(H, W)" in str(info.value)
    (folder / "a_cat" / "big.png").unlink()
    (folder / "a_cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_image_folder(folder)
    (folder / "a_cat" / "broken.png").unlink()
    masks = tmp_path / "masks"
    with pytest.raises(MissingDataError, match="`masks`"):
        load_image_folder(folder, masks=masks)
    _mask(masks / "a_cat" / "x.png", (0, 0, 1, 1), size=(3, 3))
    with pytest.raises(ShapeError, match=r"x\.png"):
        load_image_folder(folder, masks=masks)
    _mask(masks / "a_cat" / "x.png", (0, 0, 1, 1))
    with pytest.raises(MissingDataError, match=r"0\.PNG"):
        load_image_folder(folder, masks=masks)
    with pytest.raises(RangeError, match="`mode`"):
        load_image_folder(folder, mode="CMYK")
    for size in (0, (3, 0)):
        with pytest.raises(RangeError, match="`size"):
            load_image_folder(folder, size=size)  # type: ignore[arg-type]
    with pytest.raises(DTypeError, match="`size`"):
        load_image_folder(folder, size=(3.0, 2.0))  # type: ignore[arg-type]
    with pytest.raises(DTypeError, match="`extensions`"):
        load_image_folder(folder, extensions=".png")
    with pytest.raises(RangeError, match="`extensions`"):
        load_image_folder(folder, extensions=())
    with pytest.raises(DataError, match="a_cat"):
        load_image_folder(folder, extensions=(".bmp",))


def test_image_dataset_classes_field() -> None:
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    assert ImageDataset(x, y).classes == ()
    assert ImageDataset(x, y, None, "n", ("a", "b", "c")).num_classes == 3
    with pytest.raises(RangeError, match="`labels`"):
        ImageDataset(x, y, None, "n", ("a",))
    with pytest.raises(DTypeError, match="`classes`"):
        ImageDataset(x, y, None, "n", ["a", "b"])  # type: ignore[arg-type]
