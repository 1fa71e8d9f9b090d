"""Trains the bundled example: a small CNN on scikit-learn's handwritten digits, in plain NumPy.

Writes edgepack/examples/digits_cnn.onnx and calibration/digits/ (calibration and held-out
evaluation sets with a manifest). Deterministic: `python3 scripts/train_digits.py` gives the same
files. Needs scikit-learn (the `dev` extra), whose package carries the data: nothing is downloaded.

    input[N,1,8,8] -> Conv1 3x3 (16) -> BN -> Relu -> Conv2 3x3/2 (32) -> BN -> Relu
      -> Conv3 3x3 (32) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (64) -> Relu -> Gemm (10)

After training, half of Conv2's filters and half of the first Gemm's hidden units (smallest L1
norm) are pruned to exactly zero and the rest fine-tuned, so `edgepack optimize` has channels to
fold, as in a model pruned during training and exported dense.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edgepack" / "examples" / "digits_cnn.onnx"
DATA = ROOT / "calibration" / "digits"
EPS = 1e-5
rng = np.random.default_rng(0)


# ----- layers: forward returns (output, cache); backward returns input gradient and fills grads
def im2col(x, k, stride, pad):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = np.empty((n, c, k, k, oh, ow), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1), (oh, ow)


def col2im(cols, shape, k, stride, pad, oh, ow):
    n, c, h, w = shape
    cols = cols.reshape(n, oh, ow, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), cols.dtype)
    for i in range(k):
        for j in range(k):
            xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += cols[:, :, i, j]
    return xp[:, :, pad:pad + h, pad:pad + w]


def conv_forward(x, w, b, stride):
    cols, (oh, ow) = im2col(x, w.shape[2], stride, 1)
    y = cols @ w.reshape(w.shape[0], -1).T + (0 if b is None else b)
    return y.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2), (x.shape, cols, oh, ow, stride)


def conv_backward(dy, w, cache):
    shape, cols, oh, ow, stride = cache
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
    dw = (dy2.T @ cols).reshape(w.shape)
    dx = col2im(dy2 @ w.reshape(w.shape[0], -1), shape, w.shape[2], stride, 1, oh, ow)
    return dx, dw, dy2.sum(axis=0)


def bn_forward(x, gamma, beta, stats, train):
    if train:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        stats["mean"] = 0.9 * stats["mean"] + 0.1 * mean
        stats["var"] = 0.9 * stats["var"] + 0.1 * var
    else:
        mean, var = stats["mean"], stats["var"]
    inv = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean[:, None, None]) * inv[:, None, None]
    return gamma[:, None, None] * xhat + beta[:, None, None], (xhat, inv)


def bn_backward(dy, gamma, cache):
    xhat, inv = cache
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dgamma, dbeta = (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))
    dxhat = dy * gamma[:, None, None]
    dx = (inv[:, None, None] / m) * (
        m * dxhat - dxhat.sum(axis=(0, 2, 3))[:, None, None]
        - xhat * (dxhat * xhat).sum(axis=(0, 2, 3))[:, None, None])
    return dx, dgamma, dbeta


# ----- the network
def init_params():
    def he(*shape):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)

    return {
        "conv1.w": he(16, 1, 3, 3), "bn1.g": np.ones(16, np.float32), "bn1.b": np.zeros(16, np.float32),
        "conv2.w": he(32, 16, 3, 3), "bn2.g": np.ones(32, np.float32), "bn2.b": np.zeros(32, np.float32),
        "conv3.w": he(32, 32, 3, 3), "conv3.b": np.zeros(32, np.float32),
        "fc1.w": he(64, 32), "fc1.b": np.zeros(64, np.float32),
        "fc2.w": he(10, 64), "fc2.b": np.zeros(10, np.float32),
    }


def forward(p, stats, x, train):
    c = {}
    h, c["conv1"] = conv_forward(x, p["conv1.w"], None, 1)
    h, c["bn1"] = bn_forward(h, p["bn1.g"], p["bn1.b"], stats["bn1"], train)
    c["relu1"] = h > 0
    h, c["conv2"] = conv_forward(h * c["relu1"], p["conv2.w"], None, 2)
    h, c["bn2"] = bn_forward(h, p["bn2.g"], p["bn2.b"], stats["bn2"], train)
    c["relu2"] = h > 0
    h, c["conv3"] = conv_forward(h * c["relu2"], p["conv3.w"], p["conv3.b"], 1)
    c["relu3"] = h > 0
    pooled = (h * c["relu3"]).mean(axis=(2, 3))
    c["pooled"], c["spatial"] = pooled, h.shape
    z = pooled @ p["fc1.w"].T + p["fc1.b"]
    c["relu4"] = z > 0
    c["hidden"] = z * c["relu4"]
    return c["hidden"] @ p["fc2.w"].T + p["fc2.b"], c


def backward(p, c, dlogits):
    g = {"fc2.w": dlogits.T @ c["hidden"], "fc2.b": dlogits.sum(axis=0)}
    dz = (dlogits @ p["fc2.w"]) * c["relu4"]
    g["fc1.w"], g["fc1.b"] = dz.T @ c["pooled"], dz.sum(axis=0)
    n, ch, hh, ww = c["spatial"]
    dh = np.broadcast_to((dz @ p["fc1.w"])[:, :, None, None] / (hh * ww), c["spatial"]) * c["relu3"]
    dh, g["conv3.w"], g["conv3.b"] = conv_backward(dh, p["conv3.w"], c["conv3"])
    dh, g["bn2.g"], g["bn2.b"] = bn_backward(dh * c["relu2"], p["bn2.g"], c["bn2"])
    dh, g["conv2.w"], _ = conv_backward(dh, p["conv2.w"], c["conv2"])
    dh, g["bn1.g"], g["bn1.b"] = bn_backward(dh * c["relu1"], p["bn1.g"], c["bn1"])
    _, g["conv1.w"], _ = conv_backward(dh, p["conv1.w"], c["conv1"])
    return g


def train(p, stats, x, y, epochs, lr, masks=None):
    """Adam on softmax cross-entropy, batches of 64, cosine learning-rate decay."""
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            logits, cache = forward(p, stats, x[idx], train=True)
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob /= prob.sum(axis=1, keepdims=True)
            prob[np.arange(len(idx)), y[idx]] -= 1
            grads = backward(p, cache, prob / len(idx))
            step += 1
            rate = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
            for k in p:
                m[k] = 0.9 * m[k] + 0.1 * grads[k]
                v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
                update = (m[k] / (1 - 0.9 ** step)) / (np.sqrt(v[k] / (1 - 0.999 ** step)) + 1e-8)
                p[k] = (p[k] - rate * update).astype(np.float32)
                if masks and k in masks:
                    p[k] *= masks[k]


def accuracy(p, stats, x, y):
    return float((forward(p, stats, x, train=False)[0].argmax(axis=1) == y).mean())


def prune_masks(p):
    """Zero the half of Conv2's filters (with BN2's gamma and beta) and of fc1's units with the
    smallest L1 norm: those channels are then exactly 0 after BN and Relu."""
    def smallest_half(w):
        keep = np.ones(w.shape[0], np.float32)
        keep[np.argsort(np.abs(w.reshape(w.shape[0], -1)).sum(axis=1))[: w.shape[0] // 2]] = 0
        return keep

    conv2, fc1 = smallest_half(p["conv2.w"]), smallest_half(p["fc1.w"])
    return {"conv2.w": conv2[:, None, None, None], "bn2.g": conv2, "bn2.b": conv2,
            "fc1.w": fc1[:, None], "fc1.b": fc1}


# ----- export
def export(p, stats, path: Path, eval_accuracy: float) -> None:
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    inits = {
        "conv1.weight": p["conv1.w"], "bn1.scale": p["bn1.g"], "bn1.bias": p["bn1.b"],
        "bn1.mean": stats["bn1"]["mean"], "bn1.var": stats["bn1"]["var"],
        "conv2.weight": p["conv2.w"], "bn2.scale": p["bn2.g"], "bn2.bias": p["bn2.b"],
        "bn2.mean": stats["bn2"]["mean"], "bn2.var": stats["bn2"]["var"],
        "conv3.weight": p["conv3.w"], "conv3.bias": p["conv3.b"],
        "fc1.weight": p["fc1.w"], "fc1.bias": p["fc1.b"], "fc2.weight": p["fc2.w"], "fc2.bias": p["fc2.b"],
    }
    node = helper.make_node
    nodes = [
        node("Conv", ["input", "conv1.weight"], ["conv1_out"], "/conv1/Conv", kernel_shape=[3, 3], pads=[1] * 4),
        node("BatchNormalization", ["conv1_out", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["bn1_out"],
             "/bn1/BatchNormalization", epsilon=EPS),
        node("Relu", ["bn1_out"], ["relu1_out"], "/relu1/Relu"),
        node("Conv", ["relu1_out", "conv2.weight"], ["conv2_out"], "/conv2/Conv", kernel_shape=[3, 3],
             pads=[1] * 4, strides=[2, 2]),
        node("BatchNormalization", ["conv2_out", "bn2.scale", "bn2.bias", "bn2.mean", "bn2.var"], ["bn2_out"],
             "/bn2/BatchNormalization", epsilon=EPS),
        node("Relu", ["bn2_out"], ["relu2_out"], "/relu2/Relu"),
        node("Conv", ["relu2_out", "conv3.weight", "conv3.bias"], ["conv3_out"], "/conv3/Conv",
             kernel_shape=[3, 3], pads=[1] * 4),
        node("Relu", ["conv3_out"], ["relu3_out"], "/relu3/Relu"),
        node("GlobalAveragePool", ["relu3_out"], ["pool_out"], "/pool/GlobalAveragePool"),
        node("Flatten", ["pool_out"], ["flat_out"], "/flatten/Flatten"),
        node("Gemm", ["flat_out", "fc1.weight", "fc1.bias"], ["fc1_out"], "/fc1/Gemm", transB=1),
        node("Relu", ["fc1_out"], ["relu4_out"], "/relu4/Relu"),
        node("Gemm", ["relu4_out", "fc2.weight", "fc2.bias"], ["logits"], "/fc2/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(f32(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgepack scripts/train_digits.py", ir_version=8)
    helper.set_model_props(model, {"eval_top1": f"{eval_accuracy:.4f}", "dataset": "sklearn digits"})
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


MANIFEST = """\
name = "digits"
description = "scikit-learn handwritten digits (8x8): calibration set drawn from the training split, held-out evaluation set with labels"
source = "scikit-learn load_digits: a copy of the test set of the UCI ML hand-written digits data set (Alpaydin & Kaynak, 1998)"
licence = "CC BY 4.0 (UCI Machine Learning Repository)"
created_by = "scripts/train_digits.py"

