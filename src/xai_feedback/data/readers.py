"""Readers of the image data a user downloads: IDX files and folders of images per class.

IDX is the format of MNIST and Fashion-MNIST; an image folder holds one sub-folder per class,
as torchvision's ``ImageFolder`` reads it. Both readers return an
:class:`~xai_feedback.data.ImageDataset` held in memory (images in [0, 1], labels, class names
in ``classes``; for folders, optional annotation masks). Nothing is downloaded: a file that is
not there raises :class:`~xai_feedback.errors.MissingDataError` saying how to get it.

- :func:`load_idx`: the four IDX files of MNIST or Fashion-MNIST
  (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-...``), gzipped
  or not. :func:`read_idx` reads one IDX file into a NumPy array.
- :func:`load_fashion_mnist`: Fashion-MNIST from ``directory``, else from the folder named by
  the environment variable ``XAI_FEEDBACK_FASHION_MNIST``, else from
  ``/usr/share/datasets/fashion-mnist`` (where Debian's ``dataset-fashion-mnist`` package
  installs it: ``apt-get install dataset-fashion-mnist``).
- :func:`load_image_folder`: ``root/<class>/<image>``; class sub-folders sorted by name give
  labels 0, 1, ...; masks from a parallel folder with the same relative paths (Pillow is
  needed: ``pip install 'xai-feedback[data]'``).

Example:
    >>> train = load_fashion_mnist("train")  # doctest: +SKIP
    >>> tuple(train.images.shape), train.classes[0]  # doctest: +SKIP
    ((60000, 1, 28, 28), 'T-shirt/top')
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from xai_feedback._checks import check_choice, check_int
from xai_feedback.data._dataset import ImageDataset
from xai_feedback.errors import DataError, DTypeError, MissingDataError, RangeError, ShapeError

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "IMAGE_EXTENSIONS",
    "load_fashion_mnist",
    "load_idx",
    "load_image_folder",
    "read_idx",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""The names of Fashion-MNIST's labels 0-9 (Xiao et al. 2017)."""
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the four ``.gz`` files."""
FASHION_MNIST_ENV = "XAI_FEEDBACK_FASHION_MNIST"
"""Environment variable naming a folder with the Fashion-MNIST files (before the default)."""
IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)
"""File extensions :func:`load_image_folder` reads by default (compared case-insensitively)."""

Split = Literal["train", "test"]

_GET_DATA = (
    "get Fashion-MNIST with `apt-get install dataset-fashion-mnist` (Debian, Ubuntu; files in "
    f"{FASHION_MNIST_DIR}) or from https://github.com/zalandoresearch/fashion-mnist, MNIST "
    "from https://yann.lecun.com/exdb/mnist/ (the four *-ubyte.gz files, gzipped or not)"
)
_PREFIX = {"train": "train", "test": "t10k"}
# IDX type codes (third byte of the magic number) and their big-endian NumPy dtypes
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise DTypeError(f"`dtype` must be a torch.dtype, got {type(dtype).__name__}.")
    if not dtype.is_floating_point:
        raise RangeError(f"`dtype` must be a floating-point dtype, got {dtype}.")
    return dtype


def _as_path(value: object, name: str) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise DTypeError(f"`{name}` must be a str or os.PathLike, got {type(value).__name__}.")
    return Path(value)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a NumPy array of its type and dimensions.

    The IDX format (LeCun et al.) is a 4-byte magic number ``0 0 T D`` (``T`` the element
    type: ``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32,
    ``0x0D`` float32, ``0x0E`` float64; ``D`` the number of dimensions), ``D`` big-endian
    uint32 sizes, then the elements in C order, big-endian. A gzipped file is recognized by
    its first two bytes, whatever its name.

    Args:
        path: The file.

    Returns:
        A read-only array with the file's dimensions, in native byte order.

    Raises:
        MissingDataError: The file does not exist.
        DataError: Not an IDX file (wrong magic number), a broken gzip stream, or fewer or
            more bytes than the header announces (truncated or corrupt).

    Shape:
        - output: the ``D`` sizes of the header, e.g. :math:`(N, 28, 28)` for images,
          :math:`(N,)` for labels

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = f.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
        >>> read_idx(f).tolist()
        [7, 2, 1]
    """
    file = _as_path(path, "path")
    if not file.is_file():
        raise MissingDataError(f"`path` must be an IDX file, got {file}, which does not exist.")
    raw = file.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(
                f"`path` must be a readable gzip file, got {file}: {error} (truncated or "
                "corrupt; download it again)."
            ) from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"`path` must be an IDX file (magic number 0x0000TTDD with type TT in "
            f"{sorted(_IDX_DTYPES)}), got {file} starting with bytes {raw[:4].hex() or 'none'}."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"`path` must hold a {header}-byte IDX header ({ndim} dimensions), got {file} "
            f"with {len(raw)} bytes (truncated)."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "trailing bytes: corrupt"
        raise DataError(
            f"`path` must hold {expected} bytes for an IDX array of shape {shape} and type "
            f"{dtype.name}, got {file} with {len(raw)} bytes ({kind})."
        )
    array: np.ndarray = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    array = array.astype(dtype.newbyteorder("="), copy=False)
    array.setflags(write=False)
    return array


