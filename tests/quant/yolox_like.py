"""A YOLOX-s-shaped detector built in code (opset 11, fixed batch 1) with the activation statistics
of a trained one, and the COCO images it is evaluated on.

    images [1,3,S,S] (BGR 0..255, letterboxed)
      Focus: 4 strided Slices ─► Concat ─► Conv 3x3 ─► SiLU                       (stem, S/2)
      dark2..dark5: Conv 3x3 s2 ─► SiLU ─► CSP (C3: two 1x1 branches, Bottleneck 1x1 ─► 3x3 ─► + x,
                    Concat, 1x1);  dark5 adds SPP (1x1, MaxPool 5/9/13, Concat, 1x1) before its CSP
      PAFPN: 1x1 ─► Resize x2 ─► Concat(C4) ─► CSP ─► 1x1 ─► Resize x2 ─► Concat(C3) ─► CSP = P3
             3x3 s2 ─► Concat ─► CSP = P4;  3x3 s2 ─► Concat ─► CSP = P5
      head per level (decoupled): 1x1 stem ─┬► 3x3 ─► 3x3 ─► cls Conv [80] ─► Sigmoid
                                            └► 3x3 ─► 3x3 ─┬► reg Conv [4]  (x, y offset; log w, log h)
                                                           └► obj Conv [1] ─► Sigmoid
      Concat(reg, obj, cls) [1,85,H,W] ─► Reshape [1,85,HW] ─► Concat(levels) ─► Transpose ─► [1, N, 85]
      with `decode_in_graph` (YOLOX's decode_in_inference): Slice xy, wh ─► (xy + grid)·stride,
      exp(wh)·stride ─► Concat(xy, wh, probabilities): boxes in pixels beside probabilities.

Every Conv is followed by a folded BatchNorm and SiLU written as x·Sigmoid(x), as exporters write it.

Why not random weights: a trained network's activations are not unit Gaussians. Each BN channel has
its own gamma and beta, so one tensor's channels span 10-100x in range (a per-tensor INT8 scale is
set by the widest and rounds the narrow ones to a few levels); negative betas leave channels
mostly in SiLU's negative dip (-0.28..0) with rare large positive values (long tails); residual Adds
grow the range through the backbone; and the head's logits are confident (objectness far below
zero almost everywhere, a few cells far above). The weights here are built to have exactly that:
He-random convs on a hand-made first layer (colour opponents, oriented edges, blobs), each conv's
pre-activation normalized on real COCO images (BatchNorm's statistics) and then given a log-normal
gamma (a few channels 4-10x wider: the outlier channels) and a beta drawn per channel; the head's
biases are set from the data so that a few boxes per image pass the score threshold. The forward pass
that measures the statistics is NumPy, in graph order, so building takes a few seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from edgepack.quant import detection

SIZE = 320
CLASSES = 80
STRIDES = detection.STRIDES


def letterbox(path: Path, size: int = SIZE) -> np.ndarray:
    """YOLOX preprocessing (tests/quant/detector.py): aspect-kept resize, pad 114, BGR, 0..255."""
    from tests.quant.detector import letterbox as yolox_letterbox

    return yolox_letterbox(path, size)


def coco_images(folder: Path, count: int | None = None, size: int = SIZE, start: int = 0) -> np.ndarray:
    files = sorted(folder.glob("*.jpg"))[start:None if count is None else start + count]
    return np.stack([letterbox(f, size) for f in files])


def _first_filters(rng, cout: int) -> np.ndarray:
    """Hand-made 3x3 filters on the Focus output (4 phases x BGR): colour opponents, oriented
    edges, blobs, scaled to 0..255 input."""
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    edges = [sobel, sobel.T, np.rot90(sobel, 1) + sobel, sobel - np.rot90(sobel.T, 1)]
    blob = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32)
    box = np.ones((3, 3), np.float32) / 9
    gray = np.array([0.114, 0.587, 0.299], np.float32)
    per_phase = []
    for e in edges:
        per_phase.append(gray[:, None, None] * e)
    for colour in np.eye(3, dtype=np.float32):
        per_phase.append((colour - gray)[:, None, None] * box)
    per_phase.append(gray[:, None, None] * blob)
    w = []
    for k in range(cout):
        base = per_phase[k % len(per_phase)] if k < 2 * len(per_phase) else rng.standard_normal((3, 3, 3)) / 9
        phases = rng.dirichlet(np.ones(4)) if k >= len(per_phase) else np.full(4, 0.25)
        w.append(np.concatenate([p * base for p in phases]))  # Focus channel order: phase-major
    w = np.stack(w)
    w -= w.mean(axis=(1, 2, 3), keepdims=True)  # zero-mean: edges and colour contrast, not brightness
    return (w / 16.0).astype(np.float32)


# ------------------------------------------------------------------ NumPy forward (BatchNorm statistics)
def _np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    k = w.shape[-1]
    p = k // 2
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    return (y + b[None, :, None, None]).astype(np.float32)


def _np_maxpool(x: np.ndarray, k: int) -> np.ndarray:
    p = k // 2
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3)).max(axis=(-1, -2))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


class _Builder:
    """Writes the ONNX graph and runs the same ops in NumPy on calibration images, so each conv's
    weights are fitted (BatchNorm-style) on the activations it really receives."""

    def __init__(self, images: np.ndarray, rng: np.random.Generator, spread: float, outliers: float):
        self.nodes, self.inits = [], []
        self.rng, self.spread, self.outliers = rng, spread, outliers
        self.ridge, self.outlier_gain, self.beta = 0.1, (4.0, 10.0), (-0.6, 0.8)
        self.smooth, self.rank, self.align, self.std_floor, self.align_head = 0.0, 1.0, 0.0, 0.0, True
        self.values = {"images": images}  # NumPy value of every tensor (on the statistics images)

    def const(self, name, array):
        if all(t.name != name for t in self.inits):
            self.inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, name, value, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [name], name=f"/{name}/{op}", **attrs))
        self.values[name] = value
        return name

    def conv(self, x, cout, k, s, name, *, w=None, kind="bn", head=None, center_surround=False):
        """Conv (+ folded BN): kind 'bn' gets per-channel gamma/beta; 'head' gets `head` (gain, bias).
        `center_surround`: each 3x3 kernel sums to zero over space, so the output ignores what is
        constant over the image (a trained head responds to local structure, not to image-wide
        contrast; a random one would fire everywhere on some images and nowhere on others)."""
        xv = self.values[x]
        cin = xv.shape[1]
        if w is None:
            aligned = self.align > 0 and not (name.startswith("head.") and not self.align_head)
            w = self.aligned_weight(xv, cout, k, s) if aligned else self.random_weight(cout, cin, k)
        if center_surround:
            w = w - w.mean(axis=(2, 3), keepdims=True)
        y = _np_conv(xv, w, np.zeros(cout, np.float32), s)
        mean, std = y.mean(axis=(0, 2, 3)), y.std(axis=(0, 2, 3))
        # a floor on the BN std (relative to what the weights pass of the input's energy): a
        # channel nearly orthogonal to its input would otherwise get a huge folded gain, which
        # amplifies every perturbation (a trained net's channels carry signal, not residue)
        gain_floor = self.std_floor * np.sqrt((w.astype(np.float64) ** 2).sum(axis=(1, 2, 3)) * float(xv.var(axis=(0, 2, 3)).mean()))
        std = np.maximum(std, gain_floor) + 1e-6
        if kind == "bn":
            gamma = np.exp(self.rng.normal(0.0, self.spread, cout))
            wide = self.rng.random(cout) < self.outliers
            gamma[wide] *= self.rng.uniform(*self.outlier_gain, wide.sum())
            beta = gamma * self.rng.normal(*self.beta, cout)
        else:
            gamma, beta = head
            gamma, beta = np.broadcast_to(gamma, (cout,)), np.broadcast_to(beta, (cout,))
        wf = (w * (gamma / std)[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * gamma / std).astype(np.float32)
        self.const(f"{name}.weight", wf), self.const(f"{name}.bias", bf)
        value = ((y - mean[None, :, None, None]) * (gamma / std)[None, :, None, None]
                 + beta[None, :, None, None]).astype(np.float32)
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}_out"],
                                           name=f"/{name}/Conv", kernel_shape=[k, k], strides=[s, s],
                                           pads=[k // 2] * 4, dilations=[1, 1], group=1))
        self.values[f"{name}_out"] = value
        return f"{name}_out"

    def random_weight(self, cout, cin, k):
        """He-scaled weights with a trained net's structure: 3x3 kernels mostly smooth (a channel
        mixing times a low-pass kernel: trained filters are smooth and pass little white noise),
        channel mixing of low effective rank (trained features are correlated)."""
        rank = max(2, int(cin * self.rank))
        mix = (self.rng.standard_normal((cout, rank)) @ self.rng.standard_normal((rank, cin))) / np.sqrt(rank)
        mix = self.smooth * mix + (1 - self.smooth) * self.rng.standard_normal((cout, cin))
        if k == 1:
            w = mix[:, :, None, None]
        else:
            lowpass = np.outer([1, 2, 1], [1, 2, 1]) / 16.0 * 9 / np.sqrt((np.outer([1, 2, 1], [1, 2, 1]) ** 2).sum() / 256 * 9)
            w = self.smooth * mix[:, :, None, None] * lowpass + (1 - self.smooth) * self.rng.standard_normal((cout, cin, k, k))
        w = w / np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-12)  # unit norm per output: BN rescales
        return w.astype(np.float32)

    def aligned_weight(self, xv, cout, k, stride):
        """Weights in the span of the input's principal patch directions (as training leaves them:
        a trained filter responds to the structure its input has, so white noise, quantization
        noise included, is attenuated instead of amplified), plus a share (1 - align) at random.
        Direction j gets weight (lambda_j / lambda_1) ** 0.25 over the top quarter of directions."""
        cin = xv.shape[1]
        p = k // 2
        x = np.pad(xv, ((0, 0), (0, 0), (p, p), (p, p))) if p else xv
        win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
        patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, cin * k * k)
        if len(patches) > 20000:
            patches = patches[self.rng.choice(len(patches), 20000, replace=False)]
        patches = patches - patches.mean(0)
        lam, vec = np.linalg.eigh(patches.T.astype(np.float64) @ patches / len(patches))
        lam, vec = lam[::-1], vec[:, ::-1]
        r = max(2, vec.shape[1] // 4)
        basis = vec[:, :r] * (np.maximum(lam[:r], 0) / max(lam[0], 1e-12)) ** 0.25
        w = self.rng.standard_normal((cout, r)) @ basis.T
        w /= np.linalg.norm(w, axis=1, keepdims=True) + 1e-12
        noise = self.rng.standard_normal(w.shape)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        w = self.align * w + (1 - self.align) * noise
        return w.reshape(cout, cin, k, k).astype(np.float32)

    def fitted_conv(self, x, target, name, ridge=None):
        ridge = self.ridge if ridge is None else ridge
        """1x1 Conv fitted by ridge regression to per-cell target logits [n, C_out, H, W]."""
        xv = self.values[x]
        n, cin, h, w = xv.shape
        feats = np.concatenate([xv.transpose(0, 2, 3, 1).reshape(-1, cin), np.ones((n * h * w, 1), np.float32)], 1)
        t = target.transpose(0, 2, 3, 1).reshape(-1, target.shape[1])
        gram = feats.T.astype(np.float64) @ feats + ridge * len(feats) * np.eye(cin + 1)
        coef = np.linalg.solve(gram, feats.T.astype(np.float64) @ t).astype(np.float32)  # [cin + 1, C_out]
        wf, bf = coef[:-1].T.reshape(-1, cin, 1, 1).copy(), coef[-1].copy()
        self.const(f"{name}.weight", wf), self.const(f"{name}.bias", bf)
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}_out"],
                                           name=f"/{name}/Conv", kernel_shape=[1, 1], strides=[1, 1],
                                           pads=[0] * 4, dilations=[1, 1], group=1))
        self.values[f"{name}_out"] = _np_conv(xv, wf, bf, 1)
        return f"{name}_out"

    def sigmoid(self, x, name):
        return self.node("Sigmoid", [x], f"{name}_sig", _sigmoid(self.values[x]))

    def silu(self, x, name):
        s = self.sigmoid(x, name)
        return self.node("Mul", [x, s], f"{name}_act", self.values[x] * self.values[s])

    def base_conv(self, x, cout, k, s, name, **kw):
        return self.silu(self.conv(x, cout, k, s, name, **kw), name)

    def add(self, a, b, name):
        return self.node("Add", [a, b], name, self.values[a] + self.values[b])

    def concat(self, xs, name, axis=1):
        return self.node("Concat", xs, name, np.concatenate([self.values[v] for v in xs], axis), axis=axis)

    def csp(self, x, cout, n, shortcut, name):
        hidden = cout // 2
        x1 = self.base_conv(x, hidden, 1, 1, f"{name}.conv1")
        x2 = self.base_conv(x, hidden, 1, 1, f"{name}.conv2")
        for i in range(n):
            y = self.base_conv(x1, hidden, 1, 1, f"{name}.m.{i}.conv1")
            y = self.base_conv(y, hidden, 3, 1, f"{name}.m.{i}.conv2")
            x1 = self.add(y, x1, f"{name}.m.{i}.add") if shortcut else y
        return self.base_conv(self.concat([x1, x2], f"{name}.cat"), cout, 1, 1, f"{name}.conv3")

    def resize2(self, x, name):
        self.const("resize.roi", np.zeros(0, np.float32))
        self.const("resize.scales", np.array([1, 1, 2, 2], np.float32))
        v = self.values[x].repeat(2, axis=2).repeat(2, axis=3)
        return self.node("Resize", [x, "resize.roi", "resize.scales"], name, v, mode="nearest")


def build(opset: int = 11, *, images: np.ndarray, seed: int = 0, size: int = SIZE, width: float = 0.125,
          depth: int = 1, spread: float = 0.7, outliers: float = 0.05, decode_in_graph: bool = False,
          boxes_per_image: float = 8.0, ridge: float = 0.1,
          outlier_gain: tuple[float, float] = (4.0, 10.0), beta: tuple[float, float] = (-0.6, 0.8),
          csp_depth: int = 3, smooth: float = 0.0, rank: float = 1.0, align: float = 0.0,
          std_floor: float = 0.0, cls_gain: float | None = None, cls_bias: float = -3.0,
          align_head: bool = True) -> ir.Model:
    """The detector with weights fitted on `images` ([n, 3, s, s] letterboxed, any s divisible by 32).

    `width` scales YOLOX-s's channels (0.5 = YOLOX-s: 32..512, head 128); `spread` is the standard
    deviation of log BN gamma (0 = every channel alike, as a random net); `outliers` the share of
    channels `outlier_gain` wider; `beta` the (mean, std) of beta / gamma; `csp_depth` the
    Bottlenecks of dark3/dark4 (YOLOX-s: 3); `align` the share of each backbone/PAN filter in
    the span of its input's principal patch directions (0: He-random; `align_head` also for the
    head); `smooth`/`rank`: low-pass, low-rank random filters (when not aligned); `std_floor`
    bounds each BN's folded gain; `boxes_per_image` sets the objectness bias so that the median
    image has about that many cells above score 0.3 before NMS; `cls_gain`/`cls_bias`: a random
    class head with that logit std and mean (None: fitted by ridge regression to colour-hashed
    classes, which does not generalize); `ridge`: the fits' regularization. REPRESENTATIVE holds
    the measured choice."""
    rng = np.random.default_rng(seed)
    b = _Builder(images.astype(np.float32), rng, spread, outliers)
    b.ridge, b.outlier_gain, b.beta = ridge, outlier_gain, beta
    b.smooth, b.rank, b.align, b.std_floor, b.align_head = smooth, rank, align, std_floor, align_head
    ch = [max(8, int(round(64 * width * 2 ** i))) for i in range(5)]  # stem, dark2..dark5
    head_width = max(16, int(round(256 * width)))

    # Focus: space-to-depth by four strided Slices (opset 11 writes steps as an input)
    patches = []
    for i, (dy, dx) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        starts = b.const(f"focus.starts{i}", np.array([dy, dx], np.int64))
        ends = b.const("focus.ends", np.array([2 ** 30, 2 ** 30], np.int64))
        axes = b.const("focus.axes", np.array([2, 3], np.int64))
        steps = b.const("focus.steps", np.array([2, 2], np.int64))
        patches.append(b.node("Slice", ["images", starts, ends, axes, steps], f"focus.slice{i}",
                              b.values["images"][:, :, dy::2, dx::2]))
    x = b.concat(patches, "focus.cat")
    x = b.base_conv(x, ch[0], 3, 1, "stem", w=_first_filters(rng, ch[0]))
    x = b.base_conv(x, ch[1], 3, 2, "dark2.0")
    x = b.csp(x, ch[1], depth, True, "dark2.1")
    x = b.base_conv(x, ch[2], 3, 2, "dark3.0")
    c3 = b.csp(x, ch[2], csp_depth * depth, True, "dark3.1")
    x = b.base_conv(c3, ch[3], 3, 2, "dark4.0")
    c4 = b.csp(x, ch[3], csp_depth * depth, True, "dark4.1")
    x = b.base_conv(c4, ch[4], 3, 2, "dark5.0")
    x = b.base_conv(x, ch[4] // 2, 1, 1, "dark5.spp.conv1")  # SPP
    pools = [x] + [b.node("MaxPool", [x], f"dark5.spp.pool{k}", _np_maxpool(b.values[x], k),
                          kernel_shape=[k, k], strides=[1, 1], pads=[k // 2] * 4) for k in (5, 9, 13)]
    x = b.base_conv(b.concat(pools, "dark5.spp.cat"), ch[4], 1, 1, "dark5.spp.conv2")
    c5 = b.csp(x, ch[4], depth, False, "dark5.2")

    fpn0 = b.base_conv(c5, ch[3], 1, 1, "pan.lateral_conv0")
    x = b.csp(b.concat([b.resize2(fpn0, "pan.up0"), c4], "pan.cat0"), ch[3], depth, False, "pan.C3_p4")
    fpn1 = b.base_conv(x, ch[2], 1, 1, "pan.reduce_conv1")
    p3 = b.csp(b.concat([b.resize2(fpn1, "pan.up1"), c3], "pan.cat1"), ch[2], depth, False, "pan.C3_p3")
    x = b.base_conv(p3, ch[2], 3, 2, "pan.bu_conv2")
    p4 = b.csp(b.concat([x, fpn1], "pan.cat2"), ch[3], depth, False, "pan.C3_n3")
    x = b.base_conv(p4, ch[3], 3, 2, "pan.bu_conv1")
    p5 = b.csp(b.concat([x, fpn0], "pan.cat3"), ch[4], depth, False, "pan.C3_n4")

    # objectness prior: on the statistics images, about `boxes_per_image` cells above 0.3 per image
    n_cells = sum((images.shape[-1] // s) ** 2 for s in STRIDES)
    obj_quantile = 1.0 - boxes_per_image / n_cells
    levels = []
    for i, feat in enumerate((p3, p4, p5)):
        h = b.base_conv(feat, head_width, 1, 1, f"head.stems.{i}")
        c = b.base_conv(b.base_conv(h, head_width, 3, 1, f"head.cls_convs.{i}.0"), head_width, 3, 1,
                        f"head.cls_convs.{i}.1", center_surround=True)
        r = b.base_conv(b.base_conv(h, head_width, 3, 1, f"head.reg_convs.{i}.0"), head_width, 3, 1,
                        f"head.reg_convs.{i}.1", center_surround=True)
        levels.append((r, c))
    # the prediction convs are fitted (ridge regression: a 1x1 conv is linear in its input) to
    # targets a trained head would produce: confident logits, high only at a few salient cells
    # per image (local contrast and colour: where objects are), a class from the local colour
    obj_t, cls_t = _head_targets(b.values["images"], CLASSES, rng)
    preds = []
    for i, (r, c) in enumerate(levels):
        obj = b.fitted_conv(r, obj_t[i], f"head.obj_preds.{i}")
        if cls_gain is None:
            cls = b.fitted_conv(c, cls_t[i], f"head.cls_preds.{i}")
        else:  # a confident class head: logits with std `cls_gain` around -6 per class
            cls = b.conv(c, CLASSES, 1, 1, f"head.cls_preds.{i}", kind="head", head=(cls_gain, cls_bias))
        reg = b.conv(r, 4, 1, 1, f"head.reg_preds.{i}", kind="head",
                     head=(np.array([0.3, 0.3, 0.5, 0.5]), np.array([0.5, 0.5, 1.2, 1.2])))
        preds.append((reg, obj, cls))
    levels = preds
    # one bias shift for all levels: about `boxes_per_image` cells per image with obj * max cls > 0.3
    logits = np.concatenate([b.values[o].reshape(len(images), -1) for _, o, _ in levels], 1)
    best_cls = np.concatenate([_sigmoid(b.values[c]).max(1).reshape(len(images), -1) for _, _, c in levels], 1)
    shift = _objectness_shift(logits, best_cls, obj_quantile)
    outs = []
    for i, (reg, obj, cls) in enumerate(levels):
        bias = next(t for t in b.inits if t.name == f"head.obj_preds.{i}.bias")
        bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + np.float32(shift), bias.name))
        b.values[obj] = b.values[obj] + np.float32(shift)
        parts = [reg, b.sigmoid(obj, f"head.obj_preds.{i}"), b.sigmoid(cls, f"head.cls_preds.{i}")]
        cat = b.concat(parts, f"head.cat{i}")
        shape = b.const(f"head.shape{i}", np.array([1, 5 + CLASSES, -1], np.int64))
        outs.append(b.node("Reshape", [cat, shape], f"head.flat{i}", None))
    nodes = b.nodes
    nodes.append(helper.make_node("Concat", outs, ["head.levels"], name="/head/Concat", axis=2))
    raw = "output" if not decode_in_graph else "head.raw"
    nodes.append(helper.make_node("Transpose", ["head.levels"], [raw], name="/head/Transpose", perm=[0, 2, 1]))
    if decode_in_graph:
        _decode_nodes(b, raw, size)
    n = sum((size // s) ** 2 for s in STRIDES)
    graph = helper.make_graph(nodes, "yolox_like_detector",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n, 5 + CLASSES])],
                              b.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 7
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _head_targets(images: np.ndarray, classes: int, rng, per_level: int = 3):
    """Per level, target logits a trained head would have: objectness +4 at the `per_level` most
    salient cells of each image (local contrast times colourfulness, smoothed over 3x3 cells) and
    -8 elsewhere; the class logit +3 for the class the cell's mean colour hashes to, -7 for others."""
    gray = images.mean(1)
    grad = np.abs(np.diff(gray, axis=1, prepend=gray[:, :1])) + np.abs(np.diff(gray, axis=2, prepend=gray[:, :, :1]))
    colour = images.std(1)
    projection = rng.standard_normal((3, classes)).astype(np.float32)
    obj_t, cls_t = [], []
    for s in STRIDES:
        n, g = len(images), images.shape[-1] // s
        pool = lambda a: a.reshape(n, *a.shape[1:-2], g, s, g, s).mean(axis=(-1, -3))  # noqa: E731
        sal = pool(grad) * (1.0 + pool(colour) / 32.0)
        padded = np.pad(sal, ((0, 0), (1, 1), (1, 1)), mode="edge")
        sal = sum(padded[:, i:i + g, j:j + g] for i in range(3) for j in range(3)) / 9.0
        top = np.argsort(-sal.reshape(n, -1), axis=1)[:, :per_level]
        obj = np.full((n, g * g), -8.0, np.float32)
        np.put_along_axis(obj, top, 4.0, axis=1)
        obj_t.append(obj.reshape(n, 1, g, g))
        mean_colour = pool(images) - 114.0  # [n, 3, g, g]
        cls_id = np.einsum("nchw,ck->nkhw", mean_colour, projection).argmax(1)
        cls = np.full((n, classes, g, g), -7.0, np.float32)
        np.put_along_axis(cls, cls_id[:, None], 3.0, axis=1)
        cls_t.append(cls)
    return obj_t, cls_t


def _objectness_shift(logits: np.ndarray, best_cls: np.ndarray, quantile: float) -> float:
    """The shift of the objectness logits that leaves the target share of cells with
    sigmoid(obj + shift) * max cls > 0.3 (bisection: the count falls as the shift falls)."""
    target = (1.0 - quantile) * logits.shape[1]  # cells per image
    lo, hi = -40.0, 40.0
    for _ in range(50):
        mid = (lo + hi) / 2
        per_image = np.count_nonzero(_sigmoid(logits + mid) * best_cls > 0.3, axis=1)
        if np.median(per_image) > target:  # the median image, not the pooled count: a few busy
            # images would otherwise set the threshold for all
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _decode_nodes(b: _Builder, raw: str, size: int) -> None:
    """YOLOX decode_in_inference, as torch.onnx writes it at opset 11:
    xy = (raw[..., 0:2] + grid) * stride, wh = exp(raw[..., 2:4]) * stride, Concat with raw[..., 4:]."""
    cells, stride = detection.grids(size)
    b.const("decode.grid", cells[None])
    b.const("decode.stride", stride[None])
    pieces = []
    for name, start, end in (("xy", 0, 2), ("wh", 2, 4), ("probs", 4, 5 + CLASSES)):
        b.const(f"decode.{name}.starts", np.array([start], np.int64))
        b.const(f"decode.{name}.ends", np.array([end], np.int64))
        b.const("decode.axes", np.array([2], np.int64))
        b.nodes.append(helper.make_node("Slice", [raw, f"decode.{name}.starts", f"decode.{name}.ends", "decode.axes"],
                                        [f"decode.{name}"], name=f"/decode/{name}/Slice"))
        pieces.append(f"decode.{name}")
    b.nodes += [
        helper.make_node("Add", ["decode.xy", "decode.grid"], ["decode.xy_cells"], name="/decode/xy/Add"),
        helper.make_node("Mul", ["decode.xy_cells", "decode.stride"], ["decode.xy_px"], name="/decode/xy/Mul"),
        helper.make_node("Exp", ["decode.wh"], ["decode.wh_exp"], name="/decode/wh/Exp"),
        helper.make_node("Mul", ["decode.wh_exp", "decode.stride"], ["decode.wh_px"], name="/decode/wh/Mul"),
        helper.make_node("Concat", ["decode.xy_px", "decode.wh_px", "decode.probs"], ["output"],
                         name="/decode/Concat", axis=2),
    ]


