// hotserve dashboard: one EventSource (/dashboard/stream) feeds everything; no polling.
// Messages: `state` (one worker's models and versions), `event` (the event bus, tagged with the
// worker), `tick` (one second, merged over every worker: requests, errors, p50/p99 per version).
"use strict";

const WINDOW_SECONDS = 120;        // seconds shown in the charts
const KEEP_SECONDS = 600;
const TIMELINE_MAX = 300;
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#0d9488"];
// Kinds shown in the timeline unless "every event" is ticked.
const QUIET = new Set(["version_state", "version_forgotten", "load_start", "retire"]);
// Kinds drawn as markers on the charts.
const MARKED = new Set(["swap", "rollback", "canary_decision"]);

const S = {
  workers: {},          // worker id -> its latest state message
  ticks: new Map(),     // t -> merged tick
  seen: new Set(),      // worker:seq:time of events already shown
  events: [],           // shown timeline entries, newest first
  markers: {},          // model -> [{t, label, color}]
  learning: {},         // model -> last learned_version_served event
  lastTick: null,
};
const cards = {};       // model -> {el, charts, keys, ...}

const $ = (sel, root = document) => root.querySelector(sel);
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c.nodeType ? c : document.createTextNode(String(c)));
  return el;
}
function colorOf(version) { const n = parseInt(version, 10); return isNaN(n) ? "#6b7280" : PALETTE[n % PALETTE.length]; }
function mib(bytes) { return bytes == null ? "–" : bytes > 0 && bytes < 104858 ? "<0.1 MiB" : (bytes / 1048576).toFixed(1) + " MiB"; }
function fmtMs(ms) { return ms == null ? "–" : ms < 1 ? ms.toFixed(3) + " ms" : ms < 100 ? ms.toFixed(2) + " ms" : ms.toFixed(0) + " ms"; }
function clock(t) { return new Date(t * 1000).toLocaleTimeString([], {hour12: false}); }
function workerIds() { return Object.keys(S.workers).sort((a, b) => a - b); }

// ---- the stream ------------------------------------------------------------------------------
function connect() {
  const es = new EventSource("/dashboard/stream");
  const conn = $("#conn");
  es.onopen = () => { conn.textContent = "live"; conn.className = "conn conn-live"; };
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn conn-wait"; };
  es.addEventListener("state", e => { const s = JSON.parse(e.data); S.workers[s.worker] = s; scheduleRender(); });
  es.addEventListener("bye", e => { delete S.workers[JSON.parse(e.data).worker]; scheduleRender(); });
  es.addEventListener("event", e => onEvent(JSON.parse(e.data)));
  es.addEventListener("tick", e => onTick(JSON.parse(e.data)));
}

function onTick(tick) {
  S.ticks.set(tick.t, tick);
  if (!S.lastTick || tick.t >= S.lastTick.t) S.lastTick = tick;
  for (const t of S.ticks.keys()) if (t < tick.t - KEEP_SECONDS) S.ticks.delete(t);
  renderWorkers();
  for (const name of Object.keys(cards)) updateCharts(name);
}

// ---- events and the timeline -----------------------------------------------------------------
function kindClass(kind) {
  if (kind.startsWith("learn")) return "k-learn";
  if (kind.includes("delta")) return "k-delta";
  return "k-" + kind;
}

function title(ev) {
  const v = ev.version;
  switch (ev.kind) {
    case "swap": {
      if (ev.default == null) return "nothing serving";
      let s = `serving v${ev.default}`;
      if (ev.previous_default != null && ev.previous_default !== ev.default) s += ` (was v${ev.previous_default})`;
      if (ev.canary != null) s += `, canary v${ev.canary} at ${ev.canary_weight}%`;
      return s;
    }
    case "load_done": return `v${v} loaded in ${ev.seconds.toFixed(2)} s, ${mib(ev.memory_bytes)}`;
    case "load_failed": return `v${v} FAILED to load`;
    case "load_start": return `v${v} loading`;
    case "gate": return ev.passed ? `v${v} passed gate ${ev.gate}` : `v${v} FAILED gate ${ev.gate}`;
    case "rollback": return `rollback v${ev.from_version} → v${v} (${ev.reason})`;
    case "canary_decision": return ev.decision === "start" ? `canary v${v} starts` : `canary v${v}: ${ev.decision.replace("_", " ")}`;
    case "routing": return `routing changed by ${ev.source === "peer" ? "another worker" : ev.source} (${ev.action})`;
    case "unloaded": return `v${v} unloaded`;
    case "retire": return `v${v} retired, draining ${ev.in_flight}`;
    case "version_state": return `v${v} ${ev.state}`;
    case "learned_version_served": return `learned v${v} serving, fresh ${ev.freshness_seconds.toFixed(1)} s`;
    case "learner_candidate": return `learner candidate ${ev.outcome}` + (ev.version != null ? ` as v${ev.version}` : "");
    default: return ev.kind.replace(/_/g, " ") + (v != null && v >= 0 ? ` v${v}` : "");
  }
}

