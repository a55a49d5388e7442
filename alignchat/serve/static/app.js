/* alignchat web UI.
 *
 * Plain browser JavaScript, no build step. Talks to the server's /api routes; replies stream as
 * Server-Sent Events read from a fetch() body (EventSource cannot POST). Stop aborts that fetch: the server
 * sees the disconnect and frees the model slot. Every label has an English and a Chinese text (I18N below).
 *
 * Notable choices:
 * - Model output is hostile. Markdown goes through marked, then a strict allow-list DOMPurify instance
 *   (SAFE_HTML below: formatting tags only; no style, form, input, button, iframe, object, svg or img; no
 *   id, class, style or event attributes; links only to http/https/mailto, opened in a new tab with
 *   rel="noopener noreferrer"), then highlight.js. Disallowed elements are dropped (their text stays, except
 *   for script/style-like elements, whose content goes too).
 * - No image from a reply is ever loaded, not even a data: one: a Markdown image shows as its alt text, a raw
 *   <img> is removed. A remote image would leak the chat through its URL the moment it renders.
 * - GFM task-list boxes render as ☐/☑ text, not as <input> elements.
 * - Built-in tools: the settings panel has a toggle per tool the server lets this user use (/api/me `tools`),
 *   stored with the conversation. A tool round (the assistant's calls and the tools' results) renders as
 *   one <details> per call whose every string (name, arguments, result) is set with textContent: tool
 *   output is as hostile as model output, and is never parsed as HTML or Markdown.
 * - The page runs under a strict Content-Security-Policy (alignchat/serve/headers.py): no inline script,
 *   handler or style attribute anywhere in the UI; handlers are attached here, styles live in app.css.
 */
"use strict";

const I18N = {
  en: {
    tab_chat: "Chat", tab_label: "Label", tab_library: "Library", logout: "Log out", login_title: "Log in to alignchat",
    username: "User name", password: "Password", login: "Log in", new_chat: "New chat",
    message_ph: "Message alignchat (Enter to send, Shift+Enter for a new line)", compare_mode: "Compare two answers",
    stop: "Stop", send: "Send", settings: "Settings", system_prompt: "System prompt",
    system_ph: "You are a helpful assistant.", temperature: "Temperature", top_p: "Top-p", max_tokens: "Max tokens",
    seed: "Seed (empty = random)", demo_title: "Write a demonstration",
    demo_help: "Write the answer the model should give. It becomes SFT data.", prompt_ph: "Prompt",
    response_ph: "Ideal answer", save: "Save", rank_title: "Rank K sampled answers",
    rank_help: "Sample K answers, then give each a rank (1 = best). It becomes reward-model data.",
    sample: "Sample answers", helpful: "helpful", honest: "honest", harmless: "harmless", save_ranking: "Save ranking",
    export_title: "Feedback collected", download_sft: "Download SFT JSONL", download_cmp: "Download comparison JSONL",
    library_missing: "The literature assistant is not installed on this server.",
    you: "You", assistant: "Assistant", copy: "Copy", copied: "Copied", edit: "Edit", regenerate: "Regenerate",
    cancel: "Cancel", resend: "Save & resend", save_edit: "Save correction", good: "Good answer", bad: "Bad answer",
    answer: "Answer", pick: "This one is better", picked: "Chosen", stopped: "(stopped)", blocked: "(blocked by the content filter)", untitled: "New chat",
    delete_confirm: "Delete this conversation?", saved: "Saved", sampling: "Sampling…", need_rank: "Give every answer a different rank",
    loading_model: "Loading the model…", error: "Error", edited: "edited", generating: "Generating…",
    welcome: "Start a conversation. Your chats are kept in the server's database.",
    tools: "Tools", tools_help: "The server runs the tools the model calls; each call and its result show in the chat.",
    tool: "Tool", tool_call: "Tool call", arguments: "Arguments", result: "Result", tool_error: "error",
    tool_calculator: "Calculator", tool_python: "Python (sandboxed)", tool_library_search: "Search my library",
  },
  zh: {
    tab_chat: "对话", tab_label: "标注", tab_library: "文献库", logout: "退出登录", login_title: "登录 alignchat",
    username: "用户名", password: "密码", login: "登录", new_chat: "新对话",
    message_ph: "给 alignchat 发消息（Enter 发送，Shift+Enter 换行）", compare_mode: "比较两个回答",
    stop: "停止", send: "发送", settings: "设置", system_prompt: "系统提示词",
    system_ph: "你是一个乐于助人的助手。", temperature: "温度", top_p: "Top-p", max_tokens: "最大生成长度",
    seed: "随机种子（留空为随机）", demo_title: "撰写示范回答",
    demo_help: "写出模型应给出的回答，它将成为监督微调（SFT）数据。", prompt_ph: "提示",
    response_ph: "理想回答", save: "保存", rank_title: "为 K 个采样回答排序",
    rank_help: "采样 K 个回答，为每个回答排名（1 = 最好），它将成为奖励模型数据。",
    sample: "采样回答", helpful: "有用", honest: "诚实", harmless: "无害", save_ranking: "保存排序",
    export_title: "已收集的反馈", download_sft: "下载 SFT JSONL", download_cmp: "下载比较数据 JSONL",
    library_missing: "此服务器未安装文献助手。",
    you: "你", assistant: "助手", copy: "复制", copied: "已复制", edit: "编辑", regenerate: "重新生成",
    cancel: "取消", resend: "保存并重新发送", save_edit: "保存修改", good: "好回答", bad: "差回答",
    answer: "回答", pick: "这个更好", picked: "已选择", stopped: "（已停止）", blocked: "（已被内容过滤器拦截）", untitled: "新对话",
    delete_confirm: "删除这个对话？", saved: "已保存", sampling: "采样中…", need_rank: "请为每个回答给出不同的名次",
    loading_model: "正在加载模型…", error: "错误", edited: "已编辑", generating: "生成中…",
    welcome: "开始对话吧。你的对话保存在服务器的数据库中。",
    tools: "工具", tools_help: "模型调用的工具由服务器运行；每次调用及其结果都显示在对话中。",
    tool: "工具", tool_call: "工具调用", arguments: "参数", result: "结果", tool_error: "错误",
    tool_calculator: "计算器", tool_python: "Python（沙箱）", tool_library_search: "检索我的文献库",
  },
};

