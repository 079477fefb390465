// aibridge-proxy admin console. Plain JavaScript, no dependencies, no build step.
//
// Rules this file keeps: everything that comes from the API is put on the page as text
// (textContent, never parsed as HTML); the admin token is sent once to /api/session and never kept;
// the CSRF token lives only in this page's memory; nothing goes to web storage or the URL.
"use strict";

const state = {
  csrf: null,
  page: null,
  providers: [],
  models: [],
  events: null,
  recent: [], // {at, tokens, error} of the last minute, from the live feed
  reloads: [],
  filter: {},
  cursors: [], // cursors of the pages before the current one
  nextCursor: null,
};

const PAGES = ["overview", "providers", "models", "tokens", "usage", "interceptions", "setup"];

// ---- small DOM helpers -------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with text content and attributes (never HTML). */
function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function button(label, onClick, cls) {
  const b = el("button", label, { type: "button" });
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.append(c);
    else td.textContent = c === null || c === undefined ? "" : String(c);
    tr.append(td);
  }
  return tr;
}

function fillBody(table, rows) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...rows);
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleString();
}

function num(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString();
}

function flash(message) {
  const f = $("flash");
  f.textContent = message;
  f.hidden = !message;
}

// ---- API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && (body.detail || body.error);
    super(detail ? `${body.error}: ${body.detail || ""}`.replace(/: $/, "") : `HTTP ${status}`);
    this.status = status;
  }
}

