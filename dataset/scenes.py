"""Scenes of your own: the list of input files, and windowed reading of rasters through rasterio (GDAL).

Inputs. ``expand_inputs`` turns what the user typed (files, folders, glob patterns, ``.txt`` lists of
paths) into a sorted list of files, checked to exist and to have distinct stems (two scenes called
``a`` would write the same ``a_mask.tif``).

Reading. ``RasterScene`` opens any file GDAL reads and hands out windows as uint8 (bands, h, w)
numpy arrays: R, G, B, and any further bands a network of more bands reads (``models.bands``). It
never reads the whole scene: a window outside the scene is zeros (black), as if the scene had been
padded. What the network sees is fixed by three documented rules:

- bands: ``bands`` picks the three bands (1-based, GDAL's numbering) used as R, G, B, and any further
  bands after them; by default the bands whose colour interpretation the file declares red, green and
  blue, else the first three (with a warning when the file has more). A single band with a colour
  table (a paletted raster) is read through its table, as the colours a GIS shows (its transparent
  entries are invalid pixels). Any other scene with fewer than three bands needs ``bands`` (``1,1,1``
  for a grey scene);
- values: uint8 scenes are used as they are. Every other data type needs an explicit ``input_range``
  (``InputRange``): value ``v`` of band ``b`` becomes ``round(clip((v - low_b) / (high_b - low_b), 0, 1) *
  255)``. The range is either given (one ``LOW,HIGH`` pair for all bands, or one per band) or computed by
  a streaming pass over the valid pixels as the ``pLOW,pHIGH`` percentiles of each band. No scene is
  ever stretched silently by its own minimum and maximum;
- nodata: pixels that GDAL's mask marks invalid in every selected band (a nodata value, a mask band,
  an alpha band) are set to 0 before the network sees them (the same black as outside the scene), and
  ``read_valid`` says which they are so that the caller can mark them in the output.

GDAL's block cache is set to ``GDAL_CACHE_BYTES`` (1 MB, one decoded 512 x 512 RGB tile) when a scene
is opened: the blocks the pipeline reuses are kept by its own cache (``pipeline.sources``), and
GDAL's default, 5% of the RAM, would otherwise fill up with blocks as a large scene is read. Before the
first remote scene, GDAL's cache of downloaded bytes (``CPL_VSIL_CURL_CACHE_SIZE``, 16 MB by default)
is raised to ``REMOTE_CACHE_BYTES`` unless the user set it: a block the pipeline's cache has evicted,
or a tile that a strip of the whole-scene pass shares with the next strip, is then read again from
memory, not fetched again.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from utils.errors import ConfigError, DataError, InputFileError, reason
from utils.logging import library_warnings

log = logging.getLogger(__name__)

PILLOW_SUFFIXES = (".jpg", ".jpeg", ".png")
TIFF_SUFFIXES = (".tif", ".tiff")
# What a folder given as input contributes (any other file GDAL reads can still be named directly).
FOLDER_SUFFIXES = PILLOW_SUFFIXES + TIFF_SUFFIXES + (".jp2", ".vrt", ".img")
GDAL_CACHE_BYTES = 1 << 20
# The compressed tiles of about four tile rows of a 16384 px deflate scene: what the patch rows revisit.
REMOTE_CACHE_BYTES = 128 << 20
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_STRIP_BYTES = 1 << 25  # raw bytes per strip of a statistics pass


# GDAL warnings while reading pixels that mean the pixels are wrong (libjpeg, libtiff's decoders).
_DAMAGE = re.compile(r"corrupt|premature end|decod|bogus|invalid|not enough data|JPEGLib|LZW|ZIP|deflate",
                     re.IGNORECASE)
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsi")


def is_remote(spec: str) -> bool:
    """Whether ``spec`` names a scene GDAL reads over the network or through a virtual file system:
    ``http(s)://`` URLs, ``s3://``, ``gs://`` and ``az://`` URIs, and ``/vsi...`` paths."""
    return spec.startswith(REMOTE_PREFIXES)


_LOCAL_ARCHIVE = re.compile(r"^/vsi(zip|tar|gzip|7z|rar)/(?!/?vsi)(.+?\.(zip|tar|tgz|tar\.gz|gz|7z|rar))(/|$)",
                            re.IGNORECASE)


