"""The label value of a pixel that has no class.

Labels are uint8 (or int64) class-index maps. A pixel that nobody labelled (outside the labels'
coverage, nodata of a scene or a label raster, the halo of a refinement window) holds ``IGNORE_INDEX``:
the loss, the confusion matrix and every score leave it out. Class tables have at most 255 classes
(indices 0..254), so the value is never a class. A class table marks which mask value stands for it
(``dataset.classes.ClassTable.ignore``); DeepGlobe's and Inria's tables have none: every pixel of
theirs is labelled, as in the releases.
"""

from __future__ import annotations

IGNORE_INDEX = 255
