"""`edgepack fleet head|join|status`: the head starts authenticated; a device joins the Ray fleet as the targets it is; the fleet's devices."""
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
          ray_arg=(), cluster: str = "auto", timeout: float = 30.0, address: str = "127.0.0.1",
          port: int = 6379, token_file: str | None = None, rotate_token: bool = False,
          insecure: bool = False) -> FleetReport:
    """`head`: start the fleet's Ray head on `address`:`port` (127.0.0.1 by default; a LAN address
    with a warning) with token authentication, the token in `token_file` (default
    ~/.config/edgepack/fleet.token, mode 0600; `rotate_token`: a new one). `join`: check this
    device really is each `target` (TensorRT version, GPU compute capability, CPU flags) and that
    the head requires the token (`insecure`: join one that does not), then `ray start --address
    HEAD` advertising `edgepack-target:<name>` (`dry_run`: only say the command). `status`: the
    devices of the fleet at `cluster`, their targets, versions, load.
    The engine is edgepack.fleet (head, probe, status, dispatch)."""
    if action == "head":
        from edgepack.fleet.head import start_head

        result = start_head(address, port=port, token_file=token_file, rotate_token=rotate_token,
                            dry_run=dry_run, extra=list(ray_arg))
        command = _shell(result.command)
        lines = []  # the warnings went to stderr (logging)
        lines.append(f"would run: {command}" if not result.started else
                     f"head started at {result.address}:{result.port} (token authentication; token in "
                     f"{result.token_file}, mode 600)\njoin devices with: edgepack fleet join "
                     f"{result.address}:{result.port} --target T  (with a copy of the token file)")
        return FleetReport(result.to_json(), "\n".join(lines))
    if action == "join":
        from edgepack.fleet.probe import join

        if not head or not target:
            raise UsageError("fleet join needs HEAD and --target", hint="edgepack fleet join HEAD --target T")
        result = join(head, list(target), dry_run=dry_run, force=force, extra=list(ray_arg),
                      token_file=token_file, insecure=insecure)
        command = _shell(result.command)
        text = (f"this device ({result.facts['hostname']}) is {', '.join(result.targets)}\n"
                + (f"would run: {command}" if not result.started else f"joined {result.head}: {command}\n{result.output}"))
        return FleetReport(result.to_json(), text.rstrip())
    if action == "status":
        from edgepack.fleet.status import fleet_status

        status = fleet_status(cluster, timeout_s=timeout)
        return FleetReport(status.to_json(), status.format())
    raise UsageError(f"fleet {action}: not an action", hint="use `fleet head`, `fleet join` or `fleet status`")


def _shell(command: list[str]) -> str:
    return " ".join(a if " " not in a and '"' not in a else f"'{a}'" for a in command)
