"""Folders of image files: which files, in which order, with which labels, decoded safely.

A folder of images is data as it is (`--data photos/`): every `.jpg/.jpeg/.png/.bmp/.ppm/.webp`
below it, sorted by relative path, decoded one at a time to uint8 RGB (HWC). Nothing is written
there, so a read-only folder works. Labels, when the user has them (only `compare` reads them):

    labels.csv / labels.txt in the folder (or --labels FILE):  `name,label` rows (name relative to
        the folder, or the bare file name), or one label per line in the sorted file order;
    one sub-folder per class:  cat/1.jpg, dog/2.jpg -> classes sorted by name, 0, 1, ...

Labels that are all integers are class indices; names are numbered in sorted order.

Untrusted folders: a file (or a folder reached through a link) is read only when its real path is
inside the folder the user named, unless EDGEPACK_DATA_OUTSIDE=1 says otherwise; only regular
files are read (no FIFOs or devices); an image whose header declares more than
`max_pixels()` pixels is refused before any pixel is decoded (a 164 KB PNG can declare 13000 x
13000 pixels: 0.5 GB decoded), and PIL's own limit is set to the same budget.
"""
from __future__ import annotations

import csv
import logging
import os
import stat
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
LABEL_FILES = ("labels.csv", "labels.txt")
#: decoded pixels per image (default 40 M: 120 MB as RGB); EDGEPACK_MAX_IMAGE_PIXELS overrides
DEFAULT_MAX_PIXELS = 40_000_000
OUTSIDE_ENV = "EDGEPACK_DATA_OUTSIDE"


def max_pixels() -> int:
    value = os.environ.get("EDGEPACK_MAX_IMAGE_PIXELS")
    try:
        return int(value) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        raise EdgepackError(f"EDGEPACK_MAX_IMAGE_PIXELS={value!r} is not a number",
                            hint="e.g. EDGEPACK_MAX_IMAGE_PIXELS=100000000") from None


def outside_allowed() -> bool:
    return os.environ.get(OUTSIDE_ENV, "") not in ("", "0")


def check_inside(path: Path, root: Path, what: str) -> Path:
    """`path` (through any links) must lie inside `root` (through its links): the data folder the
    user named is the only place data is read from."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if outside_allowed() or real == top or top in real.parents:
        return path
    raise EdgepackError(f"{what} {path} resolves to {real}, outside the data folder {root}",
                        hint=f"copy it into {root}, or set {OUTSIDE_ENV}=1 to read data outside it")


def check_regular(path: Path, what: str = "data") -> None:
    """Refuse FIFOs, devices and sockets: reading one blocks forever or never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a missing file is reported by the caller with its own message
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise EdgepackError(f"{what} {path} is not a regular file or folder (a FIFO, device or socket)",
                            hint="pass a file or a folder of files")


def is_image_folder(path: Path) -> bool:
    """A folder holding image files (and no manifest.toml): data as it is."""
    if not path.is_dir() or (path / "manifest.toml").is_file():
        return False
    for _, _, files in os.walk(path):
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files):
            return True
    return False


