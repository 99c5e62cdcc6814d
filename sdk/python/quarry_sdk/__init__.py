"""Write Quarry retrieval strategies in Python, built into WebAssembly components with
componentize-py 0.25.1 against the `quarry:retrieval@0.2.0` world (`wit/v0.2`, world `plugin`).

A strategy subclasses :class:`Strategy` and is exported from the app module under the name
``Strategy`` (componentize-py looks for that name)::

    import quarry_sdk as q

    class Dense(q.Strategy):
        def describe(self):
            return q.Descriptor("my-dense", "0.1.0").model("model").vector_field("embedding")

        def ingest(self, ctx, items):
            vectors = q.encoders.embed_texts(ctx.param("model"), [i.text or "" for i in items])
            for item, vector in zip(items, vectors):
                ctx.collection.put_vector(item.id, "embedding", vector)

        def search(self, ctx, query):
            vector = q.encoders.embed_text(ctx.param("model"), query.text or "")
            return ctx.collection.nearest("embedding", vector, query.k)

    Strategy = q.export(Dense)

Build it with::

    componentize-py -d wit/v0.2 -w plugin componentize app -p . -p sdk/python -o my_dense.wasm

It mirrors the Rust SDK (`quarry-sdk`): :class:`Descriptor`, :class:`Context`,
:class:`Collection`, the host's :mod:`encoders`, ``rankers``, ``strategies`` and ``log``, and
the helpers ``top_k``, ``sort_hits``, ``normalize_min_max``, ``normalize_z`` and
``reciprocal_rank_fusion``. Errors are exceptions: raise :class:`Invalid`, :class:`Unsupported`
(and so on) to answer the host with that error; any other exception answers ``internal`` with
its message. Errors the host answers arrive as :class:`QuarryError` subclasses too.

The host calls ``describe`` once at ``quarry plugin add``, ``ingest`` per batch, ``build`` only
when asked (``quarry build``), ``search`` per query and ``rerank`` as a cascade's second stage.
Each call gets a fresh instance: keep no state between calls.
"""

import json
import traceback
from typing import Any, Iterable, Iterator, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports as _exports
from wit_world.exports import strategy as _strategy
from wit_world.imports import collections as _collections
from wit_world.imports import encoders as _encoders
from wit_world.imports import log as _log
from wit_world.imports import rankers as _rankers
from wit_world.imports import strategies as _strategies
from wit_world.imports import types as _types

from .helpers import normalize_min_max, normalize_z, reciprocal_rank_fusion, sort_hits, top_k

#: The WIT package this SDK builds against.
CONTRACT = "quarry:retrieval@0.2.0"
#: The config-schema key under which a descriptor's query parameters travel to the host.
QUERY_PARAMS_KEY = "x-quarry-query-params"

Hit = _types.Hit
Feature = _types.Feature
Item = _types.Item
Query = _types.Query
TokenSet = _types.TokenSet
FieldKind = _types.FieldKind
Metric = _types.Metric
FieldValue = _collections.FieldValue
VectorValue = _collections.FieldValue_Vector
TokensValue = _collections.FieldValue_Tokens
CodesValue = _collections.FieldValue_Codes
BlobValue = _collections.FieldValue_Blob
StoredItem = _collections.StoredItem
Page = _collections.Page

__all__ = [
    "CONTRACT", "Strategy", "Descriptor", "Context", "Collection", "export", "hit",
    "QuarryError", "Unsupported", "Denied", "Invalid", "NotFound", "ModelError", "Internal",
    "encoders", "rankers", "strategies", "log", "query_params",
    "top_k", "sort_hits", "normalize_min_max", "normalize_z", "reciprocal_rank_fusion",
    "Hit", "Feature", "Item", "Query", "TokenSet", "FieldKind", "Metric",
]


# --- errors -------------------------------------------------------------------------------------

class QuarryError(Exception):
    """An error of the contract's `error` variant; raise a subclass to answer the host with it."""
    _wire = _types.Error_Internal

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_wire(self):
        return self._wire(self.message)


class Unsupported(QuarryError):
    """The capability is not backed (the payload names it)."""
    _wire = _types.Error_Unsupported


