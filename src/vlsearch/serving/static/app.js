// vlsearch relevance-debugging page: search box, result cards with per-channel scores and
// Modal Adaptation weights, facets over the result set (click to filter), removable
// constraints, pagination (offset), a product detail view, spelling and no-match notices.
// The whole state lives in the URL (?q=&filter=field=value&off=&offset=&product=&spell=).
"use strict";

const PAGE_SIZE = 24;
const KEY_ATTRIBUTES = ["gender", "colour", "usage", "season"];
const state = { q: "", off: [], filters: {}, offset: 0, product: null, spell: true };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function fmt(value, digits = 3) {
  return typeof value === "number" ? value.toFixed(digits) : "—";
}

function filterParams(params) {
  for (const [field, values] of Object.entries(state.filters)) {
    if (values.length) params.append("filter", `${field}=${values.join(",")}`);
  }
}

function syncUrl() {
  const params = new URLSearchParams();
  if (state.q) params.set("q", state.q);
  filterParams(params);
  for (const field of state.off) params.append("off", field);
  if (state.offset) params.set("offset", String(state.offset));
  if (!state.spell) params.set("spell", "false");
  if (state.product) params.set("product", state.product);
  history.replaceState(null, "", params.toString() ? `/?${params}` : "/");
}

function addFilter(field, value) {
  const values = state.filters[field] || [];
  if (!values.includes(value)) state.filters[field] = [...values, value];
  state.offset = 0;
  runSearch();
}

function removeFilter(field, value) {
  state.filters[field] = (state.filters[field] || []).filter(v => v !== value);
  if (!state.filters[field].length) delete state.filters[field];
  state.offset = 0;
  runSearch();
}

function renderConstraints(constraints, relaxed) {
  const box = document.getElementById("constraints");
  box.replaceChildren();
  for (const c of relaxed) {
    box.append(el("span", { class: "chip relaxed", "data-field": c.field,
                            title: "no product matches every constraint, so this one was dropped" },
                  `${c.text} (no match)`));
  }
  for (const c of constraints) {
    const chip = el("span", { class: `chip ${c.source}`, "data-field": c.field,
                              title: c.source === "auto" ? `from "${c.terms.join(" ")}"` : "filter" },
                    c.text);
    if (c.source === "auto") {
      chip.append(el("button", { type: "button", "aria-label": `remove ${c.text}`,
                                 onclick: () => { state.off.push(c.field); state.offset = 0; runSearch(); } }, "×"));
    } else {
      for (const value of c.values || []) {
        chip.append(el("button", { type: "button", "aria-label": `remove filter ${c.field}=${value}`,
                                   onclick: () => removeFilter(c.field, value) }, "×"));
      }
    }
    box.append(chip);
  }
  for (const field of state.off) {
    box.append(el("span", { class: "chip off", title: "switched off; click to restore",
                            onclick: () => { state.off = state.off.filter(f => f !== field); runSearch(); } },
                  `${field} (off)`));
  }
}

function renderFacets(facets) {
  const box = document.getElementById("facets");
  box.replaceChildren();
  for (const [field, counts] of Object.entries(facets || {})) {
    if (!counts.length) continue;
    const list = el("ul", {});
    for (const [value, count] of counts) {
      const active = (state.filters[field] || []).includes(value);
      list.append(el("li", {},
        el("button", { type: "button", class: active ? "facet active" : "facet", "data-field": field,
                       "data-value": value, title: active ? "already a filter" : `add filter ${field}=${value}`,
                       onclick: () => (active ? removeFilter(field, value) : addFilter(field, value)) },
           `${value} `, el("span", { class: "count" }, String(count)))));
    }
    box.append(el("section", { class: "facet-group", "data-field": field }, el("h3", {}, field), list));
  }
}

function weightBars(weights) {
  if (!weights) return null;
  const box = el("div", { class: "weights", title: "Modal Adaptation weights of this product" });
  for (const [name, value] of Object.entries(weights)) {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.round(100 * value)}%`;
    box.append(el("div", { class: "weight", "data-modality": name },
                  el("span", { class: "label" }, name), el("span", { class: "track" }, bar),
                  el("span", { class: "value" }, fmt(value, 2))));
  }
  return box;
}

function channelScores(hit) {
  const box = el("div", { class: "channels" });
  for (const ch of hit.channels) box.append(el("span", { class: `badge ${ch}` }, ch));
  for (const [name, value] of Object.entries(hit.channel_scores || {})) {
    box.append(el("span", { class: "channel-score", "data-channel": name },
                  `${name === "embedding" ? "cos" : name === "lexical" ? "bm25" : name} ${fmt(value)}`));
  }
  return box;
}

function renderHits(hits, offset, fillRelaxed = []) {
  const grid = document.getElementById("results");
  grid.replaceChildren();
  let exact = true;
  hits.forEach((hit, i) => {
    if (hit.relaxed && exact) {  // where the exact matches end: the rest relax a constraint
      exact = false;
      grid.append(el("div", { class: "exact-end" },
        `exact matches end here · below: nearest products without ${fillRelaxed.map(c => c.text).join(", ")}`));
    }
    const img = el("img", { src: hit.image, alt: hit.title, loading: "lazy" });
    img.addEventListener("error", () => { img.style.visibility = "hidden"; });
    const attrs = hit.attributes || {};
    const key = KEY_ATTRIBUTES.filter(a => attrs[a]).map(a => attrs[a]).join(" · ");
    grid.append(el("article", { class: hit.relaxed ? "card result relaxed" : "card result", "data-id": hit.product_id,
                                tabindex: "0",
                                onclick: () => openProduct(hit.product_id) },
      img,
      el("div", { class: "rank" }, `#${offset + i + 1} · id ${hit.product_id}`),
      el("div", { class: "title" }, hit.title),
      el("div", { class: "meta" }, `${hit.brand || "—"} · ${hit.category || "—"}`),
      key ? el("div", { class: "meta attrs" }, key) : null,
      channelScores(hit),
      el("div", { class: "meta score" }, `fused ${hit.score.toFixed(4)}`),
      weightBars(hit.modal_weights)));
  });
}

