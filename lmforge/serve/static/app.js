// lmforge dashboard: live loss chart (server-sent events), chat/completion playground (streamed), classify box.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) hi = lo + (Math.abs(lo) || 1);
  const raw = (hi - lo) / Math.max(n - 1, 1), mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

// Series: {name: {train: [[step, loss]...], val: [[step, loss]...]}}
function drawChart(box, series) {
  const W = 640, H = 300, L = 50, R = 12, T = 12, B = 30, pw = W - L - R, ph = H - T - B;
  const pts = [];
  for (const s of Object.values(series)) pts.push(...s.train, ...s.val);
  box.innerHTML = "";
  box.dataset.points = String(pts.length);
  if (!pts.length) { box.textContent = "waiting for the first training records..."; return; }
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  const xt = niceTicks(x0, x1, 6), yt = niceTicks(y0, y1, 5);
  x0 = Math.min(x0, xt[0]); x1 = Math.max(x1, xt[xt.length - 1]);
  y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
  const X = x => L + (x - x0) / ((x1 - x0) || 1) * pw, Y = y => T + ph - (y - y0) / ((y1 - y0) || 1) * ph;
  const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, "font-size": "11", "font-family": "sans-serif"}, box);
  for (const t of yt) {
    el("line", {x1: L, x2: L + pw, y1: Y(t), y2: Y(t), stroke: "#e5e7eb"}, svg);
    el("text", {x: L - 4, y: Y(t) + 4, "text-anchor": "end", fill: "#555"}, svg).textContent = t;
  }
  for (const t of xt) el("text", {x: X(t), y: T + ph + 14, "text-anchor": "middle", fill: "#555"}, svg).textContent = t;
  el("rect", {x: L, y: T, width: pw, height: ph, fill: "none", stroke: "#999"}, svg);
  el("text", {x: L + pw / 2, y: H - 2, "text-anchor": "middle", fill: "#333"}, svg).textContent = "step";
  const colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
  let i = 0, legend = 0;
  for (const [name, s] of Object.entries(series)) {
    for (const [kind, data] of [["train", s.train], ["validation", s.val]]) {
      if (!data.length) continue;
      const color = colors[i++ % colors.length], label = name === "train" ? kind : `${name} ${kind}`;
      el("polyline", {fill: "none", stroke: color, "stroke-width": kind === "train" ? 1.2 : 2,
                      points: data.map(p => `${X(p[0])},${Y(p[1])}`).join(" "), class: `line-${kind}`}, svg);
      if (kind === "validation") for (const p of data) el("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: color}, svg);
      el("rect", {x: L + pw - 150, y: T + 8 + 14 * legend, width: 12, height: 3, fill: color}, svg);
      el("text", {x: L + pw - 134, y: T + 12 + 14 * legend++, fill: "#333"}, svg).textContent = label;
    }
  }
}

function liveChart(box) {
  const series = {};
  const last = document.getElementById("last"), status = document.getElementById("status");
  const source = new EventSource(`/runs/${encodeURIComponent(box.dataset.run)}/events`);
  source.addEventListener("metrics", ev => {
    const msg = JSON.parse(ev.data);
    if (msg.reset || !series[msg.series]) series[msg.series] = {train: [], val: []};
    const s = series[msg.series];
    for (const r of msg.records) {
      if (typeof r.train_loss === "number") s.train.push([r.step, r.train_loss]);
      if (typeof r.val_loss === "number") s.val.push([r.step, r.val_loss]);
      const bits = [`step ${r.step}`];
      if (typeof r.train_loss === "number") bits.push(`train loss ${r.train_loss.toFixed(4)}`);
      if (typeof r.val_loss === "number") bits.push(`val loss ${r.val_loss.toFixed(4)}`);
      if (typeof r.tokens_per_s === "number") bits.push(`${Math.round(r.tokens_per_s).toLocaleString()} tok/s`);
      last.textContent = bits.join(" · ");
    }
    drawChart(box, series);
  });
  source.addEventListener("status", ev => {
    const st = JSON.parse(ev.data).status;
    // A run that ends gets other controls (resume, report, playground): render the page again.
    const ended = !["training", "starting"].includes(st.split(" ")[0]);
    if (status.textContent !== st && status.dataset.seen && ended) location.reload();
    status.textContent = st; status.className = `status ${st.split(" ")[0]}`; status.dataset.seen = "1";
  });
  drawChart(box, series);
}

// Server-sent events of an OpenAI-style streamed response; calls onDelta(text) per chunk.
async function streamSSE(url, body, onDelta) {
  const resp = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  if (!resp.ok) throw new Error((await resp.json()).error.message);
  const reader = resp.body.getReader(), decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const c = chunk.choices && chunk.choices[0];
        if (c) onDelta(c.delta ? (c.delta.content || "") : (c.text || ""));
      }
    }
  }
}

function playground(form) {
  const convo = document.getElementById("conversation"), history = [];
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const text = form.text.value;
    if (!text.trim()) return;
    const chat = form.dataset.mode === "chat";
    const add = (role, t) => {
      const d = document.createElement("div");
      d.className = `msg ${role}`; d.textContent = t; convo.appendChild(d); return d;
    };
    add("user", text);
    const answer = add("assistant", "");
    answer.id = "answer"; answer.dataset.chunks = "0"; answer.dataset.done = "0";
    for (const old of convo.querySelectorAll(".msg.assistant")) if (old !== answer) old.removeAttribute("id");
    form.text.value = "";
    const common = {model: form.dataset.model, stream: true, temperature: +form.temperature.value,
                    max_tokens: +form.max_tokens.value};
    const onDelta = d => { if (d) { answer.textContent += d; answer.dataset.chunks = String(+answer.dataset.chunks + 1); } };
    try {
      if (chat) {
        history.push({role: "user", content: text});
        await streamSSE("/v1/chat/completions", {...common, messages: history}, onDelta);
        history.push({role: "assistant", content: answer.textContent});
      } else {
        answer.textContent = "";
        await streamSSE("/v1/completions", {...common, prompt: text}, onDelta);
      }
    } catch (e) {
      answer.textContent = `error: ${e.message}`; answer.classList.add("error");
    }
    answer.dataset.done = "1";
  });
}

function classifyBox(form) {
  const out = document.getElementById("classification");
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const resp = await fetch("/v1/classify", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: form.dataset.model, input: form.text.value})});
    const body = await resp.json();
    if (!resp.ok) { out.textContent = `error: ${body.error.message}`; return; }
    const d = body.data[0];
    out.innerHTML = '<p>label: <strong id="label"></strong></p><table id="probabilities"><tr><th>class</th>' +
      "<th>probability</th></tr></table>";
    document.getElementById("label").textContent = d.label;
    const table = document.getElementById("probabilities");
    for (const [k, p] of Object.entries(d.probabilities).sort((a, b) => b[1] - a[1])) {
      const tr = table.insertRow();
      tr.insertCell().textContent = k; tr.insertCell().textContent = p.toFixed(4);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const chart = document.getElementById("chart");
  if (chart) liveChart(chart);
  const pg = document.getElementById("playground");
  if (pg) playground(pg);
  const clf = document.getElementById("classify");
  if (clf) classifyBox(clf);
});