class Denied(QuarryError):
    """A model, collection or strategy was not granted to the route."""
    _wire = _types.Error_Denied


class Invalid(QuarryError):
    """An argument or config value was malformed or over a limit."""
    _wire = _types.Error_InvalidInput


class NotFound(QuarryError):
    """A named item, field, model or collection does not exist."""
    _wire = _types.Error_NotFound


class ModelError(QuarryError):
    """Inference failed inside the host's model runtime."""
    _wire = _types.Error_Model


class Internal(QuarryError):
    """Anything else."""
    _wire = _types.Error_Internal


_FROM_WIRE = {cls._wire: cls for cls in (Unsupported, Denied, Invalid, NotFound, ModelError, Internal)}


def _host(call, *args):
    """Call a host import, turning its `Err(error)` into the matching :class:`QuarryError`."""
    try:
        return call(*args)
    except Err as e:
        raise _FROM_WIRE.get(type(e.value), Internal)(getattr(e.value, "value", str(e.value))) from None


# --- descriptor ---------------------------------------------------------------------------------

class Descriptor:
    """What a strategy is and what it needs; returned by :meth:`Strategy.describe`.

    ``version`` is where the strategy's version is written: a host refuses different bytes
    under a ``name@version`` it already holds, so bump it for every change you ship.
    """

    def __init__(self, name: str, version: str):
        self.name = name
        self.version = version
        self._description = ""
        self.models: List[str] = []
        self.fields: List[_strategy.FieldSpec] = []
        self._config_schema: Any = {"type": "object"}
        self._reranks = False
        self._query_params: Optional[dict] = None

    def description(self, text: str) -> "Descriptor":
        """Set the one-line description shown by `quarry plugin list`."""
        self._description = text
        return self

    def model(self, role: str) -> "Descriptor":
        """Declare a model role, read from the config key of the same name."""
        self.models.append(role)
        return self

    def vector_field(self, name: str, metric: Metric = Metric.INNER_PRODUCT) -> "Descriptor":
        """Declare a dense vector field compared by `metric` (the inner product by default)."""
        self.fields.append(_strategy.FieldSpec(name, FieldKind.VECTOR, metric))
        return self

    def field(self, name: str, kind: FieldKind) -> "Descriptor":
        """Declare a field of any kind."""
        self.fields.append(_strategy.FieldSpec(name, kind, None))
        return self

    def config_schema(self, schema: dict) -> "Descriptor":
        """Set the JSON Schema of the route config; hosts check routes against it at `route set`."""
        self._config_schema = schema
        return self

    def reranks(self) -> "Descriptor":
        """Say that :meth:`Strategy.rerank` is implemented."""
        self._reranks = True
        return self

    def query_param(self, name: str, schema: dict) -> "Descriptor":
        """Declare a query parameter the strategy reads; hosts refuse undeclared ones by name."""
        if self._query_params is None:
            self._query_params = {"type": "object", "properties": {}}
        self._query_params.setdefault("properties", {})[name] = schema
        return self

    def wire_schema(self) -> dict:
        """The config schema as hosts receive it (query parameters under `x-quarry-query-params`)."""
        schema = dict(self._config_schema)
        if self._query_params is not None:
            schema[QUERY_PARAMS_KEY] = self._query_params
        return schema

    def _to_wire(self) -> _strategy.Descriptor:
        return _strategy.Descriptor(
            self.name, self.version, self._description, list(self.models), list(self.fields),
            json.dumps(self.wire_schema()), self._reranks,
        )


# --- context and collection ---------------------------------------------------------------------

_MISSING = object()