/** Call the API with the session cookie; writes carry the CSRF token. */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (res.status === 401 && path !== "/api/session") {
    signedOut();
    throw new ApiError(401, { error: "signed out", detail: "sign in again" });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/** Run `fn`, showing its error (the server's reason) in `target`. */
async function guarded(target, fn) {
  const out = $(target);
  out.textContent = "";
  try {
    await fn();
  } catch (e) {
    out.textContent = e.message;
  }
}

// ---- session -----------------------------------------------------------------------------

async function checkSession() {
  try {
    const s = await api("GET", "/api/session");
    state.csrf = s.csrf_token;
    signedIn();
  } catch (_) {
    signedOut();
  }
}

function signedIn() {
  $("nav").hidden = false;
  $("signout").hidden = false;
  $("live").hidden = false;
  connectEvents();
  route();
}

function signedOut() {
  state.csrf = null;
  if (state.events) state.events.close();
  state.events = null;
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("live").hidden = true;
  show("signin");
}

async function signIn(ev) {
  ev.preventDefault();
  const input = $("signin-token");
  await guarded("signin-error", async () => {
    const s = await api("POST", "/api/session", { token: input.value });
    input.value = "";
    state.csrf = s.csrf_token;
    if (!location.hash || location.hash === "#signin") location.hash = "#overview";
    signedIn();
  });
}

async function signOut() {
  try {
    await api("DELETE", "/api/session");
  } catch (_) {
    // Signed out either way.
  }
  signedOut();
}

// ---- routing -----------------------------------------------------------------------------

function show(page) {
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== `page-${page}`;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#${page}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  state.page = page;
}

function route() {
  if (!state.csrf) return signedOut();
  let page = location.hash.replace(/^#/, "");
  if (!PAGES.includes(page)) page = "overview";
  show(page);
  flash("");
  const load = LOADERS[page];
  if (load) load().catch((e) => flash(e.message));
}

const LOADERS = {
  overview: loadOverview,
  providers: loadProviders,
  models: loadModels,
  tokens: loadTokens,
  usage: loadUsage,
  interceptions: () => loadInterceptions(null),
  setup: async () => renderEnv("setup-env", $("setup-proxy").value, "TOKEN"),
};

// ---- overview ----------------------------------------------------------------------------

function renderStatus(s) {
  $("ov-ready").textContent = s.ready ? "ready" : "not ready";
  $("ov-ready").className = "value " + (s.ready ? "ok" : "bad");
  $("ov-generation").textContent = String(s.generation);
  $("ov-loaded").textContent = s.loaded_at ? `loaded ${when(s.loaded_at)}` : "";
  $("ov-dropped").textContent = num(s.records.dropped);
  $("ov-written").textContent = `${num(s.records.written)} written`;
  $("ov-reload-counts").textContent = `${num(s.reloads.ok)} ok, ${num(s.reloads.error)} failed since start`;
}

function renderRates() {
  const cutoff = Date.now() - 60_000;
  state.recent = state.recent.filter((r) => r.at >= cutoff);
  $("ov-rate").textContent = num(state.recent.length);
  $("ov-tpm").textContent = num(state.recent.reduce((a, r) => a + r.tokens, 0));
  $("ov-errors").textContent = num(state.recent.filter((r) => r.error).length);
}

function noteRecord(r) {
  const at = Date.parse(r.started_at) + (r.duration_ms || 0);
  state.recent.push({
    at: isNaN(at) ? Date.now() : at,
    tokens: (r.input_tokens || 0) + (r.output_tokens || 0),
    error: r.status >= 400 || (r.outcome && r.outcome !== "completed"),
  });
}

function renderReloads() {
  $("ov-reloads").replaceChildren(
    ...state.reloads.slice(0, 10).map((r) =>
      r.failed
        ? el("li", `${r.failed} reload(s) failed by ${when(r.at)}; the previous router keeps serving`, { class: "warning" })
        : el("li", `generation ${r.generation} loaded ${when(r.loaded_at)}`),
    ),
  );
}

async function loadOverview() {
  const [status, providers, recent] = await Promise.all([
    api("GET", "/api/v1/status"),
    api("GET", "/api/v1/providers"),
    api("GET", `/api/v1/interceptions?limit=1000&since=${encodeURIComponent(new Date(Date.now() - 60_000).toISOString())}`),
  ]);
  renderStatus(status);
  state.recent = [];
  recent.items.forEach(noteRecord);
  renderRates();
  renderReloads();
  fillBody(
    "ov-providers",
    providers.items.map((p) => {
      const warnings = el("ul", null, { class: "plain" });
      warnings.append(...p.warnings.map((w) => el("li", w)));
      return row([p.name, el("span", p.status, { class: `badge ${p.status}` }), p.hosts.join(", "), warnings]);
    }),
  );
}

// ---- providers ---------------------------------------------------------------------------

async function loadProviders() {
  const list = await api("GET", "/api/v1/providers");
  state.providers = list.items;
  fillBody(
    "providers-table",
    list.items.map((p) => {
      const keys = el("ul", null, { class: "plain" });
      for (const k of p.api_keys) {
        const li = el("li");
        li.append(el("code", k.masked), " ");
        li.append(button("Remove", () => removeKey(p, k), "small danger"));
        keys.append(li);
      }
      const actions = el("div", null, { class: "rowactions" });
      actions.append(
        button("Edit", () => editProvider(p), "small"),
        button(p.enabled ? "Disable" : "Enable", () => toggleProvider(p), "small"),
        button("Add key", () => openKeyForm(p), "small"),
      );
      const status = el("span", p.status, { class: `badge ${p.status}` });
      const statusCell = el("div");
      statusCell.append(status);
      for (const w of p.warnings) statusCell.append(el("div", w, { class: "warning" }));
      return row([p.name, p.kind, p.base_url, p.hosts.join(", "), statusCell, keys, actions]);
    }),
  );
}

function providerFormReset() {
  $("provider-form").reset();
  $("provider-id").value = "";
  $("provider-form-title").textContent = "Add a provider";
  $("provider-submit").textContent = "Create provider";
  $("provider-cancel").hidden = true;
  $("provider-key-label").hidden = false;
  $("provider-error").textContent = "";
}

function editProvider(p) {
  $("provider-id").value = p.id;
  $("provider-name").value = p.name;
  $("provider-kind").value = p.kind;
  $("provider-base-url").value = p.base_url;
  $("provider-hosts").value = p.intercept_hosts.join(", ");
  $("provider-enabled").checked = p.enabled;
  $("provider-enforce").checked = p.enforce_models;
  $("provider-form-title").textContent = `Edit ${p.name}`;
  $("provider-submit").textContent = "Save changes";
  $("provider-cancel").hidden = false;
  $("provider-key-label").hidden = true; // keys are added one at a time, below
  $("provider-name").focus();
}

async function submitProvider(ev) {
  ev.preventDefault();
  await guarded("provider-error", async () => {
    const id = $("provider-id").value;
    const body = {
      name: $("provider-name").value.trim(),
      kind: $("provider-kind").value,
      base_url: $("provider-base-url").value.trim(),
      intercept_hosts: $("provider-hosts").value.split(",").map((h) => h.trim()).filter(Boolean),
      enabled: $("provider-enabled").checked,
      enforce_models: $("provider-enforce").checked,
    };
    if (id) {
      await api("PATCH", `/api/v1/providers/${encodeURIComponent(id)}`, body);
    } else {
      const key = $("provider-key").value;
      if (key) body.api_keys = [key];
      await api("POST", "/api/v1/providers", body);
    }
    $("provider-key").value = "";
    providerFormReset();
    await loadProviders();
  });
}

async function toggleProvider(p) {
  await guarded("provider-error", async () => {
    await api("PATCH", `/api/v1/providers/${encodeURIComponent(p.id)}`, { enabled: !p.enabled });
    await loadProviders();
  });
}

function openKeyForm(p) {
  $("key-provider").value = p.id;
  $("key-form-title").textContent = `Add a key to ${p.name}`;
  $("key-form").hidden = false;
  $("key-value").focus();
}

async function submitKey(ev) {
  ev.preventDefault();
  await guarded("key-error", async () => {
    const id = $("key-provider").value;
    await api("POST", `/api/v1/providers/${encodeURIComponent(id)}/keys`, { api_key: $("key-value").value });
    $("key-value").value = "";
    $("key-form").hidden = true;
    await loadProviders();
  });
}

async function removeKey(p, k) {
  if (!confirm(`Remove key ${k.masked} from ${p.name}?`)) return;
  await guarded("provider-error", async () => {
    await api("DELETE", `/api/v1/providers/${encodeURIComponent(p.id)}/keys/${encodeURIComponent(k.id)}`);
    await loadProviders();
  });
}

// ---- models ------------------------------------------------------------------------------

async function loadModels() {
  const [models, providers] = await Promise.all([api("GET", "/api/v1/models"), api("GET", "/api/v1/providers")]);
  state.models = models.items;
  state.providers = providers.items;
  const names = new Map(providers.items.map((p) => [p.id, p.name]));
  const select = $("model-provider");
  const chosen = select.value;
  select.replaceChildren(...providers.items.map((p) => el("option", p.name, { value: p.name })));
  if (chosen) select.value = chosen;
  $("models-empty").hidden = models.items.length > 0;
  fillBody(
    "models-table",
    models.items.map((m) => {
      const radio = el("input", null, {
        type: "radio",
        name: "default-model",
        value: m.id,
        "aria-label": `Make ${m.model} the default`,
      });
      radio.checked = m.is_default;
      radio.addEventListener("change", () => setDefault(m));
      const enabled = el("input", null, { type: "checkbox", "aria-label": `${m.model} enabled` });
      enabled.checked = m.enabled;
      enabled.addEventListener("change", () => patchModel(m, { enabled: enabled.checked }));
      const actions = el("div", null, { class: "rowactions" });
      actions.append(button("Edit", () => editModel(m), "small"), button("Remove", () => removeModel(m), "small danger"));
      return row([radio, m.model, names.get(m.provider_id) || m.provider_id, m.display_name || "", enabled, actions]);
    }),
  );
}

async function setDefault(m) {
  const out = $("default-error");
  out.textContent = "";
  $("models-table").setAttribute("aria-busy", "true");
  try {
    await api("PUT", "/api/v1/default-model", { model_id: m.id });
  } catch (e) {
    out.textContent = e.message;
  }
  // Whatever happened, show the server's truth: exactly one default when models exist.
  try {
    await loadModels();
  } finally {
    $("models-table").removeAttribute("aria-busy");
  }
}

async function patchModel(m, patch) {
  const out = $("default-error");
  out.textContent = "";
  try {
    await api("PATCH", `/api/v1/models/${encodeURIComponent(m.id)}`, patch);
  } catch (e) {
    out.textContent = e.message;
  }
  await loadModels();
}

async function removeModel(m) {
  if (!confirm(`Remove model ${m.model}?`)) return;
  await patchGuard(() => api("DELETE", `/api/v1/models/${encodeURIComponent(m.id)}`));
}

async function patchGuard(fn) {
  await guarded("default-error", fn);
  await loadModels();
}

function editModel(m) {
  $("model-id").value = m.id;
  $("model-name").value = m.model;
  $("model-display").value = m.display_name || "";
  $("model-provider").disabled = true; // a model stays with its provider
  $("model-form-title").textContent = `Edit ${m.model}`;
  $("model-submit").textContent = "Save changes";
  $("model-cancel").hidden = false;
  $("model-error").textContent = "";
  $("model-name").focus();
}

function modelFormReset() {
  $("model-id").value = "";
  $("model-name").value = "";
  $("model-display").value = "";
  $("model-provider").disabled = false;
  $("model-form-title").textContent = "Add a model";
  $("model-submit").textContent = "Add model";
  $("model-cancel").hidden = true;
}

async function submitModel(ev) {
  ev.preventDefault();
  await guarded("model-error", async () => {
    const id = $("model-id").value;
    const model = $("model-name").value.trim();
    const display = $("model-display").value.trim();
    if (id) {
      await api("PATCH", `/api/v1/models/${encodeURIComponent(id)}`, { model, display_name: display || null });
    } else {
      const body = { provider: $("model-provider").value, model };
      if (display) body.display_name = display;
      await api("POST", "/api/v1/models", body);
    }
    modelFormReset();
    await loadModels();
  });
}

// ---- agent tokens ------------------------------------------------------------------------

async function loadTokens() {
  const list = await api("GET", "/api/v1/tokens");
  fillBody(
    "tokens-table",
    list.items.map((t) => {
      const revoked = Boolean(t.revoked_at);
      const actions = revoked ? "" : button(`Revoke`, () => revokeToken(t), "small danger");
      if (actions) actions.setAttribute("aria-label", `Revoke the token of ${t.user}`);
      return row([t.user, when(t.created_at), when(t.last_used_at), revoked ? `revoked ${when(t.revoked_at)}` : "active", actions]);
    }),
  );
}

async function submitToken(ev) {
  ev.preventDefault();
  await guarded("token-error", async () => {
    const created = await api("POST", "/api/v1/tokens", { user: $("token-user").value.trim() });
    $("token-user").value = "";
    $("token-value").textContent = created.token;
    $("token-copied").textContent = "";
    $("token-created").hidden = false;
    renderEnv("token-env", $("token-proxy").value, created.token, created.user);
    $("token-copy").focus();
    await loadTokens();
  });
}

function hideCreatedToken() {
  $("token-value").textContent = "";
  $("token-env").replaceChildren();
  $("token-created").hidden = true;
}

async function revokeToken(t) {
  if (!confirm(`Revoke the token of ${t.user}? Agents using it are refused from the next request.`)) return;
  await guarded("token-error", async () => {
    await api("DELETE", `/api/v1/tokens/${encodeURIComponent(t.id)}`);
    await loadTokens();
  });
}

async function copyText(text, statusId) {
  try {
    await navigator.clipboard.writeText(text);
    $(statusId).textContent = "Copied.";
  } catch (_) {
    $(statusId).textContent = "Copy failed: select the text and copy it by hand.";
  }
}

/** The environment lines of each agent runtime, for a proxy address and a token. */
function envLines(proxy, token, user) {
  const u = encodeURIComponent(user || "agent");
  const t = token === "TOKEN" ? "TOKEN" : encodeURIComponent(token);
  const url = `http://${u}:${t}@${proxy}`;
  const ca = "$PWD/aibridge-ca.pem";
  return [
    ["curl", `export HTTPS_PROXY=${url}\nexport SSL_CERT_FILE=${ca}\ncurl https://api.openai.com/v1/models`],
    ["Python (openai, anthropic, httpx)", `export HTTPS_PROXY=${url}\nexport SSL_CERT_FILE=${ca}\nexport REQUESTS_CA_BUNDLE=${ca}   # requests`],
    ["Node", `export HTTPS_PROXY=${url}\nexport NODE_EXTRA_CA_CERTS=${ca}`],
    ["Claude Code", `export HTTPS_PROXY=${url}\nexport NODE_EXTRA_CA_CERTS=${ca}\nexport ANTHROPIC_API_KEY=anything\nclaude`],
    ["Codex", `export HTTPS_PROXY=${url}\ncat /etc/ssl/certs/ca-certificates.crt ${ca} > codex-roots.pem\nexport SSL_CERT_FILE=$PWD/codex-roots.pem\nexport OPENAI_API_KEY=anything\ncodex`],
  ];
}

function renderEnv(target, proxy, token, user) {
  const box = $(target);
  box.replaceChildren();
  envLines(proxy || defaultProxy(), token, user).forEach(([name, text], i) => {
    const id = `${target}-${i}`;
    const wrap = el("div", null, { class: "env" });
    const head = el("div", null, { class: "envhead" });
    head.append(el("h3", name), button(`Copy ${name} lines`, () => copyText(text, `${id}-status`), "small"));
    wrap.append(head, el("pre", text, { class: "text", id }), el("p", "", { class: "sub", id: `${id}-status`, role: "status" }));
    box.append(wrap);
  });
}

function defaultProxy() {
  return `${location.hostname || "127.0.0.1"}:8888`;
}

// ---- usage -------------------------------------------------------------------------------

const RANGES = { "24h": [1, "hour"], "7d": [7, "hour"], "30d": [30, "day"], "90d": [90, "day"] };

async function loadUsage() {
  const [days, bucket] = RANGES[$("usage-range").value] || RANGES["24h"];
  const group = $("usage-group").value;
  const metric = $("usage-metric").value;
  const step = bucket === "hour" ? 3_600_000 : 86_400_000;
  const until = new Date(Math.ceil((Date.now() + 1) / step) * step);
  const since = new Date(until.getTime() - days * 86_400_000);
  const q = new URLSearchParams({ bucket, group_by: group, since: since.toISOString(), until: until.toISOString() });
  const usage = await api("GET", `/api/v1/usage?${q}`);
  $("usage-key-head").textContent = group;
  $("usage-caption").textContent = `${metric === "tokens" ? "Tokens (input + output)" : "Requests"} per ${bucket}, per ${group}`;
  drawChart(usage.buckets, since.getTime(), until.getTime(), step, metric);
  const sum = (k) => usage.items.reduce((a, r) => a + r[k], 0);
  fillBody(
    "usage-totals",
    usage.items.map((r) => row([r.key ?? "(none)", num(r.requests), num(r.input_tokens), num(r.output_tokens), num(r.cache_read_tokens), num(r.cache_write_tokens)])),
  );
  const foot = $("usage-totals").tFoot.rows[0].cells;
  ["requests", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"].forEach((k, i) => {
    foot[i + 1].textContent = num(sum(k));
  });
}

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#db2777", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4b5563"];

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

/** A stacked bar chart: one bar per bucket, one colour per group (top 7 + "other"). */
function drawChart(buckets, since, until, step, metric) {
  const value = (b) => (metric === "tokens" ? b.input_tokens + b.output_tokens : b.requests);
  const totals = new Map();
  for (const b of buckets) totals.set(b.key ?? "(none)", (totals.get(b.key ?? "(none)") || 0) + value(b));
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([k]) => k);
  const shown = ranked.slice(0, 7);
  const series = ranked.length > 7 ? [...shown, "other"] : shown;
  const n = Math.max(1, Math.round((until - since) / step));
  const stacks = Array.from({ length: n }, () => new Map());
  for (const b of buckets) {
    const i = Math.floor((Date.parse(b.bucket) - since) / step);
    if (i < 0 || i >= n) continue;
    const key = shown.includes(b.key ?? "(none)") ? b.key ?? "(none)" : "other";
    stacks[i].set(key, (stacks[i].get(key) || 0) + value(b));
  }
  const max = niceTop(Math.max(1, ...stacks.map((s) => [...s.values()].reduce((a, v) => a + v, 0))));
  const W = 800, H = 260, L = 56, B = 28, T = 10, R = 8;
  const plotW = W - L - R, plotH = H - T - B;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "usage-caption", class: "bars" });
  for (let g = 0; g <= 4; g++) {
    const y = T + plotH - (plotH * g) / 4;
    chart.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", class: "axis" }, compact((max * g) / 4)));
  }
  const bw = plotW / n;
  stacks.forEach((s, i) => {
    let y = T + plotH;
    series.forEach((key, c) => {
      const v = s.get(key) || 0;
      if (!v) return;
      const h = (plotH * v) / max;
      y -= h;
      const rect = svg("rect", { x: L + i * bw + bw * 0.1, y, width: Math.max(1, bw * 0.8), height: h, fill: COLORS[c % COLORS.length] });
      rect.append(svg("title", {}, `${new Date(since + i * step).toLocaleString()} · ${key}: ${v.toLocaleString()}`));
      chart.append(rect);
    });
  });
  const labels = Math.min(n, 6);
  for (let j = 0; j < labels; j++) {
    const i = Math.floor((j * n) / labels);
    const d = new Date(since + i * step);
    const text = step < 86_400_000 ? `${d.getMonth() + 1}/${d.getDate()} ${d.getHours()}:00` : `${d.getMonth() + 1}/${d.getDate()}`;
    chart.append(svg("text", { x: L + i * bw, y: H - 8, class: "axis" }, text));
  }
  if (!buckets.length) chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "No usage in this range"));
  $("usage-chart").replaceChildren(chart);
  $("usage-legend").replaceChildren(
    ...series.map((key, c) => {
      const li = el("li");
      const swatch = el("span", null, { class: `swatch c${c % COLORS.length}`, "aria-hidden": "true" });
      li.append(swatch, el("span", key));
      return li;
    }),
  );
}

