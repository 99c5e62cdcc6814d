// Write Quarry retrieval strategies in JavaScript, built into WebAssembly components with
// ComponentizeJS 0.23.0 against the `quarry:retrieval@0.2.0` world (`wit/v0.2`, world `plugin`).
//
// A strategy is a class extending `Strategy`; the module exports `strategy = exportStrategy(Cls)`:
//
//   import { Strategy, Descriptor, encoders, exportStrategy } from "./quarry_sdk.js";
//   class Dense extends Strategy {
//     describe() { return new Descriptor("my-dense", "0.1.0").model("model").vectorField("embedding"); }
//     ingest(ctx, items) {
//       const vectors = encoders.embedTexts(ctx.param("model"), items.map((i) => i.text ?? ""));
//       items.forEach((item, n) => ctx.collection.putVector(item.id, "embedding", vectors[n]));
//     }
//     search(ctx, query) {
//       return ctx.collection.nearest("embedding", encoders.embedText(ctx.param("model"), query.text ?? ""), query.k);
//     }
//   }
//   export const strategy = exportStrategy(Dense);
//
// Build it (the flags drop the WASI features the host does not grant, `wasi:http` among them):
//
//   componentize-js --wit wit/v0.2 -n plugin -d http -d fetch-event -d stdio -d random -d clocks -o my_dense.wasm strategy.js
//
// It mirrors the Rust SDK (`quarry-sdk`): Descriptor, Context, Collection, the host's encoders,
// rankers, strategies and log, and the helpers topK, sortHits, normalizeMinMax, normalizeZ and
// reciprocalRankFusion. Errors are exceptions: throw `new Invalid(msg)` (or Unsupported, ...) to
// answer the host with that error; anything else thrown answers `internal` with its message.
// Errors the host answers arrive as QuarryError subclasses too. Each call gets a fresh instance.

import * as hostEncoders from "quarry:retrieval/encoders@0.2.0";
import * as hostRankers from "quarry:retrieval/rankers@0.2.0";
import * as hostCollections from "quarry:retrieval/collections@0.2.0";
import * as hostStrategies from "quarry:retrieval/strategies@0.2.0";
import * as hostLog from "quarry:retrieval/log@0.2.0";

/** The WIT package this SDK builds against. */
export const CONTRACT = "quarry:retrieval@0.2.0";
/** The config-schema key under which a descriptor's query parameters travel to the host. */
export const QUERY_PARAMS_KEY = "x-quarry-query-params";

// --- errors ---------------------------------------------------------------------------------------

/** An error of the contract's `error` variant; throw a subclass to answer the host with it. */
export class QuarryError extends Error {
  constructor(message, tag = "internal") {
    super(message);
    this.tag = tag;
    // What ComponentizeJS lowers into the export's `result` error (it reads an own `payload`).
    this.payload = { tag, val: String(message) };
  }
}
export class Unsupported extends QuarryError { constructor(m) { super(m, "unsupported"); } }
export class Denied extends QuarryError { constructor(m) { super(m, "denied"); } }
export class Invalid extends QuarryError { constructor(m) { super(m, "invalid-input"); } }
export class NotFound extends QuarryError { constructor(m) { super(m, "not-found"); } }
export class ModelError extends QuarryError { constructor(m) { super(m, "model"); } }
export class Internal extends QuarryError { constructor(m) { super(m, "internal"); } }

const BY_TAG = {
  unsupported: Unsupported, denied: Denied, "invalid-input": Invalid,
  "not-found": NotFound, model: ModelError, internal: Internal,
};

/** Call a host import, turning its error into the matching QuarryError. */
function host(f, ...args) {
  try {
    return f(...args);
  } catch (e) {
    const err = e && typeof e === "object" && "payload" in e ? e.payload : e;
    if (err && typeof err === "object" && err.tag in BY_TAG) throw new BY_TAG[err.tag](String(err.val));
    throw e;
  }
}

// --- descriptor -----------------------------------------------------------------------------------

/**
 * What a strategy is and what it needs. `version` is where the version is written: a host
 * refuses different bytes under a `name@version` it already holds, so bump it for every change.
 */
