"""Writing uint8 GeoTIFFs (class maps, confidences, class probabilities) band by band, never whole in memory.

``GeoTiffBandWriter`` receives rows top to bottom, as the pipeline finalises them, and writes them
into a tiled (512 x 512), deflate-compressed GeoTIFF with the scene's CRS and transform (or its ground
control points, and its rational polynomial coefficients), so the mask lies exactly on the scene in a
GIS. A raster has one band, or one per entry of ``descriptions`` (the probabilities: one per class,
named after it). Rows are collected into whole tile rows before they are written (512 x W bytes per
band), so GDAL never has to compress a tile twice. A class map gets the class palette as
its colour table and, where the scene has a nodata mask, the nodata value ``NODATA`` (255).

With ``cog=True`` the finished GeoTIFF is turned into a Cloud-Optimized GeoTIFF (GDAL's COG driver:
internal overviews made with nearest-neighbour sampling, so every overview pixel is a real class).
The file appears under its final name only when it is complete (``utils.files.atomic_path``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import numpy as np

from utils.errors import DataError
from utils.files import atomic_path, scratch_path, write_error
from utils.logging import native_diagnostics, native_failures

NODATA = 255
TILE = 512


def _colormap(palette: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    table = {i: (int(r), int(g), int(b), 255) for i, (r, g, b) in enumerate(palette)}
    table[NODATA] = (0, 0, 0, 0)
    return table


class GeoTiffBandWriter:
    """Context manager writing an (height, width) uint8 raster row band by row band.

    profile: ``RasterScene.profile()`` (height, width, crs, transform; crs and transform may be None).
    palette: (C, 3) uint8 colours of the class indices, or None for a grey band (confidence).
    nodata: the value written where the scene has no data, or None.
    descriptions: one name per band of a multi-band raster (its bands' descriptions), None for one band.
    """

    def __init__(self, path: str, profile: dict, *, palette: np.ndarray | None = None, nodata: int | None = None,
                 cog: bool = False, descriptions: list[str] | None = None) -> None:
        self.path, self.profile, self.palette, self.nodata, self.cog = path, profile, palette, nodata, cog
        self.descriptions = descriptions
        self.count = 1 if descriptions is None else len(descriptions)
        self.height, self.width = int(profile["height"]), int(profile["width"])
        self._rows = 0
        self._buffer = np.zeros((self.count, min(TILE, self.height), self.width), dtype=np.uint8)
        self._filled = 0
        self._written = 0
        self._stack = contextlib.ExitStack()
        self._dst = None

    def _fail(self, exc: BaseException, diagnostics: Sequence[str] = ()) -> DataError:
        return write_error(self.path, exc, diagnostics)

    def __enter__(self) -> GeoTiffBandWriter:
        import rasterio

        diagnostics: list[str] = []
        try:
            self._final_tmp = self._stack.enter_context(atomic_path(self.path))
            self._tmp = self._final_tmp
            if self.cog:  # the plain GeoTIFF first, converted into the final temporary at the end
                self._tmp = self._stack.enter_context(scratch_path(self._final_tmp + ".tif"))
            tiled = self.width >= TILE and self.height >= TILE
            options = dict(blockxsize=TILE, blockysize=TILE) if tiled else {}
            georeferencing = {key: self.profile[key] for key in ("crs", "transform") if self.profile.get(key) is not None}
            if self.profile.get("gcps"):  # georeferenced by ground control points instead of a transform
                georeferencing["gcps"], georeferencing["crs"] = self.profile["gcps"]
            if self.profile.get("rpcs") is not None:
                georeferencing["rpcs"] = self.profile["rpcs"]
            with warnings.catch_warnings(), native_diagnostics() as diagnostics:
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # as its input has none
                self._dst = rasterio.open(self._tmp, "w", driver="GTiff", height=self.height, width=self.width,
                                          count=self.count,
                                          dtype="uint8", nodata=self.nodata, tiled=tiled, compress="deflate",
                                          BIGTIFF="IF_SAFER", **georeferencing, **options)
            if self.palette is not None:
                self._dst.write_colormap(1, _colormap(self.palette))
            for band, name in enumerate(self.descriptions or (), start=1):
                self._dst.set_band_description(band, name)
        except DataError:
            self._stack.close()
            raise
        except Exception as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise self._fail(exc, diagnostics) from None
        return self

    def write(self, rows: np.ndarray) -> None:
        """Append the next rows: (h, width) uint8 for one band, (count, h, width) for several."""
        rows = np.asarray(rows)
        if rows.ndim == 2 and self.count == 1:
            rows = rows[None]
        if (rows.ndim != 3 or rows.shape[0] != self.count or rows.shape[2] != self.width
                or self._rows + rows.shape[1] > self.height):
            raise ValueError(f"a band of shape {rows.shape} does not fit the {self.count}-band {self.height}x"
                             f"{self.width} raster after {self._rows} rows")
        start, n = 0, rows.shape[1]
        while start < n:
            take = min(n - start, self._buffer.shape[1] - self._filled)
            self._buffer[:, self._filled:self._filled + take] = rows[:, start:start + take]
            self._filled += take
            start += take
            if self._filled == self._buffer.shape[1] or self._rows + start == self.height:
                self._flush()
        self._rows += n

    def _flush(self) -> None:
        from rasterio.windows import Window

        if not self._filled:
            return
        y0 = self._written
        with native_failures(self._fail):
            self._dst.write(self._buffer[:, :self._filled], window=Window(0, y0, self.width, self._filled))
        self._written = y0 + self._filled
        self._filled = 0

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._flush()
                if self._written != self.height:
                    raise ValueError(f"{self.path}: only {self._written} of {self.height} rows were written")
            if exc_type is None:
                with native_failures(self._fail):
                    self._dst.close()
            else:  # the block's own error is what the caller reports
                with native_diagnostics(), contextlib.suppress(Exception):
                    self._dst.close()
            if exc_type is None and self.cog:
                _to_cog(self._tmp, self._final_tmp, self._fail)
        except BaseException as error:
            self._stack.__exit__(type(error), error, error.__traceback__)
            raise
        return bool(self._stack.__exit__(exc_type, exc, tb))


def _to_cog(source: str, target: str, fail) -> None:
    from rasterio.shutil import copy

    with native_failures(fail):
        copy(source, target, driver="COG", compress="DEFLATE", overview_resampling="NEAREST", blocksize=TILE,
             BIGTIFF="IF_SAFER")