def _idx_file(folder: Path, stem: str, argument: str) -> Path:
    """``folder/stem.gz`` or ``folder/stem``, else a :class:`MissingDataError` saying what to do."""
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise MissingDataError(
        f"`{argument}` must be a folder holding {stem}.gz (or {stem}), got {folder}, "
        f"{'which lacks it' if folder.is_dir() else 'which does not exist'}; {_GET_DATA}."
    )


def load_idx(
    directory: str | os.PathLike[str],
    split: Split = "train",
    *,
    dtype: torch.dtype = torch.float32,
    classes: Sequence[str] = (),
) -> ImageDataset:
    """Load the MNIST-style IDX files of one split from a folder.

    The folder holds ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (split
    ``"train"``) or ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (``"test"``),
    each gzipped (``.gz``, preferred when both exist) or not, as MNIST, Fashion-MNIST,
    Kuzushiji-MNIST and EMNIST distribute them. Pixels (unsigned bytes) are divided by 255.

    Args:
        directory: The folder with the files.
        split: ``"train"`` or ``"test"``.
        dtype: Floating dtype of the images.
        classes: Names of the labels (e.g. :data:`FASHION_MNIST_CLASSES`); empty for unnamed.

    Returns:
        An :class:`~xai_feedback.data.ImageDataset` named ``"<folder name>/<split>"``, without
        masks.

    Raises:
        MissingDataError: The folder or one of the two files is missing (the message says how
            to get the data).
        DataError: A file is not IDX, is truncated or corrupt, the images are not a 3-D array
            of unsigned bytes or the labels not a 1-D one, or their counts differ.

    Shape:
        - images: :math:`(N, 1, H, W)` in [0, 1] (28 x 28 for MNIST)
        - labels: :math:`(N,)`, int64

    Example:
        >>> test = load_idx("/usr/share/datasets/fashion-mnist", "test")  # doctest: +SKIP
        >>> tuple(test.images.shape)  # doctest: +SKIP
        (10000, 1, 28, 28)
    """
    folder = _as_path(directory, "directory")
    check_choice(split, "split", _PREFIX)
    dtype = _check_dtype(dtype)
    names = _check_classes(classes)
    prefix = _PREFIX[split]
    image_file = _idx_file(folder, f"{prefix}-images-idx3-ubyte", "directory")
    label_file = _idx_file(folder, f"{prefix}-labels-idx1-ubyte", "directory")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"`directory` must hold images as a 3-D IDX array of unsigned bytes (N, H, W), got "
            f"{image_file} with shape {images.shape} and type {images.dtype}."
        )
    if labels.ndim != 1 or labels.dtype.kind not in "ui":
        raise DataError(
            f"`directory` must hold labels as a 1-D IDX array of integers (N,), got "
            f"{label_file} with shape {labels.shape} and type {labels.dtype}."
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"`directory` must hold as many labels as images, got {images.shape[0]} images in "
            f"{image_file} and {labels.shape[0]} labels in {label_file}."
        )
    if names and labels.size and int(labels.max()) >= len(names):
        raise DataError(
            f"`classes` ({len(names)} names) must name every label, got labels up to "
            f"{int(labels.max())} in {label_file}."
        )
    pixels = torch.from_numpy(images.copy()).unsqueeze(1).to(dtype) / 255
    return ImageDataset(
        pixels, torch.from_numpy(labels.astype(np.int64)), None, f"{folder.name}/{split}", names
    )