export class Descriptor {
  constructor(name, version) {
    this.name = name;
    this.version = version;
    this._description = "";
    this.models = [];
    this.fields = [];
    this._configSchema = { type: "object" };
    this._reranks = false;
    this._queryParams = undefined;
  }
  /** The one-line description shown by `quarry plugin list`. */
  description(text) { this._description = text; return this; }
  /** Declare a model role, read from the config key of the same name. */
  model(role) { this.models.push(role); return this; }
  /** Declare a dense vector field: `metric` is "inner-product" (default), "cosine" or "l2". */
  vectorField(name, metric = "inner-product") { this.fields.push({ name, kind: "vector", metric }); return this; }
  /** Declare a field of any kind: "vector", "tokens", "codes" or "blob". */
  field(name, kind) { this.fields.push({ name, kind, metric: undefined }); return this; }
  /** The JSON Schema of the route config; hosts check routes against it at `route set`. */
  configSchema(schema) { this._configSchema = schema; return this; }
  /** Say that `rerank` is implemented. */
  reranks() { this._reranks = true; return this; }
  /** Declare a query parameter the strategy reads; hosts refuse undeclared ones by name. */
  queryParam(name, schema) {
    this._queryParams ??= { type: "object", properties: {} };
    this._queryParams.properties[name] = schema;
    return this;
  }
  /** The config schema as hosts receive it (query parameters under `x-quarry-query-params`). */
  wireSchema() {
    const schema = { ...this._configSchema };
    if (this._queryParams !== undefined) schema[QUERY_PARAMS_KEY] = this._queryParams;
    return schema;
  }
  toWire() {
    return {
      name: this.name, version: this.version, description: this._description,
      models: [...this.models], fields: [...this.fields],
      configSchema: JSON.stringify(this.wireSchema()), reranks: this._reranks,
    };
  }
}

// --- context and collection -----------------------------------------------------------------------

/** A collection the call may read and write; every method is a host call. */
export class Collection {
  constructor(name) { this.name = name; }
  /** Store `vector` as vector field `field` of item `id` (lands when the call succeeds). */
  putVector(id, field, vector) { host(hostCollections.putField, this.name, id, field, { tag: "vector", val: Array.from(vector) }); }
  /** Store any field value: `{tag: "vector"|"tokens"|"codes"|"blob", val}`. */
  putField(id, field, value) { host(hostCollections.putField, this.name, id, field, value); }
  /** Field `field` of item `id`, or undefined when unset. */
  getField(id, field) { return host(hostCollections.getField, this.name, id, field); }
  /** The `k` items nearest `query` in vector field `field`, best first; `filter` is a metadata
   *  predicate object such as `{lang: "en"}`. */
  nearest(field, query, k, filter) {
    return host(hostCollections.nearest, this.name, field, Array.from(query), k, filter === undefined ? undefined : JSON.stringify(filter));
  }
  nextCodes(field, prefixes) { return host(hostCollections.nextCodes, this.name, field, prefixes); }
  itemsWithCodes(field, codes) { return host(hostCollections.itemsWithCodes, this.name, field, codes); }
  /** Store a collection-level artifact (a Uint8Array). */
  putBlob(name, data) { host(hostCollections.putBlob, this.name, name, data); }
  getBlob(name) { return host(hostCollections.getBlob, this.name, name); }
  /** One page `{entries, next}` of field `field` in id order, after id `after`. */
  scan(field, after, limit = 256) { return host(hostCollections.scan, this.name, field, after, limit); }
  /** Every `[id, value]` of field `field`, page by page. */
  *scanAll(field, pageSize = 256) {
    let after;
    for (;;) {
      const page = this.scan(field, after, pageSize);
      for (const entry of page.entries) yield [entry.id, entry.value];
      if (page.next === undefined || page.next === null) return;
      after = page.next;
    }
  }
  getItems(ids) { return host(hostCollections.getItems, this.name, ids); }
  count() { return host(hostCollections.count, this.name); }
}

/** The collection and route config a call runs under. */
export class Context {
  constructor(raw) {
    this.collection = new Collection(raw.collection);
    try {
      this.config = raw.config ? JSON.parse(raw.config) : {};
    } catch (e) {
      throw new Invalid(`the route config is not JSON: ${e}`);
    }
  }
  /** Config value `key`; without a default, a missing key is an Invalid error. */
  param(key, ...fallback) {
    if (Object.prototype.hasOwnProperty.call(this.config, key)) return this.config[key];
    if (fallback.length > 0) return fallback[0];
    throw new Invalid(`the route config has no \`${key}\``);
  }
}

/** The query's parameters as an object (empty when none). */
export function queryParams(query) {
  if (!query.params) return {};
  try {
    return JSON.parse(query.params);
  } catch (e) {
    throw new Invalid(`query parameters are not JSON: ${e}`);
  }
}

/** A hit for item `id`, with named parts of its score. */
export function hit(id, score, features = {}) {
  return { id, score, features: Object.entries(features).map(([name, value]) => ({ name, value })) };
}

// --- host services --------------------------------------------------------------------------------

export const encoders = {
  /** One pooled, normalised embedding per text. */
  embedTexts: (model, texts) => host(hostEncoders.embedTexts, model, texts),
  embedText(model, text) {
    const vectors = encoders.embedTexts(model, [text]);
    if (vectors.length === 0) throw new Internal("the host returned no embedding");
    return vectors[0];
  },
  embedImages: (model, images) => host(hostEncoders.embedImages, model, images),
  textTokens: (model, texts) => host(hostEncoders.textTokens, model, texts),
  imageTokens: (model, images) => host(hostEncoders.imageTokens, model, images),
  project: (model, vectors) => host(hostEncoders.project, model, vectors),
};

