"""edgepack fleet head | join HEAD --target T | status [--cluster ADDRESS]: a device fleet on Ray."""
from __future__ import annotations

from edgepack.cli import common

EPILOG = """\
examples:
  edgepack fleet head --address HEAD_IP                       (on the head, once: token authentication)
  edgepack fleet join HEAD_IP --target jetson-orin-nano         (on each device, with the token file)
  edgepack fleet status --cluster HEAD_IP:6379
  edgepack run model.recipe.toml --targets jetson-orin-nano,x86-cpu --cluster HEAD_IP:6379

Needs Ray: pip install 'edgepack[fleet]'. See docs/fleet.md."""


def register(subparsers):
    parser = common.add_command(subparsers, "fleet", "a fleet of devices on Ray: join a device, list the fleet",
                                description="Build, profile and check every target on its own device: devices join a "
                                "Ray cluster advertising\nthe targets they are; `edgepack run --cluster` sends each "
                                "target's steps to one of them.")
    parser.epilog = EPILOG
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    head = actions.add_parser("head", help="start the fleet's Ray head: token authentication, loopback unless told",
                              parents=[common.COMMON])
    head.add_argument("--address", default="127.0.0.1", metavar="IP",
                      help="the address to bind (default 127.0.0.1: this machine only; a LAN address makes "
                           "Ray listen on every interface, with a warning)")
    head.add_argument("--port", type=int, default=6379, help="the head's GCS port (default 6379)")
    head.add_argument("--token-file", metavar="PATH",
                      help="the token file (default $EDGEPACK_FLEET_TOKEN or ~/.config/edgepack/fleet.token; "
                           "created with mode 600)")
    head.add_argument("--rotate-token", action="store_true", help="write a new token before starting (old one revoked)")
    head.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    head.add_argument("--ray-arg", action="append", default=[], metavar="ARG",
                      help="extra argument for `ray start --head`")
    common.add_json(head)
    join = actions.add_parser("join", help="check this device is the target(s), then join the fleet advertising them",
                              parents=[common.COMMON])
    join.add_argument("head", metavar="HEAD", help="the head's address: HOST or HOST:PORT (default port 6379)")
    join.add_argument("-t", "--target", action="append", required=True, metavar="T",
                      help="a target this device is (repeat for several)")
    join.add_argument("--dry-run", action="store_true", help="check and print the `ray start` command, do not run it")
    join.add_argument("--force", action="store_true", help="advertise the target even if the device does not match")
    join.add_argument("--ray-arg", action="append", default=[], metavar="ARG",
                      help="extra argument for `ray start` (e.g. --ray-arg=--node-ip-address=10.0.0.5)")
    join.add_argument("--token-file", metavar="PATH",
                      help="the head's token file (default $EDGEPACK_FLEET_TOKEN or ~/.config/edgepack/fleet.token)")
    join.add_argument("--insecure", action="store_true",
                      help="join a head that does not require a token (anyone who reaches it can run code here)")
    common.add_json(join)
    status = actions.add_parser("status", help="the devices of the fleet: targets, versions, load",
                                parents=[common.COMMON])
    status.add_argument("--cluster", default="auto", metavar="ADDRESS",
                        help="HEAD:6379, or auto (the cluster on this machine; default)")
    status.add_argument("--timeout", type=float, default=30.0, metavar="S", help="wait this long for each device's answer")
    common.add_json(status)
    return parser


API = "edgepack.commands.fleet:fleet"  # the library function this command calls


def run(args) -> int:
    return common.run_api(args, API)
