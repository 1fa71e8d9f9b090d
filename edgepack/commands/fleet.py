"""`edgepack fleet join|status`: a device joins the Ray fleet as the targets it is; the fleet's devices."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgepack.commands.result import NOT_JSON, CommandResult
from edgepack.errors import UsageError


@dataclass
class FleetReport(CommandResult):
    """JSON: `join`'s result (targets, facts, command, started) or the fleet's status (devices)."""

    data: dict = field(metadata=NOT_JSON)
    message: str = field(default="", metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        return self.data

    def text(self) -> str:
        return self.message


def fleet(action: str, head: str | None = None, *, target=(), dry_run: bool = False, force: bool = False,
          ray_arg=(), cluster: str = "auto", timeout: float = 30.0) -> FleetReport:
    """`join`: check this device really is each `target` (TensorRT version, GPU compute capability,
    CPU flags), then `ray start --address HEAD` advertising `edgepack-target:<name>` (`dry_run`: only
    say the command). `status`: the devices of the fleet at `cluster`, their targets, versions, load.
    The engine is edgepack.fleet (probe, status, dispatch)."""
    if action == "join":
        from edgepack.fleet.probe import join

        if not head or not target:
            raise UsageError("fleet join needs HEAD and --target", hint="edgepack fleet join HEAD --target T")
        result = join(head, list(target), dry_run=dry_run, force=force, extra=list(ray_arg))
        command = " ".join(a if " " not in a and '"' not in a else f"'{a}'" for a in result.command)
        text = (f"this device ({result.facts['hostname']}) is {', '.join(result.targets)}\n"
                + (f"would run: {command}" if not result.started else f"joined {result.head}: {command}\n{result.output}"))
        return FleetReport(result.to_json(), text.rstrip())
    if action == "status":
        from edgepack.fleet.status import fleet_status

        status = fleet_status(cluster, timeout_s=timeout)
        return FleetReport(status.to_json(), status.format())
    raise UsageError(f"fleet {action}: not an action", hint="use `fleet join` or `fleet status`")