def local_archive(spec: str) -> str | None:
    """The local archive a ``/vsizip/``-style path reads from (``/vsizip/a/b.zip/x.tif`` -> ``/a/b.zip``),
    None for other paths (remote archives included)."""
    match = _LOCAL_ARCHIVE.match(spec)
    return None if match is None else match.group(2)


def _read_list(path: str) -> list[str]:
    """The lines of a ``.txt`` list: UTF-8 (with or without a byte-order mark), UTF-16 with its byte-order
    mark (Windows Notepad's "Unicode", PowerShell's ``>``), else Latin-1."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    if "\x00" in text:
        raise DataError(f"`input` list {path} holds NUL characters: it looks like UTF-16 without a byte-order mark; "
                        f"save it as UTF-8")
    return [line.strip() for line in text.splitlines()]


def stem_of(path: str) -> str:
    """The file name without its (last) suffix: ``/x/tile_3.tif`` -> ``tile_3`` (and for a URL its
    path's: ``https://host/a/b.tif?sig=...`` -> ``b``)."""
    if is_remote(path):
        path = urllib.parse.urlsplit(path).path if "://" in path else path
    return os.path.splitext(os.path.basename(path))[0]


def _has_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _expand_one(spec: str, base: str, origin: str, skip: Callable[[str], bool], skipped: list[str]) -> list[str]:
    archive = local_archive(spec)
    if archive is not None and not os.path.isfile(archive):
        raise DataError(f"`input` {spec}{origin}: the archive {archive} does not exist; check the path")
    if is_remote(spec):  # read by GDAL as it is: no listing, no globbing, no existence check here
        return [spec]
    path = os.path.expanduser(spec if os.path.isabs(spec) else os.path.join(base, spec))
    if origin and path.lower().endswith(".txt") and os.path.isfile(path):
        raise DataError(f"`input` list{origin} names another list, {path}; lists do not nest: name its files in "
                        f"the first list, or give both lists as `input`")

    def kept(found: list[str]) -> list[str]:
        skipped.extend(p for p in found if skip(p))
        return [p for p in found if not skip(p)]

    def none_left(what: str, found: list[str]) -> DataError:
        outputs = [p for p in found if skip(p)]
        if outputs:
            return DataError(f"`input` {what}{origin} holds only files named like this tool's outputs (e.g. "
                             f"{outputs[0]}), which folders and patterns leave out; name such a file on its own to "
                             f"predict it")
        if what.startswith("pattern"):
            return DataError(f"`input` {what}{origin} matches no file; check the pattern")
        return DataError(f"`input` {what}{origin} holds no image ({', '.join(FOLDER_SUFFIXES)}); name the files or "
                         f"another folder")

    if _has_glob(spec) and not os.path.isfile(path):  # a file whose name holds [ ] or ? is that file
        matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        found = kept(matches)
        if not found:
            raise none_left(f"pattern {spec}", matches)
        return found
    if os.path.isdir(path):
        images = sorted(os.path.join(path, name) for name in os.listdir(path)
                        if name.lower().endswith(FOLDER_SUFFIXES) and os.path.isfile(os.path.join(path, name)))
        found = kept(images)
        if not found:
            raise none_left(f"folder {path}", images)
        return found
    if not os.path.exists(path):
        raise DataError(f"`input` file {path}{origin} not found; check the path")
    return [path]


def expand_inputs(specs: Sequence[str], skip: Callable[[str], bool] = lambda path: False) -> list[str]:
    """The files named by ``specs``, in the order given (folders and patterns sorted by name).

    A ``.txt`` file is a list: one path or pattern per line, blank lines and ``#`` comments skipped,
    relative paths taken relative to the list's folder (read as UTF-8, UTF-16 with a byte-order mark,
    or Latin-1; lists do not nest). A name that exists as a file is that file even when it holds glob
    characters (``scene[1].tif``). A file named twice is kept once. Files that folders and patterns find and ``skip`` says yes
    to (e.g. the outputs of an earlier run) are left out, with one log line; a file named on its own is
    always kept. Raises DataError for a name that matches nothing and for two files with the same stem.
    """
    files: list[str] = []
    skipped: list[str] = []
    for spec in specs:
        if spec.lower().endswith(".txt") and os.path.isfile(spec):
            base = os.path.dirname(os.path.abspath(spec))
            lines = _read_list(spec)
            for number, line in enumerate(lines, start=1):
                if line and not line.startswith("#"):
                    files.extend(_expand_one(line, base, f" (line {number} of {spec})", skip, skipped))
        else:
            files.extend(_expand_one(spec, os.getcwd(), "", skip, skipped))
    if skipped:
        log.info("left out %d file(s) that folders or patterns found but that look like outputs of an earlier run "
                 "(e.g. %s); name such a file on its own to predict it", len(skipped), skipped[0])
    unique = list(dict.fromkeys(f if is_remote(f) else os.path.abspath(f) for f in files))
    if not unique:
        raise DataError("`input` names no file")
    seen: dict[str, str] = {}
    for path in unique:
        stem = stem_of(path)
        if stem in seen:
            raise DataError(f"`input` files {seen[stem]} and {path} have the same name {stem}, so their masks would "
                            f"overwrite each other; rename one or predict them in two runs")
        seen[stem] = path
    return unique


def uses_pillow(path: str) -> bool:
    """Local JPEG and PNG files are decoded whole by Pillow (the DeepGlobe path); every other file, and
    every remote one, through GDAL."""
    return not is_remote(path) and path.lower().endswith(PILLOW_SUFFIXES)


@dataclass(frozen=True)
class InputRange:
    """How non-uint8 values become 0..255: fixed ``pairs`` ((low, high) per band, or one pair for all)
    or ``percentiles`` (low, high) computed per band over the valid pixels."""

    pairs: tuple[tuple[float, float], ...] = ()
    percentiles: tuple[float, float] | None = None

    @staticmethod
    def parse(values: Sequence[str]) -> InputRange:
        """From ``["LOW,HIGH"]``, ``["L1,H1", "L2,H2", "L3,H3"]`` or ``["pLOW,pHIGH"]`` (e.g. ``p2,p98``)."""
        def pair(text: str, strip: str = "") -> tuple[float, float]:
            parts = text.split(",")
            try:
                if len(parts) != 2:
                    raise ValueError
                low, high = (float(part.strip()[len(strip):] if strip else part) for part in parts)
            except ValueError:
                raise ConfigError(f"`input_range` {text!r} is not LOW,HIGH (e.g. 0,3000) or pLOW,pHIGH (e.g. p2,p98)") from None
            if not (np.isfinite(low) and np.isfinite(high) and low < high):
                raise ConfigError(f"`input_range` {text!r} needs finite LOW < HIGH")
            return low, high

        if len(values) == 1 and values[0].strip().lower().startswith("p"):
            text = values[0].lower()
            if not all(part.strip().startswith("p") for part in text.split(",")):
                raise ConfigError(f"`input_range` {values[0]!r}: write both percentiles with a p, e.g. p2,p98")
            low, high = pair(text, strip="p")
            if not (0 <= low < high <= 100):
                raise ConfigError(f"`input_range` percentiles {values[0]!r} must satisfy 0 <= LOW < HIGH <= 100")
            return InputRange(percentiles=(low, high))
        if len(values) not in (1, 3) and len(values) < 3:
            raise ConfigError(f"`input_range` takes one LOW,HIGH pair for all bands or one per band, "
                              f"got {len(values)}")
        return InputRange(pairs=tuple(pair(v) for v in values))

    def describe(self) -> str:
        if self.percentiles is not None:
            return f"percentiles p{self.percentiles[0]:g}..p{self.percentiles[1]:g} of each band"
        return " ".join(f"{lo:g}..{hi:g}" for lo, hi in self.pairs)


def parse_bands(text: str) -> tuple[int, ...]:
    """``"4,3,2"`` -> (4, 3, 2): the 1-based bands used as R, G, B, then any further bands a network of
    more bands reads (``"1,2,3,4"``: R, G, B and near-infrared)."""
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"`bands` {text!r} is not band numbers such as 1,2,3") from None
    if len(bands) < 3 or min(bands) < 1:
        raise ConfigError(f"`bands` {text!r} must be at least three band numbers from 1 (e.g. 1,2,3, 4,3,2 or "
                          f"1,2,3,4)")
    return bands


