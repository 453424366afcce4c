// The chat page of `recipe serve`: a client of the server's own OpenAI-compatible API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, history: [], controller: null };

function apiKey() {
  const key = $("api-key").value || sessionStorage.getItem("recipe-serve-key") || "";
  if ($("api-key").value) sessionStorage.setItem("recipe-serve-key", $("api-key").value);
  return key;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

async function loadInfo() {
  const response = await fetch("/info", { headers: headers() });
  if (response.status === 401) {
    $("api-key-row").hidden = false;
    $("model-name").textContent = "enter the API key";
    setStatus("This server needs an API key.", true);
    return;
  }
  const info = await response.json();
  state.info = info;
  $("model-name").textContent = info.name === info.id ? info.id : `${info.name} (${info.id})`;
  $("model-quant").textContent = info.quantization;
  $("model-ctx").textContent = `ctx ${info.context_length}`;
  document.title = `${info.id} · recipe serve`;
  if (!info.chat_template) setStatus("This model has no chat template: use /v1/completions.", true);
  else setStatus("");
}

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  item.dataset.role = role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "you" : "model";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const body = {
    model: state.info ? state.info.id : undefined,
    messages,
    stream: true,
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
  };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

async function errorMessage(response) {
  try {
    const data = await response.json();
    return (data.error && data.error.message) || data.detail || JSON.stringify(data);
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

async function send(text) {
  if (!state.info) await loadInfo();
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  const out = bubble.querySelector(".text");
  bubble.dataset.state = "waiting";
  bubble.dataset.updates = "0";
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  setStatus("waiting for the model…");
  let answer = "";
  let pieces = 0;
  const started = performance.now();
  let first = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!response.ok) {
      if (response.status === 401) $("api-key-row").hidden = false;
      throw new Error(await errorMessage(response));
    }
    bubble.dataset.state = "streaming";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    while (!done) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      const lines = buffer.split(/\r?\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;  // blank separators and ": ping" comments
        const data = line.slice(5).trim();
        if (data === "[DONE]") { done = true; break; }
        const event = JSON.parse(data);
        const piece = event.choices && event.choices[0] && event.choices[0].delta && event.choices[0].delta.content;
        if (piece) {
          first = first || performance.now();
          answer += piece;
          pieces += 1;
          out.textContent = answer;
          bubble.dataset.updates = String(pieces);
          bubble.scrollIntoView({ block: "end" });
        }
      }
    }
    bubble.dataset.state = "done";
    const seconds = (performance.now() - (first || started)) / 1000;
    const rate = pieces > 1 && seconds > 0 ? ` · ${(pieces / seconds).toFixed(1)} tokens/s` : "";
    setStatus(`${pieces} tokens${rate} · first token after ${(((first || performance.now()) - started) / 1000).toFixed(2)} s`);
  } catch (error) {
    if (error.name === "AbortError") {
      bubble.dataset.state = "stopped";
      bubble.classList.add("stopped");
      setStatus(`stopped after ${pieces} tokens`);
    } else {
      bubble.dataset.state = "error";
      bubble.classList.add("error");
      out.textContent = answer ? `${answer}\n\n[${error.message}]` : error.message;
      setStatus(error.message, true);
      if (!answer) state.history.pop();  // the question was refused: let the person edit and resend
    }
  } finally {
    if (answer) state.history.push({ role: "assistant", content: answer });
    state.controller = null;
    setBusy(false);
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  $("prompt").value = "";
  send(text);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });

$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").replaceChildren();
  setStatus("new chat");
  $("prompt").focus();
});

$("api-key").addEventListener("change", () => { apiKey(); loadInfo(); });

loadInfo().catch((error) => setStatus(`cannot reach the server: ${error.message}`, true));