function onEvent(ev) {
  const id = `${ev.worker}:${ev.seq}:${ev.time}`;
  if (S.seen.has(id)) return;   // a reconnect replays the backlog
  S.seen.add(id);
  if (ev.kind === "learned_version_served") { S.learning[ev.model] = ev; scheduleRender(); }
  if (MARKED.has(ev.kind)) addMarker(ev);
  // The same thing happening on several workers is one line with their badges (a version's
  // load or unload is the same thing even if it took each worker a different time).
  const perVersion = ["load_done", "load_failed", "load_start", "unloaded", "retire"].includes(ev.kind);
  const key = perVersion ? `${ev.kind}|${ev.model}|${ev.version}` : `${ev.kind}|${ev.model}|${ev.message}`;
  const same = S.events.find(e => e.key === key && !e.workers.includes(ev.worker) && Math.abs(e.time - ev.time) < 5);
  if (same) {
    same.workers.push(ev.worker);
    same.workers.sort();
    updateRow(same);
    return;
  }
  const entry = {key, time: ev.time, kind: ev.kind, model: ev.model, ev, workers: [ev.worker], row: null};
  let i = 0;
  while (i < S.events.length && S.events[i].time > ev.time) i++;
  S.events.splice(i, 0, entry);
  if (S.events.length > TIMELINE_MAX) { const gone = S.events.pop(); if (gone.row) gone.row.remove(); }
  if (shown(entry)) insertRow(entry, i);
}

function shown(entry) {
  if ($("#show-all").checked) return true;
  if (entry.kind === "gate") return !entry.ev.passed;
  return !QUIET.has(entry.kind);
}

function insertRow(entry, index) {
  const ev = entry.ev;
  entry.row = h("li", {class: `level-${ev.level || "info"}` + (Date.now() / 1000 - ev.time < 5 ? " fresh" : ""),
                       "data-kind": ev.kind, "data-model": ev.model},
    h("span", {class: "t"}, clock(ev.time)),
    h("div", {},
      h("span", {class: "k " + kindClass(ev.kind)}, ev.kind.replace(/_/g, " ")),
      ev.model ? h("b", {}, ev.model + " ") : null,
      h("span", {class: "title"}, title(ev)),
      h("span", {class: "wks"}),
      h("div", {class: "msg"}, ev.message)));
  updateRow(entry);
  const list = $("#timeline");
  // Keep newest first: insert before the next shown entry that is older.
  const next = S.events.slice(index + 1).find(e => e.row && e.row.isConnected);
  if (next) list.insertBefore(entry.row, next.row); else list.append(entry.row);
}

function updateRow(entry) {
  if (!entry.row) return;
  const n = Object.keys(S.workers).length;
  const box = $(".wks", entry.row);
  box.textContent = "";
  if (n > 1 || entry.workers.length > 1) for (const w of entry.workers) box.append(h("span", {class: "wk"}, "w" + w));
}

function rebuildTimeline() {
  $("#timeline").textContent = "";
  S.events.forEach((e, i) => { e.row = null; if (shown(e)) insertRow(e, i); });
}

function addMarker(ev) {
  const list = S.markers[ev.model] || (S.markers[ev.model] = []);
  let label, color;
  if (ev.kind === "swap") {
    if (ev.default == null || ev.default === ev.previous_default) return;
    label = `→ v${ev.default}`; color = colorOf(ev.default);
  } else if (ev.kind === "rollback") { label = `rollback → v${ev.version}`; color = "#ea580c"; }
  else { if (ev.decision === "start") return; label = `canary ${ev.decision}`; color = "#ca8a04"; }
  if (list.some(m => m.label === label && Math.abs(m.t - ev.time) < 5)) return;  // other workers' copy
  list.push({t: ev.time, label, color});
}