def declared_rgb(colorinterp: Sequence) -> tuple[int, int, int] | None:
    """The 1-based bands a file declares red, green and blue (its colour interpretation), None unless it
    declares all three."""
    names = [c.name for c in colorinterp]
    if not all(colour in names for colour in ("red", "green", "blue")):
        return None
    return tuple(names.index(colour) + 1 for colour in ("red", "green", "blue"))


def sidecar_georeferencing(path: str) -> dict:
    """{"crs", "transform"} that GDAL finds for a JPEG or PNG (a world file, an ``.aux.xml``), both None
    when it has none: the masks of such an image are placed where it is."""
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.crs is not None or not src.transform.is_identity:
                    return {"crs": src.crs, "transform": src.transform}
    except RasterioError:  # Pillow read it; GDAL's view of its georeferencing is all this asks for
        pass
    return {"crs": None, "transform": None}


def missing_sources(src) -> list[str]:
    """The local source files that an opened VRT (or any GDAL dataset made of other files) names but
    that do not exist, as absolute paths; remote and ``/vsi`` sources are not checked."""
    if src.driver != "VRT":
        return []
    return [os.path.abspath(name) for name in src.files[1:]
            if not is_remote(name) and not os.path.exists(name)]


def palette_table(colormap: dict[int, Sequence[int]], dtype: str) -> np.ndarray:
    """(entries, 4) uint8 RGBA of a colour table, indexed by pixel value: every value of ``dtype``
    (uint8 or uint16) has a row; values the table leaves out are transparent."""
    table = np.zeros((1 << (8 * np.dtype(dtype).itemsize), 4), dtype=np.uint8)
    for index, colour in colormap.items():
        if 0 <= index < len(table):
            table[index] = colour
    return table


