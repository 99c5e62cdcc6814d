"""Unit tests of `dense-py`'s pure parts under CPython, outside a component. componentize-py's
bindings of the world stand in for the host's, so only code that makes no host call can run:

    componentize-py -d ../../wit/v0.2 -w plugin bindings bindings
    PYTHONPATH=bindings:.:../../sdk/python python3 -m unittest -v test_app
"""

import json
import unittest

from componentize_py_types import Err
from wit_world.imports.types import Context, Error_InvalidInput, Query

import app
import quarry_sdk as q


class Describe(unittest.TestCase):
    def test_names_the_strategy_and_its_version(self):
        d = app.Strategy().describe()
        self.assertEqual((d.name, d.version), ("dense-py", "0.1.0"))
        self.assertEqual(d.models, ["text-model"])
        self.assertEqual([f.name for f in d.fields], ["embedding"])

    def test_the_config_schema_requires_the_text_model_and_declares_the_filter_parameter(self):
        schema = json.loads(app.Strategy().describe().config_schema)
        self.assertEqual(schema["required"], ["text-model"])
        self.assertEqual(schema[q.QUERY_PARAMS_KEY]["properties"]["filter"]["type"], "object")


class Search(unittest.TestCase):
    def test_a_query_without_text_is_invalid_input(self):
        ctx = Context("docs", json.dumps({"text-model": "m"}))
        with self.assertRaises(Err) as raised:
            app.Strategy().search(ctx, Query(None, b"\x89PNG", 3, "{}"))
        self.assertIsInstance(raised.exception.value, Error_InvalidInput)


class Helpers(unittest.TestCase):
    def test_top_k_and_normalize_min_max_order_and_rescale_hits(self):
        hits = [q.hit("c", 0.5), q.hit("a", 0.9), q.hit("b", 0.5)]
        self.assertEqual([h.id for h in q.top_k(hits, 2)], ["a", "b"])
        q.normalize_min_max(hits)
        self.assertEqual([h.score for h in hits], [0.0, 1.0, 0.0])


if __name__ == "__main__":
    unittest.main()