// ---- models ----------------------------------------------------------------------------------
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderModels(); renderWorkers(); });
}

function mergedModels() {
  // model -> {doc: the first worker's, perWorker: {w: doc}}
  const out = {};
  for (const w of workerIds()) {
    for (const m of S.workers[w].models || []) {
      const e = out[m.name] || (out[m.name] = {doc: m, perWorker: {}});
      e.perWorker[w] = m;
    }
  }
  return out;
}

function renderWorkers() {
  const ids = workerIds();
  const box = $("#workers");
  box.textContent = "";
  if (!ids.length) return;
  const ticked = S.lastTick && S.lastTick.workers ? S.lastTick.workers : {};
  box.append(h("span", {}, `${ids.length} worker${ids.length > 1 ? "s" : ""}: `));
  ids.forEach((w, i) => {
    const rss = ticked[w] && ticked[w].rss != null ? ticked[w].rss : S.workers[w].rss;
    box.append(h("span", {class: "worker", "data-worker": w}, i ? " · " : "", h("b", {}, "w" + w), " " + mib(rss)));
  });
}

function renderModels() {
  const models = mergedModels();
  const root = $("#models");
  const names = Object.keys(models).sort();
  if (!names.length) return;
  const empty = $(".empty", root);
  if (empty) empty.remove();
  for (const name of names) {
    if (!cards[name]) cards[name] = makeCard(name, root);
    fillCard(cards[name], models[name]);
  }
  for (const name of Object.keys(cards)) if (!models[name]) { cards[name].el.remove(); delete cards[name]; }
}

function makeCard(name, root) {
  const c = {name, keys: []};
  c.el = h("section", {class: "model", id: "model-" + name, "data-model": name});
  c.head = h("div", {class: "model-head"});
  c.now = h("div", {class: "now"});
  c.charts = h("div", {class: "charts"});
  c.extra = h("div", {class: "extra"});
  c.table = h("table", {class: "versions"});
  c.actions = makeActions(c);
  c.el.append(c.head, c.now, c.charts, c.extra, c.table, c.actions);
  root.append(c.el);
  c.plots = {};
  for (const [id, label] of [["rps", "requests / s by version"], ["lat", "latency ms: p50 solid, p99 dashed"], ["err", "errors / s by version"]]) {
    const box = h("div", {class: "chart", "data-chart": id}, h("h3", {}, label));
    c.charts.append(box);
    c.plots[id] = {box, plot: null};
  }
  return c;
}

function rolesOf(v, routing) {
  const roles = [];
  if (routing.default_version === v) roles.push(h("span", {class: "pill"}, "default"));
  if (routing.canary && routing.canary.version === v) roles.push(h("span", {class: "pill canary"}, `canary ${routing.canary.weight}%`));
  for (const [l, lv] of Object.entries(routing.labels || {})) if (lv === v) roles.push(h("span", {class: "pill"}, l));
  if (routing.pinned === v) roles.push(h("span", {class: "pill pin"}, "pinned"));
  if ((routing.rolled_back || []).includes(v)) roles.push(h("span", {class: "pill pin"}, "rolled back"));
  return roles;
}

function perWorker(values, fmt) {
  // One value if every worker agrees, else "w0 x · w1 y".
  const ws = Object.keys(values).sort((a, b) => a - b);
  const shown = ws.map(w => fmt(values[w]));
  if (ws.length <= 1 || shown.every(s => s === shown[0])) return shown[0] ?? "–";
  return ws.map((w, i) => `w${w} ${shown[i]}`).join(" · ");
}

