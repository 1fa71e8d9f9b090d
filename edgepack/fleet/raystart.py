"""`python -m edgepack.fleet.raystart ARGS...`: Ray's own `ray` command, with a loopback address kept.

Ray's `ray start` replaces `--node-ip-address 127.0.0.1` with the machine's network address,
and its servers then listen on every interface (`*:PORT`). Ray binds to loopback only when the
node address stays 127.0.0.1; its switch for that (`ENABLE_RAY_CLUSTER`, meant for Windows and
macOS) also forbids joining. This launcher keeps a loopback address as given, and nothing else:
for any other address it is `ray` unchanged.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import ray._private.services as services

    resolve = services.resolve_ip_for_localhost

    def keep_loopback(host: str) -> str:
        return host if host in ("127.0.0.1", "localhost", "::1") else resolve(host)

    services.resolve_ip_for_localhost = keep_loopback
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *argv]
    try:
        ray_main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
