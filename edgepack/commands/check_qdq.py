"""`edgepack check-qdq`: does a QDQ model follow the target's quantization rules?"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import onnx_ir as ir

from edgepack.commands.result import NOT_JSON, CommandResult


@dataclass
class CheckQdqReport(CommandResult):
    """JSON `{ok, target, problems, rules, cause}`; exit code 1 when a rule is broken. `rules` groups
    the problems: `[{rule, count, first}]`; `cause`, when the model was quantized for another target."""

    ok: bool
    target: str
    problems: list[str]
    rules: list[dict] = field(default_factory=list)
    cause: str | None = None
    ort_fusion: dict | None = None    # ONNX Runtime targets: what ORT's optimized graph leaves unfused
    model: str | None = field(default=None, metadata=NOT_JSON)

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def text(self, verbose: bool = False) -> str:
        name = self.model or "model"
        fusion = self._fusion_lines(verbose)
        if not self.problems:
            return "\n".join([f"{name}: follows the {self.target} QDQ rules", *fusion])
        lines = [f"{name}: {len(self.problems)} problem(s) for {self.target}, {len(self.rules)} rule(s)"]
        if self.cause:
            lines.append(f"cause: {self.cause}; re-quantize with -t {self.target}")
        lines += [f"  {r['count']:>5} x {r['rule']} (first: {r['first']})" for r in self.rules]
        lines += ["", *self.problems] if verbose else ["(-v lists every node)"]
        return "\n".join(lines + fusion)

    def _fusion_lines(self, verbose: bool) -> list[str]:
        f = self.ort_fusion
        if not f:
            return []
        lines = [f"ONNX Runtime fuses it into {f['integer_kernels']} integer kernels; left unfused: "
                 f"{len(f['dq_on_constants'])} weight DQ run at every inference, {len(f['float_weighted'])} float "
                 f"weighted layers, {len(f['activation_qdq'])} activation Q/DQ"]
        if f["dq_on_constants"]:
            lines.append("  weights dequantized per run (slower than FP32 there): " + ", ".join(f["dq_on_constants"][:10]))
        if verbose:
            lines += [f"  float: {n}" for n in f["float_weighted"]] + [f"  Q/DQ: {n}" for n in f["activation_qdq"]]
        return lines


def check_qdq(model: str | os.PathLike | ir.Model, target) -> CheckQdqReport:
    """Check a QDQ model (path or onnx-ir Model) against `target`'s rules (name, .toml or Target)."""
    from edgepack import io
    from edgepack.quant.check_qdq import grouped, qdq_findings
    from edgepack.quant.origin import target_mismatch
    from edgepack.targets import load_target

    resolved = load_target(target)
    loaded = model if isinstance(model, ir.Model) else io.load(model)
    findings = qdq_findings(loaded, resolved)
    problems = [str(f) for f in findings]
    fusion = None
    if not resolved.is_tensorrt:
        from edgepack.quant.ort_fusion import fusion_report

        if isinstance(model, ir.Model):
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory(prefix="edgepack-check-") as folder:
                fusion = fusion_report(io.save(model, Path(folder) / "m.onnx")).to_json()
        else:
            fusion = fusion_report(model).to_json()
    return CheckQdqReport(ok=not problems, target=resolved.name, problems=problems,
                          rules=[{"rule": r, "count": c, "first": n} for r, c, n in grouped(findings)],
                          cause=target_mismatch(loaded, resolved) if findings else None, ort_fusion=fusion,
                          model=None if isinstance(model, ir.Model) else str(model))