export const rankers = {
  lateInteraction: (collection, field, query, candidates) => host(hostRankers.lateInteraction, collection, field, query, candidates),
  crossScore: (model, query, texts) => host(hostRankers.crossScore, model, query, texts),
};

export const strategies = {
  /** Search `collection` with strategy `name@version` (the route must grant it). */
  search: (strategy, collection, query) => host(hostStrategies.search, strategy, collection, query),
};

export const log = {
  debug: (m) => hostLog.log("debug", m),
  info: (m) => hostLog.log("info", m),
  warn: (m) => hostLog.log("warn", m),
  error: (m) => hostLog.log("error", m),
  counter: (name, value) => hostLog.counter(name, value),
};

// --- helpers (as the Rust SDK's quarry_sdk::helpers) ----------------------------------------------

function compareHits(a, b) {
  const an = Number.isNaN(a.score), bn = Number.isNaN(b.score);
  if (an !== bn) return an ? 1 : -1;
  if (!an && a.score !== b.score) return b.score - a.score;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}
/** Sort hits best first (NaN last), ties by id, in place. */
export function sortHits(hits) { hits.sort(compareHits); return hits; }
/** The `k` best hits, best first, ties by id. */
export function topK(hits, k) { return k <= 0 ? [] : [...hits].sort(compareHits).slice(0, k); }
/** Rescale scores to [0, 1] in place; all-equal scores become 1. */
export function normalizeMinMax(hits) {
  const finite = hits.map((h) => h.score).filter(Number.isFinite);
  const lo = Math.min(...finite), hi = Math.max(...finite);
  for (const h of hits) h.score = hi > lo ? (h.score - lo) / (hi - lo) : 1;
  return hits;
}
/** Standardise scores to zero mean and unit variance in place; all-equal scores become 0. */
export function normalizeZ(hits) {
  if (hits.length === 0) return hits;
  const mean = hits.reduce((s, h) => s + h.score, 0) / hits.length;
  const std = Math.sqrt(hits.reduce((s, h) => s + (h.score - mean) ** 2, 0) / hits.length);
  for (const h of hits) h.score = std > 0 ? (h.score - mean) / std : 0;
  return hits;
}
/** Reciprocal-rank fusion (`c = 60` by default); equal fused scores are ordered by the lists. */
export function reciprocalRankFusion(lists, c = 60) {
  const fused = new Map();
  lists.forEach((list, l) => list.forEach((h, rank) => {
    if (!fused.has(h.id)) fused.set(h.id, { score: 0, ranks: lists.map(() => Infinity) });
    const e = fused.get(h.id);
    e.score += 1 / (c + rank + 1);
    e.ranks[l] = Math.min(e.ranks[l], rank);
  }));
  const out = [...fused.entries()];
  out.sort(([aId, a], [bId, b]) => {
    if (a.score !== b.score) return b.score - a.score;
    for (let i = 0; i < a.ranks.length; i++) if (a.ranks[i] !== b.ranks[i]) return a.ranks[i] - b.ranks[i];
    return aId < bId ? -1 : aId > bId ? 1 : 0;
  });
  return out.map(([id, e]) => ({ id, score: e.score, features: [] }));
}

// --- the strategy and its export ------------------------------------------------------------------

/** Extend and implement describe, ingest and search (build and rerank optional). */
export class Strategy {
  describe() { throw new Error("describe is not implemented"); }
  ingest(_ctx, _items) { throw new Unsupported("ingest is not implemented"); }
  /** Collection-level artifacts after ingest; runs only when asked. Does nothing by default. */
  build(_ctx) {}
  search(_ctx, _query) { throw new Unsupported("search is not implemented"); }
  /** Answers `unsupported` unless implemented (then declare it with `Descriptor.reranks()`). */
  rerank(_ctx, _query, _candidates) { throw new Unsupported(`${this.constructor.name} does not rerank`); }
}

/** Run a strategy method, turning whatever it throws into the contract's error. */
function guard(f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof QuarryError) throw e;
    throw new Internal(`${e && e.name ? e.name : "Error"}: ${e && e.message !== undefined ? e.message : e}`);
  }
}

/** The module's `strategy` export for strategy class `Cls`: `export const strategy = exportStrategy(Cls)`. */
export function exportStrategy(Cls) {
  const impl = new Cls();
  return {
    describe: () => impl.describe().toWire(),
    ingest: (ctx, items) => { guard(() => impl.ingest(new Context(ctx), items)); },
    build: (ctx) => { guard(() => impl.build(new Context(ctx))); },
    search: (ctx, query) => guard(() => impl.search(new Context(ctx), query)),
    rerank: (ctx, query, candidates) => guard(() => impl.rerank(new Context(ctx), query, candidates)),
  };
}
