"""Calibration and evaluation data: read in batches, checked against the model's inputs.

Sources: a calibration folder (`manifest.toml` + `.npz`, or images with a preprocessing spec), a
single `.npz` (one array per input, first axis = sample) or `.npy` (single-input models), or any
Python iterable of `{input_name: array}` (ONNX Runtime `CalibrationDataReader` objects too).
Arrays are streamed: an `.npz` member is decompressed batch by batch, an `.npy` is memory-mapped.
"""
from __future__ import annotations

import sys
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import EdgepackError, first_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# What a damaged or mislabelled data file raises while being read (zip CRC, zlib, numpy headers,
# PIL, bad manifest values).
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, EOFError,
                zipfile.BadZipFile, zlib.error, OverflowError)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple  # ints, or str/None for dynamic dims
    dtype: np.dtype


def input_specs_of(session) -> list[InputSpec]:
    from edgepack.runtime import input_specs

    return [InputSpec(n, tuple(s), np.dtype(d)) for n, s, d in input_specs(session)]


class Dataset:
    """Batches of `{input_name: array}` from one source; iterable more than once."""

    def __init__(self, source: Any, specs: list[InputSpec], *, batch_size: int = 32,
                 limit: int | None = None, labels: str | None = None):
        self.source, self.specs, self.batch_size, self.limit = source, specs, batch_size, limit
        self.label_key = labels
        self.description = str(source) if isinstance(source, (str, Path)) else type(source).__name__

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch in self.batches(with_labels=False):
            yield batch

    def batches(self, with_labels: bool = False) -> Iterator[dict[str, np.ndarray]]:
        try:
            yield from self._batches(with_labels)
        except EdgepackError:
            raise
        except MemoryError:
            raise EdgepackError(f"{self.description}: too large to read into memory") from None
        except _READ_ERRORS as exc:  # a file that is not what it says: one line, no traceback
            raise EdgepackError(f"{self.description}: cannot read the data ({type(exc).__name__}: "
                                f"{first_line(exc)})", hint="check the file; see calibration/digits for the format") from None

    def _batches(self, with_labels: bool) -> Iterator[dict[str, np.ndarray]]:
        seen = 0
        for raw in _raw_batches(self.source, self.specs, self.batch_size, self.label_key if with_labels else None):
            if self.limit is not None:
                if seen >= self.limit:
                    return
                raw = {k: v[: self.limit - seen] for k, v in raw.items()}
            batch = self._checked(raw)
            seen += len(next(iter(batch.values())))
            yield batch

    def _checked(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = {}
        for spec in self.specs:
            if spec.name not in raw:
                raise EdgepackError(f"{self.description}: no data for model input '{spec.name}' "
                                    f"(has {', '.join(sorted(raw)) or 'nothing'})",
                                    hint="name each array after the model input it feeds")
            array = np.asarray(raw[spec.name])
            expected = spec.shape
            if array.ndim != len(expected) or any(
                    isinstance(e, int) and e > 0 and a != e for a, e in zip(array.shape[1:], expected[1:])):
                raise EdgepackError(f"{self.description}: input '{spec.name}' has samples of shape "
                                    f"{list(array.shape[1:])}, the model expects {list(expected[1:])}")
            if array.dtype != spec.dtype:
                if np.issubdtype(spec.dtype, np.floating) and np.issubdtype(array.dtype, np.number):
                    array = array.astype(spec.dtype)
                else:
                    raise EdgepackError(f"{self.description}: input '{spec.name}' is {array.dtype}, "
                                        f"the model expects {spec.dtype}")
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                raise EdgepackError(f"{self.description}: input '{spec.name}' contains NaN or Inf",
                                    hint="clean the calibration data")
            batch[spec.name] = array
        if "__labels__" in raw:
            batch["__labels__"] = np.asarray(raw["__labels__"])
        return batch


def open_dataset(source: Any, specs: list[InputSpec], *, batch_size: int = 32, limit: int | None = None,
                 labels: str | None = None) -> Dataset:
    """A Dataset for a path (folder, .npz, .npy) or an iterable; errors name the file at fault."""
    if not specs:
        raise EdgepackError("the model has no inputs: there is nothing to feed data to",
                            hint="calibrate a model whose graph takes inputs")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise EdgepackError(f"data not found: {path}", hint="pass a calibration folder, .npz or .npy")
        if path.is_file() and path.suffix not in (".npz", ".npy"):
            raise EdgepackError(f"{path}: unsupported data file", hint="use .npz, .npy or a calibration folder")
        if path.is_dir() and not (path / "manifest.toml").is_file():
            raise EdgepackError(f"{path}: no manifest.toml in this calibration folder",
                                hint="see calibration/digits/manifest.toml for the format")
        if path.suffix == ".npy" and len(specs) != 1:
            raise EdgepackError(f"{path}: a bare .npy feeds single-input models only; this one has "
                                f"{len(specs)} inputs", hint="use an .npz with one array per input")
    elif not isinstance(source, Iterable) and not hasattr(source, "get_next"):
        raise EdgepackError(f"calibration data of type {type(source).__name__} is not iterable")
    return Dataset(source, specs, batch_size=batch_size, limit=limit, labels=labels)


def read_manifest(folder: Path) -> dict:
    try:
        manifest = tomllib.loads((folder / "manifest.toml").read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgepackError(f"{folder / 'manifest.toml'}: not valid TOML ({first_line(exc)})") from None
    for key in ("files", "images"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise EdgepackError(f"{folder / 'manifest.toml'}: '{key}' must be a table ([{key}]), "
                                f"got {manifest[key]!r}", hint="see calibration/digits/manifest.toml")
    return manifest


def has_labels(source: Any, key: str = "labels") -> bool:
    """Whether evaluation labels come with `source`: a calibration folder whose manifest names an
    evaluation file and its labels, or an .npz holding an array `key`. Unreadable sources answer
    False, so that `open_dataset` reports them with its own error."""
    if not isinstance(source, (str, Path)):
        return False
    path = Path(source)
    if path.is_dir():
        if not (path / "manifest.toml").is_file():
            return False
        files = read_manifest(path).get("files", {})
        return "evaluation" in files and "labels" in files
    if path.suffix == ".npz" and path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return f"{key}.npy" in archive.namelist()
    return False


def dataset_file(folder: Path, role: str = "calibration") -> Path:
    """The file a calibration folder names for `role` (calibration or evaluation)."""
    manifest = read_manifest(folder)
    files = manifest.get("files", {})
    if role not in files:
        raise EdgepackError(f"{folder / 'manifest.toml'}: no [files] {role} entry")
    if not isinstance(files[role], str):
        raise EdgepackError(f"{folder / 'manifest.toml'}: [files] {role} must be a file name, got {files[role]!r}")
    path = folder / files[role]
    if not path.is_file():
        raise EdgepackError(f"{folder / 'manifest.toml'}: [files] {role} names '{files[role]}', which is missing",
                            hint="copy the file into the calibration folder or fix the manifest")
    return path


# ---------------------------------------------------------------- sources
def _raw_batches(source, specs, batch_size, label_key) -> Iterator[dict[str, np.ndarray]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            manifest = read_manifest(path)
            if "images" in manifest:
                yield from _image_batches(path, manifest["images"], specs, batch_size)
                return
            path = dataset_file(path, "evaluation" if label_key else "calibration")
            label_key = label_key and manifest.get("files", {}).get("labels", label_key)
        if path.suffix == ".npy":
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise EdgepackError(f"{path}: not a readable .npy array ({first_line(exc)})",
                                    hint="write it with numpy.save; truncated or text files do not load") from None
            if array.ndim == 0 or array.dtype.hasobject:
                raise EdgepackError(f"{path}: must be a numeric array with a sample axis")
            for start in range(0, len(array), batch_size):
                yield {specs[0].name: np.array(array[start:start + batch_size])}
        else:
            yield from _npz_batches(path, [s.name for s in specs], batch_size, label_key)
        return
    if hasattr(source, "get_next"):  # onnxruntime.quantization.CalibrationDataReader
        while (item := source.get_next()) is not None:
            yield item
        return
    for item in source:
        if not isinstance(item, dict):
            raise EdgepackError(f"calibration data yielded {type(item).__name__}, expected a dict "
                                "{input_name: array}")
        yield item


def _npz_batches(path: Path, names: list[str], batch_size: int, label_key: str | None):
    """Reads each member of an .npz incrementally (zip streams decompress as they are read)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise EdgepackError(f"{path}: not a valid .npz file") from None
    with archive:
        members = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
        wanted = names + ([label_key] if label_key else [])
        for name in wanted:
            if name not in members:
                raise EdgepackError(f"{path}: no array '{name}' (has {', '.join(sorted(members))})",
                                    hint="name each array after the model input it feeds")
        streams = {}
        for name in wanted:
            stream = _NpyStream(archive.open(members[name]), path, name)
            declared = stream.count * stream.row_bytes
            if declared > archive.getinfo(members[name]).file_size:  # a header claiming 10^9 samples
                raise EdgepackError(f"{path}: array '{name}' declares {stream.count} samples "
                                    f"({declared:,} bytes) but holds fewer", hint="the file is truncated or corrupt")
            streams[name] = stream
        counts = {s.count for s in streams.values()}
        if len(counts) != 1:
            raise EdgepackError(f"{path}: arrays have different sample counts {sorted(counts)}")
        for _ in range(0, counts.pop(), batch_size):
            batch = {name: s.read(batch_size) for name, s in streams.items()}
            if label_key:
                batch["__labels__"] = batch.pop(label_key)
            yield batch


class _NpyStream:
    def __init__(self, handle, path: Path, name: str):
        try:
            version = np.lib.format.read_magic(handle)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(handle)
        except Exception:
            raise EdgepackError(f"{path}: array '{name}' is corrupt") from None
        if fortran or dtype.hasobject or not shape:
            raise EdgepackError(f"{path}: array '{name}' must be a C-ordered numeric array with a sample axis")
        self.handle, self.shape, self.dtype, self.path, self.name = handle, shape, dtype, path, name
        self.count = shape[0]
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def read(self, rows: int) -> np.ndarray:
        data = self.handle.read(rows * self.row_bytes)
        got = len(data) // self.row_bytes if self.row_bytes else rows
        if len(data) % max(self.row_bytes, 1) or (rows and self.row_bytes and not data):
            raise EdgepackError(f"{self.path}: array '{self.name}' is truncated")
        return np.frombuffer(data, self.dtype).reshape(got, *self.shape[1:])


def _image_batches(folder: Path, spec: dict, specs: list[InputSpec], batch_size: int):
    """Images preprocessed as the manifest's [images] table says:
    folder, resize (shorter side), crop (center, square), scale, mean, std, channel_order, layout."""
    from PIL import Image

    files = sorted(p for p in (folder / spec.get("folder", ".")).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgepackError(f"{folder}: no images found", hint="set [images] folder in manifest.toml")
    if len(specs) != 1:
        raise EdgepackError(f"{folder}: image folders feed single-input models only")
    mean = np.array(spec.get("mean", [0.0, 0.0, 0.0]), np.float32)
    std = np.array(spec.get("std", [1.0, 1.0, 1.0]), np.float32)
    for start in range(0, len(files), batch_size):
        arrays = []
        for file in files[start:start + batch_size]:
            try:
                image = Image.open(file).convert("RGB")
            except Exception:
                raise EdgepackError(f"{file}: not a readable image") from None
            if "resize" in spec:
                w, h = image.size
                ratio = spec["resize"] / min(w, h)
                image = image.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.BILINEAR)
            if "crop" in spec:
                w, h, c = *image.size, spec["crop"]
                if not isinstance(c, int) or not 0 < c <= min(w, h):
                    raise EdgepackError(f"{folder / 'manifest.toml'}: crop {c!r} does not fit {file.name} "
                                        f"({w}x{h} after resize)", hint="crop at most the resized shorter side")
                left, top = (w - c) // 2, (h - c) // 2
                image = image.crop((left, top, left + c, top + c))
            x = np.asarray(image, np.float32) * float(spec.get("scale", 1 / 255))
            if spec.get("channel_order", "RGB").upper() == "BGR":
                x = x[..., ::-1]
            with np.errstate(all="ignore"):  # overflow shows as Inf, refused with the file named
                x = (x - mean) / std
            arrays.append(x.transpose(2, 0, 1) if spec.get("layout", "NCHW").upper() == "NCHW" else x)
        if len({a.shape for a in arrays}) > 1:
            raise EdgepackError(f"{folder}: images of different sizes "
                                f"({', '.join(sorted({'x'.join(map(str, a.shape)) for a in arrays}))})",
                                hint="set resize and crop in [images] so every image has one size")
        yield {specs[0].name: np.stack(arrays).astype(np.float32)}
