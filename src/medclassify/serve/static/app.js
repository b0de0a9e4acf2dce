"use strict";
// The page talks to the same API as any client: GET /v1/models, POST /v1/predict.
const modelSelect = document.getElementById("model");
const modelInfo = document.getElementById("model-info");
const fileInput = document.getElementById("files");
const drop = document.getElementById("drop");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
const explainBox = document.getElementById("explain");
const methodSelect = document.getElementById("method");
const BROWSER_IMAGES = ["image/png", "image/jpeg", "image/bmp"];
let models = [];

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;  // never innerHTML: file names and classes come from outside
  return node;
}

function describeModel() {
  const info = models.find((m) => m.name === modelSelect.value);
  if (!info) return;
  const acc = info.test_metrics && info.test_metrics.acc != null ? `, test accuracy ${info.test_metrics.acc.toFixed(3)}` : "";
  modelInfo.textContent = `${info.architecture} on ${info.dataset}, ${info.classes.length} classes, ${info.image_size} px${acc}`;
  explainBox.disabled = !info.explain;
  methodSelect.disabled = !info.explain;
}

async function loadModels() {
  const response = await fetch("/v1/models");
  models = (await response.json()).models;
  for (const info of models) modelSelect.append(element("option", { value: info.name }, info.name));
  describeModel();
}

function bars(probabilities, predicted) {
  const list = element("ul", { class: "bars", "aria-label": "probability of each class" });
  const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of entries) {
    const item = element("li", label === predicted ? { class: "top" } : {});
    item.append(element("span", { class: "name", title: label }, label));
    const track = element("span", { class: "track", role: "presentation" });
    const fill = element("span", { class: "fill" });
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    track.append(fill);
    item.append(track, element("span", { class: "value" }, `${(p * 100).toFixed(1)}%`));
    list.append(item);
  }
  return list;
}

function figure(src, caption) {
  const fig = element("figure");
  fig.append(element("img", { src, alt: caption }), element("figcaption", {}, caption));
  return fig;
}

// A conformal prediction set in plain words: how often such a set holds the true class, and its classes.
function setInWords(set) {
  const level = `${Math.round(set.level * 1000) / 10}%`;
  if (set.classes.length === 0) return `With ${level} confidence: no class is likely enough for a set at this level.`;
  if (set.classes.length === 1) return `With ${level} confidence: ${set.classes[0]}.`;
  return `With ${level} confidence one of: ${set.classes.join(", ")}.`;
}

async function classify(file, before) {
  const card = element("article", { class: "card", "aria-busy": "true" });
  card.append(element("h2", {}, file.name));
  const message = element("p", { class: "muted" }, "Analysing…");
  card.append(message);
  results.insertBefore(card, before);  // the newest selection on top, its files in the order chosen
  const body = new FormData();
  body.append("files", file, file.name);
  const shown = BROWSER_IMAGES.includes(file.type);  // DICOM and TIFF: the server sends the decoded image
  const query = new URLSearchParams({ model: modelSelect.value, explain: String(explainBox.checked && !explainBox.disabled),
                                      method: methodSelect.value, preview: String(!shown) });
  const methodName = methodSelect.options[methodSelect.selectedIndex].text;
  try {
    const response = await fetch(`/v1/predict?${query}`, { method: "POST", body });
    const answer = await response.json();
    if (!response.ok) {
      const detail = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail);
      message.replaceWith(element("p", { class: "error", role: "alert" }, `Rejected: ${detail}`));
      return;
    }
    message.remove();
    for (const prediction of answer.predictions) {
      const images = element("div", { class: "images" });
      if (shown) images.append(figure(URL.createObjectURL(file), "image"));
      else if (prediction.image) images.append(figure(prediction.image, "image"));
      if (prediction.heatmap) images.append(figure(prediction.heatmap, `${methodName} for ${prediction.prediction}`));
      if (images.childElementCount) card.append(images);
      const verdict = element("p", { class: "verdict" });
      if (answer.predictions.length > 1) verdict.append(`${prediction.file}: `);
      verdict.append(element("strong", { class: "predicted" }, prediction.prediction));
      verdict.append(` ${(prediction.probability * 100).toFixed(1)}%`);
      card.append(verdict);
      if (prediction.decision) card.append(element("p", { class: "decision" }, `Decision at the model's operating point: ${prediction.decision}`));
      if (prediction.prediction_set) card.append(element("p", { class: "prediction-set" }, setInWords(prediction.prediction_set)));
      card.append(bars(prediction.probabilities, prediction.prediction));
    }
    card.append(element("p", { class: "muted" }, `model ${answer.model}, version ${answer.version}`));
  } catch (error) {
    message.replaceWith(element("p", { class: "error", role: "alert" }, `The server did not answer: ${error}`));
  } finally {
    card.setAttribute("aria-busy", "false");
  }
}

async function classifyAll(fileList) {
  const files = [...fileList];  // the input's FileList empties when the input is reset
  if (!files.length) return;
  statusLine.textContent = `Analysing ${files.length} image(s)…`;
  const before = results.firstChild;
  await Promise.all(files.map((file) => classify(file, before)));
  statusLine.textContent = `Done: ${files.length} image(s).`;
}

fileInput.addEventListener("change", () => { classifyAll(fileInput.files); fileInput.value = ""; });
modelSelect.addEventListener("change", describeModel);
for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); classifyAll(e.dataTransfer.files); });
loadModels().catch((error) => { statusLine.textContent = `Could not load the models: ${error}`; });
fetch("/openapi.json").then((r) => r.json()).then((spec) => { document.getElementById("version").textContent = spec.info.version; });
