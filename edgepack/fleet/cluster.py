"""Connecting to a Ray cluster (or starting a local one), and what its devices offer."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from edgepack.errors import EdgepackError, first_line
from edgepack.fleet import DEVICE_RESOURCE, auth, RESOURCE_PREFIX, require_ray, resource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Connection:
    address: str        # what was asked: HOST:PORT, ray://..., auto
    started_local: bool  # `auto` with no running cluster: a one-node Ray started here (stopped on exit)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def keep_loopback() -> None:
    """Make Ray keep 127.0.0.1 as this machine's address. Ray replaces a loopback address with the
    machine's network address before connecting, which fails for a cluster bound to 127.0.0.1
    (a local or test cluster); its switch for that is a module constant (used on Windows/macOS)."""
    try:
        import ray._private.ray_constants as constants

        constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # another Ray layout: nothing to do
        pass


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in LOOPBACK


@contextlib.contextmanager
def connect(address: str) -> Iterator[Connection]:
    """Connect this process to the cluster at `address` for the block; `auto`: the cluster running
    on this machine (`edgepack fleet head`), else a local one-node cluster whose node advertises the
    targets this machine is (bound to 127.0.0.1, with token authentication: the token file of
    edgepack.fleet.auth, owner-only). A cluster that requires a token gets the fleet token; one
    that does not is used with a warning. A process already connected stays connected."""
    ray = require_ray()
    if ray.is_initialized():
        yield Connection(address, False)
        return
    options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    started = False
    if address == "auto" or _is_loopback(address):
        keep_loopback()
    saved = {k: os.environ.get(k) for k in AUTH_VARS}
    try:
        _authenticate(address)
        with _neutral_cwd():
            if address == "auto":
                try:
                    ray.init(address="auto", **options)
                except (ConnectionError, RuntimeError):
                    from edgepack.fleet.probe import device_facts, matching_targets

                    targets = matching_targets(device_facts())
                    logger.info("no running Ray cluster here: starting a local one offering %s", targets)
                    auth.use_token_here(auth.ensure_token())
                    ray.init(resources={DEVICE_RESOURCE: 1, **{resource(t): 1 for t in targets}},
                             _node_ip_address="127.0.0.1", **options)
                    started = True
            else:
                ray.init(address=address, **options)
    except EdgepackError:
        _restore(saved)
        raise
    except Exception as exc:
        _restore(saved)
        raise EdgepackError(f"cannot connect to the Ray cluster at {address}: {first_line(exc)}",
                            hint="start the head with `edgepack fleet head` and pass --cluster HEAD:6379 "
                                 "(with the head's token file here), or --cluster auto on the head") from None
    try:
        yield Connection(address, started)
    finally:
        ray.shutdown()
        _restore(saved)


AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _authenticate(address: str) -> None:
    """Present the fleet token where the cluster asks for one; warn where it does not."""
    if address == "auto":
        if auth.token_path().exists():
            auth.use_token_here()
        return
    if "://" in address:  # ray://: Ray Client; it reads the token from the environment as it is
        auth.use_token_here() if auth.token_path().exists() else None
        return
    if auth.cluster_requires_token(address):
        if not auth.use_token_here():
            auth.read_token()  # raises: no token here, with the hint
    else:
        logger.warning("the Ray cluster at %s has no authentication: anyone who can reach it can run code "
                       "on its devices and send results to this run (start heads with `edgepack fleet head`)",
                       address)


def _restore(saved: dict) -> None:
    """Put this process's Ray authentication settings back as they were before connect()."""
    if all(os.environ.get(k) == v for k, v in saved.items()):
        return
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


@contextlib.contextmanager
def _neutral_cwd() -> Iterator[None]:
    """ray.init from an empty folder: Ray puts the driver's working folder first on every worker's
    sys.path, so a folder called `edgepack` there would replace the installed package on the devices."""
    import tempfile

    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgepack-driver-") as empty:
        os.chdir(empty)
        try:
            yield
        finally:
            os.chdir(here)


def offered_targets() -> dict[str, list[str]]:
    """{target: [node ids]} of the alive nodes that advertise `edgepack-target:<target>`."""
    ray = require_ray()
    offered: dict[str, list[str]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for key in node.get("Resources", {}):
            if key.startswith(RESOURCE_PREFIX):
                offered.setdefault(key[len(RESOURCE_PREFIX):], []).append(node["NodeID"])
    return offered


def no_device_error(target: str, offered: dict[str, list[str]]) -> str:
    return f"no device in the fleet offers {target} (have: {', '.join(sorted(offered)) or 'none'})"


def exclusive_targets() -> set[str]:
    """Targets whose every alive device advertises DEVICE_RESOURCE: their tasks can hold it, so
    that a device that is several targets runs one task at a time. (Devices joined with a bare
    `ray start --resources '{"edgepack-target:T": 1}'` lack it; their targets do not ask for it.)"""
    ray = require_ray()
    with_unit: dict[str, bool] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        has = DEVICE_RESOURCE in node.get("Resources", {})
        for key in node.get("Resources", {}):
            if key.startswith(RESOURCE_PREFIX):
                name = key[len(RESOURCE_PREFIX):]
                with_unit[name] = with_unit.get(name, True) and has
    return {t for t, ok in with_unit.items() if ok}
