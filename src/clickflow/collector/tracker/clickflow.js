/* clickflow.js: the browser tracker of clickflow (see the README). Each event keeps its
   event_id on retries, so a retried copy is dropped downstream. */
(function (w, d) {
  "use strict";
  if (w.clickflow) return;
  var script = d.currentScript, c = w.clickflowConfig || {};
  function opt(name, attr, dflt) {
    var v = c[name] != null ? c[name] : script && script.getAttribute("data-" + attr);
    return v == null || v === "" ? dflt : v;
  }
  var endpoint = opt("endpoint", "endpoint",
    (script ? new URL(script.src, location.href).origin : "") + "/v1/events");
  var batchSize = +opt("batchSize", "batch-size", 20), flushMs = +opt("flushMs", "flush-ms", 1000);
  var dnt = String(opt("respectDnt", "respect-dnt", false)) === "true";
  var nav = w.navigator, STORE = "clickflow:pending";
  var noop = function () {};
  if (dnt && (nav.doNotTrack === "1" || w.doNotTrack === "1" || nav.globalPrivacyControl)) {
    w.clickflow = {track: noop, qualityChange: noop, videoComplete: noop, searchFilter: noop,
      flush: noop, pageView: noop, disabled: true};
    return;
  }

  function uuid() {
    var b = crypto.getRandomValues(new Uint8Array(16)), h = "";
    b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128;
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1) + (i % 2 && i > 2 && i < 10 ? "-" : "");
    return h;
  }
  function pageType() {
    var m = d.querySelector('meta[name="cf-page-type"]');
    return (m && m.content) || opt("pageType", "page-type", "other");
  }

  var queue = [], inflight = [], timer = 0, attempt = 0, failing = false;
  try { queue = JSON.parse(localStorage.getItem(STORE)); localStorage.removeItem(STORE); } catch (e) { /* none */ }
  if (!Array.isArray(queue)) queue = [];

  function track(kind, data) {
    var ev = {event: kind, event_id: uuid(), data: data || {}}, tok = c.token && c.token();
    if (tok) ev.token = tok;
    queue.push(ev);
    if (queue.length >= batchSize && !failing && !inflight.length) send();
    else schedule(flushMs);
  }
  function schedule(ms) { if (!timer) timer = setTimeout(function () { timer = 0; send(); }, ms); }
  function retryLater(retryAfter) {
    failing = true;
    queue = inflight.concat(queue); inflight = [];
    var ms = Math.min(30000, 500 * Math.pow(2, attempt++)) * (0.5 + Math.random() / 2);
    if (retryAfter > 0) ms = Math.max(ms, retryAfter * 1000);
    clearTimeout(timer); timer = 0; schedule(ms);
  }
  function send() {
    if (inflight.length || !queue.length) return;
    inflight = queue.splice(0, batchSize);
    fetch(endpoint, {method: "POST", body: JSON.stringify(inflight), keepalive: true,
      credentials: "omit", headers: {"Content-Type": "application/json"}})
      .then(function (r) {
        if (r.status === 429 || r.status >= 500) {
          return r.json().catch(noop).then(function (b) {
            // 503 of a batch: retry only the events the broker did not take.
            var sent = inflight, res = b && b.results;
            if (res) inflight = res.filter(function (x) { return x.status === "failed"; }).map(function (x) { return sent[x.index]; });
            retryLater(+r.headers.get("Retry-After"));
          });
        }
        inflight = []; attempt = 0; failing = false;  // 2xx, or 4xx: the event is invalid, drop it
        if (saved) save(queue.length > 0);
        if (queue.length) schedule(queue.length >= batchSize ? 0 : flushMs);
      }, function () { retryLater(0); });
  }
  var saved = false;
  function save(keep) {
    try {
      if (keep) localStorage.setItem(STORE, JSON.stringify(inflight.concat(queue)));
      else localStorage.removeItem(STORE);
      saved = keep;
    } catch (e) { /* storage full or disabled */ }
  }
  // Page hidden or left: send what waits with sendBeacon, which outlives the page. While the
  // collector fails, keep it in localStorage instead; the next page of this site re-sends it.
  function flush() {
    if (failing) return save(true);
    clearTimeout(timer); timer = 0;
    while (queue.length) {
      var part = queue.slice(0, batchSize);
      if (!nav.sendBeacon || !nav.sendBeacon(endpoint, JSON.stringify(part))) { send(); return; }
      queue.splice(0, part.length);
    }
  }

  var view = null;  // {id, type} of the page view in progress
  function start() {
    if (view) return;
    view = {page_view_id: uuid(), page_type: pageType().slice(0, 256)};
    track("page_view_start", view);
  }
  function end() {
    if (!view) return;
    track("page_view_end", view);
    view = null;
  }
  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") { end(); flush(); } else { start(); }
  });
  w.addEventListener("pagehide", function () { end(); flush(); });
  w.addEventListener("pageshow", function (e) { if (e.persisted) start(); });

  // Single-page apps: a new path is a new page view.
  var path = location.pathname + location.search;
  function navigated() {
    var now = location.pathname + location.search;
    if (now === path) return;
    path = now; end(); start(); bindVideos();
  }
  ["pushState", "replaceState"].forEach(function (name) {
    var orig = history[name];
    history[name] = function () { var r = orig.apply(this, arguments); navigated(); return r; };
  });
  w.addEventListener("popstate", navigated);

  d.addEventListener("click", function (e) {
    var el = e.target.closest && e.target.closest("[data-cf-click]");
    if (el) track("element_click", {element_type: el.getAttribute("data-cf-click").slice(0, 256) || "element", page_type: pageType().slice(0, 256)});
  }, true);

  function searchFilter(query, filters) {
    if (typeof filters !== "string") filters = new URLSearchParams(filters || {}).toString();
    track("search_filter", {search_query: String(query).slice(0, 1024), filters: filters.slice(0, 1024)});
  }
  d.addEventListener("submit", function (e) {
    var f = e.target;
    if (!f.hasAttribute || !f.hasAttribute("data-cf-search")) return;
    var q = "", rest = [];
    new FormData(f).forEach(function (v, k) {
      if (typeof v !== "string") return;
      if (!q && (k === "q" || k === "query" || k === "search")) q = v; else if (v) rest.push([k, v]);
    });
    searchFilter(q, rest);
  }, true);

  function videoId(v) { return (v.getAttribute("data-cf-video") || v.id || v.currentSrc || "video").slice(0, 256); }
  function qualityChange(id, from, to) { track("quality_change", {video_id: id, old_quality: from | 0, new_quality: to | 0}); }
  function videoComplete(id, total) { track("video_complete", {video_id: id, duration_total: !!total}); }
  // <video>: "ended" is a completion (total: at least 90% of it was played); a new frame
  // height during playback (adaptive streaming) is a quality change.
  function bindVideos() {
    if (String(opt("video", "video", true)) === "false") return;
    d.querySelectorAll("video").forEach(function (v) {
      if (v.cfBound) return;
      v.cfBound = true;
      var height = 0;
      v.addEventListener("resize", function () {
        if (height && v.videoHeight && v.videoHeight !== height) qualityChange(videoId(v), height, v.videoHeight);
        height = v.videoHeight;
      });
      v.addEventListener("ended", function () {
        var played = 0, dur = v.duration;
        for (var i = 0; i < v.played.length; i++) played += v.played.end(i) - v.played.start(i);
        videoComplete(videoId(v), !(dur > 0 && isFinite(dur)) || played >= dur * 0.9);
      });
    });
  }

  w.clickflow = {track: track, qualityChange: qualityChange, videoComplete: videoComplete,
    searchFilter: searchFilter, flush: send, pageView: function () { end(); start(); }};
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", bindVideos); else bindVideos();
  if (d.visibilityState !== "hidden") start();
  if (queue.length) schedule(0);
})(window, document);
