// The administrator's dashboard of a Tessera coordinator: polls /api/status, the latest
// /api/log entries and /metrics every two seconds, and sends acts to POST /api/admin with the
// token typed in (kept in this tab's memory only). Everything the run reports, contributors'
// own text among it (adapter names, reasons in the log), goes into the page as text
// (textContent), never as markup: the page holds the token, and markup from a contributor
// could steal it. The page's Content-Security-Policy allows only its own scripts and styles.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { tokens: null, losses: [], held: [], log: [], contributors: 0 };
window.tessera = state;

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tbody, rows) {
  const fresh = document.createElement("tbody");
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c);
    fresh.appendChild(tr);
  }
  tbody.replaceWith(fresh);
}

const short = (key) => String(key).slice(0, 16);
const num = (x, d) => (typeof x === "number" ? x.toFixed(d) : "–");

async function json(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// The training loss of round i at x = i, and the held-out loss of version v (the weights after
// v rounds, which round v trains from) at x = v, on one scale.
function curve(losses, held) {
  const svg = $("curve");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const series = [
    { cls: "train", points: losses.map((v, i) => [i, v]) },
    { cls: "held", points: held.filter((p) => Array.isArray(p) && p.length === 2) },
  ].filter((s) => s.points.length > 0);
  if (series.length === 0) return;
  const all = series.flatMap((s) => s.points);
  const w = 600, h = 160, pad = 48;
  const hi = Math.max(...all.map((p) => p[1])), lo = Math.min(...all.map((p) => p[1]));
  const last = Math.max(...all.map((p) => p[0]));
  const span = hi - lo || 1;
  const x = (i) => pad + (last === 0 ? 0 : (i * (w - 2 * pad)) / last);
  const y = (v) => h - pad - ((v - lo) * (h - 2 * pad)) / span;
  for (const s of series) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", s.cls);
    line.setAttribute("points", s.points.map(([i, v]) => `${x(i)},${y(v)}`).join(" "));
    svg.appendChild(line);
    for (const [i, v] of s.points) {
      const dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("class", s.cls);
      dot.setAttribute("cx", String(x(i)));
      dot.setAttribute("cy", String(y(v)));
      dot.setAttribute("r", "3");
      svg.appendChild(dot);
    }
  }
  for (const [v, at] of [[hi, y(hi)], [lo, y(lo)]]) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", "2");
    t.setAttribute("y", String(at + 4));
    t.textContent = v.toFixed(3);
    svg.appendChild(t);
  }
}

function showStatus(s) {
  $("run").textContent = s.run;
  const phase = $("phase");
  phase.textContent = s.phase;
  phase.className = `pill ${String(s.phase).replace(/[^a-z]/g, "")}`;
  const p = $("progress");
  p.max = Math.max(1, s.rounds);
  p.value = Math.min(s.round, s.rounds);
  $("rounds").textContent = `${s.round} / ${s.rounds} closed`;
  const losses = s.loss_history || [];
  const held = s.held_out_history || [];
  state.losses = losses;
  state.held = held;
  $("loss").textContent = losses.length ? num(losses[losses.length - 1], 4) : "–";
  $("held-loss").textContent = held.length ? num(held[held.length - 1][1], 4) : "–";
  curve(losses, held);
  const cs = s.contributors || [];
  state.contributors = cs.length;
  $("native").textContent = String(cs.filter((c) => c.kind === "native").length);
  $("browser").textContent = String(cs.filter((c) => c.kind === "browser").length);
  $("log-head").textContent = String(s.log_head + 1);
  fill($("contributors").tBodies[0], cs.map((c) => [
    cell(short(c.key), "mono"), cell(c.kind), cell(c.adapter, "wrap"), cell(c.lease, "wrap"), cell(c.unit),
    cell(c.accepted), cell(c.rejected), cell(c.tokens), cell(num(c.credits, 3)),
  ]));
  const lines = s.credits || [];
  let passed = 0, failed = 0;
  for (const l of lines) { passed += l.checks_passed; failed += l.checks_failed; }
  $("checks").textContent = `${passed} / ${failed}`;
  const ranked = [...lines].sort((a, b) => b.credits - a.credits).slice(0, 20);
  fill($("credits").tBodies[0], ranked.map((l) => [
    cell(short(l.key), "mono"), cell(num(l.credits, 3)), cell(num(l.pending_credits, 3)),
    cell(l.checks_passed), cell(l.checks_failed), cell(l.refused ? "refused" : "in good standing"),
  ]));
  const out = $("refused");
  while (out.firstChild) out.removeChild(out.firstChild);
  for (const l of lines.filter((l) => l.refused)) {
    const li = document.createElement("li");
    li.textContent = `${l.key} — refused by a check`;
    out.appendChild(li);
  }
  for (const k of s.banned || []) {
    const li = document.createElement("li");
    li.textContent = `${k} — banned by an administrator`;
    out.appendChild(li);
  }
  return s.log_head;
}

async function showLog(head) {
  const from = Math.max(0, head - 19);
  const page = await json(`/api/log?from=${from}&limit=20`);
  const list = $("log");
  while (list.firstChild) list.removeChild(list.firstChild);
  list.start = from;
  state.log = page.entries.map((e) => e.event);
  for (const e of page.entries.slice().reverse()) {
    const li = document.createElement("li");
    li.value = e.index;
    const text = String(e.event);
    li.textContent = text.length > 400 ? `${text.slice(0, 400)}…` : text;
    list.appendChild(li);
  }
}

async function showRate() {
  const r = await fetch("/metrics", { cache: "no-store" });
  if (!r.ok) return;
  const text = await r.text();
  const line = text.split("\n").find((l) => l.startsWith("tessera_tokens_total "));
  if (!line) return;
  const now = [performance.now(), Number(line.split(" ")[1])];
  if (state.tokens) {
    const secs = (now[0] - state.tokens[0]) / 1000;
    if (secs > 0) $("tokens-s").textContent = Math.round((now[1] - state.tokens[1]) / secs).toString();
  }
  state.tokens = now;
}

async function refresh() {
  try {
    const head = showStatus(await json("/api/status"));
    await showLog(head);
    await showRate();
    $("fetched").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("fetched").textContent = `cannot reach the coordinator: ${e.message}`;
  }
}

async function act(body) {
  const answer = $("answer");
  body.reason = $("reason").value;
  try {
    const r = await fetch("/api/admin", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${$("token").value}` },
      body: JSON.stringify(body),
    });
    const reply = await r.json().catch(() => ({}));
    answer.className = r.ok ? "mono" : "mono error";
    answer.textContent = r.ok
      ? `${reply.done || body.action}: done (log entry ${reply.log_index})`
      : `${body.action} refused (HTTP ${r.status}): ${reply.error || reply.code || "no reason given"}`;
  } catch (e) {
    answer.className = "mono error";
    answer.textContent = `${body.action}: ${e.message}`;
  }
  refresh();
}

$("pause").addEventListener("click", () => act({ action: "pause" }));
$("resume").addEventListener("click", () => act({ action: "resume" }));
$("stop").addEventListener("click", () => {
  if (confirm("Stop the run for good?")) act({ action: "stop" });
});
$("set").addEventListener("click", () => act({ action: "set", param: $("param").value, value: $("value").value }));
$("ban").addEventListener("click", () => act({ action: "ban", key: $("ban-key").value.trim() }));
$("unban").addEventListener("click", () => act({ action: "unban", key: $("ban-key").value.trim() }));

refresh();
setInterval(refresh, 2000);
