// The dashboard reads the same query API endpoints users call, every 2 s, active tab only.
"use strict";
const REFRESH_MS = 2000;
const $ = id => document.getElementById(id);
const rateHistory = {};  // pipeline -> [[t, events/s]]
let lastStats = null;

function minutes() { return Number($("range").value); }
function iso(d) { return d.toISOString().replace(/\.\d+Z$/, "Z"); }
function rangeParams(extra = {}, names = ["from", "to"]) {
  const end = new Date(Date.now() + 60000), start = new Date(Date.now() - minutes() * 60000);
  const p = new URLSearchParams({[names[0]]: iso(start), [names[1]]: iso(end), ...extra});
  return p.toString();
}
async function get(url) {
  const r = await fetch(url, {headers: {"Accept": "application/json"}});
  if (!r.ok) throw new Error(url + " -> " + r.status);
  return r.json();
}
// Tables show exact numbers (offsets, counts): only fractions are rounded.
function cell(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Math.round(v * 100) / 100);
  return v === null || v === undefined ? "–" : String(v);
}
const esc = s => s.replace(/[<>&"]/g, ch => ({"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;"}[ch]));
function table(el, rows, columns, empty) {
  columns = columns || (rows.length ? Object.keys(rows[0]) : []);
  el.dataset.rows = rows.length;
  el.classList.toggle("empty", !rows.length);
  if (!rows.length) {
    el.innerHTML = `<tr><td class="empty-state">${esc(empty || "No rows in this range yet")}</td></tr>`;
    return;
  }
  const head = "<tr>" + columns.map(c => `<th>${esc(c)}</th>`).join("") + "</tr>";
  const body = rows.map(r => "<tr>" + columns.map(c => `<td>${esc(cell(r[c]))}</td>`).join("") + "</tr>").join("");
  el.innerHTML = head + body;
}
const pct = v => (v * 100).toFixed(1) + "%";
const ts = s => Date.parse(/Z$|[+-]\d\d:\d\d$/.test(s) ? s : s + "Z");

const loaders = {
  async pageviews() {
    const [series, totals, top, errors] = await Promise.all([
      get("/v1/pageviews/series?" + rangeParams({granularity: "minute"})),
      get("/v1/pageviews/totals?" + rangeParams()),
      get("/v1/pageviews/top?" + rangeParams({limit: 10})),
      get("/v1/pageviews/errors?limit=8"),
    ]);
    $("pv-views").textContent = totals.views;
    $("pv-users").textContent = totals.unique_users;
    $("pv-duration").textContent = (totals.avg_duration_ms / 1000).toFixed(1) + " s";
    $("pv-bounce").textContent = pct(totals.bounce_rate);
    const complete = series.filter(s => ts(s.window_start) <= Date.now() - 60000);
    $("pv-last-minute").textContent = complete.length ? complete[complete.length - 1].views : "–";
    lineChart($("pv-chart"), [{label: "views/min",
      points: series.map(s => [ts(s.window_start), s.views])}]);
    table($("pv-top"), top.map(t => ({page: t.page_id, views: t.views, "unique users": t.unique_users,
      "avg duration s": t.avg_duration_ms / 1000, "bounce rate": pct(t.bounce_rate)})));
    table($("pv-errors"), errors.map(e => ({time: e.error_time, reason: e.error_reason,
      partition: e.kafka_partition, offset: e.kafka_offset})), null, "No rejected records");
  },
  async ugc() {
    const q = rangeParams({}, ["start", "end"]);
    const [clicks, time, quality, completions, filters] = await Promise.all([
      get("/v1/ugc/clicks?by=element_type&" + q), get("/v1/ugc/time-on-page?" + q),
      get("/v1/ugc/quality-switches?" + q), get("/v1/ugc/completions?limit=10&" + q),
      get("/v1/ugc/search-filters?limit=10&" + q),
    ]);
    barChart($("ugc-clicks"), clicks.map(c => ({label: c.element_type || c.page_type, value: c.clicks})));
    barChart($("ugc-time"), time.map(t => ({label: t.page_type, value: t.avg_seconds || 0})));
    table($("ugc-quality"), quality.slice(0, 10));
    table($("ugc-completions"), completions);
    table($("ugc-filters"), filters);
  },
  async adclicks() {
    const params = new URLSearchParams({topN: $("ad-topn").value || 10, window: $("ad-window").value || 5});
    if ($("ad-filter").value.trim()) params.set("filter", $("ad-filter").value.trim());
    const popular = await get("/v1/ads/popular_ads?" + params);
    $("ad-clicks").textContent = popular.ads.reduce((a, b) => a + b.count, 0);
    $("ad-final").textContent = popular.final_through ? String(popular.final_through).slice(11, 16) + " UTC" : "–";
    $("ad-source").textContent = popular.source + (popular.cached ? " (cached)" : "");
    barChart($("ad-chart"), popular.ads.map(a => ({label: a.ad_id, value: a.count})));
    if (popular.ads.length) {
      const ad = popular.ads[0].ad_id, now = Date.now(), pts = [];
      const fromMs = now - 15 * 60000;
      const counts = await Promise.all(Array.from({length: 15}, (_, i) => {
        const f = new Date(fromMs + i * 60000), t = new Date(fromMs + (i + 1) * 60000);
        f.setSeconds(0, 0); t.setSeconds(0, 0);
        const p = new URLSearchParams({from: iso(f), to: iso(t)});
        if ($("ad-filter").value.trim()) p.set("filter", $("ad-filter").value.trim());
        return get(`/v1/ads/${encodeURIComponent(ad)}/aggregated_count?` + p).then(r => [f.getTime(), r.count]);
      }));
      lineChart($("ad-series"), [{label: ad, points: counts}]);
    } else {
      lineChart($("ad-series"), []);
    }
  },
  async telecom() {
    const d = new Date(), f = new Date(Date.now() - 30 * 86400000);
    const agg = await get(`/api/v1/aggregates?granularity=day&from=${f.toISOString().slice(0, 10)}&to=${d.toISOString().slice(0, 10)}`);
    const byType = {};
    agg.rows.forEach(r => { byType[r.type] = (byType[r.type] || 0) + r.events; });
    barChart($("tc-chart"), Object.entries(byType).map(([k, v]) => ({label: k, value: v})));
    table($("tc-table"), agg.rows.slice(-30));
  },
  async pipelines() {
    const s = await get("/v1/pipelines/stats");
    const rows = [];
    for (const [name, p] of Object.entries(s.pipelines)) {
      const prev = lastStats && lastStats.pipelines[name];
      const dt = lastStats ? s.time - lastStats.time : 0;
      const rate = prev && dt > 0 ? Math.max(0, (p.records_in - prev.records_in) / dt) : 0;
      (rateHistory[name] = rateHistory[name] || []).push([s.time * 1000, rate]);
      if (rateHistory[name].length > 150) rateHistory[name].shift();
      rows.push({pipeline: name, "events/s in": rate, "records in": p.records_in || 0,
        batches: p.batches || 0, "dead letters": p.dead_letters || 0, retries: p.retries || 0,
        lag: p.lag || 0, "sink down": p.sink_down ? "yes" : "no"});
    }
    lastStats = s;
    table($("pl-table"), rows, null, "No pipeline runs in this process");
    lineChart($("pl-chart"), Object.entries(rateHistory).map(([k, v]) => ({label: k, points: v})));
    table($("pl-metrics"), Object.entries(s.metrics).map(([k, v]) => ({metric: k, value: v})));
    // Newest first across pipelines; partition and offset exact, to find the record.
    const dlq = Object.entries(s.recent_dead_letters).flatMap(([k, v]) => v.map(d => ({pipeline: k, d})))
      .sort((a, b) => b.d.time - a.d.time).slice(0, 15).map(({pipeline, d}) => ({pipeline,
        time: new Date(d.time * 1000).toISOString().slice(11, 19), reason: d.reason, topic: d.topic,
        partition: d.partition, offset: d.offset}));
    table($("pl-dlq"), dlq, null, "No dead letters");
  },
};

function activeTab() { return (location.hash || "#pageviews").slice(1); }
function showTab() {
  const tab = activeTab();
  document.querySelectorAll(".tab").forEach(s => s.classList.toggle("active", s.id === tab));
  document.querySelectorAll("#tabs a").forEach(a => a.classList.toggle("active", a.dataset.tab === tab));
}
async function refresh() {
  const tab = activeTab();
  try {
    await loaders[tab]();
    $("status").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    $("status").className = "status";
  } catch (e) {
    $("status").textContent = "error: " + e.message; $("status").className = "status error";
  }
}
window.addEventListener("hashchange", () => { showTab(); refresh(); });
$("range").addEventListener("change", refresh);
let resizing = 0;  // charts are drawn for the canvas's width: redraw after a resize
window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(refresh, 200); });
showTab(); refresh();
setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
