"""Walking a user's image folder: one order and one rule for hidden files and links, and the
file endings read as images.

Kept free of TensorFlow: the pipeline checks a folder for changes (its step cache key) in
processes that must not pay TensorFlow's import.
"""

from __future__ import annotations

import os
from typing import Iterator

from PIL import features as _pil_features

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff") + (
    (".webp",) if _pil_features.check("webp") else ()
)
"""File endings read from ``folder:`` sources (case-insensitive). PIL reads TIFF itself; WebP
only when it was built with libwebp, so ``.webp`` is listed only then (and such files are
named in a warning otherwise, not dropped in silence)."""


def walk_files(root: str) -> Iterator[str]:
    """Every file path under `root` in a fixed order, hidden entries skipped, following symbolic
    links but reading each real directory once (a link back up the tree would loop forever).
    The pipeline's check for changed folder data walks them (a superset of what the loader
    reads, which skips links back into the folder)."""
    seen = set()
    for dirpath, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (os.path.join(dirpath, n) for n in sorted(names) if not n.startswith("."))
