"""Single image files for prediction: PNG, JPEG, BMP, TIFF, DICOM and NumPy arrays, converted the
way the training images were.

The conversion, step by step:

1. Decode to 8-bit pixels. Pillow formats: the first frame; 16-bit and float images are scaled from
   their own minimum and maximum to 0-255 (as image folders are for training). DICOM (pydicom):
   every frame; the modality LUT (Rescale Slope/Intercept, e.g. to Hounsfield units) is applied,
   then the file's first window (Window Center/Width, DICOM's LINEAR function) maps values to 0-255,
   or the image's own minimum and maximum when the file has no window; MONOCHROME1 is inverted so
   that bright means dense, as in MONOCHROME2. ``.npy``/``.npz``: uint8 arrays as they are, other
   integer or float arrays scaled like 16-bit images (floats in [0, 1] are multiplied by 255).
2. Grey images are repeated to RGB, RGBA/palette images are converted to RGB (alpha dropped).
3. Resize to the model's size x size with bicubic interpolation, not keeping the aspect ratio
   (how MedMNIST and image folders are resized).
4. For a one-channel model, RGB is reduced to grey with the ITU-R 601-2 luma weights (Pillow's
   ``convert("L")``), as for grey training folders.
5. The model's per-channel normalisation ``(x / 255 - mean) / std`` is applied by the predictor.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..defaults import MAX_PIXELS
from ..errors import DataError, first_line

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = PILLOW_SUFFIXES + DICOM_SUFFIXES + ARRAY_SUFFIXES
MAGIC_NUMBERS = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "F"}
LUMA = np.array([0.299, 0.587, 0.114])
# DICOM elements larger than this are left on disk until needed (pixel data) or never read (the rest).
DICOM_DEFER_BYTES = 1 << 20
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"


class UnsupportedImage(DataError):
    """The content is not one of the accepted image formats."""


class ImageTooLarge(DataError):
    """The image has more pixels (or its file more data) than allowed."""


class NonFinitePixels(ValueError):
    """Pixel values or display settings that are NaN or infinite: no class can be read from them."""


@dataclass
class SourceImage:
    """One image at its original size: ``pixels`` is uint8 H x W x 3 (grey images repeated)."""

    name: str
    pixels: np.ndarray
    grey: bool


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Integer and float pixels to 0-255: floats in [0, 1] times 255, anything else from its own
    minimum and maximum."""
    if array.dtype == np.uint8:
        return array
    array = np.asarray(array, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise NonFinitePixels("holds NaN or infinite pixel values")
    if array.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        return np.rint(array * 255.0).astype(np.uint8)
    span = high - low
    return np.rint((array - low) / (span if span > 0 else 1.0) * 255.0).astype(np.uint8)


def normalise_pixels(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 N x C x H x W -> a model's float32 input ``(x / 255 - mean) / std`` per channel, in
    NumPy (no torch needed)."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def pil_to_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """An opened Pillow image as 8-bit RGB, and whether it was grey."""
    grey = image.mode in GREY_MODES
    if image.mode in WIDE_MODES:
        image = Image.fromarray(scale_to_uint8(np.asarray(image)))
    return image.convert("RGB"), grey


def _rgb(array: np.ndarray) -> np.ndarray:
    """uint8 H x W (x 1|3|4) -> H x W x 3."""
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _first(value) -> float:
    """The first of a multi-valued DICOM attribute (files may list several windows)."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _dicom_header(fp: BinaryIO, name: str | Path):
    """The data set without its large elements (pixel data and anything over
    :data:`DICOM_DEFER_BYTES` stay unread). Deflate-compressed data sets are refused before
    inflating: their inflated size cannot be known from the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_dataset, read_preamble

    try:
        read_preamble(fp, False)
        meta = read_dataset(
            fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, length: tag >> 16 != 2
        )
        syntax = str(meta.get("TransferSyntaxUID", ""))
        if syntax == DEFLATED_DICOM:
            raise ImageTooLarge(
                f"{name}: a Deflate-compressed DICOM data set (transfer syntax {DEFLATED_DICOM}) is not accepted, "
                "since its size is unknown until it is inflated; store it uncompressed or with compressed pixel data"
            )
        fp.seek(0)
        return pydicom.dcmread(fp, defer_size=DICOM_DEFER_BYTES)
    except (
        InvalidDicomError,
        AttributeError,
        ValueError,
        OSError,
        NotImplementedError,
        KeyError,
        TypeError,
        EOFError,
    ) as exc:
        raise DataError(f"{name}: not a readable DICOM image ({first_line(exc)})") from None


def _dicom_pixel_count(ds, name: str | Path, max_pixels: int | None) -> int:
    """Rows x Columns x frames from the header, refused above ``max_pixels``."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"{name}: not a readable DICOM image (no valid Rows/Columns: {first_line(exc)})") from None
    if min(rows, columns, frames) < 1 or samples not in (1, 3):
        raise DataError(
            f"{name}: not a readable DICOM image ({frames} frame(s) of {columns} x {rows} pixels, {samples} samples per pixel)"
        )
    _check_pixels(name, rows * columns * frames, max_pixels, f"{frames} frame(s) of {columns} x {rows} pixels")
    return rows * columns * frames


def _check_pixels(name: str | Path, count: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and count > max_pixels:
        raise ImageTooLarge(f"{name}: {what} exceed the limit of {max_pixels:,} pixels")


def _finite_window(ds, name: str | Path) -> None:
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if not (math.isfinite(center) and math.isfinite(width)):
            raise DataError(f"{name}: Window Center/Width ({center}, {width}) are not finite numbers")


def dicom_voi(values: np.ndarray, ds, name: str | Path) -> np.ndarray | None:
    """The data set's first VOI transform, by pydicom's ``apply_voi_lut`` (a VOI LUT Sequence, else
    Window Center/Width with its VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID), mapped from
    its output range to 0-255; None when the file has neither."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        low, high = 0.0, 2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1.0
        # a LUT is indexed by whole input values (stored values through the modality LUT)
        out = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True).astype(np.float64)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        _finite_window(ds, name)
        with np.errstate(over="ignore"):  # the sigmoid's far tails: exp overflows to its limit, as meant
            low, high = apply_voi_lut(np.array([-1e30, 1e30]), ds, index=0, prefer_lut=False)  # the output range
        out = apply_voi_lut(values, ds, index=0, prefer_lut=False).astype(np.float64)
    else:
        return None
    return np.rint(np.clip((out - low) / max(high - low, 1e-12) * 255.0, 0.0, 255.0)).astype(np.uint8)


def read_dicom(source: Path | BinaryIO, name: str | Path, max_pixels: int | None = MAX_PIXELS) -> list[SourceImage]:
    """The frames of a DICOM file as 8-bit images: modality LUT, then the VOI LUT or window, MONOCHROME1
    inverted; a file over ``max_pixels`` is refused from its header."""
    from pydicom.pixels import apply_modality_lut, convert_color_space

    with open(source, "rb") if isinstance(source, (str, Path)) else nullcontext(source) as fp:
        ds = _dicom_header(fp, name)
        _dicom_pixel_count(ds, name, max_pixels)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        try:
            pixels = ds.pixel_array
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
            if photometric.startswith("MONOCHROME"):
                pixels = pixels if frames > 1 else pixels[None]
                values = apply_modality_lut(pixels, ds).astype(np.float64)
                if not np.isfinite(values).all():
                    raise DataError(f"{name}: the modality LUT (Rescale Slope/Intercept) gives NaN or infinite values")
                grey = dicom_voi(values, ds, name)
                if grey is None:
                    grey = np.stack([scale_to_uint8(frame) for frame in values])
                if photometric == "MONOCHROME1":
                    grey = 255 - grey
                arrays, is_grey = [_rgb(frame) for frame in grey], True
            else:
                if photometric.startswith("YBR"):
                    pixels = convert_color_space(pixels, photometric, "RGB")
                pixels = pixels if frames > 1 else pixels[None]
                arrays, is_grey = [_rgb(scale_to_uint8(frame)) for frame in pixels], False
        except DataError:
            raise
        except (
            AttributeError,
            ValueError,
            RuntimeError,
            OSError,
            NotImplementedError,
            KeyError,
            TypeError,
            MemoryError,
        ) as exc:
            raise DataError(f"{name}: not a readable DICOM image ({first_line(exc)})") from None
    return _named(name, arrays, is_grey)


def array_images(name: str | Path, array: np.ndarray) -> list[SourceImage]:
    """H x W, H x W x C, N x H x W, N x H x W x C or N x C x H x W (C = 1, 3 or 4)."""
    if array.ndim == 3 and array.shape[2] in (1, 3, 4) or array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)
    if array.ndim not in (3, 4) or min(array.shape[1:3]) < 1 or (array.ndim == 4 and array.shape[3] not in (1, 3, 4)):
        raise DataError(
            f"{name}: array of shape {array.shape} is not an image or a stack of images "
            "(expected H x W, H x W x C, N x H x W or N x H x W x C with C = 1, 3 or 4)"
        )
    if array.dtype.kind not in "uif":
        raise DataError(f"{name}: array of dtype {array.dtype} is not pixel data")
    grey = array.ndim == 3 or array.shape[3] == 1
    try:
        images = [_rgb(scale_to_uint8(image)) for image in array]
    except NonFinitePixels as exc:
        raise DataError(f"{name}: {exc}") from None
    return _named(name, images, grey)


def _read_header(stream: IO[bytes], version: tuple[int, int]) -> tuple[tuple[int, ...], np.dtype]:
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def npz_member_header(archive: zipfile.ZipFile, key: str, name: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array ``key`` of an ``.npz`` archive from its header, without loading it;
    a header that declares more data than the archive stores for it is refused."""
    info = archive.getinfo(f"{key}.npy")
    with archive.open(info) as member:
        shape, dtype = _read_header(member, np.lib.format.read_magic(member))
        stored = info.file_size - member.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared != stored:
        raise DataError(
            f"{name}: '{key}' declares shape {tuple(shape)} ({declared:,} bytes) but the file stores {stored:,} bytes for it"
        )
    return shape, dtype


def check_array_size(name: str | Path, shape: tuple[int, ...], max_pixels: int | None) -> None:
    """Refuse an array from its header alone: more than ``max_pixels`` values per channel (4
    channels at most)."""
    count = math.prod(shape)
    _check_pixels(
        name,
        count,
        None if max_pixels is None else 4 * max_pixels,
        f"the {count:,} values of an array of shape {tuple(shape)}",
    )


def read_array_file(path: Path, max_pixels: int | None = MAX_PIXELS) -> list[SourceImage]:
    """``.npy`` or ``.npz`` images; every array's shape and size is checked from its header first."""
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                shape, dtype = _read_header(f, np.lib.format.read_magic(f))
                if math.prod(shape) * dtype.itemsize > path.stat().st_size - f.tell():
                    raise DataError(f"{path}: its header declares shape {tuple(shape)}, more than the file stores")
                check_array_size(path, shape, max_pixels)
            return array_images(path, np.load(path, allow_pickle=False))
        with zipfile.ZipFile(path) as archive:
            keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            key = (
                "images"
                if "images" in keys
                else "test_images"
                if "test_images" in keys
                else keys[0]
                if len(keys) == 1
                else None
            )
            if key is None:
                raise DataError(
                    f"{path}: holds arrays {', '.join(keys) or '(none)'}; expected one array, or one named 'images' or 'test_images'"
                )
            shape, _ = npz_member_header(archive, key, path)
            check_array_size(path, shape, max_pixels)
        with np.load(path, allow_pickle=False) as loaded:
            array = loaded[key]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, MemoryError) as exc:
        raise DataError(f"{path}: not a readable NumPy file ({first_line(exc)})") from None
    return array_images(path, array)


def _pillow_open(
    source: Path | BinaryIO, name: str | Path, formats: tuple[str, ...] | None, max_pixels: int | None = MAX_PIXELS
):
    try:
        return Image.open(source, formats=formats)
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (Pillow cannot identify its format)") from None
    except Image.DecompressionBombError as exc:  # Pillow's own guard fires before our header check can
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found is None or max_pixels is None:
            raise ImageTooLarge(f"{name}: {first_line(exc)}") from None
        raise ImageTooLarge(f"{name}: {int(found[1]):,} pixels exceed the limit of {max_pixels:,} pixels") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{name}: not a readable image ({first_line(exc)})") from None


def read_pillow(
    source: Path | BinaryIO,
    name: str | Path,
    max_pixels: int | None = MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
    draft_side: int | None = None,
) -> list[SourceImage]:
    """The first frame of a Pillow-readable image; ``formats`` restricts the decoders tried;
    ``draft_side``: JPEGs are decoded at a reduced scale that keeps both sides at least this long."""
    with _pillow_open(source, name, formats, max_pixels) as image:
        _check_pixels(name, image.width * image.height, max_pixels, f"{image.width} x {image.height} pixels")
        try:
            if draft_side and image.format == "JPEG":
                image.draft(image.mode, (draft_side, draft_side))
            image.load()
            rgb, grey = pil_to_rgb(image)
        except NonFinitePixels as exc:
            raise DataError(f"{name}: {exc}") from None
        except (OSError, ValueError, MemoryError, Image.DecompressionBombError) as exc:
            raise DataError(f"{name}: not a readable image ({first_line(exc)})") from None
    return [SourceImage(str(name), np.asarray(rgb, dtype=np.uint8), grey)]


def _named(path: str | Path, arrays: list[np.ndarray], grey: bool) -> list[SourceImage]:
    if len(arrays) == 1:
        return [SourceImage(str(path), arrays[0], grey)]
    return [SourceImage(f"{path}[{i}]", array, grey) for i, array in enumerate(arrays)]


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble, whatever their name."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def read_image_file(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> list[SourceImage]:
    """Every image in one file (several for multi-frame DICOM and image stacks); one-line
    :class:`DataError` when the file is not a readable image or holds more than ``max_pixels``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return read_array_file(path, max_pixels)
    if suffix in DICOM_SUFFIXES or is_dicom(path):
        return read_dicom(path, path, max_pixels)
    return read_pillow(path, path, max_pixels)


def sniff_format(head: bytes) -> str | None:
    """The image format from a file's first bytes, whatever its name says."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    for signature, name in MAGIC_NUMBERS:
        if head.startswith(signature):
            return name
    return None


def _upload_format(data: bytes, name: str) -> str:
    kind = sniff_format(data[:132])
    if kind is None:
        raise UnsupportedImage(f"{name}: not a PNG, JPEG, TIFF, BMP or DICOM file (judged by its content)")
    return kind


def image_bytes_pixels(data: bytes, name: str, max_pixels: int | None = MAX_PIXELS) -> int:
    """The pixel count of an uploaded image (every DICOM frame) from its header, without decoding
    it; the same errors as :func:`read_image_bytes`."""
    kind = _upload_format(data, name)
    if kind == "DICOM":
        return _dicom_pixel_count(_dicom_header(io.BytesIO(data), name), name, max_pixels)
    with _pillow_open(io.BytesIO(data), name, (kind,), max_pixels) as image:
        _check_pixels(name, image.width * image.height, max_pixels, f"{image.width} x {image.height} pixels")
        return image.width * image.height


def read_image_bytes(
    data: bytes, name: str, max_pixels: int | None = MAX_PIXELS, draft_side: int | None = None
) -> list[SourceImage]:
    """An uploaded PNG, JPEG, TIFF, BMP or DICOM file, recognised by its content. Raises
    :class:`UnsupportedImage` for any other content, :class:`ImageTooLarge` above ``max_pixels``
    (or a data set refused for its size) and :class:`DataError` for a corrupt file."""
    kind = _upload_format(data, name)
    if kind == "DICOM":
        return read_dicom(io.BytesIO(data), name, max_pixels)
    return read_pillow(io.BytesIO(data), name, max_pixels, formats=(kind,), draft_side=draft_side)


def image_files(paths: list[str | Path]) -> list[Path]:
    """Files named directly, and the image files (by suffix) anywhere under named folders, sorted."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found += sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        else:
            found.append(item)
    return found


def resize_rgb(rgb: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """RGB pixels to uint8 size x size x 3, bicubic, aspect ratio not kept."""
    image = Image.fromarray(rgb) if isinstance(rgb, np.ndarray) else rgb
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def decode_training_image(path: Path, size: int) -> tuple[np.ndarray, bool, str] | None:
    """An image folder's file as uint8 size x size x 3 RGB, whether it was grey, and the MD5 of its
    bytes; None when it is not a readable image. (A top-level function of a module without torch:
    the folder cache decodes in worker processes.)"""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb, grey = pil_to_rgb(image)
            pixels = resize_rgb(rgb, size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return pixels, grey, hashlib.md5(data).hexdigest()


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """uint8 N x H x W x 3 -> uint8 N x C x H x W, grey by ITU-R 601-2 luma for one channel."""
    if channels == 1:
        rgb = np.rint(rgb @ LUMA)[..., None].astype(np.uint8)
    return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))


def model_input(images: list[SourceImage], size: int, channels: int) -> np.ndarray:
    """uint8 N x C x size x size, converted as the training images were."""
    return to_channels(np.stack([resize_rgb(image.pixels, size) for image in images]), channels)
