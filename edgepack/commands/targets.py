"""`edgepack targets`: the hardware targets and what each supports."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgepack.commands.result import NOT_JSON, CommandResult, plain


@dataclass
class TargetsReport(CommandResult):
    """JSON: a list of target summaries (one when a target was named)."""

    targets: list = field(metadata=NOT_JSON)  # Target objects
    one: bool = field(default=False, metadata=NOT_JSON)

    def to_json(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [plain(t.summary()) for t in self.targets]

    def text(self) -> str:
        rows = [f"{'name':<20} {'backend':<12} {'precisions':<15} {'TensorRT':<9} {'JetPack':<8} {'DLA':>3} "
                f"{'2:4':>4}  activations"]
        for t in self.targets:
            rows.append(f"{t.name:<20} {t.backend:<12} {','.join(t.precisions):<15} {t.tensorrt_version or '-':<9} "
                        f"{t.jetpack or '-':<8} {t.dla_cores:>3} {'yes' if t.sparsity else 'no':>4}  "
                        f"{t.qdq.activations}")
        if self.one:
            rows += ["", self.targets[0].description, f"file: {self.targets[0].path}"]
            allows = self.targets[0].allows()
            if allows:
                rows.append("TensorRT allows: " + ", ".join(f"{k.replace('_', ' ')} {'yes' if v else 'no'}"
                                                             for k, v in allows.items()))
        return "\n".join(rows)


@dataclass
class HostTargetReport(CommandResult):
    """`targets --host`: the CPU target that fits this machine, and why."""

    target: str
    why: str
    cpu_flags: Any
    int8_saturates: Any

    def text(self) -> str:
        return f"{self.target}: {self.why} (int8 flags: {self.cpu_flags})"


def describe_targets(target=None, *, host: bool = False) -> TargetsReport | HostTargetReport:
    """All shipped targets, or the one named (a name or a .toml path); with `host`, the CPU
    target that fits this machine (edgepack.cpu, from /proc/cpuinfo's int8 flags)."""
    from edgepack.targets import list_targets, load_target

    if host:
        from edgepack.cpu import host_target, int8_dot_saturates, int8_summary

        name, why = host_target()
        return HostTargetReport(name, why, int8_summary(), int8_dot_saturates())
    if target is not None:
        return TargetsReport([load_target(target)], one=True)
    return TargetsReport(list_targets())
