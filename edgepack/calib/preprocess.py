"""Preprocessing: what turns stored samples (uint8 HWC images, arrays) into a model's input.

One spec for every source: the `--layout --scale --mean --std --channel-order --resize --crop`
flags, the `[images]` (or `[preprocess]`) table of a calibration folder's manifest, the
`preprocess` entry of a ranges file and of a build manifest. Applied in this order:

    resize (shorter side, bilinear unless --interpolation) -> centre crop (square) -> x * scale
      -> channel order (RGB -> BGR) -> (x - mean) / std -> layout (NHWC -> NCHW)

Layouts are written `DATA:MODEL`, e.g. `NHWC:NCHW` (also `NHWC->NCHW` where no shell reads it).
Arrays of images are taken as NHWC unless the layout names another source (`NCHW:NHWC`);
`layout = "NCHW"` alone means `NHWC:NCHW` (images are decoded height x width x channels), and
`layout = "NHWC"` alone means no transpose.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass, fields, replace
from fractions import Fraction

import numpy as np

from edgepack.errors import EdgepackError, UsageError

LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
#: keys of a manifest's [images] table that are not preprocessing
NOT_PREPROCESSING = ("folder", "labels")
#: the steps in the order they are applied (the order of to_json's keys)
PIPELINE_ORDER = ("resize", "interpolation", "crop", "scale", "channel_order", "mean", "std", "layout")
#: PIL's resampling filters by name; bilinear is the default
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Preprocess:
    """How samples become model inputs; a field left None does nothing."""

    layout: str | None = None          # "DATA:MODEL", e.g. "NHWC:NCHW"
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str | None = None   # "RGB" (as stored) or "BGR" (swap)
    resize: int | None = None          # shorter side, pixels
    crop: int | None = None            # centre square, pixels
    interpolation: str | None = None   # of the resize: bilinear (default), bicubic, nearest, ...

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if self.layout is not None:
            set_("layout", parse_layout(self.layout))
        if self.scale is not None:
            set_("scale", parse_scale(self.scale))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                set_(name, parse_floats(value, name))
        if self.std is not None and any(s == 0 for s in self.std):
            raise UsageError(f"std {list(self.std)} has a zero", hint="every --std value must be non-zero")
        if self.channel_order is not None:
            order = str(self.channel_order).upper()
            if order not in CHANNEL_ORDERS:
                raise UsageError(f"unknown channel order '{self.channel_order}'", hint="use RGB or BGR")
            set_("channel_order", order)
        if self.interpolation is not None:
            name = str(self.interpolation).lower()
            if name not in INTERPOLATIONS:
                raise UsageError(f"unknown interpolation '{self.interpolation}'",
                                 hint=f"use one of {', '.join(INTERPOLATIONS)}")
            set_("interpolation", name)
        if self.resize is not None and self.interpolation is None:
            set_("interpolation", "bilinear")  # said, so that it is recorded with the resize
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None:
                try:
                    pixels = int(value)
                    ok = not isinstance(value, bool) and pixels == float(value) and pixels > 0
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    raise UsageError(f"{name} {value!r}: expected a positive number of pixels")
                set_(name, pixels)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Preprocess | None":
        """From the flags `add_preprocess_args` defines; None when none was given."""
        values = {f.name: getattr(args, f.name, None) for f in fields(cls)}
        if all(v is None for v in values.values()):
            return None
        return cls(**values)

    @classmethod
    def from_manifest(cls, table: dict, where: str = "manifest") -> "Preprocess":
        """From a manifest's [images] / [preprocess] table, or a ranges file's `preprocess` entry."""
        if not isinstance(table, dict):
            raise EdgepackError(f"{where}: preprocessing must be a table of keys")
        known = {f.name for f in fields(cls)}
        unknown = set(table) - known - set(NOT_PREPROCESSING)
        if unknown:
            raise EdgepackError(f"{where}: unknown preprocessing key(s) {sorted(unknown)}",
                                hint=f"the keys are {', '.join(sorted(known))}")
        try:
            return cls(**{k: v for k, v in table.items() if k in known})
        except UsageError as exc:
            raise EdgepackError(f"{where}: {exc.message}", hint=exc.hint) from None

    def to_json(self) -> dict:
        """The keys that are set, in manifest form (lists, not tuples); a resize says its
        interpolation (bilinear unless set), so that whoever deploys the model repeats it exactly."""
        values = asdict(self)
        return {k: list(values[k]) if isinstance(values[k], tuple) else values[k] for k in PIPELINE_ORDER
                if values[k] is not None}

    def describe(self) -> str:
        """The pipeline in order, one line: `resize 256 (bilinear) -> crop 224 -> x*0.0039 -> ...`."""
        steps = []
        if self.resize is not None:
            steps.append(f"resize {self.resize} ({self.interpolation or 'bilinear'})")
        if self.crop is not None:
            steps.append(f"crop {self.crop}")
        if self.scale is not None:
            steps.append(f"x*{self.scale:.6g}")
        if self.channel_order == "BGR":
            steps.append("RGB->BGR")
        if self.mean is not None:
            steps.append(f"-mean {list(self.mean)}")
        if self.std is not None:
            steps.append(f"/std {list(self.std)}")
        if self.layout is not None:
            steps.append(f"layout {self.layout}")
        return " -> ".join(steps) or "none"

    def merged(self, override: "Preprocess | None") -> "Preprocess":
        """This spec with every key `override` sets replaced."""
        if override is None:
            return self
        return replace(self, **{k: v for k, v in asdict(override).items() if v is not None})

    def with_image_defaults(self) -> "Preprocess":
        """Decoded image files: x/255, RGB, NHWC->NCHW unless said otherwise."""
        return Preprocess(layout="NHWC:NCHW", scale=1 / 255).merged(self)

    # ------------------------------------------------------------ application
    @property
    def spatial(self) -> bool:
        return self.resize is not None or self.crop is not None

    def resize_crop(self, image: np.ndarray) -> np.ndarray:
        """Resize (shorter side) and centre-crop one HWC image."""
        if self.resize is not None:
            h, w = image.shape[:2]
            ratio = self.resize / min(h, w)
            image = _resize(image, max(1, round(w * ratio)), max(1, round(h * ratio)),
                            self.interpolation or "bilinear")
        if self.crop is not None:
            h, w, c = *image.shape[:2], self.crop
            if h < c or w < c:
                raise EdgepackError(f"cannot crop {c}x{c} from a {h}x{w} image",
                                    hint="lower --crop or set --resize to at least the crop size")
            top, left = (h - c) // 2, (w - c) // 2
            image = image[top:top + c, left:left + c]
        return image

    def apply(self, batch: np.ndarray, where: str = "data") -> np.ndarray:
        """Preprocess a batch (first axis = sample). Integer data stays integer unless scaled."""
        src, dst = _split(self.layout)
        if batch.dtype.kind in "ui" and self.scale is None and (self.mean is not None or self.std is not None):
            raise EdgepackError(f"{where}: {batch.dtype} data with --mean/--std but no --scale",
                                hint="add --scale 1/255 when mean/std are for 0..1 values, or --scale 1 "
                                     "when they are in the data's own units")
        channelwise = self.mean is not None or self.std is not None or self.channel_order == "BGR"
        if batch.ndim != 4 and (self.layout or self.spatial or self.channel_order == "BGR"):
            raise EdgepackError(f"{where}: samples of shape {list(batch.shape[1:])} are not images",
                                hint="--layout, --resize, --crop and --channel-order apply to [N,H,W,C] "
                                     "or [N,C,H,W] arrays")
        if batch.ndim == 4 and src is None and (self.spatial or channelwise):
            src = _guess_layout(batch, len(self.mean or self.std or (3,)), where)
        elif batch.ndim == 4 and src is not None:
            _check_layout(batch, src, self.layout, where)
        x = batch
        if src == "NCHW":
            x = x.transpose(0, 2, 3, 1)
        if self.spatial:
            x = np.stack([self.resize_crop(np.ascontiguousarray(image)) for image in x])
        if self.scale is not None:
            x = x.astype(np.float32) * np.float32(self.scale)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        if self.mean is not None or self.std is not None:
            channels = x.shape[-1]
            for name, value in (("mean", self.mean), ("std", self.std)):
                if value is not None and len(value) not in (1, channels):
                    raise EdgepackError(f"{where}: --{name} has {len(value)} values for {channels} channels",
                                        hint=f"give 1 or {channels} values")
            x = x.astype(np.float32)
            if self.mean is not None:
                x = x - np.asarray(self.mean, np.float32)
            if self.std is not None:
                x = x / np.asarray(self.std, np.float32)
        if (dst or src) == "NCHW" and x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)


# ---------------------------------------------------------------- parsing
def parse_scale(value) -> float:
    """`0.0039`, `1/255` or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        try:
            result = float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"scale '{value}' is not a number", hint="e.g. --scale 1/255") from None
    if not np.isfinite(result) or result == 0:
        raise UsageError(f"scale {value!r} must be finite and non-zero", hint="e.g. --scale 1/255")
    return result


