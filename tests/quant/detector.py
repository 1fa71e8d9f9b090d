"""A small YOLOX-style detector built in code (opset 11 or 13, fixed batch 1), its decode, NMS
and box-level agreement between two models.

    images [1,3,S,S] (BGR 0..255, letterboxed)
      stem Conv s2 ─► SiLU ─► Conv s2 ─► SiLU ─► Conv s2 ─► SiLU ─► C3 (stride 8)
                                                  C3 ─► Conv s2 ─► SiLU ─► C4 (16) ─► Conv s2 ─► SiLU ─► C5 (32)
      FPN: Resize(C5, x2) ─► Concat(C4) ─► Conv ─► SiLU ─► P4
    per level (C3, P4, C5): Conv 1x1 ─► SiLU ─┬► Conv ─► reg [4]            (x, y offsets, log w, log h)
                                              ├► Conv ─► Sigmoid ─► obj [1]
                                              └► Conv ─► Sigmoid ─► cls [C]
      Concat(reg, obj, cls) ─► Reshape [1, 5+C, H*W];  Concat(levels) ─► Transpose ─► [1, N, 5+C]

SiLU is written as x * Sigmoid(x), as exporters write it. The first conv is handcrafted (colour
opponents, oriented edges, blobs), the rest random He-scaled, and the objectness/class biases
are fitted on real images so that a few to a few tens of boxes per image pass the score
threshold: no trained detector, but the outputs are varied, image-dependent and mixed in scale
exactly as a real YOLOX head's are, which is what box-level agreement with FP32 measures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

SIZE = 320
CLASSES = 8
STRIDES = (8, 16, 32)


def letterbox(path: Path, size: int = SIZE) -> np.ndarray:
    """YOLOX preprocessing: resize keeping the aspect ratio, pad with 114, BGR, 0..255, [3, S, S]."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    ratio = min(size / image.width, size / image.height)
    image = image.resize((max(1, round(image.width * ratio)), max(1, round(image.height * ratio))), Image.BILINEAR)
    canvas = np.full((size, size, 3), 114, np.float32)
    canvas[:image.height, :image.width] = np.asarray(image, np.float32)
    return np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1))


def coco_images(folder: Path, count: int | None = None, size: int = SIZE) -> np.ndarray:
    files = sorted(folder.glob("*.jpg"))[:count]
    return np.stack([letterbox(f, size) for f in files])


def _first_filters(rng) -> np.ndarray:
    """16 hand-made 3x3 filters on BGR: colour opponents, oriented edges, blobs (scaled to 0..255 input)."""
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    edges = [sobel, sobel.T, np.rot90(sobel, 1) + sobel, sobel - np.rot90(sobel.T, 1)]
    blob = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32)
    box = np.ones((3, 3), np.float32) / 9
    w = []
    gray = np.array([0.114, 0.587, 0.299], np.float32)
    for e in edges:
        w.append(gray[:, None, None] * e)
    for colour in np.eye(3, dtype=np.float32):
        w.append((colour - gray)[:, None, None] * box)
        w.append(colour[:, None, None] * edges[0])
    w.append(gray[:, None, None] * blob)
    w.append(np.array([1, -1, 0], np.float32)[:, None, None] * box)   # blue-green
    w.append(np.array([0, 1, -1], np.float32)[:, None, None] * box)   # green-red
    while len(w) < 16:
        w.append(rng.standard_normal((3, 3, 3)).astype(np.float32) / 9)
    return (np.stack(w) / 64.0).astype(np.float32)