/** The smallest 4 × (1, 2 or 5 × 10^k) at or above `v`, so the axis reads in round steps. */
function niceTop(v) {
  const raw = v / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
  return Math.max(4, step * 4);
}

function compact(v) {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return String(Math.round(v));
}

// ---- interceptions -----------------------------------------------------------------------

function readFilter() {
  const f = {};
  for (const k of ["user", "provider", "model", "route", "tool"]) {
    const v = $(`f-${k}`).value.trim();
    if (v) f[k] = v;
  }
  return f;
}

function matchesFilter(r) {
  const f = state.filter;
  return ["user", "provider", "model", "route"].every((k) => !f[k] || r[k] === f[k]) && !f.tool;
}

function interceptionRow(r) {
  const open = button(when(r.started_at), () => openDetail(r.id), "link");
  open.setAttribute("aria-label", `Details of the request of ${r.started_at}`);
  const tr = row([
    open,
    r.user,
    r.provider,
    r.model || "",
    r.route,
    r.outcome,
    r.status,
    `${num(r.input_tokens)} / ${num(r.output_tokens)}`,
    `${r.duration_ms} ms`,
    r.ttfb_ms == null ? "" : `${r.ttfb_ms} ms`,
  ]);
  tr.dataset.id = r.id;
  return tr;
}

