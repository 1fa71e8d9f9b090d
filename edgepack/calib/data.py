"""Calibration and evaluation data: read in batches, checked against the model's inputs.

Sources: a calibration folder (`manifest.toml` + `.npz`, or images with a preprocessing spec), a
single `.npz` (one array per input, first axis = sample; `FILE.npz:ARRAY[:LABELS]` picks the array
of a single-input model and its labels; an .npz with one array is used whatever its name) or `.npy`
(single-input models), or any Python iterable of `{input_name: array}` (ONNX Runtime
`CalibrationDataReader` objects too). Arrays are streamed: an `.npz` member is decompressed batch
by batch, an `.npy` is memory-mapped. A `Preprocess` (calib/preprocess.py) turns stored samples
(e.g. uint8 HWC images) into the model's input; integer data never silently feeds a float input.
"""
from __future__ import annotations

import logging
import re
import sys
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.calib.images import (IMAGE_SUFFIXES, check_inside, check_regular, decode, image_labels,  # noqa: F401
                                   is_image_folder, label_source, list_images)
from edgepack.calib.preprocess import Preprocess
from edgepack.errors import EdgepackError, first_line

logger = logging.getLogger(__name__)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# What a damaged or mislabelled data file raises while being read (zip CRC, zlib, numpy headers,
# PIL, bad manifest values).
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, EOFError,
                zipfile.BadZipFile, zlib.error, OverflowError)
