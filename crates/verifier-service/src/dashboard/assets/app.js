// imasnap verifier dashboard: plain script, no libraries. Draws the fleet page or a host
// page from the verifier's dashboard JSON and redraws on server-sent events (or polls).
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const main = document.getElementById("main");
const live = document.getElementById("live");
const crumbs = document.getElementById("crumbs");
let clockSkew = 0; // server now - browser now, in ms
let refreshes = 0;
let busy = false;
let again = false;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, v);
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function fmtInt(n) { return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"); }
function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = Number(n);
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
}
function fmtAge(atMs) {
  if (!atMs) return "—";
  const s = Math.max(0, Math.round((Date.now() + clockSkew - atMs) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}
function fmtTime(atMs) { return atMs ? new Date(atMs).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "—"; }
function label(s) { return (s || "—").replace(/_/g, " "); }
function badge(status) { return el("span", { class: "badge st-" + status, "data-status": status, text: label(status) }); }
function age(atMs) { return el("span", { class: "age", "data-at": atMs || "", text: fmtAge(atMs) }); }

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store", credentials: "same-origin" });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || ("HTTP " + r.status));
  if (j.now_ms) clockSkew = j.now_ms - Date.now();
  return j;
}

function hostFromPath() {
  const m = location.pathname.match(/^\/dashboard\/hosts\/([^/]+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

// ---- fleet page ------------------------------------------------------------------------

function renderFleet(f) {
  crumbs.textContent = "Fleet";
  const counts = el("div", { class: "cards", id: "counts" });
  for (const st of ["policy_violation", "rejected", "unusable", "error", "pending", "verified"]) {
    const n = (f.counts || {})[st] || 0;
    if (n === 0 && st !== "verified") continue;
    counts.append(el("div", { class: "card count", "data-count": st }, el("b", { text: String(n) }), badge(st)));
  }
  const head = el("tr", {}, ...["Host", "Status", "Last verdict", "Age", "Back end", "Checkpoint", "Records / round", "Rounds", "Kernel log", "Without trimming"]
    .map((h, i) => el("th", { class: i >= 5 ? "num" : null, text: h })));
  const body = el("tbody");
  for (const h of f.hosts) {
    const ls = h.log_size || {};
    const tr = el("tr", { "data-host": h.name, "data-status": h.status, class: h.failing ? "failing" : null },
      el("td", { "data-field": "name" }, el("a", { href: "/dashboard/hosts/" + encodeURIComponent(h.name), text: h.name })),
      el("td", { "data-field": "status" }, badge(h.status)),
      el("td", { "data-field": "last_verdict", "data-value": h.last_verdict || "" },
        label(h.last_verdict), h.reason && h.last_verdict !== "verified" ? el("span", { class: "muted", text: " (" + h.reason + (h.record !== null ? ", record " + h.record : "") + ")" }) : null),
      el("td", { "data-field": "age" }, age(h.last_at_ms)),
      el("td", { "data-field": "backend", "data-value": h.backend || "", title: h.mode || "", text: h.backend || "—" }),
      el("td", { class: "num", "data-field": "checkpoint", "data-value": h.checkpoint ?? "", text: fmtInt(h.checkpoint) }),
      el("td", { class: "num", "data-field": "records_per_round", "data-value": h.records_per_round ?? "", text: fmtInt(h.records_per_round) }),
      el("td", { class: "num", "data-field": "rounds", "data-value": h.rounds, text: fmtInt(h.rounds) }),
      el("td", { class: "num", "data-field": "kernel_bytes", "data-value": ls.kernel_bytes ?? "", text: fmtBytes(ls.kernel_bytes) }),
      el("td", { class: "num", "data-field": "untrimmed_bytes", "data-value": ls.untrimmed_bytes ?? "", text: fmtBytes(ls.untrimmed_bytes) }));
    body.append(tr);
  }
  const table = f.hosts.length
    ? el("table", { id: "fleet" }, el("thead", {}, head), body)
    : el("p", { class: "muted", text: "No hosts registered (imasnap verifier host add …)." });
  main.replaceChildren(el("h1", { text: "Fleet · " + f.hosts.length + " host" + (f.hosts.length === 1 ? "" : "s") }), counts,
    el("div", { class: "panel", style: null }, table));
}

// ---- host page -------------------------------------------------------------------------

const COLORS = { verified: "#1f8a4c", rejected: "#c62828", policy_violation: "#c62828", error: "#b25e00" };

function timelineChart(points) {
  // Oldest left; one bar per verdict, coloured by verdict, taller for failures.
  const pts = points.slice().reverse();
  const W = 1180, H = 64, pad = 6;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H + 18}`, width: W, height: H + 18, id: "timeline-chart", role: "img" });
  if (!pts.length) { s.append(svg("text", { x: 4, y: 20 }, "no verdicts yet")); return s; }
  const t0 = pts[0].at_ms, t1 = Math.max(pts[pts.length - 1].at_ms, t0 + 1);
  const x = (t) => pad + (W - 2 * pad) * (t - t0) / (t1 - t0);
  s.append(svg("line", { x1: pad, x2: W - pad, y1: H - 4, y2: H - 4, stroke: "#dde1e8" }));
  for (const p of pts) {
    const bad = p.verdict !== "verified";
    const h = bad ? H - 10 : (H - 10) / 2;
    const r = svg("rect", { x: x(p.at_ms) - 2, y: H - 4 - h, width: 4, height: h, rx: 1, fill: COLORS[p.verdict] || "#6a7386", "data-verdict": p.verdict },
      svg("title", {}, `${fmtTime(p.at_ms)}: ${label(p.verdict)}${p.reason ? " (" + p.reason + ")" : ""}${p.restart ? ", restart: " + p.restart : ""}`));
    s.append(r);
    if (p.restart === "reset_count_changed") s.append(svg("text", { x: x(p.at_ms) - 3, y: 10, fill: "#1d2330" }, "⟲"));
  }
  s.append(svg("text", { x: pad, y: H + 14 }, fmtTime(t0)), svg("text", { x: W - pad, y: H + 14, "text-anchor": "end" }, fmtTime(t1)));
  return s;
}

function chainChart(c) {
  const segs = c.segments || [];
  const end = Math.max(c.verified_to || 0, ...segs.map((s) => s.first_index + s.count), (c.live_first_index || 0) + 1);
  const W = 1180, H = 70, pad = 6;
  const x = (i) => pad + (W - 2 * pad) * i / Math.max(end, 1);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H + 20}`, width: W, height: H + 20, id: "chain-chart", role: "img" });
  segs.forEach((g, k) => {
    const w = Math.max(1.5, x(g.first_index + g.count) - x(g.first_index));
    s.append(svg("rect", { x: x(g.first_index), y: 14, width: w, height: 34, fill: k % 2 ? "#8fa8cc" : "#a9bfdd", stroke: "#fff", "data-seq": g.seq },
      svg("title", {}, `snapshot ${g.seq}: records ${g.first_index}–${g.first_index + g.count - 1} (${g.count}), cut: ${g.cut}${g.checkpoint ? ", checkpoint" : ""}`)));
    // The cut: a marker (RFC snapshot_aggregate) or a quote-anchored checkpoint.
    const cx = x(g.first_index + g.count);
    if (g.checkpoint) s.append(svg("path", { d: `M${cx} 6 l5 6 l-5 6 l-5 -6 z`, fill: "#1d2330" }, svg("title", {}, "checkpoint at " + (g.first_index + g.count))));
    else if (g.cut === "marker") s.append(svg("line", { x1: cx, x2: cx, y1: 8, y2: 54, stroke: "#1d2330", "stroke-width": 2 }, svg("title", {}, "marker at " + (g.first_index + g.count))));
  });
  if (c.live_first_index !== null && c.live_first_index !== undefined) {
    const lx = x(c.live_first_index);
    s.append(svg("rect", { x: lx, y: 14, width: Math.max(1.5, x(end) - lx), height: 34, fill: "#1565c0", opacity: 0.85, id: "chain-live" },
      svg("title", {}, `in the kernel: from record ${c.live_first_index}`)));
  }
  if (c.verified_to) s.append(svg("line", { x1: x(c.verified_to), x2: x(c.verified_to), y1: 4, y2: 58, stroke: "#1f8a4c", "stroke-width": 2, "stroke-dasharray": "3 2" }, svg("title", {}, "verified up to " + c.verified_to)));
  s.append(svg("text", { x: pad, y: H + 12 }, "0"), svg("text", { x: W - pad, y: H + 12, "text-anchor": "end" }, fmtInt(end)));
  return s;
}

function sizeChart(series) {
  const W = 1180, H = 170, padL = 70, pad = 8;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H + 20}`, width: W, height: H + 20, id: "size-chart", role: "img" });
  if (!series.length) { s.append(svg("text", { x: 4, y: 20 }, "no size reports yet (agent too old?)")); return s; }
  const t0 = series[0].at_ms, t1 = Math.max(series[series.length - 1].at_ms, t0 + 1);
  const max = Math.max(1, ...series.map((p) => p.untrimmed_bytes), ...series.map((p) => p.kernel_bytes));
  const x = (t) => padL + (W - padL - pad) * (t - t0) / (t1 - t0);
  const y = (v) => pad + (H - 2 * pad) * (1 - v / max);
  for (const f of [0, 0.5, 1]) {
    s.append(svg("line", { x1: padL, x2: W - pad, y1: y(max * f), y2: y(max * f), stroke: "#eceef2" }));
    s.append(svg("text", { x: padL - 6, y: y(max * f) + 4, "text-anchor": "end" }, fmtBytes(max * f)));
  }
  const line = (key, color, id) => {
    const d = series.map((p, i) => (i ? "L" : "M") + x(p.at_ms).toFixed(1) + " " + y(p[key]).toFixed(1)).join(" ");
    return svg("path", { d: series.length === 1 ? d + " l2 0" : d, fill: "none", stroke: color, "stroke-width": 2.5, id });
  };
  s.append(line("untrimmed_bytes", "#b0b7c3", "size-untrimmed"), line("kernel_bytes", "#1565c0", "size-kernel"));
  s.append(svg("text", { x: padL, y: H + 16 }, fmtTime(t0)), svg("text", { x: W - pad, y: H + 16, "text-anchor": "end" }, fmtTime(t1)));
  return s;
}

function fact(name, value, field, raw) {
  const v = value instanceof Node ? value : document.createTextNode(value === null || value === undefined ? "—" : String(value));
  return el("div", { "data-field": field || null }, el("span", { text: name }), el("b", { class: "v", "data-value": raw ?? null }, v));
}

function renderHost(h) {
  crumbs.replaceChildren(el("a", { href: "/dashboard/", text: "Fleet" }), document.createTextNode(" / " + h.name));
  const parts = [el("h1", { id: "host-title", "data-host": h.name, "data-status": h.status }, document.createTextNode(h.name), badge(h.status))];
  const f = h.failure;
  if (f) {
    parts.push(el("section", { class: "panel failure", id: "failure" },
      el("h2", { text: "Failure: " + label(f.verdict) + " · " + fmtTime(f.at_ms) }),
      el("dl", {},
        el("dt", { text: "record index" }), el("dd", { "data-field": "record", "data-value": f.record ?? "", text: f.record ?? "—" }),
        el("dt", { text: "path" }), el("dd", { "data-field": "path", class: "mono", text: f.path ?? "—" }),
        el("dt", { text: "reason" }), el("dd", { "data-field": "reason", text: (f.reason || "—") + (f.policy_reason ? " (" + f.policy_reason + ")" : "") }),
        el("dt", { text: "detail" }), el("dd", { "data-field": "detail", text: f.detail || "—" }),
        f.policy_failures_total > 1 ? el("dt", { text: "records failing" }) : null,
        f.policy_failures_total > 1 ? el("dd", { text: f.policy_failures_total + " (first 20: " + f.policy_failures.map((p) => p.index + " " + p.path).join(", ") + ")" }) : null)));
  }
  const ls = h.log_size.length ? h.log_size[h.log_size.length - 1] : null;
  parts.push(el("section", { class: "panel" }, el("div", { class: "facts" },
    fact("back end", h.backend ? h.backend + (h.mode ? " (" + h.mode + ")" : "") : "—", "backend"),
    fact("checkpoint", fmtInt(h.checkpoint), "checkpoint", h.checkpoint),
    fact("rounds", fmtInt(h.rounds), "rounds", h.rounds),
    fact("last verdict", h.last ? el("span", {}, label(h.last.verdict) + " · ", age(h.last.at_ms)) : "—", "last"),
    fact("records last round", h.last ? fmtInt(h.last.records_replayed) : "—", "records_per_round"),
    fact("AK", h.ak_source, "ak_source"),
    fact("boot (resetCount)", h.reset_count, "reset_count"),
    fact("kernel log now", ls ? fmtBytes(ls.kernel_bytes) + " · " + fmtInt(ls.kernel_records) + " records" : "—", "kernel_now"),
    fact("without trimming", ls ? fmtBytes(ls.untrimmed_bytes) + " · " + fmtInt(ls.untrimmed_records) + " records" : "—", "untrimmed_now"))));
  parts.push(el("section", { class: "panel", id: "timeline" }, el("h2", { text: "Verdicts (" + h.timeline.length + " newest)" }), timelineChart(h.timeline)));
  const c = h.chain;
  const segRows = (c.segments || []).slice().reverse().slice(0, 12).map((g) => el("tr", { "data-seq": g.seq },
    el("td", { class: "num", text: String(g.seq) }), el("td", { class: "num", text: fmtInt(g.first_index) + " – " + fmtInt(g.first_index + g.count - 1) }),
    el("td", { class: "num", text: fmtInt(g.count) }), el("td", { text: g.cut + (g.checkpoint ? " + checkpoint" : "") })));
  parts.push(el("section", { class: "panel", id: "chain" },
    el("h2", { text: `Segment chain since boot (resetCount ${c.reset_count ?? "—"}): ${(c.segments || []).length} snapshot(s), kernel list from record ${fmtInt(c.live_first_index)}` }),
    chainChart(c),
    el("div", { class: "legend" }, el("span", {}, el("i", { style: null, class: "lg-seg" }), "snapshot files"), el("span", { text: "| marker   ◆ checkpoint" }), el("span", { text: "blue: in the kernel   dashed: verified to " + fmtInt(c.verified_to) })),
    c.complete ? null : el("p", { class: "muted", text: "Older segments of this boot are past the kept verdict history." }),
    (c.cold_boots || []).length ? el("p", { id: "cold-boots", text: "Cold boots seen: " + c.cold_boots.map((b) => `resetCount ${b.previous} → ${b.reset_count} at ${fmtTime(b.at_ms)}`).join("; ") }) : null,
    segRows.length ? el("table", {}, el("thead", {}, el("tr", {}, ...["seq", "records", "count", "cut"].map((t, i) => el("th", { class: i < 3 ? "num" : null, text: t })))), el("tbody", {}, ...segRows)) : null));
  parts.push(el("section", { class: "panel", id: "size" },
    el("h2", { text: "In-kernel log size against the log without trimming" }), sizeChart(h.log_size),
    el("div", { class: "legend" }, el("span", {}, el("i", { class: "lg-kernel" }), "in the kernel"), el("span", {}, el("i", { class: "lg-untrimmed" }), "without trimming (snapshots + kernel)"))));
  const rows = h.timeline.slice(0, 15).map((p) => el("tr", { "data-verdict": p.verdict },
    el("td", { text: fmtTime(p.at_ms) }), el("td", {}, badge(p.verdict)), el("td", { text: p.reason || "" }),
    el("td", { class: "num", text: p.record ?? "" }), el("td", { text: label(p.mode) + (p.restart ? " · restart: " + p.restart : "") }),
    el("td", { class: "num", text: fmtInt(p.records_replayed) }), el("td", { class: "num", text: fmtInt(p.checkpoint) }), el("td", { class: "num", text: p.duration_ms.toFixed(1) + " ms" })));
  parts.push(el("section", { class: "panel" }, el("h2", { text: "Latest rounds" }),
    el("table", { id: "rounds" }, el("thead", {}, el("tr", {}, ...["time", "verdict", "reason", "record", "mode", "records", "checkpoint", "took"].map((t, i) => el("th", { class: [3, 5, 6, 7].includes(i) ? "num" : null, text: t })))), el("tbody", {}, ...rows))));
  main.replaceChildren(...parts);
}

// ---- refresh and live updates -----------------------------------------------------------

async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  try {
    const name = hostFromPath();
    if (name) renderHost(await getJSON("/dashboard/api/hosts/" + encodeURIComponent(name)));
    else renderFleet(await getJSON("/dashboard/api/fleet"));
    refreshes++;
    document.body.dataset.refreshes = String(refreshes);
    document.body.dataset.updatedMs = String(Date.now());
  } catch (e) {
    main.replaceChildren(el("p", { class: "err", id: "error", text: "Cannot load: " + e.message }));
  } finally {
    busy = false;
    if (again) { again = false; refresh(); }
  }
}

let pollTimer = null;
function poll() {
  if (pollTimer) return;
  live.className = "live poll"; live.textContent = "polling every 3 s";
  pollTimer = setInterval(refresh, 3000);
}

function connect() {
  if (!window.EventSource) { poll(); return; }
  const es = new EventSource("/dashboard/events");
  es.addEventListener("change", () => { live.className = "live on"; live.textContent = "live"; refresh(); });
  es.onerror = () => {
    // The browser retries on its own; poll meanwhile so the page stays current.
    if (es.readyState === EventSource.CLOSED) { es.close(); poll(); } else { live.className = "live poll"; live.textContent = "reconnecting…"; }
  };
}

setInterval(() => { for (const a of document.querySelectorAll("[data-at]")) if (a.dataset.at) a.textContent = fmtAge(Number(a.dataset.at)); }, 1000);
refresh();
connect();
