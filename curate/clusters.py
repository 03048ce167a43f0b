"""Connected components of a graph given as an edge list: the union-find step of every dedup
method (exact, MinHash, semantic), vectorized so that a million nodes cost NumPy passes, not a
Python loop per edge.

The algorithm is hook-and-jump label propagation (Shiloach-Vishkin style): each node's label
starts as its own index; every round hooks the root of the larger label under the smaller label
of each edge (`np.minimum.at`), then pointer-jumps (`labels = labels[labels]`) until each node
points at its root, and drops the edges whose ends now share a root. Hooking always points a
larger root at a smaller one, so the smallest index of a component is never hooked away and ends
as the root: a node's label is the smallest node index in its component, which makes the output
independent of edge order. Rounds needed grow with the logarithm of a component's diameter in
practice; tests/test_dedup.py checks the result against scipy's connected_components.
"""

from __future__ import annotations

import numpy as np


def connected_components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """For nodes 0..n-1 and undirected edges (i[k], j[k]): an int64 array whose entry x is the
    smallest node index in x's component (a node without edges is its own label)."""
    labels = np.arange(n, dtype=np.int64)
    src = np.asarray(i, dtype=np.int64)
    dst = np.asarray(j, dtype=np.int64)
    if src.shape != dst.shape:
        raise ValueError(f"edge ends differ in length: {src.shape[0]} and {dst.shape[0]}")
    if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
        raise ValueError(f"an edge names a node outside 0..{n - 1}")
    while src.size:
        root_a = labels[src]
        root_b = labels[dst]
        open_edges = root_a != root_b
        if not open_edges.any():
            break
        root_a, root_b = root_a[open_edges], root_b[open_edges]
        src, dst = src[open_edges], dst[open_edges]
        low = np.minimum(root_a, root_b)
        # Hook each root under the smallest root it is joined to in this round. Roots hold
        # their own label, so writing at a root index re-parents the whole tree under it.
        np.minimum.at(labels, np.maximum(root_a, root_b), low)
        _compress(labels)
    return labels


def _compress(labels: np.ndarray) -> None:
    """Pointer-jump in place until every node holds its root."""
    while True:
        parents = labels[labels]
        if np.array_equal(parents, labels):
            return
        labels[:] = parents


def component_sizes(labels: np.ndarray) -> np.ndarray:
    """The size of each node's component (labels as returned by `connected_components`)."""
    counts = np.bincount(labels, minlength=labels.shape[0])
    return counts[labels]