def build(opset: int = 11, *, images: np.ndarray | None = None, seed: int = 0, obj_bias: float = -4.0,
          cls_bias: float = -1.0, logit_gain: float = 2.5, size: int = SIZE) -> ir.Model:
    """The detector; with `images` ([n, 3, S, S] letterboxed), weights normalized on them."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, array):
        inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def conv(x, cin, cout, k, s, name, w=None, bias=None, gain=1.0):
        w = w if w is not None else (rng.standard_normal((cout, cin, k, k)) * gain
                                     * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = bias if bias is not None else (rng.standard_normal(cout) * 0.1).astype(np.float32)
        const(f"{name}.w", w), const(f"{name}.b", b)
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}_out"], name=f"/{name}/Conv",
                                      kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4))
        return f"{name}_out"

    def silu(x, name):
        nodes.append(helper.make_node("Sigmoid", [x], [f"{name}_sig"], name=f"/{name}/Sigmoid"))
        nodes.append(helper.make_node("Mul", [x, f"{name}_sig"], [f"{name}_act"], name=f"/{name}/Mul"))
        return f"{name}_act"

    x = silu(conv("images", 3, 16, 3, 2, "stem", w=_first_filters(rng), bias=np.zeros(16, np.float32)), "stem")
    x = silu(conv(x, 16, 32, 3, 2, "dark2"), "dark2")
    c3 = silu(conv(x, 32, 48, 3, 2, "dark3"), "dark3")
    c4 = silu(conv(c3, 48, 64, 3, 2, "dark4"), "dark4")
    c5 = silu(conv(c4, 64, 96, 3, 2, "dark5"), "dark5")
    const("roi", np.zeros(0, np.float32)), const("up2", np.array([1, 1, 2, 2], np.float32))
    nodes.append(helper.make_node("Resize", [c5, "roi", "up2"], ["c5_up"], name="/fpn/Resize", mode="nearest"))
    nodes.append(helper.make_node("Concat", ["c5_up", c4], ["fpn_cat"], name="/fpn/Concat", axis=1))
    p4 = silu(conv("fpn_cat", 96 + 64, 64, 3, 1, "fpn"), "fpn")
    levels = []
    for i, (feat, ch) in enumerate(((c3, 48), (p4, 64), (c5, 96))):
        h = silu(conv(feat, ch, 48, 1, 1, f"head{i}.stem"), f"head{i}.stem")
        reg_bias = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
        reg = conv(h, 48, 4, 1, 1, f"head{i}.reg", bias=reg_bias, gain=0.6)
        obj = conv(h, 48, 1, 1, 1, f"head{i}.obj", bias=np.full(1, obj_bias, np.float32), gain=2.0)
        cls = conv(h, 48, CLASSES, 1, 1, f"head{i}.cls", bias=np.full(CLASSES, cls_bias, np.float32), gain=2.0)
        for t in (obj, cls):
            nodes.append(helper.make_node("Sigmoid", [t], [f"{t}_sig"], name=f"/{t}/Sigmoid"))
        nodes.append(helper.make_node("Concat", [reg, f"{obj}_sig", f"{cls}_sig"], [f"head{i}_cat"],
                                      name=f"/head{i}/Concat", axis=1))
        const(f"shape{i}", np.array([1, 5 + CLASSES, -1], np.int64))
        nodes.append(helper.make_node("Reshape", [f"head{i}_cat", f"shape{i}"], [f"head{i}_flat"],
                                      name=f"/head{i}/Reshape"))
        levels.append(f"head{i}_flat")
    nodes.append(helper.make_node("Concat", levels, ["all_levels"], name="/head/Concat", axis=2))
    nodes.append(helper.make_node("Transpose", ["all_levels"], ["output"], name="/head/Transpose", perm=[0, 2, 1]))
    n = sum((size // s) ** 2 for s in STRIDES)
    graph = helper.make_graph(nodes, "yolox_style_detector",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n, 5 + CLASSES])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 7
    if images is not None:
        _normalize_like_batchnorm(proto, images, gains={"obj": logit_gain, "cls": logit_gain},
                                  biases={"obj": obj_bias, "cls": cls_bias})
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _normalize_like_batchnorm(proto, images: np.ndarray, gains: dict, biases: dict) -> None:
    """Data-dependent weights (as a BatchNorm-trained network has them, folded): conv by conv in
    graph order, scale and shift each output channel so that its pre-activation has zero mean and
    unit variance over `images`; the objectness/class convs get std `gain` and mean `bias`, the box regression a small
    spread around boxes 4.5 strides wide."""
    import onnxruntime as ort

    inits = {t.name: t for t in proto.graph.initializer}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        kind = node.name.split(".")[-1].split("/")[0]  # stem, obj, cls, reg, ...
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        del probe.graph.output[:]
        probe.graph.output.append(helper.make_empty_tensor_value_info(node.output[0]))
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        y = np.concatenate([session.run(None, {"images": images[i:i + 1]})[0] for i in range(len(images))])
        w0 = onnx.numpy_helper.to_array(inits[node.input[1]])
        b0 = onnx.numpy_helper.to_array(inits[node.input[2]])
        mean, std = y.mean(axis=(0, 2, 3)), y.std(axis=(0, 2, 3)) + 1e-6
        gain, shift = gains.get(kind, 1.0), biases.get(kind, 0.0)
        if kind == "reg":  # x, y offsets around the cell; log w, log h around 1.5 (4.5 strides)
            gain, shift = 0.35, np.array([0.0, 0.0, 1.5, 1.5], np.float32)
        w = w0 * (gain / std)[:, None, None, None]
        b = (b0 - mean) * gain / std + shift
        inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), node.input[1]))
        inits[node.input[2]].CopyFrom(onnx.numpy_helper.from_array(b.astype(np.float32), node.input[2]))


# ------------------------------------------------------------------ post-processing
def decode(output: np.ndarray, score_threshold: float = 0.3, iou_threshold: float = 0.45, size: int = SIZE):
    """YOLOX decode of one image's [N, 5+C] output, then class-aware NMS: (boxes xyxy, scores, classes);
    edgepack/quant/detection.py's decode with no cap on the number of boxes."""
    return detection.decode(output, size, score_threshold=score_threshold, iou_threshold=iou_threshold,
                            max_detections=len(output), strides=STRIDES)


from edgepack.quant import detection  # noqa: E402
from edgepack.quant.detection import agreement, iou  # noqa: E402,F401  (one matching rule for every detector)


def detect(session, images: np.ndarray) -> list:
    size = images.shape[-1]
    return [decode(session.run(None, {"images": images[i:i + 1]})[0][0], size=size) for i in range(len(images))]