def _check_classes(classes: object) -> tuple[str, ...]:
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise DTypeError(f"`classes` must be a sequence of str, got {type(classes).__name__}.")
    names = tuple(classes)
    if not all(isinstance(c, str) for c in names):
        raise DTypeError(f"`classes` must be a sequence of str, got {names!r:.80}.")
    return names


def load_fashion_mnist(
    split: Split = "train",
    directory: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> ImageDataset:
    """Load Fashion-MNIST (Xiao et al. 2017): 28 x 28 grayscale photos of 10 kinds of clothing.

    The files are looked up in ``directory`` if given, else in the folder named by the
    environment variable ``XAI_FEEDBACK_FASHION_MNIST`` (:data:`FASHION_MNIST_ENV`) if set,
    else in ``/usr/share/datasets/fashion-mnist`` (:data:`FASHION_MNIST_DIR`), where
    ``apt-get install dataset-fashion-mnist`` puts them on Debian and Ubuntu. Elsewhere,
    download the four ``.gz`` files from https://github.com/zalandoresearch/fashion-mnist.

    Args:
        split: ``"train"`` (60,000 images, 6,000 per class) or ``"test"`` (10,000).
        directory: Folder with the files; see above for the default.
        dtype: Floating dtype of the images.

    Returns:
        An :class:`~xai_feedback.data.ImageDataset` with ``classes`` =
        :data:`FASHION_MNIST_CLASSES`, named ``"fashion-mnist/<split>"``.

    Raises:
        MissingDataError: The files are not in the folder (the message says how to get them).
        DataError: A file is corrupt (see :func:`load_idx`).

    Shape:
        - images: :math:`(N, 1, 28, 28)` in [0, 1]
        - labels: :math:`(N,)`, int64

    Example:
        >>> test = load_fashion_mnist("test")  # doctest: +SKIP
        >>> len(test), test.classes[int(test.labels[0])]  # doctest: +SKIP
        (10000, 'Ankle boot')
    """
    if directory is None:
        directory = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR
    data = load_idx(directory, split, dtype=dtype, classes=FASHION_MNIST_CLASSES)
    return ImageDataset(
        data.images, data.labels, None, f"fashion-mnist/{split}", FASHION_MNIST_CLASSES
    )


def _require_pillow() -> None:
    """Raise an :class:`ImportError` with the install command when Pillow is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading image folders needs Pillow: pip install 'xai-feedback[data]'"
        ) from error


def _image_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        check_int(size, "size", minimum=1)
        return (size, size)
    if (
        isinstance(size, tuple | list)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        check_int(size[0], "size[0]", minimum=1)
        check_int(size[1], "size[1]", minimum=1)
        return (int(size[0]), int(size[1]))
    raise DTypeError(f"`size` must be None, an int or a pair of ints (H, W), got {size!r:.80}.")


def _extensions(extensions: object) -> tuple[str, ...]:
    if isinstance(extensions, str) or not isinstance(extensions, Sequence):
        raise DTypeError(
            f"`extensions` must be a sequence of str such as ('.png', '.jpg'), got "
            f"{type(extensions).__name__}."
        )
    if not extensions or not all(isinstance(e, str) and e for e in extensions):
        raise RangeError(
            f"`extensions` must be non-empty strings such as '.png', got {extensions!r:.80}."
        )
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _open(path: Path, what: str) -> PILImage.Image:
    """Open and decode one image file (Pillow opens lazily: ``load`` reads the pixels)."""
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as error:  # raised from the header, before decoding
        raise DataError(
            f"{what} must hold images of at most {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
            f"(twice Pillow's PIL.Image.MAX_IMAGE_PIXELS, its guard against decompression "
            f"bombs), got {path}, whose header claims more: {error} Raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted."
        ) from error
    except (OSError, ValueError, SyntaxError) as error:  # UnidentifiedImageError is an OSError
        raise DataError(f"{what} must be a readable image, got {path}: {error}.") from error
    return image


def _deep_gray(image: PILImage.Image, path: Path) -> np.ndarray | None:
    """Gray levels in [0, 1] (float64, (H, W)) of a 16-bit, 32-bit integer or float image.

    ``None`` for the 8-bit modes, which :meth:`PIL.Image.Image.convert` maps without loss of
    scale. 16-bit modes (``I;16``, ``I;16B``, ...) are divided by 65535; ``I`` (32-bit
    integers, how older Pillow opens 16-bit PNG) must hold values in [0, 65535] and is read
    the same way; ``F`` (32-bit float, e.g. a float TIFF) must hold finite values in [0, 1].
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        levels = np.asarray(image).astype(np.float64)
        if levels.size and (levels.min() < 0 or levels.max() > 65535):
            raise DataError(
                f"`root` must hold integer images (Pillow mode {image.mode!r}) with 16-bit "
                f"gray levels in [0, 65535], got {path} with values in [{levels.min():g}, "
                f"{levels.max():g}]; save it as 8- or 16-bit, or as float in [0, 1]."
            )
        scaled: np.ndarray = levels / 65535
        return scaled
    if image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        if values.size and not (
            np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
        ):
            shown = f"[{np.nanmin(values):g}, {np.nanmax(values):g}]"
            if not np.isfinite(values).all():
                shown = f"{int((~np.isfinite(values)).sum())} NaN or infinite value(s)"
            raise DataError(
                f"`root` must hold float images (Pillow mode 'F') with finite values in "
                f"[0, 1], got {path} with {shown}; rescale it to [0, 1] or save it as "
                "8- or 16-bit."
            )
        return values
    return None


def _image_pixels(
    image: PILImage.Image, path: Path, mode: str, target: tuple[int, int] | None
) -> np.ndarray:
    """The pixels of one image in ``mode``, resized to ``target`` (H, W): (H, W, C).

    uint8 (0-255) for 8-bit images, float64 in [0, 1] for deeper ones (:func:`_deep_gray`;
    these are gray, so ``"RGB"`` repeats the gray level in the three channels).
    """
    from PIL import Image

    channels = 3 if mode == "RGB" else 1
    gray = _deep_gray(image, path)
    if gray is not None:
        if target is not None and gray.shape != target:
            as_float = Image.fromarray(gray.astype(np.float32), mode="F")
            resized = as_float.resize((target[1], target[0]), Image.Resampling.BILINEAR)
            gray = np.clip(np.asarray(resized).astype(np.float64), 0.0, 1.0)
        return np.repeat(gray[:, :, None], channels, axis=2)
    try:
        converted = image.convert(mode)
    except ValueError as error:  # e.g. "conversion from La to L not supported"
        raise DataError(
            f"`root` must hold images that Pillow converts to mode {mode!r}, got {path} in "
            f"mode {image.mode!r}: {error}."
        ) from error
    if target is not None and converted.size != (target[1], target[0]):
        converted = converted.resize((target[1], target[0]), Image.Resampling.BILINEAR)
    return np.array(converted, dtype=np.uint8).reshape(*converted.size[::-1], channels)


def _mask_file(mask_root: Path, relative: Path, extensions: tuple[str, ...]) -> Path:
    """The mask of ``relative``: the same relative path, or the same stem with an image suffix."""
    exact = mask_root / relative
    if exact.is_file():
        return exact
    for candidate in sorted(exact.parent.glob(f"{exact.stem}.*")):
        if candidate.suffix.lower() in extensions and candidate.is_file():
            return candidate
    raise MissingDataError(
        f"`masks` must hold a mask for every image at the same relative path, got no "
        f"{exact} (nor {exact.stem} with another image extension)."
    )


def _mask_array(image: PILImage.Image) -> np.ndarray:
    """``True`` where a mask image is nonzero (palette and gray images: nonzero value)."""
    marked: np.ndarray
    if image.mode in ("1", "L", "P", "I", "I;16", "F"):
        marked = np.asarray(image) != 0
    else:
        marked = (np.asarray(image.convert("RGB")) != 0).any(axis=-1)
    return marked


def _class_files(
    folder: Path, suffixes: tuple[str, ...]
) -> tuple[list[Path], list[tuple[Path, int]]]:
    """The class sub-folders of ``folder`` and every image file in them with its label."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"`root` must hold one sub-folder of images per class, got {folder} without "
            "sub-folders."
        )
    files: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(
            p
            for p in class_dir.rglob("*")
            if p.suffix.lower() in suffixes
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        )
        if not found:
            raise DataError(
                f"`root` must hold at least one image in every class sub-folder, got none in "
                f"{class_dir} (extensions {', '.join(suffixes)})."
            )
        files.extend((p, label) for p in found)
    return class_dirs, files


def _read_mask(
    mask_path: Path, path: Path, original: tuple[int, int], target: tuple[int, int] | None
) -> np.ndarray:
    """The boolean mask of the image ``path`` (size ``original``, W x H), resized to ``target``."""
    from PIL import Image

    mask_image = _open(mask_path, "`masks`")
    if mask_image.size != original:
        raise ShapeError(
            f"`masks` must match their images' size, got {mask_image.size[1]}x"
            f"{mask_image.size[0]} (H x W) for {mask_path} and {original[1]}x"
            f"{original[0]} for {path}."
        )
    marked = _mask_array(mask_image)
    if target is not None and marked.shape != target:
        as_image = Image.fromarray(marked.astype(np.uint8) * 255)
        resized = as_image.resize((target[1], target[0]), Image.Resampling.NEAREST)
        marked = np.asarray(resized) != 0
    return marked


def _stack_images(pixels: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    """``(N, C, H, W)`` in [0, 1] from ``(H, W, C)`` arrays (8-bit ones divided by 255)."""
    height, width, channels = pixels[0].shape
    images = torch.empty((len(pixels), channels, height, width), dtype=dtype)
    for index, array in enumerate(pixels):  # one image at a time: no second full-size copy
        chw = torch.from_numpy(array).permute(2, 0, 1)
        images[index] = chw.to(dtype) / 255 if array.dtype == np.uint8 else chw.to(dtype)
    return images


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    mode: str = "RGB",
    masks: str | os.PathLike[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    dtype: torch.dtype = torch.float32,
) -> ImageDataset:
    """Load a folder of images, one sub-folder per class, into memory.

    The layout of torchvision's ``ImageFolder``: ``root/<class>/<any/sub/path>.<ext>``. The
    class sub-folders sorted by name are the labels 0, 1, ... and their names the
    ``classes`` of the result; the images of each class are read in sorted path order
    (sub-folders included; hidden files and folders skipped). With ``masks``, every image
    ``root/<rel>`` has an annotation mask ``masks/<rel>`` (the same relative path, or the
    same name with another image extension, e.g. a PNG mask for a JPEG photo): a mask image
    of the image's size whose nonzero pixels (any color channel; the index in palette
    images) are the annotated region.

    Args:
        root: The folder of class sub-folders.
        size: ``None`` (every image must have the same size), ``S`` (resized to ``S x S``)
            or ``(H, W)``; images are resized bilinearly with Pillow's antialiasing, masks
            with nearest-neighbor sampling.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (grayscale, 1 channel); images of other modes
            are converted. 8-bit images (Pillow modes ``1``, ``L``, ``P``, ``LA``, ``RGB``,
            ``RGBA``, ``CMYK``, ...) are converted by Pillow (alpha dropped) and divided by
            255. Deeper gray images keep their precision: 16-bit (``I;16``, ``I;16B``, e.g. a
            16-bit PNG) are divided by 65535, 32-bit integer (``I``) must hold 16-bit levels
            in [0, 65535] and are read the same way, float (``F``, e.g. a float32 TIFF) must
            hold values in [0, 1] and are read as they are; in ``"RGB"`` the gray level
            fills the three channels.
        masks: Folder of annotation masks parallel to ``root``, or ``None``.
        extensions: File extensions read as images (case-insensitive); other files are
            ignored.
        dtype: Floating dtype of the images.

    Returns:
        An :class:`~xai_feedback.data.ImageDataset` with images in [0, 1], ``classes`` the
        sub-folder names, masks if ``masks`` is given, named after ``root``.

    Raises:
        ImportError: Pillow is not installed (``pip install 'xai-feedback[data]'``).
        MissingDataError: ``root`` or ``masks`` is not a folder, or an image has no mask.
        DataError: ``root`` has no class sub-folder, a class sub-folder has no image, or a
            file cannot be read as an image (the message names the file): not an image,
            corrupt, a header claiming more pixels than Pillow's decompression-bomb limit
            (``PIL.Image.MAX_IMAGE_PIXELS``), a mode Pillow cannot convert to ``mode``, a
            float image outside [0, 1] or not finite, an integer image outside [0, 65535].
        ShapeError: Images of different sizes with ``size=None``, or a mask whose size
            differs from its image's (both named).

    Shape:
        - images: :math:`(N, C, H, W)`, ``C`` = 3 for ``"RGB"``, 1 for ``"L"``
        - labels: :math:`(N,)`, int64
        - masks: :math:`(N, H, W)`, bool

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (6, 4), (255, 0, 0)).save(root / name / "a.png")
        >>> data = load_image_folder(root, size=8)
        >>> tuple(data.images.shape), data.labels.tolist(), data.classes
        ((2, 3, 8, 8), [0, 1], ('cat', 'dog'))
    """
    folder = _as_path(root, "root")
    target = _image_size(size)
    check_choice(mode, "mode", ("RGB", "L"))
    suffixes = _extensions(extensions)
    dtype = _check_dtype(dtype)
    mask_root = None if masks is None else _as_path(masks, "masks")
    if not folder.is_dir():
        raise MissingDataError(f"`root` must be a folder of class sub-folders, got {folder}.")
    if mask_root is not None and not mask_root.is_dir():
        raise MissingDataError(f"`masks` must be a folder of mask images, got {mask_root}.")
    class_dirs, files = _class_files(folder, suffixes)
    pixels: list[np.ndarray] = []
    annotations: list[np.ndarray] = []
    first: tuple[Path, tuple[int, int]] | None = None
    _require_pillow()
    for path, _ in files:
        image = _open(path, "`root`")
        original = image.size  # (W, H)
        if target is None:
            if first is None:
                first = (path, original)
            elif original != first[1]:
                raise ShapeError(
                    f"`root` must hold images of one size when `size` is None, got "
                    f"{first[1][1]}x{first[1][0]} (H x W) for {first[0]} and "
                    f"{original[1]}x{original[0]} for {path}; pass size=(H, W) to resize."
                )
        pixels.append(_image_pixels(image, path, mode, target))
        if mask_root is not None:
            mask_path = _mask_file(mask_root, path.relative_to(folder), suffixes)
            annotations.append(_read_mask(mask_path, path, original, target))

    images = _stack_images(pixels, dtype)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    mask_tensor = None if mask_root is None else torch.from_numpy(np.stack(annotations))
    classes = tuple(p.name for p in class_dirs)
    return ImageDataset(images.contiguous(), labels, mask_tensor, folder.name, classes)
