"""Reading images and label masks, and writing masks, with one-line errors for every bad input.

Images. `read_image` returns uint8 (3, H, W) RGB. Anything Pillow reads works (JPEG, PNG, TIFF, ...).
Inputs that are not 8-bit RGB are converted, and a warning naming the file says what was done:
  - grayscale ('L', '1'): the one channel is copied to R, G and B;
  - alpha ('RGBA', 'LA', 'PA'): the alpha channel is dropped (pixels are not blended with anything);
  - palette ('P'): expanded to its RGB colours;
  - 16-bit ('I;16*', and 'I' with values in 0..65535): the high byte is kept (value >> 8). A fixed shift,
    not a stretch by each image's maximum, so that the same ground brightness gives the same 8-bit value in
    every image of a data set;
  - other colour spaces (CMYK, YCbCr, ...): Pillow's conversion to RGB.
Truncated files are never padded: Pillow's LOAD_TRUNCATED_IMAGES stays off, so a half-copied JPEG is an
error instead of an image with a grey bottom. Pillow's decompression-bomb limit stays on unless the user
passes --allow_large_images (see `allow_large_images`).

Masks. `read_mask` returns uint8 (H, W) class indices of a class table (``dataset.classes``; DeepGlobe's
by default, n classes) and detects the format of each file:
  - 'L', 'I', 'I;16*' (and 'LA', alpha ignored): class indices (plus the table's ``index_aliases``, e.g.
    Inria's 255 = building); any other value is an error;
  - 'RGB' (and 'RGBA', alpha ignored): the table's colours, matched exactly. One exception, which cannot
    be confused with a colour mask: an RGB image whose three channels are equal everywhere and whose values
    are all < n is an index mask saved as RGB;
  - 'P' (palette PNG): judged by the colours it actually uses. If every used palette entry is a class
    colour, the colours decide the class (that is what every viewer shows). Otherwise, if every used index is
    < n, the indices are the classes (an index mask saved with some decorative palette). Otherwise an error.

Writing. `write_mask_png` writes the colour PNG (exact 0/255 colours), `write_index_png` the 'L'
index PNG, `write_image_png` an RGB PNG; all go to a temporary file in the target folder and are renamed
into place, so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import get_worker_info

from dataset.classes import DEEPGLOBE, ClassTable
from utils.errors import DataError, InputFileError
from utils.files import atomic_open, write_error

log = logging.getLogger(__name__)

_DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


def allow_large_images(flag: bool) -> None:
    """Switch Pillow's decompression-bomb guard off (True) or back to Pillow's default limit (False).

    The setting is process-wide. DataLoader workers started by fork inherit it; with the spawn or
    forkserver start methods call this again in the worker_init_fn.
    """
    Image.MAX_IMAGE_PIXELS = None if flag else _DEFAULT_MAX_PIXELS


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise InputFileError(f"{what} not found: {path}; check the path (or re-run python -m tools.prepare_deepglobe)", path=path)
    if os.path.isdir(path):
        raise InputFileError(f"{what} {path} is a folder, not a file", path=path)
    if os.path.getsize(path) == 0:
        raise InputFileError(f"{what} {path} is empty (0 bytes): the copy or download is incomplete; fetch it again", path=path)


@contextmanager
def opened_image(path: str, what: str, load: bool = True) -> Iterator[Image.Image]:
    """Context manager: the Pillow image at ``path``, opened (and fully decoded unless ``load`` is False)
    and closed on exit. A missing, empty or folder path, an image past Pillow's pixel limit, an unknown
    format and a truncated or damaged file raise DataError naming ``what`` and ``path``."""
    _check_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            try:
                if load:
                    image.load()
            except BaseException:
                image.close()
                raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        count = f"{int(found.group(1))} pixels, " if found else ""
        raise InputFileError(f"{what} {path} has {count}more than Pillow's safety limit of {Image.MAX_IMAGE_PIXELS} pixels "
                             f"(decompression-bomb guard); pass `allow_large_images` if you trust the file", path=path) from None
    except UnidentifiedImageError:
        raise InputFileError(f"{what} {path} is not a readable image (unknown format or corrupt); "
                             f"replace the file", path=path) from None
    except _DECODE_ERRORS as error:
        if "truncated" in str(error).lower():
            raise InputFileError(f"{what} {path} is truncated: the copy or download is incomplete; "
                                 f"fetch it again", path=path) from None
        raise InputFileError(f"{what} {path} cannot be decoded ({error}): the file is damaged; replace it", path=path) from None
    try:
        yield image
    finally:
        image.close()


def image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image from its header only (cheap; a truncated body is not noticed here)."""
    with opened_image(path, "image", load=False) as image:
        return image.height, image.width


