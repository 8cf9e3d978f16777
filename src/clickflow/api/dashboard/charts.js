// Tiny canvas charts: no library, no CDN (the dashboard must work offline).
"use strict";
const PALETTE = ["#4fb3ff", "#ffb74f", "#7be07b", "#ff6b9a", "#b48cff", "#4fe0d2", "#e0d24f"];
const MUTE = "#8a96a3", GRID = "#2b3947";

// The canvas's backing store follows its CSS width (and the screen's pixel ratio), so text
// stays sharp and the right size at any window width; drawing is in CSS pixels.
function setupCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const H = Number(canvas.dataset.height || canvas.getAttribute("height"));
  canvas.dataset.height = H;
  const W = Math.max(200, Math.round(canvas.clientWidth || canvas.width / ratio));
  canvas.style.height = H + "px";
  canvas.width = W * ratio; canvas.height = H * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  return {ctx, W, H};
}

// Axis and bar labels: short forms are fine there (tables show exact numbers).
function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return Math.round(v * 100) / 100 + "";
}

function emptyState(ctx, W, H, canvas, text) {
  canvas.dataset.empty = "1";
  ctx.fillStyle = MUTE; ctx.textAlign = "center"; ctx.font = "14px system-ui, sans-serif";
  ctx.fillText(text || "No data in this range yet", W / 2, H / 2);
}

// series: [{label, points: [[x(ms), y], ...]}]. The legend has its own row above the plot.
function lineChart(canvas, series) {
  const {ctx, W, H} = setupCanvas(canvas);
  const pts = series.flatMap(s => s.points);
  canvas.dataset.points = pts.length;
  canvas.dataset.last = pts.length ? pts[pts.length - 1][1] : "";
  canvas.dataset.empty = "";
  if (!pts.length) return emptyState(ctx, W, H, canvas);
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y1 = niceMax(Math.max(...ys, 1));
  // Legend: swatch + label, wrapping onto more rows when needed.
  let lx = 8, ly = 10;
  series.forEach((s, i) => {
    const w = ctx.measureText(s.label).width + 26;
    if (lx + w > W && lx > 8) { lx = 8; ly += 18; }
    ctx.fillStyle = PALETTE[i % PALETTE.length]; ctx.fillRect(lx, ly - 4, 12, 8);
    ctx.fillStyle = "#e6e6e6"; ctx.textAlign = "left"; ctx.fillText(s.label, lx + 16, ly);
    lx += w;
  });
  const T = ly + 22, B = 24, R = 12;
  const L = Math.ceil(Math.max(...[0, 1, 2, 3, 4].map(i => ctx.measureText(fmt((y1 * i) / 4)).width))) + 14;
  const X = x => L + (W - L - R) * (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0));
  const Y = y => H - B - (H - B - T) * (y / y1);
  ctx.strokeStyle = GRID; ctx.fillStyle = MUTE; ctx.lineWidth = 1; ctx.textAlign = "right";
  for (let i = 0; i <= 4; i++) {
    const y = (y1 * i) / 4;
    ctx.beginPath(); ctx.moveTo(L, Y(y)); ctx.lineTo(W - R, Y(y)); ctx.stroke();
    ctx.fillText(fmt(y), L - 6, Y(y));
  }
  const ticks = x1 === x0 ? [[x0, "center"]] : [[x0, "left"], [(x0 + x1) / 2, "center"], [x1, "right"]];
  const span = x1 - x0;  // MM-DD HH:MM over a day, HH:MM:SS under ten minutes
  ticks.forEach(([x, align]) => {
    const s = new Date(x).toISOString();
    const text = span > 86400000 ? s.slice(5, 10) + " " + s.slice(11, 16) : s.slice(11, span < 600000 ? 19 : 16);
    ctx.textAlign = align; ctx.fillText(text, X(x), H - 10);
  });
  series.forEach((s, i) => {
    ctx.strokeStyle = ctx.fillStyle = PALETTE[i % PALETTE.length]; ctx.lineWidth = 2; ctx.beginPath();
    s.points.forEach((p, j) => j ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1])));
    ctx.stroke();
    if (s.points.length < 40) s.points.forEach(p => { ctx.beginPath(); ctx.arc(X(p[0]), Y(p[1]), 3, 0, 7); ctx.fill(); });
  });
}

// A round top for the y axis, so grid lines fall on readable values.
function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  return [1, 2, 2.5, 5, 10].map(m => m * p).find(m => m >= v);
}

// bars: [{label, value}]
function barChart(canvas, bars) {
  const {ctx, W, H} = setupCanvas(canvas);
  const B = 22, T = 18;
  canvas.dataset.points = bars.length;
  canvas.dataset.total = bars.reduce((a, b) => a + b.value, 0);
  canvas.dataset.empty = "";
  if (!bars.length) return emptyState(ctx, W, H, canvas);
  const max = Math.max(...bars.map(b => b.value), 1);
  const bw = (W - 16) / bars.length;
  ctx.textAlign = "center";
  bars.forEach((b, i) => {
    const h = (H - B - T) * (b.value / max), cx = 8 + i * bw + bw / 2;
    ctx.fillStyle = PALETTE[i % PALETTE.length];
    ctx.fillRect(8 + i * bw + 2, H - B - h, Math.max(bw - 4, 1), h);
    ctx.fillStyle = "#e6e6e6"; ctx.fillText(fmt(b.value), cx, H - B - h - 8);
    ctx.fillStyle = MUTE; ctx.fillText(fit(ctx, String(b.label), bw - 4), cx, H - 10);
  });
}

// The label, cut with an ellipsis to fit ``width`` pixels.
function fit(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  while (text.length > 1 && ctx.measureText(text + "…").width > width) text = text.slice(0, -1);
  return text + "…";
}