async function loadInterceptions(cursor) {
  const q = new URLSearchParams({ ...state.filter, limit: "50" });
  if (cursor) q.set("cursor", cursor);
  await guarded("interceptions-error", async () => {
    const list = await api("GET", `/api/v1/interceptions?${q}`);
    state.nextCursor = list.next_cursor;
    state.currentCursor = cursor;
    fillBody("interceptions-table", list.items.map(interceptionRow));
    $("page-older").disabled = !list.next_cursor;
    $("page-newest").disabled = !cursor;
  });
}

async function openDetail(id) {
  await guarded("interceptions-error", async () => {
    const r = await api("GET", `/api/v1/interceptions/${encodeURIComponent(id)}`);
    const fields = [
      ["Request id", r.request_id], ["User", r.user], ["Provider", r.provider], ["Model", r.model || ""],
      ["Request", `${r.method} ${r.path}`], ["Status", r.status], ["Outcome", r.outcome], ["Route", r.route],
      ["Transport", r.transport], ["Started", when(r.started_at)], ["Duration", `${r.duration_ms} ms`],
      ["TTFB", r.ttfb_ms == null ? "" : `${r.ttfb_ms} ms`],
      ["Tokens", `in ${num(r.input_tokens)}, out ${num(r.output_tokens)}, cache read ${num(r.cache_read_tokens)}, cache write ${num(r.cache_write_tokens)} (${r.usage_source})`],
      ["Error", r.error || ""],
    ];
    $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
    $("detail-prompt").textContent = r.prompt ? r.prompt.text + (r.prompt.truncated ? "\n[truncated]" : "") : "(no prompt recorded)";
    $("detail-tools").replaceChildren(
      ...r.tool_calls.map((c) => {
        const li = el("li");
        li.append(el("strong", c.name), el("span", ` (${c.type}${c.call_id ? `, ${c.call_id}` : ""})`), el("pre", c.arguments, { class: "text" }));
        return li;
      }),
    );
    if (!r.tool_calls.length) $("detail-tools").append(el("li", "(none)"));
    $("detail").hidden = false;
    $("detail-title").focus();
    $("detail").scrollIntoView({ block: "start" });
  });
}