def _rasterio():
    import rasterio
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)  # rasterio passes an int to GDAL as bytes
    return rasterio


def network_cache_bytes() -> int:
    """Make sure GDAL's cache of downloaded bytes holds ``REMOTE_CACHE_BYTES``, unless the user chose its size
    (``CPL_VSIL_CURL_CACHE_SIZE`` in the environment or GDAL's configuration); the size in force.

    GDAL reads the option once, when its network file systems are first used in the process, so this is
    called before every remote scene is opened (later calls change nothing)."""
    from rasterio.env import get_gdal_config, set_gdal_config

    chosen = os.environ.get("CPL_VSIL_CURL_CACHE_SIZE") or get_gdal_config("CPL_VSIL_CURL_CACHE_SIZE")
    if chosen is None:
        set_gdal_config("CPL_VSIL_CURL_CACHE_SIZE", str(REMOTE_CACHE_BYTES))
        return REMOTE_CACHE_BYTES
    try:
        return int(chosen)
    except ValueError:
        raise ConfigError(f"CPL_VSIL_CURL_CACHE_SIZE={chosen!r} is no number of bytes; set it to an integer "
                          f"(e.g. {REMOTE_CACHE_BYTES}) or unset it") from None


class RasterScene:
    """A raster file opened for windowed reading (see the module doc for bands, values and nodata).

    Use as a context manager, or call ``close``. ``height``, ``width``, ``crs`` and ``transform``
    describe the file; ``read`` and ``read_valid`` take windows in pixel coordinates that may reach
    outside the scene.
    """

    def __init__(self, path: str, bands: Sequence[int] | None = None, input_range: InputRange | None = None, *,
                 bands_from: str | None = None) -> None:
        """``bands_from``: where ``bands`` came from when the user did not give them (e.g. "the model
        reads 4 bands"), for the message when the scene lacks some."""
        rasterio = _rasterio()
        self.path = path
        self._bands_from = bands_from
        remote = is_remote(path)
        if remote:
            network_cache_bytes()
        if not remote and not os.path.isfile(path):
            raise InputFileError(f"image {path} not found; check the path", path=path)
        if not remote and os.path.getsize(path) == 0:
            raise InputFileError(f"image {path} is empty (0 bytes): the copy or download is incomplete; "
                                 f"fetch it again", path=path)
        try:
            with warnings.catch_warnings():  # a plain TIFF or JPEG has no georeferencing: nothing to warn about
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._src = rasterio.open(path)
        except rasterio.errors.RasterioError as exc:
            if local_archive(path) is not None:
                raise InputFileError(f"image {path} cannot be opened from its archive ({reason(exc)}); check the "
                                     f"path inside the archive", path=path) from None
            if remote:
                raise InputFileError(f"remote scene {path} cannot be opened ({reason(exc)}); check the address, "
                                     f"the network and the credentials (GDAL's and the cloud provider's environment "
                                     f"variables)", path=path) from None
            raise InputFileError(f"image {path} is not readable by GDAL ({reason(exc)}); "
                                 f"replace the file", path=path) from None
        try:
            missing = missing_sources(self._src)
            if missing:
                raise InputFileError(f"image {path} reads the file {missing[0]}, which does not exist"
                                     f"{f' (nor do {len(missing) - 1} more)' if len(missing) > 1 else ''}; restore it "
                                     f"or correct the source file names in {os.path.basename(path)}", path=path)
            self._setup(bands, input_range)
        except BaseException:
            self._src.close()
            raise

    def _setup(self, bands: Sequence[int] | None, input_range: InputRange | None) -> None:
        from rasterio.enums import MaskFlags

        src, path = self._src, self.path
        self.height, self.width, self.count = src.height, src.width, src.count
        georeferenced = src.crs is not None or not src.transform.is_identity
        self.crs, self.transform = src.crs, (src.transform if georeferenced else None)
        points, gcp_crs = src.gcps
        self.gcps = (points, gcp_crs) if points else None  # ground control points instead of a transform
        self.rpcs = src.rpcs  # rational polynomial coefficients, kept in the outputs
        self._warned: set[str] = set()  # GDAL's warnings while reading, each logged once
        self._palette = None
        if bands is None and self.count == 1 and src.colorinterp[0].name == "palette":
            if src.dtypes[0] not in ("uint8", "uint16"):
                raise InputFileError(f"image {path} has a colour table on {src.dtypes[0]} values; GDAL reads colour "
                                     f"tables of uint8 and uint16 bands only", path=path)
            if input_range is not None:
                raise ConfigError(f"`input_range` does not apply to image {path}: its colour table gives the colours "
                                  f"(0..255) of its single band; leave `input_range` out")
            self._palette = palette_table(src.colormap(1), src.dtypes[0])
            bands = (1, 1, 1)
        if bands is None:
            if self.count < 3:
                raise InputFileError(f"image {path} has {self.count} band{'s' if self.count != 1 else ''}, fewer than 3; "
                                     f"pass `bands` to choose them (e.g. 1,1,1 for a grey scene)", path=path)
            bands = declared_rgb(src.colorinterp)
            if bands is None:
                bands = (1, 2, 3)
                if self.count > 3:
                    log.warning("%s: %d bands, none declared red, green and blue; using bands 1,2,3 as R,G,B (pass "
                                "`bands` to choose others)", path, self.count)
        for band in bands:
            if not 1 <= band <= self.count and self._bands_from is not None:
                raise InputFileError(f"image {path} has {self.count} band{'s' if self.count != 1 else ''} but "
                                     f"{self._bands_from}; give a scene with all of them, or a model of "
                                     f"{self.count} bands", path=path)
            if not 1 <= band <= self.count:
                raise DataError(f"`bands` {','.join(map(str, bands))}: image {path} has bands 1..{self.count} only; "
                                f"choose band numbers in that range")
        self.bands = tuple(int(b) for b in bands)
        self.channels = len(self.bands)
        dtypes = {src.dtypes[b - 1] for b in self.bands}
        if len(dtypes) != 1:
            raise InputFileError(f"image {path}: bands {self.bands} have different data types ({', '.join(sorted(dtypes))}); "
                                 f"choose bands of one type with `bands`", path=path)
        self.dtype = "uint8" if self._palette is not None else dtypes.pop()  # colours, whatever the index type
        if self.dtype not in SUPPORTED_DTYPES:
            raise InputFileError(f"image {path} has {self.dtype} pixels, which are not supported; convert it to "
                                 f"{', '.join(SUPPORTED_DTYPES)} first (e.g. with gdal_translate -ot)", path=path)
        block_rows, block_cols = src.block_shapes[0]
        if block_cols >= self.width and self.width > 4 * 512:
            log.warning("%s is not tiled (blocks of %dx%d px): every window decodes whole rows, which is slow for a "
                        "scene this wide; gdal_translate -co TILED=YES makes a tiled copy", path, block_cols, block_rows)
        flags = [src.mask_flag_enums[b - 1] for b in self.bands]
        self._transparent = self._palette is not None and bool((self._palette[:, 3] == 0).any())
        self.has_mask = not all(f == [MaskFlags.all_valid] for f in flags) or self._transparent
        alpha_read = [b for b in self.bands if src.colorinterp[b - 1].name == "alpha"]
        self._alpha_is_data = bool(alpha_read) and not any(MaskFlags.nodata in f for f in flags)
        if alpha_read:
            log.warning("%s: band %d is declared alpha (GDAL's reading of a 4th uint8 band written without "
                        "photometric options) but is read as a data band here, so it masks no pixel%s", path,
                        alpha_read[0], "" if self._alpha_is_data else "; the nodata value does")
        if self._alpha_is_data:
            self.has_mask = any(f not in ([MaskFlags.all_valid], [MaskFlags.per_dataset, MaskFlags.alpha]) for f in flags)
        self.range_rule = input_range
        if input_range is None and self.dtype != "uint8":
            raise InputFileError(f"image {path} has {self.dtype} pixels; pass `input_range` to say how they map to 0..255: "
                                 f"LOW,HIGH (e.g. 0,3000) or percentiles such as p2,p98", path=path)
        if input_range is None:
            self._scale = None
        elif input_range.percentiles is not None:
            self._scale = self._percentile_pairs(*input_range.percentiles)
        else:
            pairs = input_range.pairs
            if len(pairs) not in (1, len(self.bands)):
                raise ConfigError(f"`input_range` gives {len(pairs)} pairs for {len(self.bands)} bands; give one pair "
                                  f"for all bands or one per band")
            self._scale = np.array(pairs * len(self.bands) if len(pairs) == 1 else pairs, dtype=np.float64)
        if self._scale is not None and self.dtype == "uint8":
            log.warning("%s: uint8 pixels, already 0..255, are remapped by `input_range`; leave it out for uint8 "
                        "scenes (predict them in a run of their own)", path)
        if self._scale is not None:
            text = ", ".join(f"band {b}: {lo:g}..{hi:g}" for b, (lo, hi) in zip(self.bands, self._scale))
            log.info("%s: %s pixels mapped to 0..255 linearly (%s)", path, self.dtype, text)

    def clone(self) -> RasterScene:
        """Another handle on the same file with the same reading rules (bands, value mapping, palette),
        for a reader thread: a GDAL dataset must not be read from two threads at once. No statistics
        pass is repeated. Close it when done."""
        rasterio = _rasterio()
        twin = object.__new__(RasterScene)
        twin.__dict__.update(self.__dict__)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            twin._src = rasterio.open(self.path)
        return twin

    def __enter__(self) -> RasterScene:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._src.close()

    @property
    def block_height(self) -> int:
        return int(self._src.block_shapes[0][0])

    def profile(self) -> dict:
        """What an output raster needs to lie exactly on this scene: size, CRS and transform, or its
        ground control points (``gcps``: (points, CRS)) and rational polynomial coefficients (``rpcs``)."""
        return {"height": self.height, "width": self.width, "crs": self.crs, "transform": self.transform,
                "gcps": self.gcps, "rpcs": self.rpcs}

    def masking(self) -> str:
        """What marks this scene's invalid pixels, for the log: a nodata value, a mask band, an alpha band, or none."""
        from rasterio.enums import MaskFlags

        flags = {flag for b in self.bands for flag in self._src.mask_flag_enums[b - 1]}
        if self._alpha_is_data and not self.has_mask:
            return "nothing (its alpha band is read as data)"
        if self._transparent:
            return "transparent colour-table entries" + (f" and nodata value {self._src.nodata:g}"
                                                         if MaskFlags.nodata in flags else "")
        if MaskFlags.nodata in flags:
            return f"nodata value {self._src.nodata:g}"
        if MaskFlags.alpha in flags:
            alpha = [i + 1 for i, c in enumerate(self._src.colorinterp) if c.name == "alpha"]
            return f"alpha band {alpha[0]}" if alpha else "an alpha band"
        if MaskFlags.per_dataset in flags:
            return "a mask band"
        return "nothing (every pixel valid)"

    def describe(self) -> str:
        """One line for the log: size, bands and type, the bands read (as R, G, B, ...), the
        georeferencing, and what masks pixels."""
        text = f"{self.width}x{self.height} px, {self.count} band{'s' if self.count != 1 else ''} {self.dtype}"
        extra = f" + {self.channels - 3} more" if self.channels > 3 else ""
        if self._palette is not None:
            text += ", band 1 through its colour table as R, G, B"
        else:
            text += f", bands {','.join(map(str, self.bands))} as R, G, B{extra}"
        if self.crs is not None:
            text += f", {self.crs.to_string()}"
        elif self.gcps is not None:
            text += f", {len(self.gcps[0])} ground control points"
        if self.rpcs is not None:
            text += ", RPCs"
        return text + f", masked by {self.masking()}"

    # --- reading ---------------------------------------------------------------------------------------
    def _clip(self, top: int, left: int, height: int, width: int):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, self.height), min(left + width, self.width)
        return y0, x0, y1, x1

    def _window(self, y0: int, x0: int, y1: int, x1: int):
        from rasterio.windows import Window

        return Window(x0, y0, x1 - x0, y1 - y0)

    def _read_raw(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """The selected bands' values (bands, h, w); a paletted band's indices once (1, h, w).

        GDAL reports damaged blocks only when they are read; a JPEG-compressed one may come back as
        garbage with no more than a warning ("Corrupt JPEG data"), which is taken as the error it is."""
        bands = [1] if self._palette is not None else self.bands
        with library_warnings() as warned:
            try:
                data = self._src.read(bands, window=self._window(y0, x0, y1, x1))
                failure = None
            except Exception as exc:
                failure = reason(exc)
        warned = [re.sub(r"^CPLE_\w+:\s*", "", text) for text in warned]
        if failure is None:
            failure = next((text for text in warned if _DAMAGE.search(text)), None)
        if failure is not None:
            raise InputFileError(f"image {self.path}: rows {y0}..{y1} cannot be read ({failure}); the file is "
                                 f"damaged or truncated: replace it", path=self.path)
        for text in warned:
            if text not in self._warned:
                self._warned.add(text)
                log.warning("%s: GDAL warned while reading rows %d..%d: %s", self.path, y0, y1, text)
        return data

    def _valid_raw(self, y0: int, x0: int, y1: int, x1: int, raw: np.ndarray | None = None) -> np.ndarray:
        """bool (h, w) of the pixels with data; ``raw``: the window's values when the caller read them
        already (a paletted scene's transparency is looked up in them rather than read again)."""
        from rasterio.errors import NodataShadowWarning

        with warnings.catch_warnings():  # GDAL's rule (nodata wins over an alpha band) is the documented one
            warnings.simplefilter("ignore", NodataShadowWarning)
            masks = self._src.read_masks(self.bands, window=self._window(y0, x0, y1, x1))
        valid = masks.any(axis=0)
        if self._transparent:
            indices = self._read_raw(y0, x0, y1, x1) if raw is None else raw
            valid &= self._palette[indices[0], 3] > 0
        return valid

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """uint8 (bands, height, width): the window at (top, left), zeros outside the scene and at invalid pixels."""
        out = np.zeros((self.channels, height, width), dtype=np.uint8)
        y0, x0, y1, x1 = self._clip(top, left, height, width)
        if y1 <= y0 or x1 <= x0:
            return out
        raw = self._read_raw(y0, x0, y1, x1)
        inside = out[:, y0 - top:y1 - top, x0 - left:x1 - left]
        if self._palette is not None:
            inside[...] = np.moveaxis(self._palette[raw[0], :3], -1, 0)
        elif self._scale is None:
            inside[...] = raw
        else:
            low, high = self._scale[:, 0, None, None], self._scale[:, 1, None, None]
            scaled = (raw.astype(np.float32) - low.astype(np.float32)) * (255.0 / (high - low)).astype(np.float32)
            np.nan_to_num(scaled, copy=False, nan=0.0)  # NaN (a float scene's nodata) becomes the 0 of invalid pixels
            np.clip(scaled, 0, 255, out=scaled)
            np.rint(scaled, out=scaled)
            inside[...] = scaled.astype(np.uint8)
        if self.has_mask:
            inside[:, ~self._valid_raw(y0, x0, y1, x1, raw)] = 0
        return out

    def read_valid(self, top: int, left: int, height: int, width: int) -> np.ndarray | None:
        """bool (height, width), True where the scene has data (False outside it); None for a scene
        without a nodata mask."""
        if not self.has_mask:
            return None
        out = np.zeros((height, width), dtype=bool)
        y0, x0, y1, x1 = self._clip(top, left, height, width)
        # GDAL returns one mask per band: a few rows at a time, so a band of a wide scene costs little.
        rows = max(1, (1 << 23) // (self.channels * max(1, x1 - x0)))
        for r0 in range(y0, y1, rows) if x1 > x0 else ():
            r1 = min(r0 + rows, y1)
            out[r0 - top:r1 - top, x0 - left:x1 - left] = self._valid_raw(r0, x0, r1, x1)
        return out

    # --- statistics ------------------------------------------------------------------------------------
    def _strips(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(raw values (bands, rows, W), valid (rows, W) or None) over the scene, whole block rows at a time."""
        itemsize = np.dtype(self.dtype).itemsize
        block = self.block_height
        rows = max(block, _STRIP_BYTES // max(1, self.channels * self.width * itemsize) // block * block)
        for y0 in range(0, self.height, rows):
            y1 = min(y0 + rows, self.height)
            raw = self._read_raw(y0, 0, y1, self.width)
            yield raw, (self._valid_raw(y0, 0, y1, self.width, raw) if self.has_mask else None)

    def _percentile_pairs(self, low: float, high: float) -> np.ndarray:
        """(bands, 2) float64: the low and high percentiles of each selected band over its valid pixels.

        Integer scenes of at most 16 bits are counted exactly in one pass (a 65536-bin histogram).
        Other types take two passes: the minimum and maximum, then a 65536-bin histogram between them,
        so a percentile is exact to (max - min) / 65536.
        """
        exact = np.dtype(self.dtype).kind in "ui" and np.dtype(self.dtype).itemsize <= 2
        if exact:
            offset, lo_edge, width = (-32768 if np.dtype(self.dtype).kind == "i" else 0), None, 1.0
        else:
            lows = np.full(self.channels, np.inf)
            highs = np.full(self.channels, -np.inf)
            for raw, valid in self._strips():
                for b in range(self.channels):
                    values = raw[b] if valid is None else raw[b][valid]
                    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
                    if values.size:
                        lows[b] = min(lows[b], float(values.min()))
                        highs[b] = max(highs[b], float(values.max()))
            if not np.isfinite(lows).all():
                raise InputFileError(f"image {self.path} has no valid pixel to compute `input_range` percentiles from",
                                     path=self.path)
            lo_edge, width = lows, np.maximum(highs - lows, 1e-12) / 65536
        counts = np.zeros((self.channels, 65536), dtype=np.int64)
        for raw, valid in self._strips():
            for b in range(self.channels):
                values = raw[b] if valid is None else raw[b][valid]
                if exact:
                    index = values.astype(np.int64) - offset
                else:
                    values = values[np.isfinite(values)].astype(np.float64)
                    index = np.minimum(((values - lo_edge[b]) / width[b]).astype(np.int64), 65535)
                counts[b] += np.bincount(index.ravel(), minlength=65536)
        totals = counts.sum(axis=1)
        if not totals.all():
            raise InputFileError(f"image {self.path} has no valid pixel to compute `input_range` percentiles from",
                                 path=self.path)
        pairs = np.zeros((self.channels, 2))
        for b in range(self.channels):
            cumulative = np.cumsum(counts[b])
            for k, q in enumerate((low, high)):
                rank = min(totals[b] - 1, int(np.floor(q / 100 * (totals[b] - 1))))
                index = int(np.searchsorted(cumulative, rank + 1))
                pairs[b, k] = index + offset if exact else lo_edge[b] + index * width[b]
            if pairs[b, 1] <= pairs[b, 0]:  # a flat band: keep the mapping defined
                pairs[b, 1] = pairs[b, 0] + 1
        log.info("%s: percentiles over %d valid pixels", self.path, int(totals[0]))
        return pairs
