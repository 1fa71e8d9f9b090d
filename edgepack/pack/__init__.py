"""The .epk container: a model compressed for transfer (sparse weights, codebooks, entropy coding)."""
from edgepack.pack.format import pack, unpack, read_header

__all__ = ["pack", "unpack", "read_header"]
