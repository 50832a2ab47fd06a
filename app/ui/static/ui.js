// Tuneserve dashboard: small progressive enhancement over server-rendered pages. No framework,
// no CDN; text from the server is set with textContent, never parsed as HTML, except the table
// rows the server renders (and escapes) itself.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return Number(v.toPrecision(3)).toString();
}

function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  if (s >= 3600) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  if (s >= 60) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return s + "s";
}

// A line chart of [x, y] points into an <svg viewBox="0 0 400 160">.
function drawLine(svg, points, empty) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 400, H = 160, L = 44, R = 8, T = 8, B = 22;
  points = points.filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (!points.length) {
    el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis"}, svg).textContent = empty;
    return;
  }
  let [x0, x1] = [Math.min(...points.map(p => p[0])), Math.max(...points.map(p => p[0]))];
  let [y0, y1] = [Math.min(...points.map(p => p[1])), Math.max(...points.map(p => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5 * Math.abs(y0 || 1); y1 += 0.5 * Math.abs(y1 || 1); }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axisline"}, svg);
  el("line", {x1: L, y1: T, x2: L, y2: H - B, class: "axisline"}, svg);
  el("text", {x: L - 4, y: T + 8, "text-anchor": "end", class: "axis"}, svg).textContent = fmt(y1);
  el("text", {x: L - 4, y: H - B, "text-anchor": "end", class: "axis"}, svg).textContent = fmt(y0);
  el("text", {x: L, y: H - 6, class: "axis"}, svg).textContent = "step " + x0;
  el("text", {x: W - R, y: H - 6, "text-anchor": "end", class: "axis"}, svg).textContent = String(x1);
  const d = points.map(p => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
  el("polyline", {points: d, class: "curve"}, svg);
  if (points.length <= 40) for (const p of points) el("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, class: "dot"}, svg);
  svg.dataset.points = String(points.length);
}

function jobPage(run) {
  const data = JSON.parse(document.getElementById("curves").textContent);
  const primary = run.dataset.primary;
  const redraw = () => {
    drawLine(document.getElementById("chart-loss"), data.train.map(p => [p.step, p.loss]), "no training steps yet");
    drawLine(document.getElementById("chart-lr"), data.train.map(p => [p.step, p.learning_rate]), "no training steps yet");
    drawLine(document.getElementById("chart-eval"), data.eval.map(p => [p.step, p[primary]]), "no evaluation yet");
  };
  redraw();
  if (run.dataset.ended === "true" || !window.EventSource) return;
  let pending = false;
  const later = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; redraw(); }); } };
  const set = (id, text) => { const n = document.getElementById(id); if (n) n.textContent = text; };
  const log = document.getElementById("log");
  const addLog = (type, message) => {
    const li = document.createElement("li");
    li.className = "ev-" + type;
    const t = document.createElement("time");
    t.textContent = new Date().toTimeString().slice(0, 8);
    li.append(t, " " + message);
    log.appendChild(li);
  };
  const source = new EventSource(run.dataset.stream);
  source.addEventListener("metrics", ev => {
    const e = JSON.parse(ev.data), d = e.data || {};
    if (d.kind === "train") {
      data.train.push({step: d.step, loss: d.loss, learning_rate: d.learning_rate});
      document.getElementById("job-progress").value = d.percent || 0;
      set("job-percent", (d.percent || 0).toFixed(1) + "%");
      set("job-step", "step " + d.step + "/" + d.total);
      set("job-eta", d.eta_s === null || d.eta_s === undefined ? "" : "ETA " + duration(d.eta_s));
      if (d.loss !== null && d.loss !== undefined) set("job-loss", "loss " + d.loss.toFixed(4));
    } else {
      data.eval.push(d);
      addLog("metrics", e.message);
    }
    later();
  });
  for (const type of ["status", "log", "warning"]) {
    source.addEventListener(type, ev => {
      const e = JSON.parse(ev.data);
      addLog(type, e.message);
      if (type === "status" && e.data && e.data.status) set("job-status", e.data.status);
    });
  }
  source.addEventListener("end", () => { source.close(); setTimeout(() => location.reload(), 300); });
}

function refreshRows(body) {
  const tick = async () => {
    const active = body.querySelector('tr[data-status="queued"], tr[data-status="running"]');
    try {
      const resp = await fetch(body.dataset.refresh, {credentials: "same-origin"});
      if (resp.status === 401) { location.reload(); return; }
      if (resp.ok) body.innerHTML = await resp.text();  // rows the server rendered and escaped
    } catch (err) { /* the service restarts: try again on the next tick */ }
    setTimeout(tick, active ? 2000 : 10000);
  };
  setTimeout(tick, 2000);
}

function jobForm(form) {
  const defaults = JSON.parse(document.getElementById("job-defaults").textContent);
  const method = document.getElementById("job-method");
  method.addEventListener("change", () => {
    const values = defaults[method.value] || {};
    for (const [k, v] of Object.entries(values)) {
      const input = document.getElementById("job-" + k);
      if (input) { input.value = v === null ? "" : String(v); input.placeholder = v === null ? "auto" : String(v); }
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  if (run) jobPage(run);
  const rows = document.querySelector("tbody[data-refresh]");
  if (rows) refreshRows(rows);
  const form = document.getElementById("job-form");
  if (form) jobForm(form);
});
