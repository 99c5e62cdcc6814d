"""Pure helpers over hits, the same as the Rust SDK's `quarry_sdk::helpers`."""

import heapq
import math
from typing import Iterable, List

from wit_world.imports.types import Hit


def _key(hit: Hit):
    # Best first: higher score, NaN last, then id.
    s = hit.score
    return (1 if math.isnan(s) else 0, -s if not math.isnan(s) else 0.0, hit.id)


def sort_hits(hits: List[Hit]) -> None:
    """Sort hits best first (NaN scores last), ties by id, in place."""
    hits.sort(key=_key)


def top_k(hits: Iterable[Hit], k: int) -> List[Hit]:
    """The `k` best hits, best first, ties by id; any `k` is safe."""
    if k <= 0:
        return []
    return heapq.nsmallest(k, hits, key=_key)


def normalize_min_max(hits: List[Hit]) -> None:
    """Rescale scores to [0, 1] in place; all-equal scores become 1."""
    finite = [h.score for h in hits if math.isfinite(h.score)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    for h in hits:
        h.score = (h.score - lo) / (hi - lo) if hi > lo else 1.0


def normalize_z(hits: List[Hit]) -> None:
    """Standardise scores to zero mean, unit variance in place; all-equal scores become 0."""
    if not hits:
        return
    n = len(hits)
    mean = sum(h.score for h in hits) / n
    std = math.sqrt(sum((h.score - mean) ** 2 for h in hits) / n)
    for h in hits:
        h.score = (h.score - mean) / std if std > 0 else 0.0


def reciprocal_rank_fusion(lists: List[List[Hit]], c: float = 60.0) -> List[Hit]:
    """Each list adds 1 / (c + rank) (rank from 1) to an id's score; best first. Equal fused
    scores are ordered by the lists (first list first), never by id alone."""
    absent = float("inf")
    fused = {}
    for l, hits in enumerate(lists):
        for rank, h in enumerate(hits):
            score, ranks = fused.setdefault(h.id, [0.0, [absent] * len(lists)])
            fused[h.id][0] = score + 1.0 / (c + rank + 1.0)
            ranks[l] = min(ranks[l], rank)
    order = sorted(fused.items(), key=lambda kv: (-kv[1][0], kv[1][1], kv[0]))
    return [Hit(id, score, []) for id, (score, _) in order]
