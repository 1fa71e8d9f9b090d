"""edgepack unpack model.epk -o OUT: the ONNX model inside an .epk container, checksums verified."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(subparsers, "unpack", "restore the ONNX model from an .epk container")
    common.add_model(parser, "the .epk file")
    common.add_output(parser, "the ONNX model to write")
    common.add_json(parser)
    return parser


API = "edgepack.commands.pack:unpack_model"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
