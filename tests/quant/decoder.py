"""A small Llama-style decoder built in code, trained in NumPy on real text, exported to ONNX.

    input_ids [B, S] ─► Gather(embedding) ─► x
    per layer:
      x ─► RMSNorm ─► MatMul Wq/Wk/Wv ─► Reshape/Transpose ─► RoPE (Slice, Neg, Concat, Mul, Add)
          scores = MatMul(q, kᵀ) · 1/√d + mask[S, S] (0 / -inf, sliced by the sequence length)
          Softmax ─► MatMul(p, v) ─► Transpose/Reshape ─► MatMul Wo ─► Add(x)
      x ─► RMSNorm ─► MatMul Wg, Wu ─► SiLU(g)·u ─► MatMul Wd ─► Add(x)
    RMSNorm ─► MatMul lm_head ─► logits [B, S, 256]

RMSNorm is written out as an exporter writes it (Pow, ReduceMean, Add eps, Sqrt, Div, Mul gamma);
the mask and the rotary tables are sliced with the runtime sequence length (Shape -> Slice), as in
exported Llama models, so the -inf reaches the graph as an activation, not a constant.
Tokens are bytes; the training text is the Python standard library's own source (no download).
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

TRAIN_FILES = ("argparse.py", "inspect.py", "typing.py", "dataclasses.py", "pathlib.py", "subprocess.py",
               "tarfile.py", "zipfile.py", "logging/__init__.py", "json/decoder.py", "json/encoder.py",
               "textwrap.py", "string.py", "functools.py", "collections/__init__.py")
EVAL_FILES = ("fractions.py", "shlex.py")


@dataclass(frozen=True)
class Config:
    vocab: int = 256
    dim: int = 64
    heads: int = 4
    ffn: int = 176
    layers: int = 2
    max_len: int = 128
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


def corpus(files=TRAIN_FILES) -> np.ndarray:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((stdlib / f).read_bytes() for f in files if (stdlib / f).is_file())
    return np.frombuffer(data, np.uint8).astype(np.int64)


def windows(tokens: np.ndarray, length: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` windows of `length` tokens: spread evenly (seed None) or at random starts."""
    if seed is None:
        starts = np.linspace(0, len(tokens) - length - 1, count).astype(np.int64)
    else:
        starts = np.random.default_rng(seed).integers(0, len(tokens) - length - 1, count)
    return np.stack([tokens[s:s + length + 1] for s in starts])


def rope_tables(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    half = cfg.head_dim // 2
    inv = 1.0 / (10000 ** (np.arange(half) / half))
    angles = np.arange(cfg.max_len)[:, None] * inv[None, :]
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def init_params(cfg: Config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or shape[0] ** -0.5)).astype(np.float32)

    p = {"emb": w(cfg.vocab, cfg.dim, scale=1.0), "norm_f": np.ones(cfg.dim, np.float32),
         "lm_head": w(cfg.dim, cfg.vocab)}
    for i in range(cfg.layers):
        p |= {f"l{i}.norm1": np.ones(cfg.dim, np.float32), f"l{i}.norm2": np.ones(cfg.dim, np.float32),
              f"l{i}.wq": w(cfg.dim, cfg.dim), f"l{i}.wk": w(cfg.dim, cfg.dim), f"l{i}.wv": w(cfg.dim, cfg.dim),
              f"l{i}.wo": w(cfg.dim, cfg.dim, scale=(2 * cfg.layers * cfg.dim) ** -0.5),
              f"l{i}.wg": w(cfg.dim, cfg.ffn), f"l{i}.wu": w(cfg.dim, cfg.ffn),
              f"l{i}.wd": w(cfg.ffn, cfg.dim, scale=(2 * cfg.layers * cfg.ffn) ** -0.5)}
    return p