const state = {
  lang: "en",
  me: null, convId: null, conv: null, controller: null, streaming: false, rankResponses: [], libraryLoaded: false,
};
state.lang = localStorage.getItem("alignchat.lang") || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");

const $ = (sel) => document.querySelector(sel);
const t = (key) => (I18N[state.lang] && I18N[state.lang][key]) || I18N.en[key] || key;

function applyLang() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-ph]").forEach((el) => { el.placeholder = t(el.dataset.i18nPh); });
  $("#lang-btn").textContent = state.lang === "zh" ? "English" : "中文";
  if (state.conv) renderConversation();
}

// ---- HTTP ------------------------------------------------------------------------------------------------
async function api(method, path, body) {
  const res = await fetch(path, {
    method, headers: body !== undefined ? { "Content-Type": "application/json" } : {},
    body: body !== undefined ? JSON.stringify(body) : undefined, credentials: "same-origin",
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* empty body */ }
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message) || res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

/* POST and read Server-Sent Events; onEvent(name, data) per event. Resolves when the stream ends. */
async function streamPost(path, body, onEvent, signal) {
  const res = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
    credentials: "same-origin",
  });
  if (!res.ok) {
    let msg = res.statusText;
    try { msg = (await res.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) !== -1) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message"; const lines = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) lines.push(line.slice(5).trimStart());
      }
      if (lines.length) onEvent(name, JSON.parse(lines.join("\n")));
    }
  }
}

// ---- Markdown ----------------------------------------------------------------------------------------------
const SAFE_HTML = {
  tags: ["p", "br", "hr", "strong", "b", "em", "i", "del", "s", "sup", "sub", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "a"],
  attrs: { a: ["href", "title"], ol: ["start"], th: ["align"], td: ["align"], code: ["class"] },
  schemes: ["http:", "https:", "mailto:"],
};

