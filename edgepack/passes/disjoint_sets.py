"""Union-find: which keys have been joined, directly or through others."""
from __future__ import annotations

from collections.abc import Hashable


class DisjointSets:
    """`union(a, b)` joins the sets of a and b; `find(k)` names k's set (a key never joined is
    its own set). Path compression keeps finds near constant time."""

    def __init__(self):
        self.parent: dict[Hashable, Hashable] = {}

    def find(self, key: Hashable) -> Hashable:
        root = key
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while key != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb
