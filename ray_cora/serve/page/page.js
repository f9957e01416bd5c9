// The ray_cora page: one form over the app's /v1 routes (the same calls as any client).
// Plain ES2020, no framework, nothing from another origin. Every piece of API data is written with
// textContent / createElement, never innerHTML: a passage or a question holding markup shows as text.
"use strict";

const KEY_STORE = "ray_cora.api_key"; // sessionStorage only: gone when the tab closes
const SOURCES = {
  english: "English: no translation needed",
  wikidata_qid: "Wikidata label (by the answer's Wikidata item)",
  wikidata_en_match: "Wikidata label (the English answer matched a label or alias)",
  mt: "machine translation",
  untranslated: "untranslated: the English answer",
};

let config = null;
const languages = new Map(); // code -> {code, name, script, direction}

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// The BCP 47 tag of a table code (zh_cn -> zh-CN) for the lang attribute; "und" stays.
function bcp47(code) {
  const [base, region] = String(code).split("_");
  return region ? `${base}-${region.toUpperCase()}` : base;
}

function direction(code) {
  const lang = languages.get(code);
  return lang ? lang.direction : "auto";
}

// "Korean · Hangul", "Arabic" (a script named as its language is said once), "unknown language".
function langLabel(code) {
  const lang = languages.get(code);
  if (!lang) return code === "und" ? "unknown language" : code;
  return lang.script === lang.name ? lang.name : `${lang.name} · ${lang.script}`;
}

function langName(code) {
  const lang = languages.get(code);
  return lang ? lang.name : code;
}

// --- API calls --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const message = body && typeof body.error === "string" ? body.error : `HTTP ${status}`;
    super(message);
    this.status = status;
    this.field = body ? body.field : null;
    this.code = body ? body.code : null;
  }
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body), credentials: "omit" });
  } catch (exc) {
    throw new ApiError(0, { error: `the app did not answer (${exc.message}): is it running?`, field: null, code: "network" });
  }
  let data = null;
  try {
    data = await response.json();
  } catch (exc) {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function describeError(err) {
  if (!(err instanceof ApiError)) return `error: ${err && err.message ? err.message : err}`;
  const where = err.field ? ` (${err.field})` : "";
  return `${err.message}${where}`;
}

// --- rendering --------------------------------------------------------------------------------

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// `text` as nodes, every case-insensitive occurrence of a term wrapped in <mark>.
function highlighted(text, terms) {
  const wanted = [...new Set(terms.filter((t) => typeof t === "string" && t.trim()).map((t) => t.trim()))]
    .sort((a, b) => b.length - a.length);
  const fragment = document.createDocumentFragment();
  if (!wanted.length) {
    fragment.append(document.createTextNode(text));
    return fragment;
  }
  const pattern = new RegExp(wanted.map(escapeRegExp).join("|"), "giu");
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) fragment.append(document.createTextNode(text.slice(last, match.index)));
    fragment.append(el("mark", { text: match[0] }));
    last = match.index + match[0].length;
  }
  if (last < text.length) fragment.append(document.createTextNode(text.slice(last)));
  return fragment;
}

function showError(message, field) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  const input = field === "question" || field === "text" ? $("question") : null;
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
  if (field === "Authorization") {
    $("key-box").open = true;
    $("api-key").focus();
  }
}

function clearResults() {
  $("error").hidden = true;
  $("error").textContent = "";
  $("question").removeAttribute("aria-invalid");
  for (const id of ["asked", "pivot", "generated", "passages-box"]) $(id).hidden = true;
  $("pivot-body").replaceChildren();
  $("generated-body").replaceChildren();
  $("passages").replaceChildren();
}

function renderPivot(result, lang) {
  const body = $("pivot-body");
  if (result.error) {
    body.append(el("p", { class: "error", text: describeError(result.error) }));
  } else if (result.skipped) {
    body.append(el("p", { class: "note", text: result.skipped }));
  } else {
    const p = result.value;
    body.append(el("p", { class: "label" }, "Matched English question ",
      el("span", { class: "score", text: `score ${p.score.toFixed(3)}` })));
    body.append(el("p", { class: "matched", lang: "en", dir: "ltr", text: p.matched_question }));
    if (p.abstained) {
      const threshold = typeof p.threshold === "number" ? p.threshold.toFixed(3) : "?";
      body.append(el("p", { class: "abstained", id: "pivot-abstained",
        text: `abstained (score ${p.score.toFixed(3)} < threshold ${threshold})` }));
      body.append(el("p", { class: "note" }, "English answer it would give: ",
        el("bdi", { lang: "en", text: p.english_answer })));
    } else {
      body.append(el("p", { class: "label", text: `Answer in ${langName(lang)}` }));
      body.append(el("p", { class: "answer", id: "pivot-answer", lang: bcp47(lang), dir: direction(lang),
        text: p.answer }));
      body.append(el("p", { class: "note" }, "English answer ", el("bdi", { lang: "en", text: p.english_answer }),
        ` · source: ${SOURCES[p.translation_source] || p.translation_source || "none"}`));
    }
  }
  $("pivot").hidden = false;
}

function renderGenerated(result, lang) {
  const body = $("generated-body");
  if (result.error) body.append(el("p", { class: "error", text: describeError(result.error) }));
  else if (result.skipped) body.append(el("p", { class: "note", text: result.skipped }));
  else body.append(el("p", { class: "answer", id: "generated-answer", lang: bcp47(lang), dir: direction(lang),
    text: result.value.answer }));
  $("generated").hidden = false;
}

function renderPassages(result, terms) {
  const list = $("passages");
  if (result.error) {
    list.append(el("li", { class: "error", text: describeError(result.error) }));
  } else {
    for (const passage of result.value.passages) {
      const item = el("li", { class: "passage", lang: bcp47(passage.lang), dir: direction(passage.lang),
        "data-lang": passage.lang });
      const head = el("div", { class: "passage-head" },
        el("span", { class: "title", text: passage.title }),
        el("span", { class: "badge", lang: "en", dir: "ltr", text: langLabel(passage.lang) }),
        el("span", { class: "score", lang: "en", dir: "ltr", text: `score ${passage.score.toFixed(3)}` }));
      const text = el("p", { class: "passage-text" });
      text.append(highlighted(passage.text, terms));
      item.append(head, text);
      list.append(item);
    }
    if (!result.value.passages.length) list.append(el("li", { class: "note", text: "no passages" }));
  }
  $("passages-box").hidden = false;
}

// --- the question ----------------------------------------------------------------------------

async function settle(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    return { error };
  }
}