#: the dtype kinds data may have: bool, integers, floats (no complex, object, strings, records)
NUMERIC_KINDS = "biuf"


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
                 limit: int | None = None, labels: str | None = None, preprocess: Preprocess | None = None):
        spec = parse_data(source)
        self.specs, self.limit = specs, limit
        self.source = spec.path if spec else source
        self.array = spec.array if spec else None
        self.label_key = (spec.labels if spec and spec.labels else labels) if labels else None
        self.description = str(source) if isinstance(source, (str, Path)) else type(source).__name__
        self.preprocess = _stored_preprocess(self.source).merged(preprocess) if spec else preprocess
        if self.preprocess is not None and not self.preprocess.to_json():
            self.preprocess = None
        self._images = spec is not None and _is_images(spec.path)
        self.model_batch = _fixed_batch(specs)
        if self.model_batch:  # read whole model batches; feed exactly that many at a time
            batch_size = max(self.model_batch, batch_size // self.model_batch * self.model_batch)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch in self.batches(with_labels=False):
            yield batch

    def batches(self, with_labels: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Checked batches; for a model with a fixed batch dimension B, batches of exactly B
        samples (a remainder of fewer than B samples is dropped, with a warning). A file that is not
        what it says is one error line, not a traceback."""
        try:
            yield from self._batches(with_labels)
        except EdgepackError:
            raise
        except MemoryError:
            raise EdgepackError(f"{self.description}: too large to read into memory") from None
        except _READ_ERRORS as exc:
            raise EdgepackError(f"{self.description}: cannot read the data ({type(exc).__name__}: "
                                f"{first_line(exc)})", hint="check the file; see calibration/digits for the format") from None

    def _batches(self, with_labels: bool) -> Iterator[dict[str, np.ndarray]]:
        checked = self._checked_batches(with_labels)
        if not self.model_batch:  # a source's own batches may be larger than asked: cut them (views)
            for batch in checked:
                count = len(next(iter(batch.values())))
                for start in range(0, count, self.batch_size):
                    yield batch if count <= self.batch_size else {k: v[start:start + self.batch_size]
                                                                  for k, v in batch.items()}
            return
        yield from _rebatched(checked, self.model_batch, self.description)

    def _checked_batches(self, with_labels: bool) -> Iterator[dict[str, np.ndarray]]:
        seen = 0
        label_key = self.label_key if with_labels else None
        external = (_load_external_labels(label_key) if label_key and _is_file_ref(label_key) and not self._images
                    else None)
        raw_batches = _raw_batches(self.source, self.specs, self.batch_size,
                                   None if external is not None else label_key, self.array, self.preprocess)
        for raw in raw_batches:
            if external is not None:
                count = len(next(iter(raw.values())))
                if seen + count > len(external):
                    raise EdgepackError(f"{label_key}: {len(external)} labels for more samples in "
                                        f"{self.description}", hint="give one label per sample")
                raw["__labels__"] = external[seen:seen + count]
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
            array = raw[spec.name]
            if not isinstance(array, np.ndarray) or array.dtype.kind not in NUMERIC_KINDS:
                array = np.asarray(array)
                if array.dtype.kind not in NUMERIC_KINDS:
                    raise EdgepackError(f"{self.description}: input '{spec.name}' is {array.dtype} data, not numbers",
                                        hint="data must be bool, integer or float arrays (no complex, object "
                                             "or string arrays)")
            if self.preprocess is not None and np.issubdtype(spec.dtype, np.floating):
                # (inputs such as token ids are not preprocessed; image files were resized and cropped one by one)
                steps = replace(self.preprocess, resize=None, crop=None) if self._images else self.preprocess
                if self._images and steps.layout and steps.layout.startswith("NCHW:"):
                    raise EdgepackError(f"{self.description}: --layout {steps.layout} says the data is NCHW, but image "
                                        "files decode as NHWC (height x width x channels)",
                                        hint=f"the layout is DATA:MODEL: use --layout NHWC:{steps.layout[5:]}")
                array = steps.apply(array, f"{self.description}: input '{spec.name}'")
            expected = spec.shape
            if array.ndim != len(expected) or any(
                    isinstance(e, int) and e > 0 and a != e for a, e in zip(array.shape[1:], expected[1:])):
                raise EdgepackError(f"{self.description}: input '{spec.name}' has samples of shape "
                                    f"{list(array.shape[1:])}, the model expects {list(expected[1:])}",
                                    hint=_shape_hint(array.shape[1:], expected[1:]))
            if array.dtype != spec.dtype:
                if (np.issubdtype(spec.dtype, np.floating) and np.issubdtype(array.dtype, np.integer)
                        and (self.preprocess is None or self.preprocess.scale is None)):
                    raise EdgepackError(
                        f"{self.description}: input '{spec.name}' gets {array.dtype} data, the model "
                        f"expects {spec.dtype}",
                        hint="say how to scale it: --scale 1/255 (pixels 0..255 -> 0..1) or --scale 1 "
                             "(the values as they are), plus --mean/--std/--layout as the model was "
                             "trained (docs/data.md)")
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


def _fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size a model's inputs fix (a positive int first dim), or None when dynamic."""
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    if len(fixed) > 1:
        raise EdgepackError(f"the model's inputs fix different batch sizes {sorted(fixed)}",
                            hint="export the model with one batch dimension for all inputs")
    return fixed.pop() if fixed else None


def _rebatched(batches: Iterable[dict[str, np.ndarray]], size: int, description: str):
    """Re-cut batches of any size into batches of exactly `size` samples."""
    pending: dict[str, np.ndarray] | None = None
    for batch in batches:
        if pending is not None:
            batch = {k: np.concatenate([pending[k], v]) for k, v in batch.items()}
        count = len(next(iter(batch.values())))
        whole = count // size * size
        for start in range(0, whole, size):
            yield {k: v[start:start + size] for k, v in batch.items()}
        pending = {k: v[whole:] for k, v in batch.items()} if whole < count else None
    if pending is not None:
        left = len(next(iter(pending.values())))
        logger.warning("%s: dropped the last %d sample(s): the model takes batches of exactly %d",
                       description, left, size)


@dataclass(frozen=True)
class DataSpec:
    """A data path with, for an .npz, the array that feeds a single-input model and its labels."""

    path: Path
    array: str | None = None
    labels: str | None = None


_SPEC = re.compile(r"^(?P<path>.+?\.(?:npz|npy))(?::(?P<array>[^:]*))?(?::(?P<labels>[^:]*))?$", re.IGNORECASE)


def parse_data(source: Any) -> DataSpec | None:
    """`FILE.npz:ARRAY:LABELS` -> DataSpec; a plain path -> DataSpec(path); None for iterables."""
    if not isinstance(source, (str, Path)):
        return None
    if isinstance(source, Path) or Path(source).exists():
        return DataSpec(Path(source))
    match = _SPEC.match(str(source))
    if not match:
        return DataSpec(Path(source))
    return DataSpec(Path(match["path"]), match["array"] or None, match["labels"] or None)


@dataclass(frozen=True)
class PreprocessedData:
    """A data source with its preprocessing, passed where only `data` travels (prune, compress,
    profile): `open_dataset` unwraps it."""

    source: Any
    preprocess: Preprocess | None = None

    def __str__(self) -> str:
        return str(self.source)


def reusable(data: Any) -> Any:
    """`data` as a source that can be read more than once: a one-shot source (a generator, an ONNX
    Runtime CalibrationDataReader) is read once into a list of its batches; others are returned."""
    if hasattr(data, "get_next"):
        batches = []
        while (item := data.get_next()) is not None:
            batches.append(item)
        return batches
    if isinstance(data, Iterator):  # a generator: its batches, once
        return list(data)
    return data


def with_preprocess(source: Any, preprocess: Preprocess | None) -> Any:
    """`source` carrying `preprocess` (unchanged when there is none)."""
    if preprocess is None or source is None:
        return source
    return PreprocessedData(source, preprocess)


def _is_file_ref(key: str) -> bool:
    return bool(re.search(r"\.(npz|npy)(:|$)", key, re.IGNORECASE))


def _load_external_labels(ref: str) -> np.ndarray:
    """Labels from another file: `FILE.npy`, `FILE.npz:ARRAY` or a single-array `FILE.npz`."""
    spec = parse_data(ref)
    if not spec.path.is_file():
        raise EdgepackError(f"labels not found: {spec.path}", hint="pass --labels FILE.npz:ARRAY or FILE.npy")
    try:
        loaded = np.load(spec.path, allow_pickle=False)
    except Exception:
        raise EdgepackError(f"{spec.path}: not a readable .npz/.npy file") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = loaded.files
        name = spec.array or (names[0] if len(names) == 1 else "labels" if "labels" in names else None)
        if name not in names:
            raise EdgepackError(f"{spec.path}: no labels array '{name or ''}' (has {', '.join(sorted(names))})",
                                hint=f"pick one: --labels {spec.path}:ARRAY")
        return loaded[name]


def _is_images(path: Path) -> bool:
    """A folder of image files: with a manifest's [images] table, or without a manifest."""
    if (path / "manifest.toml").is_file():
        return path.is_dir() and "images" in read_manifest(path)
    return is_image_folder(path)


def _stored_preprocess(path: Path) -> Preprocess:
    """The preprocessing a calibration folder's manifest declares ([images] or [preprocess]);
    image files without a manifest get the image defaults."""
    if is_image_folder(path):
        return Preprocess().with_image_defaults()
    if path.is_dir() and (path / "manifest.toml").is_file():
        manifest = read_manifest(path)
        where = str(path / "manifest.toml")
        if "images" in manifest:
            return Preprocess.from_manifest(manifest["images"], where).with_image_defaults()
        if "preprocess" in manifest:
            return Preprocess.from_manifest(manifest["preprocess"], where)
    return Preprocess()


def _shape_hint(got: tuple, expected: tuple) -> str | None:
    if len(got) == 3 and len(expected) == 3:
        if tuple(got) == (expected[1], expected[2], expected[0]):
            return "the data is NHWC and the model NCHW: add --layout NHWC:NCHW"
        if tuple(got) == (expected[2], expected[0], expected[1]):
            return "the data is NCHW and the model NHWC: add --layout NCHW:NHWC"
        if isinstance(expected[1], int) and expected[1] > 0:
            return "resize/crop the images with --resize and --crop"
    return None


def open_dataset(source: Any, specs: list[InputSpec], *, batch_size: int = 32, limit: int | None = None,
                 labels: str | None = None, preprocess: Preprocess | None = None) -> Dataset:
    """A Dataset for a path (folder, .npz, .npy, `FILE.npz:ARRAY[:LABELS]`) or an iterable;
    errors name the file at fault. `preprocess` turns stored samples into the model's input (it
    overrides the keys a calibration folder's manifest sets)."""
    if not specs:
        raise EdgepackError("the model has no inputs: there is nothing to feed data to",
                            hint="calibrate a model whose graph takes inputs")
    if isinstance(source, PreprocessedData):
        source, preprocess = source.source, source.preprocess.merged(preprocess)
    spec = parse_data(source)
    if spec is not None:
        path = spec.path
        check_regular(path)
        if not path.exists():
            raise EdgepackError(f"data not found: {path}",
                                hint="pass a calibration folder, .npz (FILE.npz:ARRAY picks an array) or .npy")
        if path.is_file() and path.suffix.lower() not in (".npz", ".npy"):
            raise EdgepackError(f"{path}: unsupported data file", hint="use .npz, .npy or a calibration folder")
        if path.is_dir() and not (path / "manifest.toml").is_file() and not is_image_folder(path):
            raise EdgepackError(f"{path}: neither image files (.jpg, .png, .bmp, .webp) nor a manifest.toml",
                                hint="pass a folder of images, an .npz/.npy, or a calibration folder "
                                     "(calibration/digits/manifest.toml shows the format)")
        if path.suffix.lower() == ".npy" and len(specs) != 1:
            raise EdgepackError(f"{path}: a bare .npy feeds single-input models only; this one has "
                                f"{len(specs)} inputs", hint="use an .npz with one array per input")
        if spec.array and len(specs) != 1:
            raise EdgepackError(f"{source}: one array feeds single-input models only; this one has inputs "
                                f"{', '.join(s.name for s in specs)}",
                                hint=f"pass {path} with one array named after each input")
    elif not isinstance(source, Iterable) and not hasattr(source, "get_next"):
        raise EdgepackError(f"calibration data of type {type(source).__name__} is not iterable")
    return Dataset(source, specs, batch_size=batch_size, limit=limit, labels=labels, preprocess=preprocess)


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
    evaluation file and its labels, `FILE.npz:ARRAY:LABELS`, an .npz holding an array `key`, or
    `key` naming another file (`FILE.npz:ARRAY`, `FILE.npy`). Unreadable sources answer False,
    so that `open_dataset` reports them with its own error."""
    if isinstance(source, PreprocessedData):
        source = source.source
    spec = parse_data(source)
    if spec is None:
        return False
    if spec.labels:
        return True
    if key and _is_file_ref(key):
        return True
    path = spec.path
    if path.is_dir():
        if not (path / "manifest.toml").is_file():
            if not is_image_folder(path):
                return False
            return label_source(path, list_images(path), key if key != "labels" else None) is not None
        manifest = read_manifest(path)
        if "images" in manifest:
            table = manifest["images"]
            folder = path / str(table.get("folder", "."))
            ref = key if key != "labels" else (str(path / table["labels"]) if "labels" in table else None)
            return label_source(folder, list_images(folder, root=path), ref) is not None
        files = manifest.get("files", {})
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
    check_inside(path, folder, f"[files] {role}")
    check_regular(path, f"[files] {role}")
    if not path.is_file():
        raise EdgepackError(f"{folder / 'manifest.toml'}: [files] {role} names '{files[role]}', which is missing",
                            hint="copy the file into the calibration folder or fix the manifest")
    return path


# ---------------------------------------------------------------- sources
def _raw_batches(source, specs, batch_size, label_key, array=None, preprocess=None) -> Iterator[dict[str, np.ndarray]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            if is_image_folder(path):
                yield from _image_batches(path, {}, specs, batch_size, preprocess, label_key)
                return
            manifest = read_manifest(path)
            if "images" in manifest:
                yield from _image_batches(path, manifest["images"], specs, batch_size, preprocess, label_key)
                return
            path = dataset_file(path, "evaluation" if label_key else "calibration")
            label_key = label_key and manifest.get("files", {}).get("labels", label_key)
        if path.suffix == ".npy":
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise EdgepackError(f"{path}: not a readable .npy array ({first_line(exc)})",
                                    hint="write it with numpy.save; truncated or text files do not load") from None
            if array.ndim == 0 or array.dtype.kind not in NUMERIC_KINDS:
                raise EdgepackError(f"{path}: must be a numeric array with a sample axis")
            for start in range(0, len(array), batch_size):
                yield {specs[0].name: np.array(array[start:start + batch_size])}
        else:
            yield from _npz_batches(path, [s.name for s in specs], batch_size, label_key, array)
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


def _npz_batches(path: Path, names: list[str], batch_size: int, label_key: str | None, array: str | None = None):
    """Reads each member of an .npz incrementally (zip streams decompress as they are read)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise EdgepackError(f"{path}: not a valid .npz file") from None
    with archive:
        members = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
        feeds = {name: name for name in names}  # model input -> array
        if array is not None:
            feeds = {names[0]: array}
        elif len(names) == 1 and names[0] not in members:
            others = sorted(set(members) - {label_key, "labels"})
            if len(others) == 1:  # one data array: whatever its name
                feeds = {names[0]: others[0]}
            else:
                raise EdgepackError(f"{path}: no array '{names[0]}' (has {', '.join(sorted(members))})",
                                    hint=f"pick the array: --data {path}:{_likely_array(others)}")
        for name in [*feeds.values(), *([label_key] if label_key else [])]:
            if name not in members:
                raise EdgepackError(f"{path}: no array '{name}' (has {', '.join(sorted(members))})",
                                    hint="name each array after the model input it feeds, or pick one "
                                         f"with --data {path}:ARRAY")
        streams = {inp: _stream(archive, members[name], path) for inp, name in feeds.items()}
        if label_key:
            streams["__labels__"] = _stream(archive, members[label_key], path)
        counts = {s.count for s in streams.values()}
        if len(counts) != 1:
            raise EdgepackError(f"{path}: arrays have different sample counts {sorted(counts)}")
        for _ in range(0, counts.pop(), batch_size):
            yield {name: s.read(batch_size) for name, s in streams.items()}


def _likely_array(names: list[str]) -> str:
    for name in ("images", "image", "x", "data", "inputs", "input"):
        if name in names:
            return name
    return names[0] if names else "ARRAY"


def _stream(archive: zipfile.ZipFile, member: str, path: Path) -> "_NpyStream":
    """An array member, refused when its header claims more bytes than the member holds (a header
    claiming 10^9 samples would otherwise be read until the end of time)."""
    name = member[:-4]
    stream = _NpyStream(archive.open(member), path, name)
    declared = stream.count * stream.row_bytes
    if declared > archive.getinfo(member).file_size:
        raise EdgepackError(f"{path}: array '{name}' declares {stream.count} samples ({declared:,} bytes) but "
                            "holds fewer", hint="the file is truncated or corrupt")
    return stream


class _NpyStream:
    def __init__(self, handle, path: Path, name: str):
        try:
            version = np.lib.format.read_magic(handle)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(handle)
        except Exception:
            raise EdgepackError(f"{path}: array '{name}' is corrupt") from None
        if fortran or dtype.kind not in NUMERIC_KINDS or not shape:
            raise EdgepackError(f"{path}: array '{name}' must be a C-ordered numeric array with a sample axis "
                                f"(it is {'Fortran-ordered ' if fortran else ''}{dtype}, shape {list(shape)})",
                                hint="bool, integer or float data only (no complex, object or strings)")
        self.handle, self.shape, self.dtype, self.path, self.name = handle, shape, dtype, path, name
        self.count = shape[0]
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def read(self, rows: int) -> np.ndarray:
        data = self.handle.read(rows * self.row_bytes)
        got = len(data) // self.row_bytes if self.row_bytes else rows
        if len(data) % max(self.row_bytes, 1) or (rows and self.row_bytes and not data):
            raise EdgepackError(f"{self.path}: array '{self.name}' is truncated")
        return np.frombuffer(data, self.dtype).reshape(got, *self.shape[1:])


def _image_batches(folder: Path, table: dict, specs: list[InputSpec], batch_size: int,
                   preprocess: Preprocess | None = None, label_key: str | None = None):
    """Image files (calib/images.py) as decoded uint8 RGB (HWC), decoded one at a time and resized
    and cropped one by one so that a batch stacks; the rest of the preprocessing (scale, mean/std,
    layout) is applied to the batch by the Dataset, with the manifest's [images] keys merged under
    the command's flags. An image whose size cannot be the model's stops the read at that image."""
    if not isinstance(table.get("folder", "."), str):
        raise EdgepackError(f"{folder / 'manifest.toml'}: [images] folder must be a folder name")
    images = folder / table.get("folder", ".")
    files = list_images(images, root=folder)
    if not files:
        raise EdgepackError(f"{images}: no images found (.jpg, .jpeg, .png, .bmp, .ppm, .webp)",
                            hint="set [images] folder in manifest.toml" if table else None)
    if len(specs) != 1:
        raise EdgepackError(f"{folder}: image folders feed single-input models only")
    labels = None
    if label_key:
        ref = label_key if label_key != "labels" else (
            str(check_inside(folder / str(table["labels"]), folder, "[images] labels")) if "labels" in table else None)
        source = label_source(images, files, ref)
        if source is None:
            raise EdgepackError(f"{images}: no labels (no labels.csv/labels.txt, no sub-folder per class)",
                                hint="add labels.csv with name,label rows, or pass --labels FILE.csv")
        labels = image_labels(images, files, source)
    pixels = _spatial_pixels(specs[0].shape)
    for start in range(0, len(files), batch_size):
        arrays = []
        for file in files[start:start + batch_size]:
            image = decode(file)
            image = preprocess.resize_crop(image) if preprocess is not None else image
            if arrays and image.shape != arrays[0].shape:
                raise EdgepackError(f"{folder}: images of different sizes ({files[start].name} {arrays[0].shape}, "
                                    f"{file.name} {image.shape})",
                                    hint="set resize and crop in [images] of manifest.toml, or --resize/--crop")
            if pixels is not None and image.shape[0] * image.shape[1] != pixels:
                raise EdgepackError(f"{file}: shape {image.shape[0]}x{image.shape[1]} after resize/crop, the model "
                                    f"takes {list(specs[0].shape[1:])}",
                                    hint="resize/crop the images with --resize and --crop")
            arrays.append(image)
        batch = {specs[0].name: np.stack(arrays)}
        if labels is not None:
            batch["__labels__"] = labels[start:start + len(arrays)]
        yield batch


def _spatial_pixels(shape: tuple) -> int | None:
    """H*W of an image input [N, C, H, W] or [N, H, W, C] with fixed sizes (channels 1, 3 or 4)."""
    dims = shape[1:]
    if len(dims) != 3 or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    if dims[0] in (1, 3, 4):
        return dims[1] * dims[2]
    if dims[2] in (1, 3, 4):
        return dims[0] * dims[1]
    return None
