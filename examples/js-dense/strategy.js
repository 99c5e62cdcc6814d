// `dense-js`: the two-tower dense baseline (like plugins/dense), written in JavaScript.
// Items and queries are embedded by the host's `text-model` into one space; search is nearest
// neighbours on the `embedding` field. Build (from the repository root):
//
//   vendor/node/node_modules/.bin/componentize-js --wit wit/v0.2 -n plugin \
//     -d http -d fetch-event -d stdio -d random -d clocks -o dense_js.wasm examples/js-dense/strategy.js

import { Strategy, Descriptor, Invalid, encoders, queryParams, exportStrategy } from "../../sdk/js/quarry_sdk.js";

const FIELD = "embedding";

class Dense extends Strategy {
  describe() {
    return new Descriptor("dense-js", "0.1.0")
      .description("Two-tower dense retrieval, in JavaScript: one embedding per item, nearest neighbours at query time.")
      .model("text-model")
      .vectorField(FIELD)
      .configSchema({
        type: "object",
        properties: { "text-model": { type: "string", description: "model that embeds texts" } },
        required: ["text-model"],
        additionalProperties: false,
      })
      .queryParam("filter", { type: "object", description: "keep only items whose metadata meets this filter" });
  }

  ingest(ctx, items) {
    const vectors = encoders.embedTexts(ctx.param("text-model"), items.map((item) => item.text ?? ""));
    items.forEach((item, n) => ctx.collection.putVector(item.id, FIELD, vectors[n]));
  }

  search(ctx, query) {
    if (!query.text) throw new Invalid("dense-js answers text queries only");
    const vector = encoders.embedText(ctx.param("text-model"), query.text);
    return ctx.collection.nearest(FIELD, vector, query.k, queryParams(query).filter);
  }
}

export const strategy = exportStrategy(Dense);
