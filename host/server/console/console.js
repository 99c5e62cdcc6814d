// Quarry console: a client of the JSON API under /v1, hand-written, no framework, no build step.
//
// Everything the API returns (ids, item texts, plugin descriptions, names) comes from tenants
// and is untrusted: it reaches the page only as text (textContent, text nodes, setAttribute on
// plain attributes), never as markup. Image thumbnails are accepted only as base64 data: URLs
// of PNG, JPEG, GIF or WebP.
"use strict";

(() => {
  const KEY_STORAGE = "quarry.console.apiKey";
  const POLL_MS = 2000;
  const HISTORY = 90; // points of latency history kept per collection (3 minutes at 2 s)
  const MAX_IMAGE_BYTES = 16 << 20;

  const state = {
    key: null,
    caller: null, // {admin: true} or {admin: false, tenant}
    collections: [],
    plugins: [],
    image: null, // {base64, url}
    poll: null,
    polling: false,
    experimentCollection: null,
    history: new Map(), // collection -> [{t, arms: {name: {p50, p95, p99}}}]
    actionsFor: "",
  };

  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers: text only ----

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    setProps(node, props);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, props, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setProps(node, props);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function setProps(node, props) {
    if (!props) return;
    for (const [name, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.setAttribute("class", value);
      else if (name === "text") node.textContent = String(value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function clear(node) {
    node.replaceChildren();
  }

  function setText(id, text) {
    $(id).textContent = text || "";
  }

  const enc = encodeURIComponent;

  function fmt(n, digits = 1) {
    return typeof n === "number" && Number.isFinite(n) ? n.toFixed(digits) : "–";
  }

  function pct(n) {
    return typeof n === "number" && Number.isFinite(n) ? (n * 100).toFixed(1) + "%" : "–";
  }

  // ---- the API ----

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.key };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "cannot reach the server (" + e.message + ")");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!response.ok) {
      const message = data && data.error && typeof data.error.message === "string" ? data.error.message : "HTTP " + response.status;
      const error = new ApiError(response.status, message);
      if (response.status === 401 && state.caller) {
        signOut("Signed out: " + message);
      }
      throw error;
    }
    return data;
  }

  // ---- sign in and out ----

  async function signIn(key) {
    state.key = key;
    let caller;
    try {
      const usage = await api("GET", "/v1/usage");
      caller = { admin: false, tenant: String(usage.tenant) };
    } catch (e) {
      // Tenant endpoints answer the admin key with 403.
      if (e.status === 403) caller = { admin: true };
      else {
        state.key = null;
        throw e;
      }
    }
    state.caller = caller;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    setText("sign-in-error", "");
    setText("who", caller.admin ? "Signed in with the admin key" : "Signed in as tenant " + caller.tenant);
    $("sign-in-view").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = false;
    await refresh();
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    stopPolling();
    state.key = null;
    state.caller = null;
    state.collections = [];
    state.plugins = [];
    state.history.clear();
    state.actionsFor = "";
    clearImage();
    for (const id of ["collections", "plugins", "hits", "experiment", "experiment-actions", "search-collection", "experiment-collection", "arm-0-strategy", "arm-1-strategy"]) {
      clear($(id));
    }
    for (const id of ["who", "search-status", "experiment-status", "search-summary", "search-error", "experiment-error", "collections-error", "plugins-error", "start-error"]) {
      setText(id, "");
    }
    $("app").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in-view").hidden = false;
    setText("sign-in-error", message || "");
    $("api-key").focus();
  }

  // ---- collections and plugins ----

  async function refresh() {
    await Promise.all([loadCollections(), loadPlugins()]);
    await selectExperimentCollection(state.experimentCollection);
  }

  async function loadCollections() {
    setText("collections-error", "");
    try {
      const list = await api("GET", "/v1/collections");
      state.collections = Array.isArray(list) ? list : [];
    } catch (e) {
      state.collections = [];
      setText("collections-error", e.message);
    }
    renderCollections();
  }

  function routeKind(route) {
    if (!route || typeof route !== "object") return "unknown";
    if (route.experiment) return "experiment";
    if (route.pipeline !== undefined) return "pipeline";
    if (route.strategy !== undefined) return "strategy";
    return "unknown";
  }

  function armTarget(arm) {
    if (arm.pipeline !== undefined) return "pipeline " + arm.pipeline;
    return String(arm.strategy);
  }

  function routeSummary(route) {
    switch (routeKind(route)) {
      case "strategy":
        return String(route.strategy);
      case "pipeline":
        return "pipeline " + route.pipeline;
      case "experiment": {
        const x = route.experiment;
        const arms = (x.arms || []).map((a) => `${a.name} (${a.weight}): ${armTarget(a)}`).join(" vs ");
        return `experiment ${x.name}${x.interleave ? " (interleaved)" : ""}: ${arms}`;
      }
      default:
        return JSON.stringify(route);
    }
  }

  function routeNode(route) {
    const kind = routeKind(route);
    const box = el("div", { class: "route", "data-route-kind": kind });
    box.append(el("span", { class: "badge" }, kind), el("span", { class: "route-summary mono" }, routeSummary(route)));
    if (kind === "strategy") {
      const models = Array.isArray(route.models) ? route.models : [];
      if (models.length) box.append(el("div", { class: "meta" }, "models: " + models.join(", ")));
      if (route.config && Object.keys(route.config).length) box.append(el("div", { class: "meta mono" }, "config: " + JSON.stringify(route.config)));
    }
    return box;
  }

  function renderCollections() {
    const list = $("collections");
    clear(list);
    if (!state.collections.length && !$("collections-error").textContent) {
      list.append(el("li", { class: "meta" }, "No collections yet: a collection is created by setting its route (PUT /v1/collections/{c}/route)."));
    }
    for (const c of state.collections) {
      const name = String(c.name);
      list.append(
        el(
          "li",
          { "data-collection": name },
          el("div", { class: "row" }, el("span", { class: "name" }, name), el("span", { class: "meta" }, `${c.items} item${c.items === 1 ? "" : "s"}`)),
          routeNode(c.route),
          el(
            "div",
            { class: "actions" },
            el("button", { type: "button", class: "secondary", "aria-label": "Search " + name, onclick: () => focusSearch(name) }, "Search"),
            el("button", { type: "button", class: "secondary", "aria-label": "Experiment on " + name, onclick: () => focusExperiment(name) }, "Experiment"),
          ),
        ),
      );
    }
    fillSelect($("search-collection"), state.collections.map((c) => String(c.name)));
    fillSelect($("experiment-collection"), state.collections.map((c) => String(c.name)));
  }

  function fillSelect(select, values, labels) {
    const previous = select.value;
    clear(select);
    values.forEach((value, i) => select.append(el("option", { value }, labels ? labels[i] : value)));
    if (values.includes(previous)) select.value = previous;
  }

  function focusSearch(name) {
    $("search-collection").value = name;
    $("search-view").scrollIntoView();
    $("search-text").focus();
  }

  async function focusExperiment(name) {
    $("experiment-collection").value = name;
    $("experiments-view").scrollIntoView();
    $("experiment-collection").focus();
    await selectExperimentCollection(name);
  }

  async function loadPlugins() {
    setText("plugins-error", "");
    try {
      const list = await api("GET", "/v1/plugins");
      state.plugins = Array.isArray(list) ? list : [];
    } catch (e) {
      state.plugins = [];
      setText("plugins-error", e.message);
    }
    renderPlugins();
  }

  function renderPlugins() {
    const list = $("plugins");
    clear(list);
    if (!state.plugins.length && !$("plugins-error").textContent) list.append(el("li", { class: "meta" }, "No plugins yet: upload a component with POST /v1/plugins."));
    for (const p of state.plugins) {
      const fields = p.fields && typeof p.fields === "object" ? Object.keys(p.fields) : [];
      list.append(
        el(
          "li",
          { "data-strategy": String(p.strategy) },
          el("div", { class: "row" }, el("span", { class: "name mono" }, String(p.strategy)), el("span", {}, el("span", { class: "badge" }, String(p.owner)), p.reranks ? el("span", { class: "badge" }, "reranks") : null)),
          el("div", { class: "meta" }, "contract " + p.contract + (p.sdk ? " · sdk " + p.sdk : "")),
          p.description ? el("p", { class: "description" }, String(p.description)) : null,
          el("div", { class: "meta" }, "models: " + ((p.models || []).join(", ") || "none") + " · fields: " + (fields.join(", ") || "none")),
          el("details", {}, el("summary", {}, "Config schema"), el("pre", { class: "mono" }, JSON.stringify(p.config_schema, null, 2))),
        ),
      );
    }
    const strategies = state.plugins.map((p) => String(p.strategy));
    fillSelect($("arm-0-strategy"), strategies);
    fillSelect($("arm-1-strategy"), strategies);
  }

  // ---- search ----

  function sniffImage(base64) {
    if (base64.startsWith("iVBORw0KGgo")) return "image/png";
    if (base64.startsWith("/9j/")) return "image/jpeg";
    if (base64.startsWith("R0lGOD")) return "image/gif";
    if (base64.startsWith("UklGR")) return "image/webp";
    return null;
  }

  const DATA_URL = /^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+={0,2}$/;

  // A hit's picture, if it carries one: an `image` (base64, PNG/JPEG) on the hit, or a
  // `thumbnail`/`image` data: URL in its metadata. Anything else shows as text.
  function imageOf(hit) {
    if (typeof hit.image === "string" && /^[A-Za-z0-9+/]+={0,2}$/.test(hit.image)) {
      const type = sniffImage(hit.image);
      if (type) return `data:${type};base64,${hit.image}`;
    }
    const meta = hit.metadata && typeof hit.metadata === "object" ? hit.metadata : {};
    for (const name of ["thumbnail", "image"]) {
      if (typeof meta[name] === "string" && DATA_URL.test(meta[name])) return meta[name];
    }
    return null;
  }

  function clearImage() {
    if (state.image && state.image.url) URL.revokeObjectURL(state.image.url);
    state.image = null;
    $("search-image").value = "";
    $("image-preview").hidden = true;
    $("image-preview").removeAttribute("src");
    $("clear-image").hidden = true;
  }

  function readImage(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
      reader.onerror = () => reject(new Error("cannot read " + file.name));
      reader.readAsDataURL(file);
    });
  }

  async function chooseImage() {
    const file = $("search-image").files[0];
    setText("search-error", "");
    if (!file) return clearImage();
    if (!["image/png", "image/jpeg"].includes(file.type)) {
      clearImage();
      return setText("search-error", "Pick a PNG or JPEG image.");
    }
    if (file.size > MAX_IMAGE_BYTES) {
      clearImage();
      return setText("search-error", "The image is over 16 MiB.");
    }
    const base64 = await readImage(file);
    if (state.image && state.image.url) URL.revokeObjectURL(state.image.url);
    state.image = { base64, url: URL.createObjectURL(file) };
    $("image-preview").src = state.image.url;
    $("image-preview").hidden = false;
    $("clear-image").hidden = false;
  }

  async function runSearch(event) {
    event.preventDefault();
    setText("search-error", "");
    const collection = $("search-collection").value;
    const text = $("search-text").value.trim();
    if (!collection) return setText("search-error", "There is no collection to search.");
    if (!text && !state.image) return setText("search-error", "Type a query, pick an image, or both.");
    const body = { k: Number($("search-k").value) || 10 };
    if (text) body.text = text;
    if (state.image) body.image = state.image.base64;
    const assignment = $("search-key").value.trim();
    if (assignment) body.key = assignment;
    setText("search-status", "");
    setText("search-summary", "Searching…");
    clear($("hits"));
    try {
      const out = await api("POST", `/v1/collections/${enc(collection)}/search`, body);
      renderHits(out);
    } catch (e) {
      setText("search-summary", "");
      setText("search-error", e.message);
    }
  }

  function renderHits(out) {
    const hits = Array.isArray(out.hits) ? out.hits : [];
    let summary = `${hits.length} hit${hits.length === 1 ? "" : "s"} from ${out.strategy}`;
    if (out.experiment) summary += ` · experiment ${out.experiment}`;
    if (out.arm !== undefined && out.arm !== null) summary += ` · arm ${out.arm}`;
    if (out.impression) summary += ` · impression ${out.impression}`;
    if (Array.isArray(out.notes) && out.notes.length) summary += " · " + out.notes.join("; ");
    setText("search-summary", summary);
    const list = $("hits");
    clear(list);
    for (const hit of hits) {
      const picture = imageOf(hit);
      const features = hit.features && typeof hit.features === "object" ? Object.entries(hit.features) : [];
      const item = el(
        "li",
        { class: "hit", "data-id": String(hit.id) },
        el(
          "div",
          { class: "head" },
          el("span", { class: "hit-id mono" }, String(hit.id)),
          el("span", { class: "score" }, "score " + fmt(hit.score, 4)),
          hit.team !== undefined && hit.team !== null ? el("span", { class: "badge team" }, "team " + hit.team) : null,
        ),
        picture ? el("img", { class: "thumb", src: picture, alt: "Image of " + hit.id }) : null,
        hit.text !== undefined && hit.text !== null ? el("p", { class: "text" }, String(hit.text)) : null,
        features.length
          ? el(
              "dl",
              { class: "features", "aria-label": "Features" },
              features.map(([name, value]) => el("div", {}, el("dt", {}, name), el("dd", {}, fmt(value, 4)))),
            )
          : null,
      );
      if (out.impression) {
        const button = el("button", { type: "button", class: "secondary click" }, "Record a click");
        button.addEventListener("click", () => recordClick(out.impression, String(hit.id), button));
        item.append(button);
      }
      list.append(item);
    }
  }

  async function recordClick(impression, id, button) {
    button.disabled = true;
    try {
      const out = await api("POST", "/v1/feedback", { impression, clicks: [id] });
      button.textContent = "Clicked";
      setText("search-status", `Click on ${id} recorded` + (out && out.outcome !== undefined ? `; outcome: ${out.outcome === null ? "none" : out.outcome}` : ""));
    } catch (e) {
      button.disabled = false;
      setText("search-error", e.message);
    }
  }

  // ---- experiments ----

  function collectionNamed(name) {
    return state.collections.find((c) => String(c.name) === name);
  }

  async function selectExperimentCollection(wanted) {
    const names = state.collections.map((c) => String(c.name));
    let name = wanted && names.includes(wanted) ? wanted : null;
    if (!name) {
      const experiment = state.collections.find((c) => routeKind(c.route) === "experiment");
      name = experiment ? String(experiment.name) : names[0] || null;
    }
    state.experimentCollection = name;
    if (name) $("experiment-collection").value = name;
    prefillArms(name ? collectionNamed(name) : null);
    stopPolling();
    setText("experiment-error", "");
    clear($("experiment"));
    renderActions(name, null);
    if (!name) {
      $("experiment").append(el("p", { class: "meta" }, state.caller && state.caller.admin ? "Experiments belong to tenants: sign in with a tenant's key." : "No collections yet."));
      return;
    }
    const collection = collectionNamed(name);
    if (routeKind(collection.route) !== "experiment") {
      $("experiment").append(el("p", { class: "meta" }, `The route of ${name} is not an experiment: ${routeSummary(collection.route)}. Start one below.`));
      return;
    }
    await pollExperiment();
    state.poll = setInterval(pollExperiment, POLL_MS);
  }

  function stopPolling() {
    if (state.poll) clearInterval(state.poll);
    state.poll = null;
  }

  function prefillArms(collection) {
    const route = collection ? collection.route : null;
    let arms = [];
    if (routeKind(route) === "strategy") arms = [route, route];
    else if (routeKind(route) === "experiment") arms = (route.experiment.arms || []).filter((a) => a.strategy !== undefined);
    arms.slice(0, 2).forEach((arm, i) => {
      if (state.plugins.some((p) => String(p.strategy) === String(arm.strategy))) $(`arm-${i}-strategy`).value = String(arm.strategy);
      $(`arm-${i}-config`).value = JSON.stringify(arm.config || {});
      $(`arm-${i}-models`).value = (arm.models || []).join(", ");
    });
  }

  async function pollExperiment() {
    const name = state.experimentCollection;
    if (!name || state.polling || !state.key) return;
    state.polling = true;
    try {
      const x = await api("GET", `/v1/collections/${enc(name)}/experiment`);
      if (name !== state.experimentCollection) return;
      setText("experiment-error", "");
      const history = state.history.get(name) || [];
      const point = { t: Date.now(), arms: {} };
      // An arm that has not answered yet has no latency to draw.
      for (const arm of x.arms || []) if (arm.calls > 0) point.arms[arm.name] = arm.latency_ms || {};
      history.push(point);
      while (history.length > HISTORY) history.shift();
      state.history.set(name, history);
      renderExperiment(name, x, history);
      renderActions(name, x);
    } catch (e) {
      if (name !== state.experimentCollection) return;
      if (e.status === 404) {
        stopPolling();
        clear($("experiment"));
        $("experiment").append(el("p", { class: "meta" }, `The route of ${name} is not an experiment (any more): ${e.message}`));
      } else {
        setText("experiment-error", e.message);
      }
    } finally {
      state.polling = false;
    }
  }

  function armClass(i) {
    return "arm-" + (i % 4);
  }
  const ARM_COLOURS = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce"];

  function renderExperiment(name, x, history) {
    const arms = Array.isArray(x.arms) ? x.arms : [];
    const box = $("experiment");
    // Redrawn every poll: keep the keyboard focus where it was.
    const focused = box.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    clear(box);
    box.append(el("h3", {}, `Experiment ${x.name} on ${name}`, x.interleave ? el("span", { class: "badge" }, "interleaved") : null));
    const table = el(
      "table",
      { id: "arm-table" },
      el("thead", {}, el("tr", {}, ["arm", "runs", "weight", "calls", "errors", "p50 ms", "p95 ms", "p99 ms", "impressions", "clicks", "CTR"].map((h) => el("th", { scope: "col" }, h)))),
      el(
        "tbody",
        {},
        arms.map((a, i) => {
          const l = a.latency_ms || {};
          return el(
            "tr",
            { "data-arm": String(a.name) },
            el("th", { scope: "row" }, el("span", { class: "swatch " + armClass(i) }), String(a.name)),
            Object.entries({ runs: a.runs, weight: a.weight, calls: a.calls, errors: a.errors, p50: fmt(l.p50), p95: fmt(l.p95), p99: fmt(l.p99), impressions: a.impressions, clicks: a.clicks, ctr: pct(a.ctr) }).map(([col, v]) =>
              el("td", { "data-col": col }, v === undefined || v === null ? "–" : String(v)),
            ),
          );
        }),
      ),
    );
    box.append(el("p", { class: "hint" }, "Per-arm metrics since the server started, refreshed every 2 s."));
    box.append(el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Per-arm metrics", "data-focus-key": "arm-table" }, table));
    const charts = el("div", { class: "charts" });
    charts.append(latencyChart(arms, history), ctrChart(arms));
    if (x.interleaving) charts.append(deltaChart(x, arms));
    box.append(charts);
    if (focused) {
      const again = box.querySelector(`[data-focus-key="${focused}"]`);
      if (again) again.focus();
    }
  }

  const W = 600;
  const H = 220;
  const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

  function chartBox(title, id, label, body, legend) {
    return el("figure", { class: "chart", id }, el("h4", {}, title), body, legend || null, el("figcaption", { class: "meta" }, label));
  }

  function latencyChart(arms, history) {
    let max = 1;
    for (const p of history) for (const l of Object.values(p.arms)) for (const q of ["p50", "p95", "p99"]) if (typeof l[q] === "number" && l[q] > max) max = l[q];
    max *= 1.1;
    const x = (i) => PAD.left + (history.length > 1 ? (i / (history.length - 1)) * (W - PAD.left - PAD.right) : W - PAD.left - PAD.right - 6);
    const y = (v) => PAD.top + (1 - v / max) * (H - PAD.top - PAD.bottom);
    const body = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Latency over time per arm (p50 solid, p95 dashed, p99 dotted)" });
    for (const f of [0, 0.5, 1]) {
      body.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(max * f), y2: y(max * f), stroke: "#d5d9e0" }));
      body.append(svg("text", { x: PAD.left - 6, y: y(max * f) + 4, "text-anchor": "end", "font-size": 12, fill: "#5a6170" }, fmt(max * f, 0)));
    }
    body.append(svg("text", { x: 4, y: PAD.top + 30, "font-size": 12, fill: "#5a6170" }, "ms"));
    const seconds = history.length > 1 ? Math.round((history[history.length - 1].t - history[0].t) / 1000) : 0;
    body.append(svg("text", { x: PAD.left, y: H - 8, "font-size": 12, fill: "#5a6170" }, `−${seconds} s`));
    body.append(svg("text", { x: W - PAD.right, y: H - 8, "text-anchor": "end", "font-size": 12, fill: "#5a6170" }, "now"));
    const dashes = { p50: null, p95: "6 4", p99: "2 3" };
    arms.forEach((arm, i) => {
      for (const q of ["p50", "p95", "p99"]) {
        const points = [];
        history.forEach((p, n) => {
          const l = p.arms[arm.name];
          if (l && typeof l[q] === "number") points.push(`${x(n).toFixed(1)},${y(l[q]).toFixed(1)}`);
        });
        if (!points.length) continue;
        if (points.length === 1) {
          const [cx, cy] = points[0].split(",");
          body.append(svg("circle", { cx, cy, r: 4, fill: ARM_COLOURS[i % 4], "data-arm": String(arm.name), "data-quantile": q }));
        } else {
          body.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: ARM_COLOURS[i % 4], "stroke-width": 2, "stroke-dasharray": dashes[q], "data-arm": String(arm.name), "data-quantile": q }));
        }
      }
    });
    const legend = el("ul", { class: "legend" }, arms.map((a, i) => el("li", {}, el("span", { class: "swatch " + armClass(i) }), String(a.name))), el("li", {}, "p50 solid · p95 dashed · p99 dotted"));
    const last = arms.map((a) => `${a.name}: p50 ${fmt((a.latency_ms || {}).p50)} ms, p95 ${fmt((a.latency_ms || {}).p95)} ms, p99 ${fmt((a.latency_ms || {}).p99)} ms`).join("; ");
    return chartBox("Latency over time", "latency-chart", last, body, legend);
  }

  function ctrChart(arms) {
    const rowH = 34;
    const h = PAD.top + PAD.bottom + rowH * Math.max(arms.length, 1);
    const max = Math.max(0.05, ...arms.map((a) => (typeof a.ctr === "number" ? a.ctr : 0))) * 1.1;
    const left = 90;
    const width = W - left - 80;
    const body = svg("svg", { viewBox: `0 0 ${W} ${h}`, role: "img", "aria-label": "Click-through rate per arm" });
    arms.forEach((a, i) => {
      const ctr = typeof a.ctr === "number" ? a.ctr : 0;
      const top = PAD.top + i * rowH;
      body.append(svg("text", { x: left - 8, y: top + 20, "text-anchor": "end", "font-size": 13, fill: "#16181d" }, String(a.name)));
      body.append(svg("rect", { x: left, y: top + 6, width: Math.max(1, (ctr / max) * width).toFixed(1), height: 20, fill: ARM_COLOURS[i % 4], "data-arm": String(a.name) }));
      body.append(svg("text", { x: left + Math.max(1, (ctr / max) * width) + 6, y: top + 20, "font-size": 13, fill: "#16181d" }, `${pct(a.ctr)} (${a.clicks ?? 0}/${a.impressions ?? 0})`));
    });
    const label = arms.map((a) => `${a.name}: ${pct(a.ctr)} of ${a.impressions ?? 0} impressions`).join("; ");
    return chartBox("Click-through per arm", "ctr-chart", label, body);
  }

  function deltaChart(x, arms) {
    const v = x.interleaving;
    const ci = Array.isArray(v.ci) ? v.ci : [v.delta, v.delta];
    const span = Math.max(0.1, Math.abs(v.delta || 0), Math.abs(ci[0] || 0), Math.abs(ci[1] || 0)) * 1.2;
    const h = 90;
    const sx = (d) => PAD.left + ((Math.max(-span, Math.min(span, d)) + span) / (2 * span)) * (W - PAD.left - PAD.right);
    const body = svg("svg", { viewBox: `0 0 ${W} ${h}`, role: "img", "aria-label": "Interleaving delta with its confidence interval" });
    const mid = 40;
    body.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: mid, y2: mid, stroke: "#d5d9e0" }));
    body.append(svg("line", { x1: sx(0), x2: sx(0), y1: 12, y2: 68, stroke: "#5a6170", "stroke-dasharray": "3 3" }));
    body.append(svg("text", { x: sx(0), y: 84, "text-anchor": "middle", "font-size": 12, fill: "#5a6170" }, "0"));
    body.append(svg("text", { x: PAD.left, y: 84, "font-size": 12, fill: "#5a6170" }, "−" + span.toFixed(2)));
    body.append(svg("text", { x: W - PAD.right, y: 84, "text-anchor": "end", "font-size": 12, fill: "#5a6170" }, "+" + span.toFixed(2)));
    if (typeof ci[0] === "number" && typeof ci[1] === "number") {
      body.append(svg("line", { id: "delta-ci", x1: sx(ci[0]), x2: sx(ci[1]), y1: mid, y2: mid, stroke: ARM_COLOURS[0], "stroke-width": 4 }));
      for (const end of ci) body.append(svg("line", { x1: sx(end), x2: sx(end), y1: mid - 8, y2: mid + 8, stroke: ARM_COLOURS[0], "stroke-width": 2 }));
    }
    if (typeof v.delta === "number") body.append(svg("circle", { id: "delta-point", cx: sx(v.delta), cy: mid, r: 6, fill: "#16181d" }));
    const names = arms.map((a) => String(a.name));
    const wins = v.wins && typeof v.wins === "object" ? Object.entries(v.wins).map(([arm, n]) => `${arm} ${n}`).join(", ") : "";
    const verdict = `Δ${names.length === 2 ? `(${names[0]} vs ${names[1]})` : ""} = ${fmt(v.delta, 3)}, 95% CI [${fmt(ci[0], 3)}, ${fmt(ci[1], 3)}], p = ${fmt(v.p_value, 4)}; ${v.impressions} impressions; wins ${wins || "none"}; ties ${v.ties}`;
    return chartBox("Interleaving Δ", "delta-chart", verdict, body);
  }

  function renderActions(name, x) {
    const arms = x && Array.isArray(x.arms) ? x.arms.map((a) => String(a.name)) : [];
    const signature = JSON.stringify([name, arms]);
    if (signature === state.actionsFor) return; // keep the buttons (and focus) across polls
    state.actionsFor = signature;
    const box = $("experiment-actions");
    clear(box);
    if (!name) return;
    for (const arm of arms) {
      box.append(el("button", { type: "button", "data-promote": arm, onclick: () => promote(name, arm) }, `Promote ${arm}`));
    }
    box.append(el("button", { type: "button", class: "secondary", id: "rollback", onclick: () => rollback(name) }, "Roll back"));
  }

  async function promote(name, arm) {
    setText("experiment-error", "");
    setText("experiment-status", "");
    try {
      const route = await api("POST", `/v1/collections/${enc(name)}/promote`, { arm });
      setText("experiment-status", `Promoted ${arm} on ${name}: the route is now ${routeSummary(route)}`);
      await afterRouteChange(name);
    } catch (e) {
      setText("experiment-error", e.message);
    }
  }

  async function rollback(name) {
    setText("experiment-error", "");
    setText("experiment-status", "");
    try {
      const route = await api("POST", `/v1/collections/${enc(name)}/rollback`);
      setText("experiment-status", `Rolled back ${name}: the route is now ${routeSummary(route)}`);
      await afterRouteChange(name);
    } catch (e) {
      setText("experiment-error", e.message);
    }
  }

  async function afterRouteChange(name) {
    state.history.delete(name);
    await loadCollections();
    await selectExperimentCollection(name);
    // The buttons were redrawn: keep keyboard users next to them.
    if (document.activeElement === document.body && $("rollback")) $("rollback").focus();
  }

  function armFromForm(i, label) {
    const name = $(`arm-${i}-name`).value.trim();
    const weight = Number($(`arm-${i}-weight`).value);
    let config;
    try {
      config = JSON.parse($(`arm-${i}-config`).value || "{}");
    } catch (e) {
      throw new Error(`${label}: the config is not JSON (${e.message})`);
    }
    if (!config || typeof config !== "object" || Array.isArray(config)) throw new Error(`${label}: the config must be a JSON object`);
    const models = $(`arm-${i}-models`)
      .value.split(",")
      .map((m) => m.trim())
      .filter(Boolean);
    return { name, weight, strategy: $(`arm-${i}-strategy`).value, config, models };
  }

  async function startExperiment(event) {
    event.preventDefault();
    setText("start-error", "");
    const collection = $("experiment-collection").value;
    if (!collection) return setText("start-error", "Pick a collection first.");
    let body;
    try {
      body = { experiment: { name: $("exp-name").value.trim(), interleave: $("exp-interleave").checked, arms: [armFromForm(0, "Arm A"), armFromForm(1, "Arm B")] } };
    } catch (e) {
      return setText("start-error", e.message);
    }
    try {
      const route = await api("PUT", `/v1/collections/${enc(collection)}/route`, body);
      setText("experiment-status", `Started ${body.experiment.name} on ${collection}: ${routeSummary(route && route.experiment ? route : body)}`);
      await afterRouteChange(collection);
    } catch (e) {
      setText("start-error", e.message);
    }
  }

  // ---- wiring ----

  function showError(id) {
    return (e) => setText(id, e && e.message ? e.message : String(e));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) return setText("sign-in-error", "Enter an API key.");
      signIn(key).catch(showError("sign-in-error"));
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("refresh").addEventListener("click", () => refresh().catch(showError("collections-error")));
    $("search").addEventListener("submit", (event) => runSearch(event).catch(showError("search-error")));
    $("search-image").addEventListener("change", () => chooseImage().catch(showError("search-error")));
    $("clear-image").addEventListener("click", clearImage);
    $("experiment-collection").addEventListener("change", () => selectExperimentCollection($("experiment-collection").value).catch(showError("experiment-error")));
    $("start-experiment").addEventListener("submit", (event) => startExperiment(event).catch(showError("start-error")));
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) {
      signIn(saved).catch((e) => signOut("Sign in again: " + e.message));
    } else {
      $("api-key").focus();
    }
  });
})();
