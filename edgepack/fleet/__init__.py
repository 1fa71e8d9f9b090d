"""A device fleet on Ray: each target's build -> profile -> check runs on a device of that kind.

The head starts with `edgepack fleet head` (token authentication, 127.0.0.1 unless --address); a
device joins with `edgepack fleet join HEAD --target NAME`, which first checks that the device is
that target and that the head requires the token (or by hand, `ray start --address HEAD:6379
--resources '{"edgepack-target:NAME": 1}'` with RAY_AUTH_MODE=token and the token file).
`edgepack run RECIPE --targets a,b --cluster ADDRESS` runs the host-independent steps where it is
started and sends each target's per-target steps, as one Ray task that needs the resource
`edgepack-target:<name>`, to a device advertising it; inputs travel through Ray's object store and
the results come back into DIR/<target>/.

Modules: head (`fleet head`: an authenticated head, loopback unless told), auth (the token file,
Ray's token authentication), raystart (Ray's CLI keeping a loopback address), cluster (connecting,
what the fleet offers), probe (is this device a target? joining), remote (the task that runs on a
device), untrusted (checking what a device sends back), dispatch (the run across devices), status.
Ray is optional (`pip install 'edgepack[fleet]'`); it is imported inside functions.
"""
from __future__ import annotations

RESOURCE_PREFIX = "edgepack-target:"
# One unit per device (advertised by `fleet join` and `--cluster auto`): a task holds it, so a
# device that is several targets still runs one edgepack task (one profile) at a time.
DEVICE_RESOURCE = "edgepack-device"
INSTALL_HINT = "install Ray: pip install 'edgepack[fleet]' (or pip install 'ray>=2.9')"


def resource(target: str) -> str:
    """The Ray resource a device of this target advertises."""
    return f"{RESOURCE_PREFIX}{target}"


def require_ray():
    """The ray module, or an EdgepackError saying how to install it."""
    try:
        import ray
    except ImportError:
        from edgepack.errors import EdgepackError

        raise EdgepackError("the device fleet needs Ray, which is not installed", hint=INSTALL_HINT) from None
    return ray