def _sixteen_to_eight(values: np.ndarray, path: str, mode: str, warn: bool = True) -> np.ndarray:
    if int(values.min()) < 0 or int(values.max()) > 65535:
        raise InputFileError(f"image {path} (mode {mode}) holds values outside 0..65535; "
                             f"convert it to 8-bit RGB first", path=path)
    if warn:
        log.warning("%s: %s image (16-bit) reduced to 8 bits by keeping the high byte (value >> 8)", path, mode)
    return (values.astype(np.uint32) >> 8).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _to_rgb(image: Image.Image, path: str, warn: bool = True) -> np.ndarray:
    """uint8 (H, W, 3) from any Pillow mode, warning (when ``warn``) about every conversion."""
    mode = image.mode
    say = log.warning if warn else (lambda *args: None)
    if mode == "RGB":
        return np.array(image)
    if mode in ("L", "1"):
        say("%s: grayscale image (mode %s); copied its channel to R, G and B", path, mode)
        return _grey_to_rgb(np.array(image.convert("L")))
    if mode.startswith("I;16") or mode == "I":
        return _grey_to_rgb(_sixteen_to_eight(np.array(image), path, mode, warn))
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        say("%s: image with an alpha channel (mode %s); dropped the alpha channel", path, mode)
        return np.array(image.convert("RGBA"))[:, :, :3].copy()
    if mode == "P":
        say("%s: palette image (mode P); expanded its palette to RGB", path)
        return np.array(image.convert("RGBA"))[:, :, :3].copy()
    if mode == "F":
        raise InputFileError(f"image {path} holds floating-point pixels (mode F); convert it to 8-bit RGB first", path=path)
    try:
        rgb = np.array(image.convert("RGB"))
    except ValueError:
        raise InputFileError(f"image {path} has pixel mode {mode}, which cannot be converted to RGB", path=path) from None
    say("%s: image in mode %s; converted to RGB", path, mode)
    return rgb


# Rows of the decoded image converted at a time: about 16 MB of Pillow pixels (4 bytes each).
_BAND_BYTES = 1 << 24


def read_bands(path: str, count: int) -> torch.Tensor:
    """The first ``count`` bands of a raster (a tile of ``tools.prepare_scenes``) as uint8 (count, H, W),
    through GDAL; DataError naming the file when it has fewer bands or other than 8-bit values."""
    import rasterio

    _check_file(path, "image")
    try:
        with rasterio.open(path) as src:
            if src.count < count or any(dtype != "uint8" for dtype in src.dtypes[:count]):
                raise DataError(f"image {path} has {src.count} band(s) of {src.dtypes[0]}, but the data set reads "
                                f"{count} uint8 bands; prepare it again with python -m tools.prepare_scenes")
            data = torch.from_numpy(src.read(list(range(1, count + 1))))
    except rasterio.errors.RasterioError as exc:
        raise DataError(f"image {path} cannot be read ({str(exc).strip().splitlines()[0]}); replace the file") from None
    if get_worker_info() is not None:
        data.share_memory_()
    return data