/* A private DOMPurify instance (its hooks touch nothing else) configured from SAFE_HTML; null if not loaded. */
const purifier = (() => {
  if (!window.DOMPurify) return null;
  const p = DOMPurify(window);
  p.addHook("afterSanitizeAttributes", (node) => {
    if (node.nodeType !== 1) return;
    const tag = node.nodeName.toLowerCase();
    const keep = SAFE_HTML.attrs[tag] || [];
    for (const name of node.getAttributeNames()) if (!keep.includes(name)) node.removeAttribute(name);
    if (tag === "a") {
      let url = null;
      try { url = new URL(node.getAttribute("href") || ""); } catch (_) { /* relative or malformed: no link */ }
      if (url && SAFE_HTML.schemes.includes(url.protocol)) {
        node.setAttribute("href", url.href);
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      } else node.removeAttribute("href");
    } else if (tag === "code" && node.hasAttribute("class")) {
      // keep only marked's language-NAME (it picks highlight.js's grammar), never one of the page's own classes
      const lang = node.getAttribute("class").split(/\s+/).filter((c) => /^language-[\w+#.-]{1,40}$/.test(c));
      if (lang.length) node.setAttribute("class", lang[0]); else node.removeAttribute("class");
    } else if (tag === "ol" && !/^\d{1,9}$/.test(node.getAttribute("start") || "")) {
      node.removeAttribute("start");
    } else if ((tag === "th" || tag === "td") && !["left", "center", "right"].includes(node.getAttribute("align"))) {
      node.removeAttribute("align");
    }
  });
  return p;
})();

/* Untrusted HTML -> a DocumentFragment holding only SAFE_HTML; plain text when DOMPurify is missing. */
function sanitizeHtml(html) {
  if (!purifier) { const f = document.createDocumentFragment(); f.append(html || ""); return f; }
  return purifier.sanitize(html || "", {
    ALLOWED_TAGS: SAFE_HTML.tags, ALLOWED_ATTR: [...new Set(Object.values(SAFE_HTML.attrs).flat())],
    ALLOWED_URI_REGEXP: /^(?:https?|mailto):/i, ALLOW_DATA_ATTR: false, ALLOW_ARIA_ATTR: false,
    ALLOW_UNKNOWN_PROTOCOLS: false, ALLOW_SELF_CLOSE_IN_ATTR: false, KEEP_CONTENT: true, RETURN_DOM_FRAGMENT: true,
  });
}

/* marked without images or form controls: an image is its alt text, a task-list box a ☐/☑ character. */
const markdown = window.marked ? new marked.Marked({
  gfm: true, breaks: true,
  renderer: {
    image(token) { return escapeHtml(token.text); },
    checkbox(token) { return token.checked ? "☑ " : "☐ "; },
  },
}) : null;

function renderMarkdown(el, text) {
  if (!markdown || !purifier) { el.textContent = text || ""; return; }
  el.replaceChildren(sanitizeHtml(markdown.parse(text || "")));
  el.querySelectorAll("pre code").forEach((code) => {
    if (window.hljs) { try { hljs.highlightElement(code); } catch (_) { /* unknown language */ } }
    const pre = code.parentElement;
    const btn = document.createElement("button");
    btn.className = "copy-code"; btn.textContent = t("copy");
    btn.onclick = () => copyText(code.innerText, btn);
    pre.appendChild(btn);
  });
}
function escapeHtml(s) { const d = document.createElement("div"); d.textContent = s || ""; return d.innerHTML; }
async function copyText(text, btn) {
  try { await navigator.clipboard.writeText(text); } catch (_) {
    const ta = document.createElement("textarea"); ta.value = text; document.body.appendChild(ta); ta.select();
    document.execCommand("copy"); ta.remove();
  }
  if (btn) { const old = btn.textContent; btn.textContent = t("copied"); setTimeout(() => { btn.textContent = old; }, 1200); }
}

// ---- settings ----------------------------------------------------------------------------------------------
function currentSettings() {
  const s = {
    temperature: parseFloat($("#temperature").value), top_p: parseFloat($("#top-p").value),
    max_tokens: parseInt($("#max-tokens").value, 10) || 512,
  };
  const seed = $("#seed").value.trim();
  if (seed !== "") s.seed = parseInt(seed, 10);
  return s;
}
function showSettings(conv) {
  const s = (conv && conv.settings) || {};
  $("#system-prompt").value = (conv && conv.system_prompt) || "";
  if (s.temperature !== undefined) $("#temperature").value = s.temperature;
  if (s.top_p !== undefined) $("#top-p").value = s.top_p;
  if (s.max_tokens !== undefined) $("#max-tokens").value = s.max_tokens;
  $("#seed").value = s.seed !== undefined ? s.seed : "";
  $("#temperature-val").textContent = $("#temperature").value;
  $("#top-p-val").textContent = $("#top-p").value;
  const on = new Set((conv && conv.tools) || []);
  document.querySelectorAll(".tool-toggle").forEach((box) => { box.checked = on.has(box.dataset.tool); });
}

// ---- built-in tools ----------------------------------------------------------------------------------------
function currentTools() {
  return [...document.querySelectorAll(".tool-toggle:checked")].map((box) => box.dataset.tool);
}
function buildToolToggles(names) {
  const box = $("#tool-toggles");
  box.replaceChildren();
  for (const name of names) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox"; input.className = "tool-toggle"; input.dataset.tool = name; input.id = `tool-${name}`;
    input.onchange = saveTools;
    const span = document.createElement("span");
    span.textContent = t(`tool_${name}`);
    label.append(input, span);
    box.appendChild(label);
  }
  $("#tools-box").classList.toggle("hidden", !names.length);
}
async function saveTools() {
  if (!state.convId) return; // a new chat sends its tools when it is created
  try {
    const conv = await api("PATCH", `/api/conversations/${state.convId}`, { tools: currentTools() });
    if (state.conv) state.conv.tools = conv.tools;
  } catch (e) { $("#status-line").textContent = `${t("error")}: ${e.message}`; }
}
/* One tool round: the assistant's calls, each with its result (tool messages), as <details>; text only. */
function toolRoundElement(call, results) {
  const el = document.createElement("div");
  el.className = "msg assistant tool-round";
  el.dataset.id = call.id || "";
  const role = document.createElement("div");
  role.className = "role"; role.textContent = t("tool_call");
  el.appendChild(role);
  if (call.content) { const body = document.createElement("div"); body.className = "body"; renderMarkdown(body, call.content); el.appendChild(body); }
  const byId = new Map(results.map((r) => [r.tool && r.tool.tool_call_id, r]));
  for (const c of call.tool_calls || []) {
    const res = byId.get(c.id);
    const d = document.createElement("details");
    d.className = "tool-call" + (res && res.tool && res.tool.error ? " failed" : "");
    d.dataset.tool = c.function.name;
    const summary = document.createElement("summary");
    const shown = res ? res.content.split("\n")[0].slice(0, 80) : "…";
    summary.textContent = `${t("tool")}: ${c.function.name} → ${shown}`;
    const args = document.createElement("pre"); args.className = "tool-args";
    args.textContent = typeof c.function.arguments === "string" ? c.function.arguments : JSON.stringify(c.function.arguments);
    const out = document.createElement("pre"); out.className = "tool-result";
    out.textContent = res ? res.content : "";
    d.append(summary, args, out);
    el.appendChild(d);
  }
  return el;
}

// ---- conversations -----------------------------------------------------------------------------------------
async function loadConversations() {
  const { data } = await api("GET", "/api/conversations");
  const list = $("#conv-list");
  list.innerHTML = "";
  for (const c of data) {
    const li = document.createElement("li");
    li.className = "conv-item" + (c.id === state.convId ? " active" : "");
    li.dataset.id = c.id;
    const title = document.createElement("span");
    title.className = "title"; title.textContent = c.title || t("untitled"); title.title = c.title || "";
    const del = document.createElement("button");
    del.className = "del"; del.textContent = "×"; del.title = "delete";
    del.onclick = async (e) => {
      e.stopPropagation();
      if (!confirm(t("delete_confirm"))) return;
      await api("DELETE", `/api/conversations/${c.id}`);
      if (state.convId === c.id) newChat();
      loadConversations();
    };
    li.append(title, del);
    li.onclick = () => openConversation(c.id);
    list.appendChild(li);
  }
}

async function openConversation(id) {
  if (state.streaming) return;
  state.convId = id;
  localStorage.setItem("alignchat.conv", id);
  state.conv = await api("GET", `/api/conversations/${id}`);
  showSettings(state.conv);
  $("#compare-area").classList.add("hidden");
  renderConversation();
  document.querySelectorAll(".conv-item").forEach((li) => li.classList.toggle("active", li.dataset.id === id));
}

function newChat() {
  state.convId = null; state.conv = null;
  localStorage.removeItem("alignchat.conv");
  $("#messages").innerHTML = `<p class="muted welcome">${escapeHtml(t("welcome"))}</p>`;
  $("#compare-area").classList.add("hidden");
  showSettings(null);
  document.querySelectorAll(".conv-item").forEach((li) => li.classList.remove("active"));
  $("#composer-input").focus();
}

function renderConversation() {
  const box = $("#messages");
  box.innerHTML = "";
  const msgs = state.conv ? state.conv.messages : [];
  if (!msgs.length) box.innerHTML = `<p class="muted welcome">${escapeHtml(t("welcome"))}</p>`;
  const results = msgs.filter((m) => m.role === "tool");
  const shown = new Set();
  msgs.forEach((m, i) => {
    if (m.role === "assistant" && m.tool_calls && m.tool_calls.length) {
      const ids = new Set(m.tool_calls.map((c) => c.id));
      const mine = results.filter((r) => r.tool && ids.has(r.tool.tool_call_id) && !shown.has(r.id));
      mine.forEach((r) => shown.add(r.id));
      box.appendChild(toolRoundElement(m, mine));
    } else if (m.role === "tool") {
      if (!shown.has(m.id)) box.appendChild(toolRoundElement({ tool_calls: [] }, [m]));
    } else box.appendChild(messageElement(m, i === msgs.length - 1));
  });
  box.scrollTop = box.scrollHeight;
}

function messageElement(m, isLast) {
  const el = document.createElement("div");
  el.className = `msg ${m.role}`;
  el.dataset.id = m.id || "";
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = m.role === "user" ? t("you") : t("assistant");
  if (m.edited) { const e = document.createElement("span"); e.textContent = `· ${t("edited")}`; role.appendChild(e); }
  if (m.finish_reason === "abort") { const e = document.createElement("span"); e.textContent = t("stopped"); role.appendChild(e); }
  if (m.finish_reason === "content_filter") { el.classList.add("blocked"); const e = document.createElement("span"); e.className = "blocked-tag"; e.textContent = t("blocked"); role.appendChild(e); }
  const body = document.createElement("div");
  body.className = "body";
  renderMarkdown(body, m.content);
  el.append(role, body);
  if (m.id) el.appendChild(messageActions(m, el, body, isLast));
  return el;
}

// thumbs as inline SVG, so they render without an emoji font
const THUMB_UP = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M2 21h4V9H2v12zm20-11a2 2 0 0 0-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.4-1.1L13.2 1 6.6 7.6C6.2 8 6 8.5 6 9v10a2 2 0 0 0 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7.1c.1-.2.2-.5.2-.7v-2z"/></svg>';
const THUMB_DOWN = '<svg viewBox="0 0 24 24" aria-hidden="true" class="flip"><path d="M2 21h4V9H2v12zm20-11a2 2 0 0 0-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.4-1.1L13.2 1 6.6 7.6C6.2 8 6 8.5 6 9v10a2 2 0 0 0 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7.1c.1-.2.2-.5.2-.7v-2z"/></svg>';

function actionButton(label, cls, onclick) {
  const b = document.createElement("button");
  b.textContent = label; b.className = cls; b.onclick = onclick;
  return b;
}

function messageActions(m, el, body, isLast) {
  const bar = document.createElement("div");
  bar.className = "actions";
  bar.appendChild(actionButton(t("copy"), "copy-msg", (e) => copyText(m.content, e.target)));
  if (m.role === "assistant") {
    const up = actionButton("", "thumb-up" + (m.rating === 1 ? " on" : ""), () => thumb(m, m.rating === 1 ? 0 : 1, bar));
    const down = actionButton("", "thumb-down" + (m.rating === -1 ? " on" : ""), () => thumb(m, m.rating === -1 ? 0 : -1, bar));
    up.innerHTML = THUMB_UP; down.innerHTML = THUMB_DOWN;
    up.title = t("good"); down.title = t("bad");
    up.setAttribute("aria-label", t("good")); down.setAttribute("aria-label", t("bad"));
    bar.append(up, down);
    bar.appendChild(actionButton(t("edit"), "edit-answer", () => editBox(m, el, body, false)));
    if (isLast) bar.appendChild(actionButton(t("regenerate"), "regenerate", () => send({ regenerate: true })));
  } else {
    bar.appendChild(actionButton(t("edit"), "edit-user", () => editBox(m, el, body, true)));
  }
  return bar;
}

async function thumb(m, rating, bar) {
  await api("POST", `/api/messages/${m.id}/feedback`, { rating });
  m.rating = rating;
  bar.querySelector(".thumb-up").classList.toggle("on", rating === 1);
  bar.querySelector(".thumb-down").classList.toggle("on", rating === -1);
}

function editBox(m, el, body, resend) {
  if (state.streaming || el.querySelector(".edit-box")) return;
  const box = document.createElement("div");
  box.className = "edit-box";
  const ta = document.createElement("textarea");
  ta.value = m.content; ta.rows = Math.min(12, Math.max(3, m.content.split("\n").length + 1));
  const save = actionButton(resend ? t("resend") : t("save_edit"), "primary save-edit", async () => {
    const text = ta.value;
    if (resend) {
      box.remove();
      await send({ content: text, edit_of: m.id });
    } else {
      const updated = await api("PUT", `/api/messages/${m.id}`, { content: text });
      Object.assign(m, updated);
      await openConversation(state.convId);
    }
  });
  const cancel = actionButton(t("cancel"), "", () => { box.remove(); body.classList.remove("hidden"); });
  box.append(ta, save, cancel);
  body.classList.add("hidden");
  el.insertBefore(box, body.nextSibling);
  ta.focus();
}

// ---- sending and streaming ---------------------------------------------------------------------------------
function setStreaming(on) {
  state.streaming = on;
  $("#send-btn").classList.toggle("hidden", on);
  $("#stop-btn").classList.toggle("hidden", !on);
  $("#status-line").textContent = on ? t("generating") : "";
}

async function ensureConversation() {
  if (state.convId) return state.convId;
  const conv = await api("POST", "/api/conversations", {
    system_prompt: $("#system-prompt").value, settings: currentSettings(), tools: currentTools(),
  });
  state.convId = conv.id; state.conv = conv;
  localStorage.setItem("alignchat.conv", conv.id);
  return conv.id;
}

async function send(opts = {}) {
  if (state.streaming) return;
  const input = $("#composer-input");
  const compare = $("#compare-toggle").checked && !opts.regenerate;
  let content = opts.content;
  if (content === undefined && !opts.regenerate) {
    content = input.value;
    if (!content.trim()) return;
  }
  const id = await ensureConversation();
  const body = { settings: currentSettings(), system_prompt: $("#system-prompt").value, compare, regenerate: !!opts.regenerate };
  if (content !== undefined) body.content = content;
  if (opts.edit_of) body.edit_of = opts.edit_of;

  // optimistic view: drop what this turn replaces, show the user's message, then stream the answer(s)
  const msgs = state.conv.messages;
  while (opts.regenerate && msgs.length && msgs[msgs.length - 1].role !== "user") msgs.pop();
  if (opts.edit_of) { const i = msgs.findIndex((m) => m.id === opts.edit_of); if (i >= 0) msgs.splice(i); }
  if (content !== undefined) { msgs.push({ role: "user", content }); input.value = ""; }
  renderConversation();

  const box = $("#messages");
  const live = [];
  const cmp = $("#compare-area");
  if (compare) {
    cmp.innerHTML = "";
    cmp.classList.remove("hidden");
    for (let i = 0; i < 2; i++) {
      const col = document.createElement("div");
      col.className = "cmp-col"; col.dataset.index = i;
      const h = document.createElement("h4"); h.textContent = `${t("answer")} ${i + 1}`;
      const b = document.createElement("div"); b.className = "body";
      const pick = actionButton(t("pick"), "pick-btn", null); pick.disabled = true;
      col.append(h, b, pick);
      cmp.appendChild(col);
      live.push({ el: col, body: b, text: "" });
    }
  } else {
    cmp.classList.add("hidden");
    const el = messageElement({ role: "assistant", content: "" }, false);
    el.classList.add("streaming");
    box.appendChild(el);
    live.push({ el, body: el.querySelector(".body"), text: "" });
  }
  box.scrollTop = box.scrollHeight;

  state.controller = new AbortController();
  setStreaming(true);
  let pending = false;
  const repaint = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      live.forEach((l) => renderMarkdown(l.body, l.text));
      box.scrollTop = box.scrollHeight;
    });
  };
  try {
    await streamPost(`/api/conversations/${id}/chat`, body, (name, data) => {
      if (name === "user") {
        const last = msgs[msgs.length - 1];
        if (last && last.role === "user" && !last.id) Object.assign(last, data.message);
        const userEls = box.querySelectorAll(".msg.user");
        const ue = userEls[userEls.length - 1];
        if (ue) { ue.dataset.id = data.message.id; ue.classList.add("acked"); }
      } else if (name === "delta") {
        live[data.index].text += data.text;
        repaint();
      } else if (name === "tool") {
        // the round's text (if any) was streamed into the live answer: it becomes the round's own element
        const current = live[0];
        current.el.replaceWith(toolRoundElement(data.call, data.results));
        msgs.push(data.call, ...data.results);
        const el = messageElement({ role: "assistant", content: "" }, false);
        el.classList.add("streaming");
        box.appendChild(el);
        live[0] = { el, body: el.querySelector(".body"), text: "" };
        box.scrollTop = box.scrollHeight;
      } else if (name === "done") {
        msgs.push(data.message);
      } else if (name === "pair") {
        live.forEach((l, i) => {
          l.text = data.responses[i];
          renderMarkdown(l.body, l.text);
          const pick = l.el.querySelector(".pick-btn");
          pick.disabled = false;
          pick.onclick = () => choosePair(data.pair_id, i);
        });
      } else if (name === "error") {
        throw new Error(data.error.message);
      }
    }, state.controller.signal);
  } catch (e) {
    if (e.name !== "AbortError") $("#status-line").textContent = `${t("error")}: ${e.message}`;
  } finally {
    setStreaming(false);
    state.controller = null;
    if (!compare) {
      const keepStatus = $("#status-line").textContent;
      await openConversation(id);
      $("#status-line").textContent = keepStatus;
    }
    loadConversations();
  }
}

