// Unit tests of `dense-js`'s pure parts under Node.js, outside a component. Run them in this
// directory with `node --test strategy.test.mjs`. The host's `quarry:retrieval/*` interfaces
// resolve to an empty module here, so only code that makes no host call can run.

import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

register(
  "data:text/javascript," +
    encodeURIComponent(`export async function resolve(specifier, context, next) {
      return specifier.startsWith("quarry:retrieval/") ? { url: "data:text/javascript,", shortCircuit: true } : next(specifier, context);
    }`),
);
const { strategy } = await import("./strategy.js");
const { QUERY_PARAMS_KEY, hit, topK, normalizeMinMax } = await import("../../sdk/js/quarry_sdk.js");

test("describe names the strategy and its version", () => {
  const d = strategy.describe();
  assert.equal(d.name, "dense-js");
  assert.equal(d.version, "0.1.0");
  assert.deepEqual(d.models, ["text-model"]);
  assert.deepEqual(d.fields.map((f) => f.name), ["embedding"]);
});

test("the config schema requires the text model and declares the filter parameter", () => {
  const schema = JSON.parse(strategy.describe().configSchema);
  assert.deepEqual(schema.required, ["text-model"]);
  assert.equal(schema[QUERY_PARAMS_KEY].properties.filter.type, "object");
});

test("a query without text is invalid input", () => {
  const ctx = { collection: "docs", config: JSON.stringify({ "text-model": "m" }) };
  assert.throws(() => strategy.search(ctx, { image: new Uint8Array([1]), k: 3, params: "{}" }), (e) => e.payload.tag === "invalid-input");
});

test("topK and normalizeMinMax order and rescale hits", () => {
  const hits = [hit("c", 0.5), hit("a", 0.9), hit("b", 0.5)];
  assert.deepEqual(topK(hits, 2).map((h) => h.id), ["a", "b"]);
  assert.deepEqual(normalizeMinMax(hits).map((h) => h.score), [0, 1, 0]);
});