def read_image(path: str, bands: int = 3) -> torch.Tensor:
    """Read an image file as uint8 RGB (3, H, W) (see the module docstring for conversions and errors);
    with ``bands`` above 3, its first ``bands`` bands through GDAL (``read_bands``).

    Memory: Pillow decodes the whole file (4 bytes per pixel for RGB, its internal layout); the result
    tensor (3 bytes per pixel) is allocated once and filled from the decoded image about 16 MB at a
    time, so the peak is the decoded image + the result + one band (7 bytes per pixel: about 2.8 GB
    for 20000 x 20000), and 3 bytes per pixel stay once Pillow's copy is freed on return (converting
    the whole image through numpy first would need about 10). In a DataLoader worker the result is
    allocated in shared memory, so handing it to the main process copies nothing.
    """
    if bands != 3:
        return read_bands(path, bands)
    with opened_image(path, "image") as image:
        height, width = image.height, image.width
        out = torch.empty((3, height, width), dtype=torch.uint8)
        if get_worker_info() is not None:
            out.share_memory_()
        rows = max(1, _BAND_BYTES // (4 * max(width, 1)))
        for y0 in range(0, height, rows):
            y1 = min(y0 + rows, height)
            band = image if (y0, y1) == (0, height) else image.crop((0, y0, width, y1))
            rgb = _to_rgb(band, path, warn=y0 == 0)
            out[:, y0:y1].copy_(torch.from_numpy(rgb).permute(2, 0, 1))
    return out


def _palette_mask(image: Image.Image, path: str, table: ClassTable) -> np.ndarray:
    indices = np.array(image)
    raw = image.getpalette("RGB") or []
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(raw) // 3] = np.asarray(raw, dtype=np.uint8).reshape(-1, 3)[:256]
    defined = np.zeros(256, dtype=bool)
    defined[: len(raw) // 3] = True
    used = np.flatnonzero(np.bincount(indices.ravel(), minlength=256))
    known = defined[used] & table.knows_colours(palette[used])
    if known.all():
        lookup = np.zeros(256, dtype=np.uint8)
        lookup[used] = table.colour_to_index(palette[used][None], path)[0]
        return lookup[indices]
    if int(used.max()) < table.n_class:
        return indices
    first = tuple(int(c) for c in palette[used[~known][0]])
    raise DataError(
        f"label mask {path} (palette PNG) uses colours outside the {table.title} palette (first: RGB {first}) and "
        f"indices up to {int(used.max())} (> {table.n_class - 1}); it is neither a colour nor a class-index mask"
    )


def _mask_to_index(image: Image.Image, path: str, table: ClassTable) -> np.ndarray:
    mode = image.mode
    if mode in ("L", "I") or mode.startswith("I;16"):
        return table.index_values(np.array(image), path, mode)
    if mode == "LA":
        log.warning("%s: mask with an alpha channel (mode LA); ignored the alpha channel", path)
        return table.index_values(np.array(image.getchannel("L")), path, mode)
    if mode == "P":
        return _palette_mask(image, path, table)
    if mode in ("RGB", "RGBA"):
        if mode == "RGBA":
            log.warning("%s: mask with an alpha channel (mode RGBA); ignored the alpha channel", path)
            rgb = np.array(image)[:, :, :3]
        else:
            rgb = np.array(image)
        red = rgb[:, :, 0]
        if int(red.max()) < table.n_class and (red == rgb[:, :, 1]).all() and (red == rgb[:, :, 2]).all():
            return red.copy()
        return table.colour_to_index(rgb, path)
    raise DataError(
        f"label mask {path} has pixel mode {mode}; use an RGB colour PNG or a grayscale class-index PNG"
    )


def read_mask(path: str, expected_hw: tuple[int, int] | None, table: ClassTable = DEEPGLOBE) -> torch.Tensor:
    """Read a label mask as uint8 class indices (H, W) of ``table``, checking its size against its image's."""
    with opened_image(path, "label mask") as image:
        index = _mask_to_index(image, path, table)
    if expected_hw is not None and tuple(index.shape) != tuple(expected_hw):
        raise DataError(
            f"label mask {path} is {index.shape[0]}x{index.shape[1]} (HxW) but its image is "
            f"{expected_hw[0]}x{expected_hw[1]}: the mask belongs to another image or was resized"
        )
    return torch.from_numpy(np.ascontiguousarray(index))


def _save_png_atomic(image: Image.Image, path: str) -> None:
    """Write a PNG through a temporary sibling file that is renamed over ``path`` once complete."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with atomic_open(path) as handle:
            image.save(handle, format="PNG")
    except OSError as error:
        raise write_error(path, error) from None


class PngBandWriter:
    """Write a colour mask PNG band by band, so a 20000 x 20000 mask never exists whole in memory.

    ``palette``: the (C, 3) colours of the class indices; None writes the values as a grey PNG
    (confidences).

    A PNG keeps its rows in one zlib stream split over IDAT chunks, so rows can be compressed and
    written as they are produced. Use as a context manager: the file appears (renamed from a
    temporary sibling) only when every row was written; an error leaves no file behind.

    Memory: a band is coloured and compressed ``chunk_bytes`` (about 8 MB) of PNG rows at a time, into
    one reused buffer, whatever the band's size. ``level`` is zlib's (6, the default: mask rows
    compress several dozen times at a small fraction of the prediction's time).
    """

    chunk_bytes = 1 << 23

    def __init__(self, path: str, height: int, width: int, level: int = 6,
                 palette: np.ndarray | None = DEEPGLOBE.colours) -> None:
        self.path, self.height, self.width = path, height, width
        self.palette = palette
        self._channels = 1 if palette is None else 3
        self._rows = 0
        self._zip = zlib.compressobj(level)
        self._atomic = atomic_open(path, "wb")
        self._file = None
        self._buffer: np.ndarray | None = None

    def __enter__(self) -> PngBandWriter:
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise DataError(f"cannot create output folder {folder} ({error.strerror}); choose a writable folder") from None
        self._file = self._atomic.__enter__()
        self._file.write(b"\x89PNG\r\n\x1a\n")
        # 8-bit RGB (colour type 2) or grey (0), deflate, no interlace.
        colour_type = 0 if self.palette is None else 2
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, colour_type, 0, 0, 0))
        return self

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self._file.write(struct.pack(">I", len(data)) + kind + data)
        self._file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    def write(self, index_band: np.ndarray | torch.Tensor) -> None:
        """Append rows (h, W): class indices below len(palette), or any uint8 values without a palette."""
        index = _as_numpy(index_band)
        if index.ndim != 2 or index.shape[1] != self.width or self._rows + index.shape[0] > self.height:
            raise ValueError(f"a band of shape {index.shape} does not fit the {self.height}x{self.width} mask "
                             f"after {self._rows} rows")
        if self.palette is not None and index.size and (int(index.min()) < 0 or int(index.max()) >= len(self.palette)):
            raise ValueError(f"class indices must be in 0..{len(self.palette) - 1}")
        row_bytes = 1 + self._channels * self.width
        step = max(1, self.chunk_bytes // row_bytes)
        if self._buffer is None:
            # Each PNG row starts with its filter type; 0 = none (flat class colours compress well as is).
            self._buffer = np.zeros((min(step, self.height), row_bytes), np.uint8)
        for start in range(0, index.shape[0], step):
            part = index[start:start + step]
            rows = self._buffer[: part.shape[0]]
            if self.palette is None:
                rows[:, 1:] = part
            else:
                np.take(self.palette, part, axis=0, out=rows[:, 1:].reshape(part.shape[0], self.width, 3), mode="clip")
            data = self._zip.compress(rows.data)
            if data:
                self._chunk(b"IDAT", data)
        self._rows += index.shape[0]

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                if self._rows != self.height:
                    raise ValueError(f"{self.path}: only {self._rows} of {self.height} rows were written")
                self._chunk(b"IDAT", self._zip.flush())
                self._chunk(b"IEND", b"")
        except BaseException as error:
            self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        try:
            return bool(self._atomic.__exit__(exc_type, exc, tb))
        except OSError as error:
            raise write_error(self.path, error) from None


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def write_mask_png(path: str, index: np.ndarray | torch.Tensor, table: ClassTable = DEEPGLOBE) -> None:
    """Write class indices (H, W) (numpy or tensor on any device) as a colour PNG of ``table``'s colours."""
    values = _as_numpy(index)
    if values.ndim != 2:
        raise ValueError(f"write_mask_png expects (H, W), got {values.shape}")
    with PngBandWriter(path, *values.shape, palette=table.colours) as writer:
        writer.write(values)


def write_index_png(path: str, index: np.ndarray | torch.Tensor, n_class: int = DEEPGLOBE.n_class) -> None:
    """Write class indices (H, W) (values 0..n_class-1) as a grayscale ('L') class-index PNG."""
    values = _as_numpy(index)
    if values.ndim != 2:
        raise ValueError(f"write_index_png expects (H, W), got {values.shape}")
    if values.size and (int(values.min()) < 0 or int(values.max()) >= n_class):
        raise ValueError(f"class indices must be in 0..{n_class - 1}")
    _save_png_atomic(Image.fromarray(values.astype(np.uint8)), path)


def write_image_png(path: str, rgb: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) RGB array as a PNG (lossless, so synthetic textures stay exact)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_image_png expects uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    _save_png_atomic(Image.fromarray(rgb), path)