// ---- live feed ---------------------------------------------------------------------------

function connectEvents() {
  if (state.events) return;
  const es = new EventSource("/api/v1/events");
  state.events = es;
  es.addEventListener("open", () => setLive(true));
  es.addEventListener("error", () => {
    setLive(false); // EventSource reconnects by itself, unless the server refused it
    if (es.readyState === EventSource.CLOSED) {
      state.events = null;
      checkSession();
    }
  });
  es.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    if (state.lastReloadErrors !== undefined && s.reloads.error > state.lastReloadErrors) {
      state.reloads.unshift({ failed: s.reloads.error - state.lastReloadErrors, at: new Date().toISOString() });
    }
    state.lastReloadErrors = s.reloads.error;
    if (state.page === "overview") {
      renderStatus(s);
      renderReloads();
    }
  });
  es.addEventListener("reload", (e) => {
    const r = JSON.parse(e.data);
    state.reloads.unshift(r);
    state.reloads = state.reloads.slice(0, 20);
    if (state.page === "overview") {
      renderReloads();
      $("ov-generation").textContent = String(r.generation);
    }
  });
  es.addEventListener("interception", (e) => {
    const r = JSON.parse(e.data);
    noteRecord(r);
    if (state.page === "overview") renderRates();
    if (state.page === "interceptions" && !state.currentCursor && matchesFilter(r)) {
      const body = $("interceptions-table").tBodies[0];
      if (!body.querySelector(`tr[data-id="${CSS.escape(r.id)}"]`)) body.prepend(interceptionRow(r));
      while (body.rows.length > 50) body.deleteRow(body.rows.length - 1);
    }
  });
  es.addEventListener("lagged", () => {
    if (state.page === "interceptions" && !state.currentCursor) loadInterceptions(null);
  });
}