async function choosePair(pairId, index) {
  await api("POST", `/api/pairs/${pairId}/choose`, { chosen: index });
  document.querySelectorAll("#compare-area .pick-btn").forEach((b, i) => {
    b.disabled = true;
    if (i === index) { b.textContent = t("picked"); b.classList.add("on"); }
  });
  await openConversation(state.convId);
}

function stop() { if (state.controller) state.controller.abort(); }

// ---- labelling mode ----------------------------------------------------------------------------------------
async function saveDemonstration() {
  const prompt = $("#demo-prompt").value.trim(), response = $("#demo-response").value.trim();
  if (!prompt || !response) return;
  try {
    await api("POST", "/api/label/demonstrations", { prompt: [{ role: "user", content: prompt }], response });
    $("#demo-status").textContent = t("saved");
    $("#demo-prompt").value = ""; $("#demo-response").value = "";
    loadLabelStats();
  } catch (e) { $("#demo-status").textContent = `${t("error")}: ${e.message}`; }
}

async function sampleForRanking() {
  const prompt = $("#rank-prompt").value.trim();
  if (!prompt) return;
  const k = parseInt($("#rank-k").value, 10);
  $("#rank-status").textContent = t("sampling");
  $("#rank-save").disabled = true;
  try {
    const s = currentSettings();
    const r = await api("POST", "/api/label/sample", {
      prompt: [{ role: "user", content: prompt }], k, settings: { temperature: Math.max(s.temperature, 0.7), top_p: s.top_p, max_tokens: s.max_tokens },
    });
    state.rankResponses = r.responses;
    const box = $("#rank-answers");
    box.innerHTML = "";
    r.responses.forEach((text, i) => {
      const card = document.createElement("div");
      card.className = "rank-card";
      const sel = document.createElement("select");
      sel.className = "rank-select"; sel.dataset.index = i;
      for (let j = 1; j <= k; j++) { const o = document.createElement("option"); o.value = j; o.textContent = j; sel.appendChild(o); }
      sel.value = i + 1;
      const body = document.createElement("div"); body.className = "body";
      renderMarkdown(body, text);
      card.append(sel, body);
      box.appendChild(card);
    });
    $("#rank-save").disabled = false;
    $("#rank-status").textContent = "";
  } catch (e) { $("#rank-status").textContent = `${t("error")}: ${e.message}`; }
}