class Collection:
    """A collection the call may read and write; every method is a host call."""

    def __init__(self, name: str):
        self.name = name

    def put_vector(self, id: str, field: str, vector: List[float]) -> None:
        """Store `vector` as vector field `field` of item `id` (lands when the call succeeds)."""
        _host(_collections.put_field, self.name, id, field, VectorValue(list(vector)))

    def put_field(self, id: str, field: str, value: FieldValue) -> None:
        """Store any field value (``VectorValue``, ``TokensValue``, ``CodesValue``, ``BlobValue``)."""
        _host(_collections.put_field, self.name, id, field, value)

    def get_field(self, id: str, field: str) -> Optional[FieldValue]:
        """Read field `field` of item `id`, or None when unset."""
        return _host(_collections.get_field, self.name, id, field)

    def nearest(self, field: str, query: List[float], k: int, filter: Optional[dict] = None) -> List[Hit]:
        """The `k` items nearest `query` in vector field `field`, best first; `filter` is a
        metadata predicate object such as ``{"lang": "en"}``."""
        f = None if filter is None else json.dumps(filter)
        return _host(_collections.nearest, self.name, field, list(query), k, f)

    def next_codes(self, field: str, prefixes: List[List[int]]) -> List[List[int]]:
        """For each prefix, the codes that follow it in some item's code field."""
        return _host(_collections.next_codes, self.name, field, prefixes)

    def items_with_codes(self, field: str, codes: List[int]) -> List[str]:
        """The items whose code field holds exactly `codes`."""
        return _host(_collections.items_with_codes, self.name, field, codes)

    def put_blob(self, name: str, data: bytes) -> None:
        """Store a collection-level artifact (names like fields: a-z, A-Z, 0-9, `-`, `_`, `.`)."""
        _host(_collections.put_blob, self.name, name, bytes(data))

    def get_blob(self, name: str) -> Optional[bytes]:
        """Read a collection-level artifact, or None."""
        return _host(_collections.get_blob, self.name, name)

    def scan(self, field: str, after: Optional[str] = None, limit: int = 256) -> Page:
        """One page of field `field`'s values in id order, after id `after`."""
        return _host(_collections.scan, self.name, field, after, limit)

    def scan_all(self, field: str, page_size: int = 256) -> Iterator[Tuple[str, FieldValue]]:
        """Every ``(id, value)`` of field `field`, in id order, page by page."""
        after = None
        while True:
            page = self.scan(field, after, page_size)
            for entry in page.entries:
                yield entry.id, entry.value
            if page.next is None:
                return
            after = page.next

    def get_items(self, ids: List[str]) -> List[Optional[StoredItem]]:
        """Stored items by id, in order; None where there is no such item."""
        return _host(_collections.get_items, self.name, list(ids))

    def count(self) -> int:
        """How many items the collection stores."""
        return _host(_collections.count, self.name)


class Context:
    """The collection and route config a call runs under."""

    def __init__(self, raw: _types.Context):
        self.collection = Collection(raw.collection)
        try:
            self.config = json.loads(raw.config) if raw.config else {}
        except ValueError as e:
            raise Invalid(f"the route config is not JSON: {e}") from None
        if not isinstance(self.config, dict):
            raise Invalid("the route config is not a JSON object")

    def param(self, key: str, default: Any = _MISSING) -> Any:
        """Config value `key`; without a default, a missing key is an :class:`Invalid` error."""
        if key in self.config:
            return self.config[key]
        if default is _MISSING:
            raise Invalid(f"the route config has no `{key}`")
        return default


def query_params(query: Query) -> dict:
    """The query's parameters as a dict (empty when none)."""
    if not query.params:
        return {}
    try:
        params = json.loads(query.params)
    except ValueError as e:
        raise Invalid(f"query parameters are not JSON: {e}") from None
    if not isinstance(params, dict):
        raise Invalid("query parameters are not a JSON object")
    return params


def hit(id: str, score: float, **features: float) -> Hit:
    """A hit for item `id`, with named parts of its score as keyword arguments."""
    return Hit(id, float(score), [Feature(k, float(v)) for k, v in features.items()])


# --- host services ------------------------------------------------------------------------------