function setLive(on) {
  $("live").textContent = on ? "live" : "reconnecting…";
  $("live").className = on ? "live on" : "live";
}

// ---- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("provider-form").addEventListener("submit", submitProvider);
  $("provider-cancel").addEventListener("click", providerFormReset);
  $("key-form").addEventListener("submit", submitKey);
  $("key-cancel").addEventListener("click", () => ($("key-form").hidden = true));
  $("model-form").addEventListener("submit", submitModel);
  $("model-cancel").addEventListener("click", () => {
    modelFormReset();
    $("model-error").textContent = "";
  });
  $("token-form").addEventListener("submit", submitToken);
  $("token-copy").addEventListener("click", () => copyText($("token-value").textContent, "token-copied"));
  $("token-done").addEventListener("click", hideCreatedToken);
  $("token-proxy").value = defaultProxy();
  $("token-proxy").addEventListener("input", () => {
    const token = $("token-value").textContent;
    if (token) renderEnv("token-env", $("token-proxy").value, token);
  });
  $("setup-proxy").value = defaultProxy();
  $("setup-proxy").addEventListener("input", () => renderEnv("setup-env", $("setup-proxy").value, "TOKEN"));
  for (const id of ["usage-range", "usage-group", "usage-metric"]) {
    $(id).addEventListener("change", () => loadUsage().catch((e) => flash(e.message)));
  }
  $("usage-form").addEventListener("submit", (ev) => ev.preventDefault());
  $("filter-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.filter = readFilter();
    state.cursors = [];
    loadInterceptions(null);
  });
  $("page-older").addEventListener("click", () => {
    if (!state.nextCursor) return;
    state.cursors.push(state.currentCursor);
    loadInterceptions(state.nextCursor);
  });
  $("page-newest").addEventListener("click", () => {
    state.cursors = [];
    loadInterceptions(null);
  });
  $("detail-close").addEventListener("click", () => ($("detail").hidden = true));
  $("detail-title").setAttribute("tabindex", "-1");
  window.addEventListener("hashchange", route);
  setInterval(() => state.page === "overview" && renderRates(), 5000);
  checkSession();
});
