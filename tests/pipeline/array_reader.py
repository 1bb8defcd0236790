"""A boundless window reader over a numpy image: what ``dataset.scenes.RasterScene`` offers, without a file."""

import numpy as np


class ArrayReader:
    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.height, self.width = image.shape[1:]
        self.calls = 0

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        self.calls += 1
        out = np.zeros((3, height, width), np.uint8)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, self.height), min(left + width, self.width)
        if y1 > y0 and x1 > x0:
            out[:, y0 - top:y1 - top, x0 - left:x1 - left] = self.image[:, y0:y1, x0:x1]
        return out
