// Tiny canvas charts: no library, no CDN (the dashboard must work offline).
"use strict";
const PALETTE = ["#4fb3ff", "#ffb74f", "#7be07b", "#ff6b9a", "#b48cff", "#4fe0d2", "#e0d24f"];

function setupCanvas(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px system-ui, sans-serif";
  return ctx;
}

function fmt(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return Math.round(v * 100) / 100 + "";
}

// series: [{label, points: [[x(ms), y], ...]}]
function lineChart(canvas, series) {
  const ctx = setupCanvas(canvas);
  const W = canvas.width, H = canvas.height, L = 48, B = 22, T = 10, R = 10;
  const pts = series.flatMap(s => s.points);
  canvas.dataset.points = pts.length;
  canvas.dataset.last = pts.length ? pts[pts.length - 1][1] : "";
  if (!pts.length) { ctx.fillStyle = "#8a96a3"; ctx.fillText("no data yet", L, H / 2); return; }
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || x0 + 1, y1 = Math.max(...ys, 1);
  const X = x => L + (W - L - R) * (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0));
  const Y = y => H - B - (H - B - T) * (y / y1);
  ctx.strokeStyle = "#2b3947"; ctx.fillStyle = "#8a96a3";
  for (let i = 0; i <= 4; i++) {
    const y = (y1 * i) / 4;
    ctx.beginPath(); ctx.moveTo(L, Y(y)); ctx.lineTo(W - R, Y(y)); ctx.stroke();
    ctx.fillText(fmt(y), 4, Y(y) + 4);
  }
  [x0, (x0 + x1) / 2, x1].forEach(x => {
    const d = new Date(x);
    ctx.fillText(d.toISOString().slice(11, 16), X(x) - 14, H - 6);
  });
  series.forEach((s, i) => {
    ctx.strokeStyle = PALETTE[i % PALETTE.length]; ctx.lineWidth = 2; ctx.beginPath();
    s.points.forEach((p, j) => j ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1])));
    ctx.stroke();
    ctx.fillStyle = ctx.strokeStyle;
    if (s.points.length < 40) s.points.forEach(p => { ctx.beginPath(); ctx.arc(X(p[0]), Y(p[1]), 3, 0, 7); ctx.fill(); });
    ctx.fillText(s.label, L + 8 + i * 110, T + 10);
  });
}

// bars: [{label, value}]
function barChart(canvas, bars) {
  const ctx = setupCanvas(canvas);
  const W = canvas.width, H = canvas.height, B = 34, T = 12;
  canvas.dataset.points = bars.length;
  canvas.dataset.total = bars.reduce((a, b) => a + b.value, 0);
  if (!bars.length) { ctx.fillStyle = "#8a96a3"; ctx.fillText("no data yet", 10, H / 2); return; }
  const max = Math.max(...bars.map(b => b.value), 1);
  const bw = (W - 20) / bars.length;
  bars.forEach((b, i) => {
    const h = (H - B - T) * (b.value / max);
    ctx.fillStyle = PALETTE[i % PALETTE.length];
    ctx.fillRect(10 + i * bw + 2, H - B - h, Math.max(bw - 4, 1), h);
    ctx.fillStyle = "#e6e6e6"; ctx.fillText(fmt(b.value), 10 + i * bw + 2, H - B - h - 2);
    ctx.fillStyle = "#8a96a3";
    ctx.save(); ctx.translate(10 + i * bw + 2, H - B + 12);
    ctx.fillText(String(b.label).slice(0, Math.max(4, Math.floor(bw / 6))), 0, 0); ctx.restore();
  });
}
