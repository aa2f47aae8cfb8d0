// Keeps the status page live: on each host event from `events`, and every 5 s (for calls/s
// and p99), re-fetches `plugins` (JSON) and redraws the table in place. Untrusted text is
// only ever set as text (textContent), never as markup. The cells mirror page.rs's.
"use strict";

const TOPICS = [
  "plughost.plugin.loaded", "plughost.plugin.reloaded", "plughost.plugin.refused",
  "plughost.plugin.unloaded", "plughost.config.applied", "plughost.circuit.changed",
];
const NONE = "–";
const live = document.getElementById("live");

// An element with children: strings become text; null and false are skipped.
function el(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function cell(field, ...children) {
  const td = el("td", ...children);
  td.dataset.field = field;
  return td;
}

const when = (rfc3339) => rfc3339.replace("T", " ").replace("Z", " UTC");
const reloads = (n) => (n === 1 ? "1 reload" : `${n} reloads`);

function milliseconds(ms) {
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 100) return `${ms.toFixed(0)} ms`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}

function stateNote(p) {
  const notes = [];
  if (p.circuit && p.circuit !== "closed") notes.push(`circuit ${p.circuit.replace("_", "-")}`);
  if (p.health && (p.health.status === "degraded" || p.health.status === "unhealthy")) {
    notes.push(p.health.reason ? `${p.health.status}: ${p.health.reason}` : p.health.status);
  }
  return notes.length ? el("small", notes.join("; ")) : null;
}

function row(p) {
  const c = p.calls;
  const badge = el("span", p.state);
  badge.className = `state ${p.state}`;
  const numeric = (field, text) => {
    const td = cell(field, text);
    td.className = "num";
    return td;
  };
  const refusal = p.last_refusal;
  const reason = refusal && el("span", refusal.reason);
  if (reason) reason.className = "bad";
  const tr = el("tr",
    cell("name", el("b", p.name), p.description && el("small", p.description)),
    cell("version", p.version ?? NONE),
    cell("state", badge, stateNote(p)),
    numeric("calls", c ? c.per_second.toFixed(1) : NONE),
    numeric("errors", c ? `${(c.error_rate * 100).toFixed(1)} %` : NONE),
    numeric("p99", c && c.calls > 0 ? milliseconds(c.p99_ms) : NONE),
    p.loaded_at ? cell("reload", when(p.loaded_at), el("small", reloads(p.reloads))) : cell("reload", NONE),
    refusal ? cell("refusal", reason, el("small", when(refusal.at))) : cell("refusal", NONE),
  );
  tr.dataset.plugin = p.name;
  return tr;
}

function refusedItem(r) {
  const reason = el("span", r.reason);
  reason.className = "bad";
  return el("li", reason, " ", el("small", when(r.at)));
}

function draw(list, health) {
  document.querySelector("#plugins tbody").replaceChildren(...list.plugins.map(row));
  const none = el("li", "none");
  none.className = "none";
  document.getElementById("refused").replaceChildren(
    ...(list.refused.length ? list.refused.map(refusedItem) : [none]));
  const running = list.plugins.filter((p) => p.state === "running").length;
  document.getElementById("count").textContent =
    `${running} of ${list.plugins.length} plugins running`;
  if (health) document.getElementById("uptime").textContent = duration(health.uptime_seconds);
}

// One refresh at a time; a request for another while one runs is done right after it.
let busy = false, again = false;
async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  try {
    const [plugins, health] = await Promise.all([fetch("plugins"), fetch("healthz")]);
    if (!plugins.ok) throw new Error(`GET plugins: ${plugins.status}`);
    draw(await plugins.json(), health.ok ? await health.json() : null);
  } catch (error) {
    console.warn("status page: refresh failed:", error);
  } finally {
    busy = false;
    if (again) { again = false; refresh(); }
  }
}

// Events come in bursts (a reload is unloaded + loaded + reloaded): one refresh for a burst.
let soon = null;
function refreshSoon() {
  if (soon === null) soon = setTimeout(() => { soon = null; refresh(); }, 50);
}

function indicate(state, text) {
  live.className = state;
  live.textContent = text;
}

function connect() {
  indicate("off", "connecting");
  const source = new EventSource(`events?topics=${encodeURIComponent(TOPICS.join(","))}`);
  // Events missed while disconnected are caught up by refreshing on every (re)connection.
  source.onopen = () => { indicate("on", "live"); refreshSoon(); };
  source.onerror = () => {
    indicate("lost", "disconnected");
    // The browser retries by itself unless the server refused the stream (429, say).
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  };
  for (const topic of TOPICS) source.addEventListener(topic, refreshSoon);
}

connect();
// `?refresh=SECONDS` sets the period, at least 1 s (0: events only, as the tests use it to
// see that events alone keep the page current).
const asked = Number(new URLSearchParams(location.search).get("refresh") ?? 5);
const period = Number.isFinite(asked) && asked >= 0 ? asked : 5;
if (period > 0) setInterval(refresh, Math.max(period, 1) * 1000);