async function saveRanking() {
  const ranks = [...document.querySelectorAll(".rank-select")].map((s) => ({ index: +s.dataset.index, rank: +s.value }));
  if (new Set(ranks.map((r) => r.rank)).size !== ranks.length) { $("#rank-status").textContent = t("need_rank"); return; }
  const ranking = ranks.sort((a, b) => a.rank - b.rank).map((r) => r.index);
  const criteria = [...document.querySelectorAll(".criterion:checked")].map((c) => c.value);
  try {
    await api("POST", "/api/label/rankings", {
      prompt: [{ role: "user", content: $("#rank-prompt").value.trim() }], responses: state.rankResponses, ranking, criteria,
    });
    $("#rank-status").textContent = t("saved");
    $("#rank-answers").innerHTML = ""; $("#rank-save").disabled = true;
    loadLabelStats();
  } catch (e) { $("#rank-status").textContent = `${t("error")}: ${e.message}`; }
}

async function loadLabelStats() {
  try { $("#label-stats").textContent = JSON.stringify(await api("GET", "/api/label/stats"), null, 1); } catch (_) { /* not admin */ }
}

// ---- tabs, Library -----------------------------------------------------------------------------------------
function showTab(name) {
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  $("#chat-view").classList.toggle("hidden", name !== "chat");
  $("#label-view").classList.toggle("hidden", name !== "label");
  $("#library-view").classList.toggle("hidden", name !== "library");
  if (name === "label") loadLabelStats();
  if (name === "library") mountLibrary();
}