function fillCard(c, m) {
  const doc = m.doc, r = doc.routing;
  // Head: what serves.
  c.head.textContent = "";
  c.head.append(...[h("h2", {}, doc.name),
    h("span", {class: "serving", "data-serving": r.default_version ?? ""},
      r.default_version != null ? `serving v${r.default_version}` : "nothing serving"),
    r.canary ? h("span", {class: "pill canary"}, `canary v${r.canary.version} at ${r.canary.weight}%`) : null,
    r.pinned != null ? h("span", {class: "pill pin"}, `pinned to v${r.pinned}`) : null,
    doc.outage ? h("span", {class: "pill outage"}, "storage unavailable") : null,
    h("span", {class: "path"}, doc.base_path)].filter(Boolean));
  const disagree = Object.values(m.perWorker).some(x => x.routing.default_version !== r.default_version);
  if (disagree) c.head.append(h("span", {class: "pill pin"}, "workers converging"));
  // Versions: union over workers.
  const byVersion = {};
  for (const [w, wm] of Object.entries(m.perWorker)) {
    for (const v of wm.versions) (byVersion[v.version] || (byVersion[v.version] = {}))[w] = v;
  }
  const versions = Object.keys(byVersion).map(Number).sort((a, b) => b - a);
  c.table.textContent = "";
  c.table.append(h("tr", {}, ...["version", "state", "role", "in flight", "memory", "load", "gates", "error"].map(x => h("th", {}, x))));
  for (const v of versions) {
    const per = byVersion[v];
    const any = Object.values(per)[0];
    const states = Object.fromEntries(Object.entries(per).map(([w, x]) => [w, x.state]));
    const failed = Object.values(per).some(x => x.state === "END" && x.error_code !== "OK");
    const inflight = Object.values(per).reduce((a, x) => a + (x.in_flight || 0), 0);
    const gates = (any.gates || []).map(g => h("span", {class: "gate " + (g.passed === false ? "fail" : "pass"),
      title: JSON.stringify(g)}, g.gate || g.name || "gate", g.seconds != null ? ` ${(g.seconds * 1000).toFixed(0)} ms` : ""));
    const errors = [...new Set(Object.values(per).map(x => x.error).filter(Boolean))];
    c.table.append(h("tr", {"data-version": v},
      h("td", {}, h("span", {class: "swatch", style: `background:${colorOf(v)}`}), "v" + v),
      h("td", {class: `state state-${any.state}` + (failed ? " failed" : "")}, perWorker(states, s => s)),
      h("td", {}, rolesOf(v, r)),
      h("td", {}, any.in_flight == null ? "–" : String(inflight)),
      h("td", {}, perWorker(Object.fromEntries(Object.entries(per).map(([w, x]) => [w, x.memory_bytes ?? null])),
                            b => b == null ? (any.size_bytes ? `files ${mib(any.size_bytes)}` : "–") : mib(b))),
      h("td", {}, any.load_seconds != null ? any.load_seconds.toFixed(2) + " s" : "–"),
      h("td", {}, gates.length ? gates : "–"),
      h("td", {class: "err"}, errors.join("; "))));
  }
  // Extras: learning freshness and whatever a feature adds to the model's state.
  c.extra.textContent = "";
  const learned = S.learning[doc.name];
  if (learned) {
    const ago = Math.max(0, Date.now() / 1000 - learned.time);
    c.extra.append(h("div", {class: "learning"}, h("b", {}, "learning: "),
      `v${learned.version} serves labels up to ${learned.watermark || "?"}, ${learned.freshness_seconds.toFixed(2)} s after the newest arrived (${ago.toFixed(0)} s ago)`));
  }
  for (const [k, val] of Object.entries(doc)) {
    if (["name", "base_path", "routing", "outage", "versions"].includes(k) || val == null) continue;
    c.extra.append(h("div", {}, h("b", {}, k + ": "), Object.entries(val).map(([a, b]) => `${a} ${typeof b === "object" ? JSON.stringify(b) : b}`).join(", ")));
  }
  fillActions(c, versions, r);
  updateCharts(c.name);
}

// ---- charts ----------------------------------------------------------------------------------
function seriesKeys(name, lo) {
  const keys = new Set();
  for (const [t, tick] of S.ticks) {
    if (t < lo) continue;
    for (const k of Object.keys(tick.series || {})) if (k.startsWith(name + "/")) keys.add(k);
  }
  return [...keys].sort((a, b) => parseInt(a.split("/").pop(), 10) - parseInt(b.split("/").pop(), 10));
}