[[inputs]]
name = "input"
shape = [1, 8, 8]
dtype = "float32"
layout = "NCHW"
preprocessing = "pixel / 16.0: values 0..1"

[files]
calibration = "calib.npz"
evaluation = "eval.npz"
labels = "labels"
"""


def split(y, n_eval):
    """Stratified: the same share of every class goes to the held-out set."""
    eval_idx = []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        eval_idx += list(idx[: round(n_eval * len(idx) / len(y))])
    eval_idx = np.array(sorted(eval_idx[:n_eval]))
    return np.setdiff1d(np.arange(len(y)), eval_idx), eval_idx


def main() -> None:
    import onnxruntime as ort
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    train_idx, eval_idx = split(y, 500)
    xt, yt, xe, ye = x[train_idx], y[train_idx], x[eval_idx], y[eval_idx]

    params = init_params()
    stats = {k: {"mean": np.zeros(n, np.float32), "var": np.ones(n, np.float32)}
             for k, n in (("bn1", 16), ("bn2", 32))}
    train(params, stats, xt, yt, epochs=80, lr=3e-3)
    dense = accuracy(params, stats, xe, ye)
    masks = prune_masks(params)
    for k, mask in masks.items():
        params[k] *= mask
    pruned_only = accuracy(params, stats, xe, ye)
    train(params, stats, xt, yt, epochs=30, lr=1e-3, masks=masks)
    final = accuracy(params, stats, xe, ye)
    print(f"held-out top-1: dense {dense:.2%}, pruned {pruned_only:.2%}, fine-tuned {final:.2%}")

    export(params, stats, MODEL, final)
    DATA.mkdir(parents=True, exist_ok=True)
    calib = rng.choice(len(xt), 256, replace=False)
    np.savez_compressed(DATA / "calib.npz", input=xt[calib])
    np.savez_compressed(DATA / "eval.npz", input=xe, labels=ye)
    (DATA / "manifest.toml").write_text(MANIFEST)

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": xe})[0]
    reference = forward(params, stats, xe, train=False)[0]
    assert np.abs(logits - reference).max() < 1e-4, np.abs(logits - reference).max()
    print(f"ONNX Runtime top-1 {float((logits.argmax(1) == ye).mean()):.2%}; wrote {MODEL} and {DATA}")


if __name__ == "__main__":
    main()
