"""Object colours, shared by the renderer and the colour reader.

The colours are saturated and far apart in RGB (pairwise distance > 85) and far from every scene's
background (checked in tests), because the reader classifies blurry generated pixels by which
palette colour, mixed with the known background, explains them best.
"""

from __future__ import annotations

import numpy as np

from .spec import COLOURS

OBJECT_RGB: dict[str, tuple[int, int, int]] = {
    "red": (226, 38, 46),
    "orange": (252, 136, 20),
    "yellow": (252, 220, 36),
    "green": (30, 196, 84),
    "blue": (34, 70, 232),
    "purple": (146, 56, 214),
    "pink": (250, 104, 190),
}

# Rows in the order of `COLOURS`, float for arithmetic.
PALETTE = np.array([OBJECT_RGB[c] for c in COLOURS], dtype=np.float32)