function markerPlugin(name) {
  return {hooks: {draw: [u => {
    const marks = S.markers[name] || [];
    const [lo, hi] = [u.scales.x.min, u.scales.x.max];
    const ctx = u.ctx;
    ctx.save();
    ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
    for (const m of marks) {
      if (m.t < lo || m.t > hi) continue;
      const x = Math.round(u.valToPos(m.t, "x", true));
      ctx.strokeStyle = m.color; ctx.fillStyle = m.color; ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
      ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillText(m.label, x + 3 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
    }
    ctx.restore();
  }]}};
}

function updateCharts(name) {
  const c = cards[name];
  if (!c || !S.lastTick) return;
  // The last WINDOW_SECONDS, or everything since the first second this page has.
  const hi = S.lastTick.t, lo = Math.max(hi - WINDOW_SECONDS + 1, Math.min(...S.ticks.keys()));
  const keys = seriesKeys(name, lo);
  const xs = [];
  for (let t = lo; t <= hi; t++) xs.push(t);
  const col = (k, f) => xs.map(t => { const tick = S.ticks.get(t); const s = tick && tick.series ? tick.series[k] : null; return f(s, tick); });
  const versionOf = k => k.split("/").pop();
  const data = {
    rps: [xs, ...keys.map(k => col(k, (s, tick) => s ? s.n : (tick ? 0 : null)))],
    lat: [xs, ...keys.flatMap(k => [col(k, s => s ? s.p50 : null), col(k, s => s ? s.p99 : null)])],
    err: [xs, ...keys.map(k => col(k, (s, tick) => s ? s.err : (tick ? 0 : null)))],
  };
  const sig = keys.join(",");
  const width = Math.max(220, Math.floor(c.charts.clientWidth / 3) - 8);
  for (const id of ["rps", "lat", "err"]) {
    const p = c.plots[id];
    if (!p.plot || p.sig !== sig || p.width !== width) {
      if (p.plot) p.plot.destroy();
      const series = [{}];
      for (const k of keys) {
        const v = versionOf(k), color = colorOf(v);
        if (id === "lat") {
          series.push({label: `v${v} p50`, stroke: color, width: 2, spanGaps: false, value: (u, x) => x == null ? "–" : x.toFixed(2)});
          series.push({label: `v${v} p99`, stroke: color, width: 1.5, dash: [5, 4], value: (u, x) => x == null ? "–" : x.toFixed(2)});
        } else {
          series.push({label: `v${v}`, stroke: color, width: 2, fill: id === "rps" ? color + "22" : undefined,
                       value: (u, x) => x == null ? "–" : String(x)});
        }
      }
      p.plot = new uPlot({width, height: 170, series, plugins: [markerPlugin(name)], cursor: {drag: {x: false, y: false}},
                          scales: {x: {time: true}, y: {range: (u, mn, mx) => [0, Math.max(mx * 1.15 || 1, id === "lat" ? 0.1 : 1)]}},
                          axes: [{space: 70, values: (u, splits) => splits.map(v => clock(v))}, {size: 54}],
                          legend: {live: true}}, data[id], p.box);
      p.sig = sig; p.width = width;
    } else {
      p.plot.setData(data[id]);
    }
  }
  // The last second in numbers.
  const last = S.lastTick.series || {};
  let n = 0, err = 0;
  const parts = [];
  for (const k of keys) { const s = last[k]; if (!s) continue; n += s.n; err += s.err;
    parts.push(`v${versionOf(k)}: ${s.n}/s, p50 ${fmtMs(s.p50)}, p99 ${fmtMs(s.p99)}`); }
  const inflight = Object.entries(S.lastTick.inflight || {}).filter(([k]) => k.startsWith(name + "/")).reduce((a, [, x]) => a + x, 0);
  c.now.textContent = "";
  c.now.append(h("span", {}, h("b", {"data-rps": n}, `${n}`), " req/s"), h("span", {}, h("b", {}, `${err}`), " errors/s"),
               h("span", {}, h("b", {}, `${inflight}`), " in flight"), h("span", {}, parts.join(" · ")));
}

// ---- admin actions ---------------------------------------------------------------------------
function notify(text, kind) {
  const n = $("#notice");
  n.hidden = false; n.className = "notice " + kind; n.textContent = text;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { n.hidden = true; }, 12000);
}

async function admin(model, action, body, what) {
  const token = $("#token").value.trim();
  const headers = {"Content-Type": "application/json"};
  if (token) headers.Authorization = "Bearer " + token;
  let r, doc = {};
  try {
    r = await fetch(`/v1/admin/models/${encodeURIComponent(model)}/${action}`, {method: "POST", headers, body: JSON.stringify(body)});
    doc = await r.json().catch(() => ({}));
  } catch (e) { notify(`${what}: the server did not answer (${e})`, "error"); return; }
  if (!r.ok) {
    const hint = r.status === 401 ? " — enter the admin token at the top right" : "";
    notify(`${what} refused (HTTP ${r.status}): ${doc.error || r.statusText}${hint}`, "error");
    return;
  }
  notify(`${what}: done — model ${model} now serves v${doc.default_version}` +
         (doc.canary ? `, canary v${doc.canary.version} at ${doc.canary.weight}%` : ""), "ok");
}

