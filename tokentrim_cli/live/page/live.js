// tokentrim live page: plays the preview stream through Media Source Extensions, follows the run's events
// (server-sent), draws the drift chart, and sends prompts, "keep going" and stop. Plain JS, no build step.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
const live = { state: null, blocks: [], chart: { points: [], switches: [] }, video: { appended: 0, restarts: 0 } };
window.tokentrimLive = live;  // for tests and the curious: the page's data

function withToken(path) { return path + "?token=" + encodeURIComponent(token); }

// ------------------------------------------------------------------ requests
async function post(path, body) {
  const r = await fetch(path, { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Tokentrim-Token": token } });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function note(text, error) {
  const el = $("note");
  el.textContent = text;
  el.className = error ? "note error" : "note";
}

$("prompt-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value;
  const blend = parseInt($("blend").value || "0", 10);
  try {
    const got = await post("/api/prompt", { prompt, mode: $("mode").value, blend });
    note(`switch at block ${got.block} (${got.start} s, ${got.mode}${got.blend ? ", blend=" + got.blend : ""})`);
    $("prompt").value = "";
  } catch (e) { note(e.message, true); }
});

$("extend").addEventListener("click", async () => {
  try {
    const got = await post("/api/extend", { seconds: parseFloat($("more").value) });
    note(`the video is now ${got.seconds} s (${got.blocks} blocks)`);
  } catch (e) { note(e.message, true); }
});

$("stop").addEventListener("click", async () => {
  try { await post("/api/stop", {}); note("stopping after the current block"); } catch (e) { note(e.message, true); }
});

// ------------------------------------------------------------------ events
function setStatus(text, cls) { const el = $("status"); el.textContent = text; el.className = "status " + (cls || ""); }

function applyState(s) {
  live.state = { ...(live.state || {}), ...s };
  renderTimeline();
}

function entryOf(rec) { return rec && rec.prompt !== undefined ? rec.prompt : 0; }

function renderTimeline() {
  const s = live.state;
  if (!s || !s.timeline) return;
  const last = live.blocks[live.blocks.length - 1];
  const now = last ? entryOf(last) : 0;
  const blockOf = (k) => (k === 0 ? 0 : ((s.switches || []).find((w) => w.entry === k) || {}).block);
  const list = $("timeline");
  list.textContent = "";
  s.timeline.forEach((e, k) => {
    const li = document.createElement("li");
    li.className = k === now ? "active" : k > now ? "future" : "";
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = `${e.start} s · block ${blockOf(k)}${k ? " · " + (e.switch || "") : ""}${e.blend ? " blend=" + e.blend : ""}`;
    li.append(when, document.createTextNode(e.prompt));
    list.append(li);
  });
  $("current").textContent = s.timeline[now] ? s.timeline[now].prompt : "–";
  live.chart.switches = (s.switches || []).map((w) => ({ block: w.block, mode: w.mode }));
  drawChart();
}

function addBlock(rec) {
  if (live.blocks.length && live.blocks[live.blocks.length - 1].index >= rec.index) return;  // seen already
  live.blocks.push(rec);
  live.chart.points.push({ block: rec.index, severity: rec.severity, threshold: rec.threshold,
                           regenerations: rec.regenerations || 0, pruned: rec.pruned_tokens || 0 });
  const s = live.state || {};
  setStatus(`running · block ${rec.index + 1} of ${s.blocks || "?"} · ${rec.frames_written} frames written`, "running");
  renderTimeline();
}

function connect() {
  const es = new EventSource(withToken("/api/events"));
  es.addEventListener("state", (ev) => {
    const s = JSON.parse(ev.data);
    live.blocks = []; live.chart.points = [];
    applyState(s);
    (s.blocks_done || []).forEach(addBlock);
    $("export").href = withToken("/api/timeline");
    if (s.width && s.height) $("video").style.aspectRatio = `${s.width} / ${s.height}`;
    if (s.status === "running" && !live.blocks.length) setStatus("running · making the first block", "running");
    if (s.codec) startVideo(s.codec);
  });
  es.addEventListener("block", (ev) => addBlock(JSON.parse(ev.data)));
  es.addEventListener("timeline", (ev) => applyState(JSON.parse(ev.data)));
  es.addEventListener("video", (ev) => startVideo(JSON.parse(ev.data).codec));
  es.addEventListener("stopping", () => setStatus("stopping after the current block", "over"));
  es.addEventListener("done", (ev) => {
    const d = JSON.parse(ev.data);
    live.done = d;
    setStatus(`${d.status}${d.video ? " · " + d.video : ""}${d.error ? " · " + d.error : ""}`, "over");
    for (const id of ["send", "extend", "stop"]) $(id).disabled = true;
    es.close();
  });
  es.onerror = () => { if (!live.done) setStatus("reconnecting…"); };
}

// ------------------------------------------------------------------ video (Media Source Extensions)
let media = null;

function startVideo(codec) {
  if (media || !codec) return;
  const type = `video/mp4; codecs="${codec}"`;
  if (!window.MediaSource || !MediaSource.isTypeSupported(type)) {
    note(`this browser cannot play ${type} through Media Source Extensions`, true);
    return;
  }
  const video = $("video");
  media = { source: new MediaSource(), buffer: null, queue: [], ended: false };
  const m = media;
  video.src = URL.createObjectURL(m.source);
  m.source.addEventListener("sourceopen", async () => {
    m.buffer = m.source.addSourceBuffer(type);
    m.buffer.addEventListener("updateend", () => pump(m));
    try {
      const r = await fetch(withToken("/api/video"));
      if (!r.ok) throw new Error("HTTP " + r.status);
      const reader = r.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        m.queue.push(value);
        pump(m);
      }
    } catch (e) { /* the stream ended early: restart below while the run goes on */ }
    m.ended = true;
    pump(m);
    if (!live.done) setTimeout(() => { if (media === m) { media = null; live.video.restarts++; startVideo(codec); } }, 1000);
  }, { once: true });
}