def list_images(folder: Path, root: Path | None = None) -> list[Path]:
    """Image files below `folder`, sorted by path relative to it; links are followed only to
    places inside `root` (default: `folder`), each folder visited once."""
    root = root or folder
    check_inside(folder, root, "image folder")
    found, seen = [], set()
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        kept = []
        for name in sorted(dirs):
            sub = Path(here) / name
            if os.path.islink(sub):
                check_inside(sub, root, "linked folder")
            kept.append(name)
        dirs[:] = kept
        for name in files:
            file = Path(here) / name
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if os.path.islink(file):
                check_inside(file, root, "linked image")
            check_regular(file, "image")
            found.append(file)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def decode(file: Path, budget: int | None = None) -> np.ndarray:
    """One image as uint8 RGB HWC; refused from its header when it declares more than `budget` pixels."""
    from PIL import Image

    budget = budget or max_pixels()
    try:
        Image.MAX_IMAGE_PIXELS = None  # our own check, with the size in the message, comes first
        try:
            image = Image.open(file)
        finally:
            Image.MAX_IMAGE_PIXELS = budget  # PIL's own bomb check (it raises at twice this)
        with image:
            width, height = image.size  # from the header; nothing decoded yet
            if width * height > budget:
                raise EdgepackError(f"{file}: {width}x{height} pixels, above the budget of {budget:,} per image",
                                    hint="resize it beforehand, or raise EDGEPACK_MAX_IMAGE_PIXELS")
            return np.asarray(image.convert("RGB"))
    except EdgepackError:
        raise
    except Image.DecompressionBombError:
        raise EdgepackError(f"{file}: declares more pixels than the budget of {budget:,}",
                            hint="raise EDGEPACK_MAX_IMAGE_PIXELS if the image is genuine") from None
    except Exception:
        raise EdgepackError(f"{file}: not a readable image") from None


# ---------------------------------------------------------------- labels
def label_source(folder: Path, files: list[Path], ref: str | None = None) -> str | None:
    """What gives this folder's labels: a .csv/.txt file, "folders" (one per class), or None."""
    if ref and Path(ref).suffix.lower() in (".csv", ".txt"):
        return ref
    for name in LABEL_FILES:
        if (folder / name).is_file():
            return str(folder / name)
    parts = {len(f.relative_to(folder).parts) for f in files}
    classes = {f.relative_to(folder).parts[0] for f in files}
    if parts == {2} and len(classes) >= 2:
        return "folders"
    return None


def image_labels(folder: Path, files: list[Path], source: str) -> np.ndarray:
    """One label per file of `files` (int64 class indices)."""
    if source == "folders":
        return _indices([f.relative_to(folder).parts[0] for f in files])
    path = Path(source)
    if not path.is_absolute() and not path.exists():
        path = folder / path
    if not path.is_file():
        raise EdgepackError(f"labels not found: {source}", hint="pass --labels FILE.csv (name,label rows)")
    check_regular(path, "labels")
    if path.stat().st_size > 64 * 2**20:
        raise EdgepackError(f"{path}: over 64 MB, too large for a labels file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgepackError(f"{path}: not a readable text file ({type(exc).__name__})") from None
    dialect = "excel" if path.suffix.lower() == ".csv" or "," in text.split("\n", 1)[0] else "excel-tab"
    rows = [[c.strip() for c in (row if dialect == "excel" else " ".join(row).split())]
            for row in csv.reader(text.splitlines(), dialect=dialect) if any(c.strip() for c in row)]
    if not rows:
        raise EdgepackError(f"{path}: no labels")
    if all(len(r) == 1 for r in rows):  # one label per file, in order
        if len(rows) != len(files):
            raise EdgepackError(f"{path}: {len(rows)} labels for {len(files)} images in {folder}",
                                hint="give one label per image (sorted by name), or name,label rows")
        return _indices([r[0] for r in rows])
    by_name: dict[str, str] = {}
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise EdgepackError(f"{path}: line {i + 1} has no label", hint="write name,label on every line")
        by_name[row[0]] = row[1]
    if rows and not _is_int(rows[0][1]) and all(_is_int(r[1]) for r in rows[1:]):
        by_name.pop(rows[0][0], None)  # a header row
    labels = []
    for f in files:
        key = f.relative_to(folder).as_posix()
        value = by_name.get(key, by_name.get(f.name))
        if value is None:
            raise EdgepackError(f"{path}: no label for {key}", hint="give every image a name,label row")
        labels.append(value)
    return _indices(labels)


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _indices(values: list[str]) -> np.ndarray:
    if all(_is_int(v) for v in values):
        return np.asarray([int(v) for v in values], np.int64)
    names = sorted(set(values))
    logger.info("labels are class names: %s", ", ".join(f"{i}={n}" for i, n in enumerate(names[:10])))
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[v] for v in values], np.int64)