# the construction measured in docs/quantization-transformers-detectors.md and by
# scripts/bench/bench_detector.py: backbone and PAN aligned with their inputs (noise-robust like a
# trained net), head convs random with center-surround last layers, objectness fitted to salient
# cells, a confident random class head, about 4 boxes on the median image before NMS
REPRESENTATIVE = dict(align=0.7, align_head=False, std_floor=0.5, boxes_per_image=4.0, cls_gain=2.5)


def representative(images: np.ndarray, *, size: int | None = None, **overrides) -> ir.Model:
    """The detector as benchmarked: `build` with REPRESENTATIVE options, statistics on `images`."""
    return build(11, images=images, size=size or images.shape[-1], **{**REPRESENTATIVE, **overrides})


# ------------------------------------------------------------------ cached weights (tests)
WEIGHTS = Path(__file__).with_name("data") / "yolox_like_256.npz"
STAT_IMAGES = 50  # the first 50 COCO images of ../shared/data/coco_val2017_100, at 256x256


def cached(size: int = 256, path: Path = WEIGHTS) -> ir.Model:
    """The representative detector from its stored weights (float16 in the file, float32 here),
    at any input size divisible by 32: the graph is rebuilt (a cheap pass on one small random
    image) and every initializer replaced. Regenerate with `python3 -m tests.quant.yolox_like`."""
    stored = np.load(path)
    dummy = np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)
    model = build(11, images=dummy, size=size, **{**REPRESENTATIVE, "align": 0.0})
    for name, value in model.graph.initializers.items():
        if name in stored.files:
            value.const_value = ir.tensor(stored[name].astype(value.const_value.numpy().dtype), name=name)
    missing = set(model.graph.initializers) - set(stored.files)
    if missing:
        raise RuntimeError(f"{path}: no weights for {sorted(missing)[:3]}; regenerate it")
    return model


def write_weights(folder: Path, path: Path = WEIGHTS) -> Path:
    """Builds the representative detector on the first STAT_IMAGES images of `folder` at 256x256
    and stores its initializers (float weights as float16) in `path`."""
    model = representative(coco_images(folder, STAT_IMAGES, size=256))
    arrays = {}
    for name, value in model.graph.initializers.items():
        a = value.const_value.numpy()
        arrays[name] = a.astype(np.float16) if a.dtype == np.float32 and a.size > 64 else a
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


if __name__ == "__main__":  # python3 -m tests.quant.yolox_like [SHARED_DATA_FOLDER]
    import sys

    from tests.helpers import SHARED_DATA

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED_DATA / "coco_val2017_100"
    print(write_weights(source))