function pump(m) {
  if (!m.buffer || m.buffer.updating) return;
  if (m.queue.length) {
    const size = m.queue.reduce((n, c) => n + c.length, 0);
    const all = new Uint8Array(size);
    let at = 0;
    for (const c of m.queue) { all.set(c, at); at += c.length; }
    m.queue = [];
    try { m.buffer.appendBuffer(all); live.video.appended += size; } catch (e) { note("video: " + e.message, true); }
    return;
  }
  const video = $("video");
  const b = m.buffer.buffered;
  if (b.length) {
    const start = b.start(0), end = b.end(b.length - 1);
    if (video.currentTime < start) video.currentTime = start;
    if (end - video.currentTime > 10) video.currentTime = end - 1;  // far behind (a tab in the background)
    if (video.currentTime - start > 120 && !m.buffer.updating) m.buffer.remove(0, video.currentTime - 60);
  }
  if (video.paused && !video.ended) video.play().catch(() => {});
  if (m.ended && live.done && m.source.readyState === "open" && !m.buffer.updating) {
    try { m.source.endOfStream(); } catch (e) { /* already ended */ }
  }
}

setInterval(() => {
  const v = $("video");
  if (v.readyState > 0) $("clock").textContent = `${v.currentTime.toFixed(2)} s`;
}, 250);

// ------------------------------------------------------------------ drift chart
function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const pts = live.chart.points;
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const pad = { l: 44, r: 44, t: 10, b: 22 };
  const total = Math.max((live.state && live.state.blocks) || 1, pts.length, 1);
  const x = (i) => pad.l + (w - pad.l - pad.r) * (i + 0.5) / total;
  const values = pts.flatMap((p) => [p.severity, p.threshold]).filter((v) => typeof v === "number");
  const top = values.length ? Math.max(...values) * 1.1 : 1;
  const y = (v) => h - pad.b - (h - pad.t - pad.b) * v / top;
  const maxPruned = Math.max(1, ...pts.map((p) => p.pruned));
  g.fillStyle = color("--pru");
  const bw = Math.max(1, (w - pad.l - pad.r) / total * 0.7);
  for (const p of pts) {
    if (p.pruned) { const bh = (h - pad.t - pad.b) * p.pruned / maxPruned; g.fillRect(x(p.block) - bw / 2, h - pad.b - bh, bw, bh); }
  }
  g.strokeStyle = color("--sw"); g.setLineDash([4, 4]);
  for (const s of live.chart.switches) { g.beginPath(); g.moveTo(x(s.block) - bw / 2, pad.t); g.lineTo(x(s.block) - bw / 2, h - pad.b); g.stroke(); }
  g.setLineDash([]);
  for (const [key, name] of [["threshold", "--thr"], ["severity", "--sev"]]) {
    g.strokeStyle = color(name); g.lineWidth = 1.5; g.beginPath();
    let on = false;
    for (const p of pts) {
      const v = p[key];
      if (typeof v !== "number") { on = false; continue; }
      if (on) g.lineTo(x(p.block), y(v)); else g.moveTo(x(p.block), y(v));
      on = true;
    }
    g.stroke();
  }
  g.fillStyle = color("--reg");
  for (const p of pts) {
    if (p.regenerations && typeof p.severity === "number") { g.beginPath(); g.arc(x(p.block), y(p.severity), 3.5, 0, 7); g.fill(); }
  }
  g.fillStyle = color("--dim"); g.font = "11px system-ui";
  g.fillText(top.toFixed(1), 4, pad.t + 8); g.fillText("0", 4, h - pad.b);
  g.fillText(`${maxPruned}`, w - pad.r + 4, pad.t + 8);
  g.fillText(`block 0`, pad.l, h - 6); g.fillText(`${total - 1}`, w - pad.r - 20, h - 6);
}
window.addEventListener("resize", drawChart);

connect();