function makeActions(c) {
  const sel = () => h("select", {});
  c.ui = {rollbackTo: sel(), pinV: sel(), labelV: sel(), canaryV: sel()};
  const m = () => c.name;
  const num = s => s.value === "" ? null : parseInt(s.value, 10);
  c.ui.labelName = h("input", {class: "lbl", placeholder: "label", value: "stable"});
  c.ui.weight = h("input", {class: "w", type: "number", min: 0, max: 100, step: 1, value: 10});
  c.ui.promote = h("button", {"data-action": "promote", onclick: () => {
    const r = c.routing; if (!r || !r.canary) return;
    admin(m(), "labels", {labels: {stable: r.canary.version, canary: null}}, `promote canary v${r.canary.version}`);
  }}, "promote canary");
  return h("div", {class: "actions"},
    h("span", {class: "grp"}, h("button", {class: "danger", "data-action": "rollback", onclick: () => {
      const to = num(c.ui.rollbackTo);
      admin(m(), "rollback", {to}, to == null ? "rollback" : `rollback to v${to}`);
    }}, "rollback"), "to", c.ui.rollbackTo),
    h("span", {class: "grp"}, h("button", {"data-action": "pin", onclick: () => {
      const v = num(c.ui.pinV); admin(m(), "pin", {version: v}, v == null ? "unpin" : `pin v${v}`);
    }}, "pin"), c.ui.pinV),
    h("span", {class: "grp"}, h("button", {"data-action": "label", onclick: () => {
      const name = c.ui.labelName.value.trim(), v = num(c.ui.labelV);
      if (!name) { notify("label: type a label name", "error"); return; }
      admin(m(), "labels", {labels: {[name]: v}}, v == null ? `remove label ${name}` : `label ${name} = v${v}`);
    }}, "label"), c.ui.labelName, "=", c.ui.labelV),
    h("span", {class: "grp"}, h("button", {"data-action": "canary", onclick: () => {
      const v = num(c.ui.canaryV), w = parseFloat(c.ui.weight.value);
      admin(m(), "canary", v == null ? {version: null} : {version: v, weight: w},
            v == null ? "stop canary" : `canary v${v} at ${w}%`);
    }}, "canary"), c.ui.canaryV, "at", c.ui.weight, "%"),
    h("span", {class: "grp"}, c.ui.promote));
}

function setOptions(select, options, keep = true) {
  // Refill a select without losing what the operator picked.
  const sig = options.map(o => o[0] + "=" + o[1]).join("|");
  if (select.dataset.sig === sig) return;
  const before = select.value;
  select.textContent = "";
  for (const [value, text] of options) select.append(h("option", {value}, text));
  if (keep && options.some(o => o[0] === before)) select.value = before;
  select.dataset.sig = sig;
}

function fillActions(c, versions, routing) {
  c.routing = routing;
  const vs = versions.map(v => [String(v), "v" + v]);
  setOptions(c.ui.rollbackTo, [["", "previous"], ...vs]);
  setOptions(c.ui.pinV, [["", "none (unpin)"], ...vs]);
  setOptions(c.ui.labelV, [["", "none (remove)"], ...vs]);
  setOptions(c.ui.canaryV, [["", "none (stop)"], ...vs]);
  c.ui.promote.disabled = !routing.canary;
  c.ui.promote.title = routing.canary ? `make v${routing.canary.version} stable` : "no canary running";
}

// ---- start -----------------------------------------------------------------------------------
$("#show-all").addEventListener("change", rebuildTimeline);
const saved = sessionStorage.getItem("hotserve-admin-token");
if (saved) $("#token").value = saved;
$("#token").addEventListener("change", e => sessionStorage.setItem("hotserve-admin-token", e.target.value));
window.addEventListener("resize", () => { for (const n of Object.keys(cards)) updateCharts(n); });
setInterval(() => { if (Object.keys(S.learning).length) scheduleRender(); }, 5000);  // "N s ago" only
connect();