def parse_floats(value, name: str = "values") -> tuple[float, ...]:
    """`0.485,0.456,0.406`, `(0.485, 0.456, 0.406)`, `[...]`, a number or a sequence."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, str):
        items = [v for v in re.split(r"[,\s]+", value.strip().strip("()[]").strip()) if v]
    else:
        items = list(value)
    try:
        result = tuple(float(Fraction(str(v))) if isinstance(v, str) else float(v) for v in items)
    except (ValueError, TypeError, ZeroDivisionError):
        raise UsageError(f"{name} '{value}' is not a list of numbers",
                         hint=f"e.g. --{name} 0.485,0.456,0.406") from None
    if not result:
        raise UsageError(f"{name} is empty", hint=f"e.g. --{name} 0.485,0.456,0.406")
    return result


def parse_layout(value: str) -> str:
    """`NHWC:NCHW` (also `NHWC->NCHW`, lower case); `NCHW` alone = `NHWC:NCHW`, `NHWC` = `NHWC:NHWC`."""
    text = str(value).strip().upper().replace(" ", "")
    parts = re.split(r"->|:|>|,", text)
    if len(parts) == 1:
        parts = ["NHWC", parts[0]]
    if len(parts) != 2 or any(p not in LAYOUTS for p in parts):
        raise UsageError(f"unknown layout '{value}'", hint="use NHWC:NCHW (data:model), NCHW:NHWC, NCHW or NHWC")
    return ":".join(parts)


def _split(layout: str | None) -> tuple[str | None, str | None]:
    if layout is None:
        return None, None
    src, dst = layout.split(":")
    return src, dst


def _check_layout(batch: np.ndarray, src: str, layout: str, where: str) -> None:
    """A layout whose data side contradicts the samples (channels plainly last, the layout says
    first, or the reverse) is named, before a mean/std count or a shape error hides it."""
    channels = (1, 3, 4)
    first, last = batch.shape[1] in channels, batch.shape[-1] in channels
    shape = list(batch.shape[1:])
    if src == "NCHW" and last and not first:
        dst = layout.split(":")[1]
        raise EdgepackError(f"{where}: --layout {layout} says the data is NCHW, but its samples {shape} have the "
                            "channels last (NHWC; image files always decode so)",
                            hint=f"the layout is DATA:MODEL: use --layout NHWC:{dst}")
    if src == "NHWC" and first and not last:
        dst = layout.split(":")[1]
        raise EdgepackError(f"{where}: --layout {layout} says the data is NHWC, but its samples {shape} have the "
                            "channels first (NCHW)", hint=f"the layout is DATA:MODEL: use --layout NCHW:{dst}")


def _guess_layout(batch: np.ndarray, channels: int, where: str) -> str:
    if batch.shape[-1] in (channels, 1) and batch.shape[1] not in (channels, 1):
        return "NHWC"
    if batch.shape[1] in (channels, 1) and batch.shape[-1] not in (channels, 1):
        return "NCHW"
    raise EdgepackError(f"{where}: cannot tell the channel axis of samples shaped {list(batch.shape[1:])}",
                        hint="say it with --layout NHWC:NCHW (or NCHW:NCHW, NHWC:NHWC)")


def _resize(image: np.ndarray, width: int, height: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize of one HWC image with PIL's filter `interpolation` (uint8 through PIL's RGB/L modes,
    others per channel)."""
    from PIL import Image

    resample = getattr(Image.Resampling, interpolation.upper())

    if image.dtype == np.uint8 and image.shape[2] in (1, 3):
        mode = "RGB" if image.shape[2] == 3 else "L"
        pil = Image.fromarray(image if mode == "RGB" else image[..., 0], mode)
        out = np.asarray(pil.resize((width, height), resample))
        return out if mode == "RGB" else out[..., None]
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), "F")
                           .resize((width, height), resample)) for c in range(image.shape[2])]
    return np.stack(channels, axis=-1).astype(np.float32 if image.dtype.kind != "f" else image.dtype)
