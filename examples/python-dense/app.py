"""`dense-py`: the two-tower dense baseline (like plugins/dense), written in Python.

Items and queries are embedded by the host's `text-model` into one space; search is nearest
neighbours on the `embedding` field. Build:

    componentize-py -d ../../wit/v0.2 -w plugin componentize app -p . -p ../../sdk/python -o dense_py.wasm
"""

import quarry_sdk as q

FIELD = "embedding"


class Dense(q.Strategy):
    def describe(self):
        return (
            q.Descriptor("dense-py", "0.1.0")
            .description("Two-tower dense retrieval, in Python: one embedding per item, nearest neighbours at query time.")
            .model("text-model")
            .vector_field(FIELD)
            .config_schema({
                "type": "object",
                "properties": {"text-model": {"type": "string", "description": "model that embeds texts"}},
                "required": ["text-model"],
                "additionalProperties": False,
            })
            .query_param("filter", {"type": "object", "description": "keep only items whose metadata meets this filter"})
        )

    def ingest(self, ctx, items):
        texts = [item.text or "" for item in items]
        vectors = q.encoders.embed_texts(ctx.param("text-model"), texts)
        for item, vector in zip(items, vectors):
            ctx.collection.put_vector(item.id, FIELD, vector)

    def search(self, ctx, query):
        if not query.text:
            raise q.Invalid("dense-py answers text queries only")
        vector = q.encoders.embed_text(ctx.param("text-model"), query.text)
        params = q.query_params(query)
        return ctx.collection.nearest(FIELD, vector, query.k, params.get("filter"))


Strategy = q.export(Dense)