function mountLibrary() {
  if (state.libraryLoaded) return;
  state.libraryLoaded = true;
  const mount = () => {
    if (window.AlignchatLibrary && typeof window.AlignchatLibrary.mount === "function") {
      const root = $("#library-root");
      root.innerHTML = "";
      window.AlignchatLibrary.mount(root);
    }
  };
  if (window.AlignchatLibrary) { mount(); return; }
  const s = document.createElement("script");
  s.src = "/static/library.js";
  s.onload = mount;
  s.onerror = () => { /* not installed: keep the notice */ };
  document.body.appendChild(s);
}

// ---- start-up ----------------------------------------------------------------------------------------------
async function start() {
  applyLang();
  try {
    state.me = await api("GET", "/api/me");
  } catch (e) {
    if (e.status === 401) { $("#login-view").classList.remove("hidden"); $("#login-user").focus(); return; }
    throw e;
  }
  $("#login-view").classList.add("hidden");
  $("#user-name").textContent = state.me.user.username;
  $("#model-name").textContent = state.me.model + (state.me.model_status === "loading" ? ` (${t("loading_model")})` : "");
  $("#logout-btn").classList.toggle("hidden", !state.me.require_login);
  buildToolToggles(state.me.tools || []);
  document.querySelectorAll(".admin-only").forEach((el) => el.classList.toggle("hidden", !state.me.user.is_admin));
  await loadConversations();
  const last = localStorage.getItem("alignchat.conv");
  if (last) {
    try { await openConversation(last); } catch (_) { newChat(); }
  } else newChat();
}

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("POST", "/api/login", { username: $("#login-user").value, password: $("#login-pass").value });
    $("#login-error").textContent = "";
    start();
  } catch (err) { $("#login-error").textContent = err.message; }
});
$("#logout-btn").onclick = async () => { await api("POST", "/api/logout"); location.reload(); };
$("#lang-btn").onclick = () => { state.lang = state.lang === "zh" ? "en" : "zh"; localStorage.setItem("alignchat.lang", state.lang); applyLang(); };
$("#new-chat-btn").onclick = newChat;
$("#send-btn").onclick = () => send();
$("#stop-btn").onclick = stop;
$("#composer-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
$("#temperature").oninput = () => { $("#temperature-val").textContent = $("#temperature").value; };
$("#top-p").oninput = () => { $("#top-p-val").textContent = $("#top-p").value; };
document.querySelectorAll(".tab").forEach((b) => { b.onclick = () => showTab(b.dataset.tab); });
$("#demo-save").onclick = saveDemonstration;
$("#rank-sample").onclick = sampleForRanking;
$("#rank-save").onclick = saveRanking;
start();