async function ask(event) {
  event.preventDefault();
  clearResults();
  const results = $("results");
  const question = $("question").value;
  const picked = $("lang").value;
  const retriever = $("retriever").value || null;
  document.body.dataset.state = "busy";
  results.setAttribute("aria-busy", "true");
  $("submit").disabled = true;
  $("status").textContent = "Searching…";
  try {
    let lang = picked === "auto" ? null : picked;
    let note = "";
    if (picked === "auto" && question.trim()) {
      const detected = await api("/v1/detect-language", { text: question });
      lang = detected.lang;
      note = lang ? `Detected ${langLabel(lang)}.` : "Could not tell the language: pick it in the list.";
    }
    $("lang-note").textContent = note;
    $("question").setAttribute("dir", lang ? direction(lang) : "auto");
    if (lang) $("question").setAttribute("lang", bcp47(lang));
    else $("question").removeAttribute("lang");

    // Retrieval reads the language only where the encoder's query format needs it (CORA's mDPR) or
    // BM25 searches that language's part of the index; an auto-detected language is not forced on mUSE.
    const retrieveBody = { question, k: config.default_k };
    if (retriever && retriever !== config.default_retriever) retrieveBody.retriever = retriever;
    const sendLang = picked !== "auto" || config.needs_lang || (retriever && retriever !== "dense");
    if (lang && sendLang) retrieveBody.lang = lang;
    if (!lang && picked === "auto" && config.needs_lang && question.trim()) {
      throw new ApiError(422, { error: "could not tell the language: pick it (this index's encoder reads the " +
        "question with its language)", field: "lang", code: "missing_field" });
    }

    const noLang = "could not tell the language: pick it";
    const calls = [
      settle(api("/v1/retrieve", retrieveBody)),
      config.pivot ? (lang ? settle(api("/v1/pivot", { question, lang })) : { skipped: noLang }) : null,
      config.generator ? (lang ? settle(api("/v1/answer", { question, lang })) : { skipped: noLang }) : null,
    ];
    const [passages, pivot, generated] = await Promise.all(calls);
    if (passages.error) {
      // The question itself is refused (empty, too long, a key missing): one message, nothing else.
      showError(describeError(passages.error), passages.error.field);
      document.body.dataset.state = "error";
      $("status").textContent = "";
      return;
    }
    // The question as the API read it (trimmed), written back as text in its own direction.
    const asked = $("asked-text");
    asked.textContent = passages.value.question;
    asked.setAttribute("dir", lang ? direction(lang) : "auto");
    if (lang) asked.setAttribute("lang", bcp47(lang));
    $("asked").hidden = false;
    const terms = [];
    if (pivot && pivot.value && !pivot.value.abstained) terms.push(pivot.value.answer, pivot.value.english_answer);
    if (generated && generated.value) terms.push(generated.value.answer);
    if (pivot) renderPivot(pivot, lang);
    if (generated) renderGenerated(generated, lang);
    renderPassages(passages, terms);
    const count = passages.value.passages.length;
    const langs = new Set(passages.value.passages.map((p) => p.lang)).size;
    $("status").textContent = `${count} passages in ${langs} language${langs === 1 ? "" : "s"}.`;
    document.body.dataset.state = "done";
  } catch (err) {
    showError(describeError(err), err instanceof ApiError ? err.field : null);
    $("status").textContent = "";
    document.body.dataset.state = "error";
  } finally {
    results.setAttribute("aria-busy", "false");
    $("submit").disabled = false;
    // How many questions the page has finished (tests wait on it; nothing reads it otherwise).
    document.body.dataset.answered = String(Number(document.body.dataset.answered || 0) + 1);
  }
}

function onLanguagePicked() {
  const code = $("lang").value;
  const input = $("question");
  if (code === "auto") {
    input.setAttribute("dir", "auto");
    input.removeAttribute("lang");
    $("lang-note").textContent = "";
  } else {
    input.setAttribute("dir", direction(code));
    input.setAttribute("lang", bcp47(code));
    $("lang-note").textContent = `${langLabel(code)}.`;
  }
}

async function start() {
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
  keyInput.addEventListener("input", () => {
    if (keyInput.value) sessionStorage.setItem(KEY_STORE, keyInput.value);
    else sessionStorage.removeItem(KEY_STORE);
  });
  $("lang").addEventListener("change", onLanguagePicked);
  $("ask").addEventListener("submit", ask);
  try {
    const response = await fetch("/page/config.json", { credentials: "omit" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    config = await response.json();
  } catch (exc) {
    showError(`could not read the page's settings (/page/config.json): ${exc.message}`, null);
    document.body.dataset.state = "error";
    return;
  }
  const select = $("lang");
  for (const lang of config.languages) {
    languages.set(lang.code, lang);
    select.append(el("option", { value: lang.code, text: `${lang.name} (${lang.code})` }));
  }
  if (config.retrievers.length > 1) {
    const retrievers = $("retriever");
    for (const name of config.retrievers) {
      const option = el("option", { value: name, text: name });
      if (name === config.default_retriever) option.selected = true;
      retrievers.append(option);
    }
    $("retriever-field").hidden = false;
  }
  $("question").maxLength = config.max_question_chars;
  const models = ["passages", config.pivot ? "the English pivot" : null, config.generator ? "mGEN" : null];
  $("status").textContent = `Ready: ${models.filter(Boolean).join(", ")}.`;
  document.body.dataset.state = "ready";
}

document.addEventListener("DOMContentLoaded", start);
