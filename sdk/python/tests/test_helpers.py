"""The Python SDK's helpers, run on CPython with componentize-py's generated bindings on the
path (`componentize-py -d wit/v0.2 -w plugin bindings OUT`): they must order and fuse hits as
the Rust SDK's `quarry_sdk::helpers` do (see sdk/src/helpers.rs's tests)."""

import math
import unittest

from wit_world.imports.types import Hit

from quarry_sdk.helpers import normalize_min_max, normalize_z, reciprocal_rank_fusion, sort_hits, top_k


def hits(*pairs):
    return [Hit(id, score, []) for id, score in pairs]


def ids(hs):
    return [h.id for h in hs]


class Helpers(unittest.TestCase):
    def test_top_k_is_best_first_ties_by_id_and_any_k_is_safe(self):
        hs = hits(("c", 0.5), ("a", 0.9), ("b", 0.5), ("d", 0.1))
        self.assertEqual(ids(top_k(hs, 3)), ["a", "b", "c"])
        self.assertEqual(ids(top_k(hs, 2**31 - 1)), ["a", "b", "c", "d"])
        self.assertEqual(top_k(hs, 0), [])

    def test_sort_puts_nan_last(self):
        hs = hits(("x", math.nan), ("y", -1.0), ("z", 2.0))
        sort_hits(hs)
        self.assertEqual(ids(hs), ["z", "y", "x"])

    def test_normalisations(self):
        hs = hits(("a", 2.0), ("b", 4.0), ("c", 6.0))
        normalize_min_max(hs)
        self.assertEqual([h.score for h in hs], [0.0, 0.5, 1.0])
        same = hits(("a", 3.0), ("b", 3.0))
        normalize_min_max(same)
        self.assertEqual([h.score for h in same], [1.0, 1.0])
        hs = hits(("a", 1.0), ("b", 3.0))
        normalize_z(hs)
        self.assertEqual([h.score for h in hs], [-1.0, 1.0])

    def test_rrf_sums_reciprocal_ranks_and_breaks_ties_by_the_lists_not_ids(self):
        fused = reciprocal_rank_fusion([hits(("b", 0.9), ("a", 0.8)), hits(("a", 0.9), ("b", 0.8))], 60.0)
        # Equal fused scores: `b` ranks first in the first list, so it goes first although `a` < `b`.
        self.assertEqual(ids(fused), ["b", "a"])
        self.assertAlmostEqual(fused[0].score, 1 / 61 + 1 / 62)
        fused = reciprocal_rank_fusion([hits(("z", 1.0)), hits(("y", 1.0), ("z", 0.5))], 60.0)
        self.assertEqual(ids(fused), ["z", "y"])
        self.assertAlmostEqual(fused[0].score, 1 / 61 + 1 / 62)


if __name__ == "__main__":
    unittest.main()
