// vlsearch web page: search box, result grid, removable query-understanding constraints.
"use strict";

const state = { q: "", off: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function syncUrl() {
  const params = new URLSearchParams();
  if (state.q) params.set("q", state.q);
  for (const field of state.off) params.append("off", field);
  history.replaceState(null, "", params.toString() ? `/?${params}` : "/");
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
                                 onclick: () => { state.off.push(c.field); runSearch(); } }, "×"));
    }
    box.append(chip);
  }
  for (const field of state.off) {
    box.append(el("span", { class: "chip off", title: "switched off; click to restore",
                            onclick: () => { state.off = state.off.filter(f => f !== field); runSearch(); } },
                  `${field} (off)`));
  }
}

function renderHits(hits, fillRelaxed = []) {
  const grid = document.getElementById("results");
  grid.replaceChildren();
  let exact = true;
  for (const hit of hits) {
    if (hit.relaxed && exact) {  // where the exact matches end: the rest relax a constraint
      exact = false;
      grid.append(el("div", { class: "exact-end" },
        `exact matches end here · below: nearest products without ${fillRelaxed.map(c => c.text).join(", ")}`));
    }
    const img = el("img", { src: hit.image, alt: hit.title, loading: "lazy" });
    img.addEventListener("error", () => { img.style.visibility = "hidden"; });
    const badges = el("div", {}, ...hit.channels.map(ch => el("span", { class: `badge ${ch}` }, ch)));
    grid.append(el("article", { class: hit.relaxed ? "card result relaxed" : "card result", "data-id": hit.product_id },
      img,
      el("div", { class: "title" }, hit.title),
      el("div", { class: "meta" }, `${hit.brand || "—"} · ${hit.category || "—"}`),
      badges,
      el("div", { class: "meta score" }, `score ${hit.score.toFixed(4)}`)));
  }
}

async function runSearch() {
  syncUrl();
  const status = document.getElementById("status");
  if (!state.q.trim()) { status.textContent = ""; return; }
  const params = new URLSearchParams({ q: state.q, k: "48" });
  for (const field of state.off) params.append("off", field);
  status.textContent = "searching…";
  try {
    const response = await fetch(`/search?${params}`);
    const body = await response.json();
    if (!response.ok) {
      status.className = "error";
      status.textContent = body.error || `error ${response.status}`;
      renderHits([]);
      return;
    }
    status.className = "";
    const t = body.timings.total_ms.toFixed(1);
    status.textContent = `${body.hits.length} results · ${t} ms · qid ${body.qid_hit ? "hit" : "miss"} · index ${body.version}`;
    if (body.relaxed.length) {
      status.textContent += ` · no exact match for ${body.relaxed.map(c => c.text).join(", ")}`;
    }
    renderConstraints(body.constraints, body.relaxed);
    renderHits(body.hits, body.fill_relaxed || []);
  } catch (err) {
    status.className = "error";
    status.textContent = `request failed: ${err}`;
  }
}

document.getElementById("search-form").addEventListener("submit", event => {
  event.preventDefault();
  state.q = document.getElementById("q").value;
  state.off = [];
  runSearch();
});

const initial = new URLSearchParams(location.search);
state.q = initial.get("q") || "";
state.off = initial.getAll("off");
document.getElementById("q").value = state.q;
runSearch();