# ------------------------------------------------------------------ NumPy forward and backward
def _rot(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def _rot_t(z):
    h = z.shape[-1] // 2
    return np.concatenate([z[..., h:], -z[..., :h]], axis=-1)


def _rms(x, g, eps):
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * r * g, r


def _rms_back(dy, x, r, g):
    dyg = dy * g
    dx = r * dyg - x * r ** 3 * (dyg * x).mean(-1, keepdims=True)
    dg = (dy * x * r).reshape(-1, x.shape[-1]).sum(0)
    return dx, dg


def loss_and_grads(p: dict, cfg: Config, batch: np.ndarray, *, grads: bool = True):
    """Mean next-token cross-entropy of `batch` [B, S+1] and its gradients (backprop by hand)."""
    ids, target = batch[:, :-1], batch[:, 1:]
    b, s = ids.shape
    h, d = cfg.heads, cfg.head_dim
    cos, sin = (t[:s] for t in rope_tables(cfg))
    mask = np.triu(np.full((s, s), -np.inf, np.float32), 1)
    x = p["emb"][ids]
    tape = []
    for i in range(cfg.layers):
        a, r1 = _rms(x, p[f"l{i}.norm1"], cfg.eps)
        heads = lambda t: t.reshape(b, s, h, d).transpose(0, 2, 1, 3)  # noqa: E731
        q0, k0, v = heads(a @ p[f"l{i}.wq"]), heads(a @ p[f"l{i}.wk"]), heads(a @ p[f"l{i}.wv"])
        q, k = q0 * cos + _rot(q0) * sin, k0 * cos + _rot(k0) * sin
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + mask
        scores -= scores.max(-1, keepdims=True)
        pr = np.exp(scores)
        pr /= pr.sum(-1, keepdims=True)
        o = (pr @ v).transpose(0, 2, 1, 3).reshape(b, s, cfg.dim)
        x1 = x + o @ p[f"l{i}.wo"]
        m, r2 = _rms(x1, p[f"l{i}.norm2"], cfg.eps)
        g, u = m @ p[f"l{i}.wg"], m @ p[f"l{i}.wu"]
        sg = 1.0 / (1.0 + np.exp(-g))
        act = g * sg * u
        x2 = x1 + act @ p[f"l{i}.wd"]
        tape.append((x, a, r1, q, k, v, pr, o, x1, m, r2, g, u, sg, act))
        x = x2
    xf, rf = _rms(x, p["norm_f"], cfg.eps)
    logits = xf @ p["lm_head"]
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    n = b * s
    loss = -float(np.take_along_axis(logp, target[..., None], -1).mean())
    if not grads:
        return loss, None
    G = {k: np.zeros_like(v) for k, v in p.items()}
    dlog = np.exp(logp)
    np.put_along_axis(dlog, target[..., None], np.take_along_axis(dlog, target[..., None], -1) - 1, -1)
    dlog /= n
    G["lm_head"] = xf.reshape(n, -1).T @ dlog.reshape(n, -1)
    dx, G["norm_f"] = _rms_back(dlog @ p["lm_head"].T, x, rf, p["norm_f"])
    for i in reversed(range(cfg.layers)):
        x0, a, r1, q, k, v, pr, o, x1, m, r2, g, u, sg, act = tape[i]
        G[f"l{i}.wd"] = act.reshape(n, -1).T @ dx.reshape(n, -1)
        dact = dx @ p[f"l{i}.wd"].T
        dg = dact * u * sg * (1 + g * (1 - sg))
        du = dact * g * sg
        G[f"l{i}.wg"] = m.reshape(n, -1).T @ dg.reshape(n, -1)
        G[f"l{i}.wu"] = m.reshape(n, -1).T @ du.reshape(n, -1)
        dm = dg @ p[f"l{i}.wg"].T + du @ p[f"l{i}.wu"].T
        dx1, G[f"l{i}.norm2"] = _rms_back(dm, x1, r2, p[f"l{i}.norm2"])
        dx1 = dx1 + dx
        G[f"l{i}.wo"] = o.reshape(n, -1).T @ dx1.reshape(n, -1)
        do = (dx1 @ p[f"l{i}.wo"].T).reshape(b, s, h, d).transpose(0, 2, 1, 3)
        dpr = do @ v.transpose(0, 1, 3, 2)
        dv = pr.transpose(0, 1, 3, 2) @ do
        dsc = pr * (dpr - (dpr * pr).sum(-1, keepdims=True)) / np.sqrt(d)
        dq, dk = dsc @ k, dsc.transpose(0, 1, 3, 2) @ q
        dq0 = dq * cos + _rot_t(dq * sin)
        dk0 = dk * cos + _rot_t(dk * sin)
        flat = lambda t: t.transpose(0, 2, 1, 3).reshape(n, cfg.dim)  # noqa: E731
        af = a.reshape(n, -1)
        G[f"l{i}.wq"], G[f"l{i}.wk"], G[f"l{i}.wv"] = af.T @ flat(dq0), af.T @ flat(dk0), af.T @ flat(dv)
        da = (flat(dq0) @ p[f"l{i}.wq"].T + flat(dk0) @ p[f"l{i}.wk"].T + flat(dv) @ p[f"l{i}.wv"].T)
        dxa, G[f"l{i}.norm1"] = _rms_back(da.reshape(b, s, -1), x0, r1, p[f"l{i}.norm1"])
        dx = dx1 + dxa
    np.add.at(G["emb"], ids.reshape(-1), dx.reshape(n, -1))
    return loss, G


def train(cfg: Config = Config(), *, steps: int = 300, batch: int = 16, seq: int = 64, lr: float = 3e-3,
          seed: int = 0, tokens: np.ndarray | None = None,
          init: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Adam with a cosine schedule on random windows of the training text (from `init` if given)."""
    try:  # many small matmuls: BLAS threads only contend
        from threadpoolctl import threadpool_limits
        with threadpool_limits(1):
            return _train(cfg, steps, batch, seq, lr, seed, tokens, init)
    except ImportError:
        return _train(cfg, steps, batch, seq, lr, seed, tokens, init)


def _train(cfg, steps, batch, seq, lr, seed, tokens, init=None):
    tokens = corpus() if tokens is None else tokens
    p = init_params(cfg, seed) if init is None else {k: v.astype(np.float32).copy() for k, v in init.items()}
    mom = {k: np.zeros_like(v) for k, v in p.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    rng = np.random.default_rng(seed + 1)
    for t in range(1, steps + 1):
        starts = rng.integers(0, len(tokens) - seq - 1, batch)
        data = np.stack([tokens[s:s + seq + 1] for s in starts])
        _, G = loss_and_grads(p, cfg, data)
        rate = lr * 0.5 * (1 + np.cos(np.pi * t / steps)) * min(1.0, t / 20)
        for k in p:
            mom[k] = 0.9 * mom[k] + 0.1 * G[k]
            vel[k] = 0.99 * vel[k] + 0.01 * G[k] ** 2
            p[k] -= (rate * (mom[k] / (1 - 0.9 ** t)) / (np.sqrt(vel[k] / (1 - 0.99 ** t)) + 1e-8)).astype(np.float32)
    return p


# ------------------------------------------------------------------ the representative decoder
REPRESENTATIVE = Config(dim=64, heads=4, ffn=176, layers=2, max_len=128)
WEIGHTS = Path(__file__).with_name("decoder_outliers.npz")
# hidden channels with outlier activations, the same in every layer (as LLM.int8() observed):
NORM_OUTLIERS = {5: 60.0, 37: 100.0, 50: 150.0}   # RMSNorm outputs (inputs of q/k/v, gate/up, lm_head)
FFN_OUTLIERS = {11: 40.0, 90: 80.0}               # SwiGLU products (inputs of the down projection)
VALUE_OUTLIERS = {9: 40.0, 30: 80.0}              # attention outputs (inputs of the o projection)
KEEP = 12.0  # the weights that read an outlier channel are divided by gain / KEEP, not by the gain


def plant_outliers(p: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]:
    """The activation outliers of real LLMs, planted into a trained model (then fine-tuned).

    Small trained LLMs have a few hidden channels 10-100x larger than the rest in the norm outputs
    (the norm's gamma is large there), in the down projection's input and in the attention output;
    the weights that read those channels are not correspondingly small, so the model relies on
    them and one per-tensor INT8 scale starves every other channel, and INT4 rounding of a weight
    that meets a large activation costs that much more. Here, channel k of an activation is scaled
    by its gain c through the op that produces it (gamma_k, or the columns of Wu / Wv: SiLU(g)*u
    and softmax(qk)v are linear in u and v), and row k of every weight that reads it is divided by
    c / KEEP: the model becomes KEEP times more reliant on those channels, and fine-tuning (in
    `representative_params`) lets it adapt to that. With KEEP = 1 the rewrite is exact (inverse
    SmoothQuant)."""
    p = {k: v.astype(np.float64).copy() for k, v in p.items()}
    for i in range(cfg.layers):
        for norm, readers in ((f"l{i}.norm1", "qkv"), (f"l{i}.norm2", "gu")):
            for d, c in NORM_OUTLIERS.items():
                p[norm][d] *= c
                for w in readers:
                    p[f"l{i}.w{w}"][d] /= c / KEEP
        for d, c in FFN_OUTLIERS.items():
            p[f"l{i}.wu"][:, d] *= c
            p[f"l{i}.wd"][d] /= c / KEEP
        for d, c in VALUE_OUTLIERS.items():
            p[f"l{i}.wv"][:, d] *= c
            p[f"l{i}.wo"][d] /= c / KEEP
    for d, c in NORM_OUTLIERS.items():
        p["norm_f"][d] *= c
        p["lm_head"][d] /= c / KEEP
    return {k: v.astype(np.float32) for k, v in p.items()}


def representative_params(*, regenerate: bool = False) -> dict[str, np.ndarray]:
    """The weights of the representative decoder (REPRESENTATIVE): 300 Adam steps from scratch,
    outliers planted, 400 steps of fine-tuning (about a minute), cached in WEIGHTS.
    `python -m tests.quant.decoder` regenerates the file."""
    if WEIGHTS.is_file() and not regenerate:
        with np.load(WEIGHTS) as f:
            return {k: f[k] for k in f.files}
    cfg = REPRESENTATIVE
    base = train(cfg, steps=300, batch=16, seq=64, lr=3e-3, seed=0)
    p = train(cfg, steps=400, batch=16, seq=64, lr=2e-3, seed=3, init=plant_outliers(base, cfg))
    return p


def representative(opset: int = 17) -> ir.Model:
    """The representative decoder as an ONNX model (from the cached weights)."""
    return to_onnx(representative_params(), REPRESENTATIVE, opset=opset)


# ------------------------------------------------------------------ ONNX export
def to_onnx(p: dict[str, np.ndarray], cfg: Config = Config(), *, opset: int = 17) -> ir.Model:
    nodes, inits = [], []
    cos, sin = rope_tables(cfg)
    mask = np.triu(np.full((cfg.max_len, cfg.max_len), -np.inf, np.float32), 1)

    def const(name, array):
        inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=f"/{name}/{op}", **attrs))
        return name

    for k, v in p.items():
        const(k, v)
    const("cos_table", cos), const("sin_table", sin), const("mask_table", mask)
    const("zero", np.array([0], np.int64)), const("one", np.array([1], np.int64))
    const("axis0", np.array([0], np.int64)), const("axes01", np.array([0, 1], np.int64))
    const("two", np.array(2.0, np.float32)), const("eps", np.array(cfg.eps, np.float32))
    const("qk_scale", np.array(cfg.head_dim ** -0.5, np.float32))
    half = cfg.head_dim // 2
    const("h0", np.array([0], np.int64)), const("h1", np.array([half], np.int64))
    const("h2", np.array([cfg.head_dim], np.int64)), const("last", np.array([-1], np.int64))
    const("heads_shape", np.array([0, 0, cfg.heads, cfg.head_dim], np.int64))
    const("model_shape", np.array([0, 0, cfg.dim], np.int64))

    node("Shape", ["input_ids"], "ids_shape")
    const("i1", np.array([1], np.int64)), const("i2", np.array([2], np.int64))
    node("Slice", ["ids_shape", "i1", "i2"], "seq_len")                       # [S]
    node("Slice", ["cos_table", "zero", "seq_len", "axis0"], "cos")           # [S, d]
    node("Slice", ["sin_table", "zero", "seq_len", "axis0"], "sin")
    node("Concat", ["seq_len", "seq_len"], "mask_ends", axis=0)
    const("zeros2", np.array([0, 0], np.int64))
    node("Slice", ["mask_table", "zeros2", "mask_ends", "axes01"], "mask")       # [S, S] 0 / -inf
    x = node("Gather", ["emb", "input_ids"], "embed", axis=0)

    def rms(x, gamma, tag):
        sq = node("Pow", [x, "two"], f"{tag}/pow")
        mean = node("ReduceMean", [sq], f"{tag}/mean", axes=[-1], keepdims=1)
        var = node("Add", [mean, "eps"], f"{tag}/add_eps")
        std = node("Sqrt", [var], f"{tag}/sqrt")
        normed = node("Div", [x, std], f"{tag}/div")
        return node("Mul", [normed, gamma], f"{tag}/mul_gamma")

    def rope(t, tag):
        x1 = node("Slice", [t, "h0", "h1", "last"], f"{tag}/x1")
        x2 = node("Slice", [t, "h1", "h2", "last"], f"{tag}/x2")
        neg = node("Neg", [x2], f"{tag}/neg")
        rot = node("Concat", [neg, x1], f"{tag}/rotate_half", axis=-1)
        a = node("Mul", [t, "cos"], f"{tag}/mul_cos")
        b = node("Mul", [rot, "sin"], f"{tag}/mul_sin")
        return node("Add", [a, b], f"{tag}/rope")

    for i in range(cfg.layers):
        t = f"layers.{i}"
        a = rms(x, f"l{i}.norm1", f"{t}/input_norm")
        qkv = {}
        for n in "qkv":
            y = node("MatMul", [a, f"l{i}.w{n}"], f"{t}/attn/{n}_proj")
            y = node("Reshape", [y, "heads_shape"], f"{t}/attn/{n}_heads")
            perm = [0, 2, 3, 1] if n == "k" else [0, 2, 1, 3]
            qkv[n] = node("Transpose", [y], f"{t}/attn/{n}_t", perm=perm)
        q = rope(qkv["q"], f"{t}/attn/q_rope")
        # k is [B, H, d, S]: rotate in [B, H, S, d] then transpose back
        kt = node("Transpose", [qkv["k"]], f"{t}/attn/k_bhsd", perm=[0, 1, 3, 2])
        k = node("Transpose", [rope(kt, f"{t}/attn/k_rope")], f"{t}/attn/k_bhds", perm=[0, 1, 3, 2])
        s = node("MatMul", [q, k], f"{t}/attn/qk")
        s = node("Mul", [s, "qk_scale"], f"{t}/attn/scaled")
        s = node("Add", [s, "mask"], f"{t}/attn/masked")
        pr = node("Softmax", [s], f"{t}/attn/softmax", axis=-1)
        o = node("MatMul", [pr, qkv["v"]], f"{t}/attn/pv")
        o = node("Transpose", [o], f"{t}/attn/o_t", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, "model_shape"], f"{t}/attn/o_merge")
        o = node("MatMul", [o, f"l{i}.wo"], f"{t}/attn/o_proj")
        x = node("Add", [x, o], f"{t}/attn_residual")
        m = rms(x, f"l{i}.norm2", f"{t}/post_attention_norm")
        g = node("MatMul", [m, f"l{i}.wg"], f"{t}/mlp/gate_proj")
        u = node("MatMul", [m, f"l{i}.wu"], f"{t}/mlp/up_proj")
        sg = node("Sigmoid", [g], f"{t}/mlp/sigmoid")
        silu = node("Mul", [g, sg], f"{t}/mlp/silu")
        hmul = node("Mul", [silu, u], f"{t}/mlp/gate_up")
        dn = node("MatMul", [hmul, f"l{i}.wd"], f"{t}/mlp/down_proj")
        x = node("Add", [x, dn], f"{t}/mlp_residual")
    xf = rms(x, "norm_f", "norm")
    nodes.append(helper.make_node("MatMul", [xf, "lm_head"], ["logits"], name="/lm_head/MatMul"))
    graph = helper.make_graph(
        nodes, "llama_style_decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


# ------------------------------------------------------------------ evaluation
def lm_stats(session_or_model, batch: np.ndarray, reference: np.ndarray | None = None):
    """(perplexity, next-token top-1 of every position, logits) for windows [N, S+1]; a session or model."""
    from edgepack import runtime

    sess = session_or_model if hasattr(session_or_model, "run") else runtime.session(session_or_model)
    logits = np.concatenate([sess.run(None, {"input_ids": batch[i:i + 8, :-1]})[0] for i in range(0, len(batch), 8)])
    logits = logits.astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch[:, 1:, None], -1).mean()
    return float(np.exp(nll)), logits.argmax(-1)


if __name__ == "__main__":  # python -m tests.quant.decoder: rewrite WEIGHTS
    params = representative_params(regenerate=True)
    np.savez_compressed(WEIGHTS, **params)
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size // 1024} KiB)")
