// The upload page. Every string that comes from the server (or from a file name) is inserted with
// textContent or as an SVG text node: never as HTML. The page's Content-Security-Policy forbids inline
// scripts as a second line of defence.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let card = null;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function svg(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function threshold(result) {
  if (typeof result.threshold === "number") return result.threshold;
  if (card && typeof card.threshold === "number") return card.threshold;
  return 0.5;
}

function showCard(c) {
  card = c;
  const parts = [`model ${c.name}`, c.kind + (c.method ? ` (${c.method})` : "")];
  if (c.families && c.families.length) parts.push(`families ${c.families.join(" + ")}`);
  if (c.base) parts.push(`base ${c.base}`);
  parts.push(`input ${c.image_size} px`, c.threshold_note || "");
  $("model").textContent = parts.filter(Boolean).join(" · ");
  if (c.caution) {
    $("caution").textContent = "Caution: this model was " + c.caution + ".";
    $("caution").hidden = false;
  }
  $("card").textContent = JSON.stringify(c, null, 2);
  $("card-details").hidden = false;
  $("frames").value = c.defaults.frames;
  $("frames").max = c.limits.max_frames;
  $("agg").value = c.defaults.agg;
}

function loadCard() {
  fetch("v1/model").then((r) => {
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    return r.json();
  }).then(showCard).catch((e) => {
    $("model").textContent = `model card unavailable (${e.message || "server unreachable"})`;
  });
}

function errorText(xhr) {
  let code = `HTTP ${xhr.status}`, message = xhr.statusText || "error";
  try {
    const body = JSON.parse(xhr.responseText);
    if (body && body.error) { code = body.error.code; message = body.error.message; }
  } catch (_) { /* not our JSON (a proxy's page?): keep the HTTP status */ }
  if (xhr.status === 429) {
    const wait = xhr.getResponseHeader("Retry-After");
    return `The server is busy: ${message}` + (wait ? ` (retry in ${wait} s)` : "");
  }
  return `Error (${code}): ${message}`;
}

function analyse(file) {
  if (!file) return;
  $("result").hidden = true;
  const mb = (n) => (n / 1048576).toFixed(1);
  if (card && file.size > card.limits.max_upload_bytes) {  // the server would refuse it (413) anyway
    setStatus(`Error (too_large): ${file.name} is ${mb(file.size)} MiB; this server accepts at most ` +
              `${mb(card.limits.max_upload_bytes)} MiB`, true);
    return;
  }
  const query = new URLSearchParams({heatmap: $("heatmap").checked, frames: $("frames").value,
                                     agg: $("agg").value});
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "v1/detect?" + query);
  // The server answers by its own time limit; wait a little longer, never forever.
  xhr.timeout = 1000 * (card ? card.limits.timeout_s : 60) + 3000;
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable && e.loaded < e.total) {
      setStatus(`uploading ${file.name}: ${Math.round(100 * e.loaded / e.total)} %`);
    } else {
      setStatus(`analysing ${file.name}…`);
    }
  };
  xhr.onload = () => {
    if (xhr.status !== 200) { setStatus(errorText(xhr), true); return; }
    let result;
    try { result = JSON.parse(xhr.responseText); } catch (_) {
      setStatus("Error: the server's answer was not JSON", true); return;
    }
    setStatus("");
    showResult(result);
  };
  xhr.onerror = () => setStatus("Error: cannot reach the server (network error or server down)", true);
  xhr.ontimeout = () => setStatus(`Error: no answer within ${xhr.timeout / 1000} s (timed out)`, true);
  setStatus(`uploading ${file.name}…`);
  xhr.send(form);
}

function showResult(r) {
  const t = threshold(r);
  $("input-name").textContent = r.input;
  $("verdict").textContent = `${String(r.verdict).toUpperCase()} — P(fake) = ${(100 * r.score).toFixed(1)} %`;
  $("verdict").className = r.verdict === "fake" ? "fake" : "real";
  $("meter-fill").style.width = `${Math.max(0, Math.min(1, r.score)) * 100}%`;
  $("meter-fill").className = r.verdict === "fake" ? "" : "real";
  $("meter-mark").style.left = `${t * 100}%`;
  const faces = [...new Set(r.face_status)].join(", ");
  let summary = `${r.kind}, ${r.frames} frame(s) scored`;
  if (r.kind === "video") summary += ` (${$("agg").value} of the frame scores)`;
  summary += `; crop: ${faces}; verdict threshold ${t.toFixed(2)}`;
  const calibrated = typeof r.calibrated === "boolean" ? r.calibrated : Boolean(card && card.calibrated);
  if (!calibrated) summary += " (uncalibrated)";
  $("summary").textContent = summary;
  const notes = $("notes");
  notes.replaceChildren(...r.notes.map((n) => { const li = document.createElement("li"); li.textContent = n; return li; }));
  const png = r.heatmap_png_base64;
  if (typeof png === "string" && /^[A-Za-z0-9+/]+=*$/.test(png)) {
    $("heatmap-img").src = "data:image/png;base64," + png;
    $("heatmap-figure").hidden = false;
  } else {
    $("heatmap-img").removeAttribute("src");
    $("heatmap-figure").hidden = true;
  }
  if (r.frame_scores.length > 1) plot(r.frame_indices, r.frame_scores, t);
  $("plot-figure").hidden = r.frame_scores.length <= 1;
  $("result").hidden = false;
}

function plot(indices, scores, t) {
  const W = 560, H = 220, L = 44, R = 14, T = 16, B = 34;
  const xs = indices.length === scores.length ? indices : scores.map((_, i) => i);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const x = (v) => L + (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5) * (W - L - R);
  const y = (v) => T + (1 - v) * (H - T - B);
  const best = scores.indexOf(Math.max(...scores));
  const nodes = [
    svg("line", {class: "axis", x1: L, y1: y(0), x2: W - R, y2: y(0)}),
    svg("line", {class: "axis", x1: L, y1: y(0), x2: L, y2: y(1)}),
    svg("line", {class: "threshold", x1: L, y1: y(t), x2: W - R, y2: y(t)}),
  ];
  for (const v of [0, 0.5, 1]) nodes.push(svg("text", {x: L - 8, y: y(v) + 4, "text-anchor": "end"}, v.toFixed(1)));
  nodes.push(svg("text", {x: 12, y: T + (H - T - B) / 2, transform: `rotate(-90 12 ${T + (H - T - B) / 2})`,
                          "text-anchor": "middle"}, "P(fake)"));
  const ticks = xs.length <= 12 ? xs : [x0, x1];
  for (const v of ticks) nodes.push(svg("text", {x: x(v), y: H - 18, "text-anchor": "middle"}, String(v)));
  nodes.push(svg("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle"}, "frame index"));
  nodes.push(svg("polyline", {class: "line", points: xs.map((v, i) => `${x(v)},${y(scores[i])}`).join(" ")}));
  xs.forEach((v, i) => {
    const dot = svg("circle", {class: i === best ? "dot best" : "dot", cx: x(v), cy: y(scores[i]), r: i === best ? 5 : 3.5});
    dot.appendChild(svg("title", {}, `frame ${v}: P(fake) ${scores[i].toFixed(3)}`));
    nodes.push(dot);
  });
  $("plot").replaceChildren(...nodes);
}

function setup() {
  loadCard();
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    analyse($("file").files[0]);
    $("file").value = "";  // picking the same file again analyses it again
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    analyse(e.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", setup);
