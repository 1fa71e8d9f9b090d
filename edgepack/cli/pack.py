"""edgepack pack MODEL -o model.epk: a compressed container for moving a model to a device."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "pack", "compress a model into an .epk container (sparse weights, codebooks, zstd/xz)",
        description="Lossless by default: `edgepack unpack` gives back the same graph and byte-identical "
                    "weights. --codebook BITS shares each float layer's weights among 2**BITS values (lossy).")
    common.add_model(parser)
    common.add_output(parser, "the .epk file to write")
    parser.add_argument("--codebook", type=int, metavar="BITS", default=None,
                        help="lossy weight sharing: k-means codebook of 2**BITS entries per layer (e.g. 4..8)")
    parser.add_argument("--data", metavar="D", help="codebook mode: samples for the output error "
                        "(default: random inputs): " + common.DATA_HELP)
    common.add_json(parser)
    return parser


API = "edgepack.commands.pack:pack_model"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