class encoders:
    """Encoders owned by the host; `model` names a model granted to the route."""

    @staticmethod
    def embed_texts(model: str, texts: List[str]) -> List[List[float]]:
        """One pooled, normalised embedding per text."""
        return _host(_encoders.embed_texts, model, list(texts))

    @staticmethod
    def embed_text(model: str, text: str) -> List[float]:
        """The embedding of one text."""
        vectors = encoders.embed_texts(model, [text])
        if not vectors:
            raise Internal("the host returned no embedding")
        return vectors[0]

    @staticmethod
    def embed_images(model: str, images: List[bytes]) -> List[List[float]]:
        """One pooled, normalised embedding per encoded image (PNG, JPEG)."""
        return _host(_encoders.embed_images, model, [bytes(i) for i in images])

    @staticmethod
    def text_tokens(model: str, texts: List[str]) -> List[TokenSet]:
        """Per-token features of each text."""
        return _host(_encoders.text_tokens, model, list(texts))

    @staticmethod
    def image_tokens(model: str, images: List[bytes]) -> List[TokenSet]:
        """Per-patch features of each image."""
        return _host(_encoders.image_tokens, model, [bytes(i) for i in images])

    @staticmethod
    def project(model: str, vectors: List[List[float]]) -> List[List[float]]:
        """Run a small vector-to-vector model."""
        return _host(_encoders.project, model, vectors)


class rankers:
    """Scoring of candidates held in the host."""

    @staticmethod
    def late_interaction(collection: str, field: str, query: TokenSet, candidates: List[str]) -> List[Hit]:
        """MaxSim of `query` against each candidate's stored tokens, best first."""
        return _host(_rankers.late_interaction, collection, field, query, list(candidates))

    @staticmethod
    def cross_score(model: str, query: str, texts: List[str]) -> List[float]:
        """Cross-encoder relevance of each text to `query`, in input order."""
        return _host(_rankers.cross_score, model, query, list(texts))


class strategies:
    """Other strategies, called through the host (the route must grant them)."""

    @staticmethod
    def search(strategy: str, collection: str, query: Query) -> List[Hit]:
        """Search `collection` with `name@version`."""
        return _host(_strategies.search, strategy, collection, query)


class log:
    """Logging and counters, attributed by the host to the plugin and tenant."""

    @staticmethod
    def debug(message: str) -> None:
        _log.log(_log.Level.DEBUG, message)

    @staticmethod
    def info(message: str) -> None:
        _log.log(_log.Level.INFO, message)

    @staticmethod
    def warn(message: str) -> None:
        _log.log(_log.Level.WARN, message)

    @staticmethod
    def error(message: str) -> None:
        _log.log(_log.Level.ERROR, message)

    @staticmethod
    def counter(name: str, value: float) -> None:
        _log.counter(name, float(value))


# --- the strategy and its export ----------------------------------------------------------------

class Strategy:
    """Subclass and implement `describe`, `ingest` and `search` (`build` and `rerank` optional)."""

    def describe(self) -> Descriptor:
        raise NotImplementedError

    def ingest(self, ctx: Context, items: List[Item]) -> None:
        raise NotImplementedError

    def build(self, ctx: Context) -> None:
        """Collection-level artifacts after ingest; runs only when asked. Does nothing by default."""

    def search(self, ctx: Context, query: Query) -> List[Hit]:
        raise NotImplementedError

    def rerank(self, ctx: Context, query: Query, candidates: List[str]) -> List[Hit]:
        """Answers `unsupported` unless implemented (then declare it with `Descriptor.reranks`)."""
        raise Unsupported(f"{type(self).__name__} does not rerank")


def _guard(f, *args):
    """Run a strategy method, turning exceptions into the contract's errors."""
    try:
        return f(*args)
    except Err:
        raise
    except QuarryError as e:
        raise Err(e.to_wire()) from None
    except Exception as e:  # noqa: BLE001 - any failure answers `internal`, with its traceback
        raise Err(_types.Error_Internal(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")) from None


def export(cls) -> type:
    """The component's export class for strategy class `cls`; bind it to the name ``Strategy``
    in the app module (``Strategy = quarry_sdk.export(MyStrategy)``)."""
    impl = cls()

    class Exported(_exports.Strategy):
        def describe(self) -> _strategy.Descriptor:
            return impl.describe()._to_wire()

        def ingest(self, ctx, items):
            _guard(lambda: impl.ingest(Context(ctx), items))

        def build(self, ctx):
            _guard(lambda: impl.build(Context(ctx)))

        def search(self, ctx, query):
            return _guard(lambda: list(impl.search(Context(ctx), query)))

        def rerank(self, ctx, query, candidates):
            return _guard(lambda: list(impl.rerank(Context(ctx), query, candidates)))

    Exported.__name__ = Exported.__qualname__ = "Strategy"
    return Exported