function renderPager(body) {
  const pager = document.getElementById("pager");
  pager.replaceChildren();
  const page = Math.floor(body.offset / PAGE_SIZE) + 1;
  if (body.offset > 0) {
    pager.append(el("button", { type: "button", id: "prev",
                                onclick: () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); runSearch(); } },
                    "← previous"));
  }
  pager.append(el("span", { id: "page" }, ` page ${page} `));
  if (body.hits.length === PAGE_SIZE) {
    pager.append(el("button", { type: "button", id: "next",
                                onclick: () => { state.offset += PAGE_SIZE; runSearch(); } }, "next →"));
  }
}

function renderNotices(body) {
  const box = document.getElementById("notices");
  box.replaceChildren();
  if (body.corrected_from) {
    box.append(el("p", { class: "notice corrected" }, "showing results for ",
      el("strong", {}, body.query), " · ",
      el("a", { href: "#", id: "search-as-typed",
                onclick: e => { e.preventDefault(); state.spell = false; state.q = body.corrected_from; runSearch(); } },
         `search instead for "${body.corrected_from}"`)));
  }
  const unknown = body.unknown_terms || [];
  if (!body.hits.length) {
    box.append(el("p", { class: "notice empty" }, `no product matches "${body.query}"`));
  } else if (unknown.length) {
    box.append(el("p", { class: "notice unknown" },
      `no product mentions ${unknown.map(t => `"${t}"`).join(", ")}: these results are only the nearest by meaning`));
  }
}

async function openProduct(id) {
  state.product = id;
  syncUrl();
  const box = document.getElementById("detail");
  try {
    const response = await fetch(`/products/${encodeURIComponent(id)}`);
    const info = await response.json();
    if (!response.ok) throw new Error(info.error || `error ${response.status}`);
    const rows = Object.entries(info.attributes || {}).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, String(v))));
    box.replaceChildren(
      el("button", { type: "button", class: "close", "aria-label": "close",
                     onclick: () => { state.product = null; box.hidden = true; syncUrl(); } }, "×"),
      info.image ? el("img", { src: info.image, alt: info.title }) : el("p", {}, "(no image)"),
      el("h2", {}, info.title),
      el("p", { class: "meta" }, `id ${info.id} · ${info.brand || "—"} · ${info.category || "—"}`),
      el("table", { class: "attributes" }, el("tbody", {}, el("tr", {}, el("th", {}, "brand"), el("td", {}, info.brand || "—")), ...rows)),
      info.modal_weights ? el("h3", {}, "Modal Adaptation weights") : null,
      weightBars(info.modal_weights));
    box.hidden = false;
  } catch (err) {
    box.replaceChildren(el("p", { class: "error" }, `product ${id}: ${err.message}`));
    box.hidden = false;
  }
}

async function runSearch() {
  syncUrl();
  const status = document.getElementById("status");
  if (!state.q.trim()) { status.textContent = ""; return; }
  const params = new URLSearchParams({ q: state.q, k: String(PAGE_SIZE), offset: String(state.offset),
                                       explain: "true", facets: "true" });
  filterParams(params);
  for (const field of state.off) params.append("off", field);
  if (!state.spell) params.set("spell", "false");
  status.textContent = "searching…";
  try {
    const response = await fetch(`/search?${params}`);
    const body = await response.json();
    if (!response.ok) {
      status.className = "error";
      status.textContent = body.error || `error ${response.status}`;
      renderHits([], 0);
      return;
    }
    status.className = "";
    const t = body.timings.total_ms.toFixed(1);
    const allowed = body.allowed === null || body.allowed === undefined ? "" : ` · ${body.allowed} products pass the constraints`;
    status.textContent = `${body.hits.length} results from #${body.offset + 1} · ${t} ms · qid ${body.qid} `
      + `(${body.qid_hit ? "hit: answered from the qid table" : "miss: encoded now"}) · index ${body.version}${allowed}`;
    if (body.relaxed.length) {
      status.textContent += ` · no exact match for ${body.relaxed.map(c => c.text).join(", ")}`;
    }
    renderNotices(body);
    renderConstraints(body.constraints, body.relaxed);
    renderFacets(body.facets);
    renderHits(body.hits, body.offset, body.fill_relaxed || []);
    renderPager(body);
  } catch (err) {
    status.className = "error";
    status.textContent = `request failed: ${err}`;
  }
}

document.getElementById("search-form").addEventListener("submit", event => {
  event.preventDefault();
  state.q = document.getElementById("q").value;
  Object.assign(state, { off: [], filters: {}, offset: 0, spell: true, product: null });
  document.getElementById("detail").hidden = true;
  runSearch();
});

const initial = new URLSearchParams(location.search);
state.q = initial.get("q") || "";
state.off = initial.getAll("off");
for (const item of initial.getAll("filter")) {
  const at = item.indexOf("=");
  if (at > 0) state.filters[item.slice(0, at)] = item.slice(at + 1).split(",").filter(Boolean);
}
state.offset = parseInt(initial.get("offset") || "0", 10) || 0;
state.spell = initial.get("spell") !== "false";
document.getElementById("q").value = state.q;
runSearch().then(() => { if (initial.get("product")) openProduct(initial.get("product")); });
