/* Library mode of the web UI: the literature assistant.
 *
 * Defines window.AlignchatLibrary.mount(element), which the chat UI calls from its "Library" tab. It renders:
 * an upload box (PDF, BibTeX, RIS, Markdown, text), the user's documents, a question box with strict/creative
 * mode, the verified answer with clickable [n] citations, the reference list (built by the server from
 * library metadata), what the verifier removed or flagged, and a panel that shows a cited passage with its
 * document, page and text. Clicking a document shows its metadata (authors, affiliations, year, abstract,
 * keywords), its parsed reference list and its citation graph within the library (what it cites, what cites
 * it); the review box shows the grouped synthesis, the comparison table and the gaps. Document text is hostile:
 * everything is inserted as text nodes, never as HTML. Talks only to /v1/library/* with the page's session
 * cookie; no dependencies.
 */
(function () {
  "use strict";
  const zh = (document.documentElement.lang || navigator.language || "").toLowerCase().startsWith("zh");
  const T = zh ? {
    add: "添加文献", upload: "上传", docs: "我的文献", ask: "提问", question: "根据你的文献库提问…",
    strict: "严格（仅有证据的句子）", creative: "创作（标出无证据的句子）", refs: "参考文献", passage: "引用段落",
    page: "页", removed: "已移除的无效引用", flagged: "无证据支持的句子", none: "文献库为空。", asking: "检索并核查中…",
    added: "已添加", duplicate: "重复", merged: "已合并", close: "关闭",
    authors: "作者", affiliations: "单位", year: "年份", venue: "来源", abstract: "摘要", keywords: "关键词",
    references: "参考文献", cites: "引用了库中文献", citedBy: "被库中文献引用", review: "综述", topic: "综述主题（可选）…",
    reviewing: "生成综述中…", gaps: "研究空白", table: "对比表", document: "文献", problem: "研究问题", method: "研究方法",
    data: "数据", result: "研究结果", inLibrary: "库中",
  } : {
    add: "Add documents", upload: "Upload", docs: "Your documents", ask: "Ask", question: "Ask your library…",
    strict: "Strict (evidence only)", creative: "Creative (unsupported sentences marked)", refs: "References",
    passage: "Cited passage", page: "p.", removed: "Citations removed (not in your library)",
    flagged: "Sentences without supporting evidence", none: "Your library is empty.", asking: "Searching and verifying…",
    added: "added", duplicate: "duplicate", merged: "merged", close: "Close",
    authors: "Authors", affiliations: "Affiliations", year: "Year", venue: "Venue", abstract: "Abstract",
    keywords: "Keywords", references: "References", cites: "Cites (in your library)",
    citedBy: "Cited by (in your library)", review: "Review", topic: "Review topic (optional)…",
    reviewing: "Writing the review…", gaps: "Gaps", table: "Comparison table", document: "Document",
    problem: "Problem", method: "Method", data: "Data", result: "Result", inLibrary: "in your library",
  };

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  async function call(method, path, body, raw) {
    const opts = { method, credentials: "same-origin", headers: {} };
    if (raw) { opts.body = body; opts.headers["Content-Type"] = "application/octet-stream"; }
    else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
    const r = await fetch(path, opts);
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const msg = (data.error && data.error.message) || data.detail || r.statusText;
      throw new Error(typeof msg === "string" ? msg : JSON.stringify(msg));
    }
    return data;
  }

  function ensureCss() {
    if (document.getElementById("alignchat-library-css")) return;
    document.head.append(el("link", { id: "alignchat-library-css", rel: "stylesheet", href: "/static/library.css" }));
  }

  function mount(root) {
    ensureCss();
    const fileInput = el("input", { type: "file", id: "lib-file", multiple: "", accept: ".pdf,.bib,.bibtex,.ris,.md,.markdown,.txt,.text,.rst" });
    const status = el("div", { id: "lib-status", class: "lib-status", role: "status" });
    const docs = el("ul", { id: "lib-docs", class: "lib-docs" });
    const question = el("textarea", { id: "lib-question", rows: "2", placeholder: T.question });
    const mode = el("select", { id: "lib-mode" }, el("option", { value: "strict" }, T.strict), el("option", { value: "creative" }, T.creative));
    const answer = el("div", { id: "lib-answer", class: "lib-answer" });
    const passage = el("aside", { id: "lib-passage", class: "lib-passage hidden", "aria-live": "polite" });
    const detail = el("section", { id: "lib-doc", class: "lib-doc hidden", "aria-live": "polite" });
    const topic = el("input", { id: "lib-topic", type: "text", placeholder: T.topic });
    const reviewOut = el("div", { id: "lib-review", class: "lib-review" });
    const titles = new Map();

    // [n] markers become citation links; everything else stays plain text
    function cited(text, citations) {
      const byN = new Map((citations || []).map((c) => [c.n, c]));
      const frag = document.createDocumentFragment();
      for (const part of String(text).split(/(\[\d+\]|\[unverified\]|\[未核实\])/)) {
        const m = part.match(/^\[(\d+)\]$/);
        if (m && byN.has(+m[1])) {
          const c = byN.get(+m[1]);
          frag.append(el("a", { href: "#", class: "lib-cite", "data-n": m[1], "data-passage-id": c.passage_id,
            title: c.title, onclick: (ev) => { ev.preventDefault(); showPassage(c); } }, `[${m[1]}]`));
        } else if (part === "[unverified]" || part === "[未核实]") {
          frag.append(el("span", { class: "lib-unverified" }, part));
        } else if (part) {
          frag.append(part);
        }
      }
      return frag;
    }

    function docLink(id) {
      return el("a", { href: "#", class: "lib-doc-link", "data-doc-id": id,
        onclick: (ev) => { ev.preventDefault(); showDocument(id); } }, titles.get(id) || id);
    }

    async function showDocument(id) {
      detail.classList.remove("hidden");
      detail.replaceChildren(T.asking);
      let out;
      try { out = await call("GET", `/v1/library/documents/${encodeURIComponent(id)}`); }
      catch (e) { detail.replaceChildren(e.message); return; }
      const d = out.document, m = d.meta || {};
      const dl = el("dl", { class: "lib-meta" });
      const row = (k, v) => { if (v) dl.append(el("dt", {}, T[k]), el("dd", { "data-field": k }, v)); };
      row("authors", (d.authors || []).join(", "));
      row("affiliations", (m.affiliations || []).join("; "));
      row("year", d.year);
      row("venue", d.venue);
      row("abstract", m.abstract);
      row("keywords", (m.keywords || []).join("; "));
      if (d.doi) dl.append(el("dt", {}, "DOI"), el("dd", {}, d.doi));
      const refs = el("ol", { class: "lib-doc-refs" });
      for (const r of out.references) {
        const who = (r.authors || []).slice(0, 3).join(", ") + ((r.authors || []).length > 3 ? " et al." : "");
        const li = el("li", { "data-type": r.type }, [who, r.year ? `(${r.year})` : "", r.title, r.venue].filter(Boolean).join(" "),
          el("span", { class: "muted" }, ` [${r.type}]`));
        if (r.cited_doc_id) li.append(" → ", docLink(r.cited_doc_id));
        refs.append(li);
      }
      const graph = (k, ids) => el("div", { class: "lib-graph", "data-graph": k }, el("strong", {}, T[k] + ": "),
        ...(ids.length ? ids.flatMap((x, i) => (i ? [", ", docLink(x)] : [docLink(x)])) : ["—"]));
      detail.replaceChildren(
        el("div", { class: "lib-passage-head" }, el("h3", { id: "lib-doc-title" }, d.title),
          el("button", { type: "button", class: "lib-close", onclick: () => detail.classList.add("hidden") }, T.close)),
        dl, graph("cites", out.citations.cites), graph("citedBy", out.citations.cited_by),
        el("h4", {}, `${T.references} (${out.references.length})`), refs);
    }

    async function runReview() {
      reviewOut.replaceChildren(T.reviewing);
      const body = topic.value.trim() ? { topic: topic.value.trim() } : {};
      let rv;
      try { rv = await call("POST", "/v1/library/review", body); }
      catch (e) { reviewOut.replaceChildren(e.message); return; }
      const parts = [];
      for (const g of rv.groups) {
        parts.push(el("div", { class: "lib-group", "data-facet": g.facet },
          el("h4", {}, g.label), el("p", {}, cited(g.paragraph, rv.citations))));
      }
      const facets = ["problem", "method", "data", "result"];
      const table = el("table", { id: "lib-review-table", class: "lib-table" },
        el("thead", {}, el("tr", {}, el("th", {}, T.document), ...facets.map((f) => el("th", {}, T[f])))));
      const tbody = el("tbody");
      for (const r of rv.table) tbody.append(el("tr", { "data-doc-id": r.doc_id }, el("td", {}, r.document),
        ...facets.map((f) => el("td", {}, r[f] || "—"))));
      table.append(tbody);
      reviewOut.replaceChildren(...parts, el("h4", {}, T.table), table,
        el("p", { id: "lib-gaps", class: "lib-gaps" }, rv.gaps));
    }

    async function refresh() {
      const { data } = await call("GET", "/v1/library/documents");
      docs.innerHTML = "";
      if (!data.length) docs.append(el("li", { class: "muted" }, T.none));
      for (const d of data) {
        titles.set(d.id, d.title);
        const meta = [d.authors && d.authors.slice(0, 3).join(", "), d.year, d.venue].filter(Boolean).join(" · ");
        docs.append(el("li", { "data-doc-id": d.id }, el("a", { href: "#", class: "lib-doc-open",
          onclick: (ev) => { ev.preventDefault(); showDocument(d.id); } }, el("strong", {}, d.title)), " ",
          el("span", { class: "muted" }, `${meta ? meta + " · " : ""}${d.kind} · ${d.n_passages}`)));
      }
    }

    async function upload() {
      const files = Array.from(fileInput.files || []);
      if (!files.length) return;
      status.textContent = "…";
      const lines = [];
      for (const f of files) {
        try {
          const res = await call("POST", `/v1/library/documents?filename=${encodeURIComponent(f.name)}`, f, true);
          for (const r of res.results) lines.push(`${T[r.status] || r.status}: ${r.title}`);
        } catch (e) { lines.push(`${f.name}: ${e.message}`); }
      }
      status.textContent = lines.join("\n");
      fileInput.value = "";
      await refresh();
    }

    async function showPassage(c) {
      passage.classList.remove("hidden");
      passage.innerHTML = "";
      let p = c;
      try { p = await call("GET", `/v1/library/passages/${encodeURIComponent(c.passage_id)}`); } catch (e) { /* fall back to the copy in the answer */ }
      passage.append(
        el("div", { class: "lib-passage-head" }, el("strong", {}, `${T.passage} [${c.n}]`),
          el("button", { type: "button", class: "lib-close", onclick: () => passage.classList.add("hidden") }, T.close)),
        el("div", { class: "lib-passage-ref" }, p.reference || c.reference, p.page ? ` ${T.page} ${p.page}` : ""),
        el("blockquote", { id: "lib-passage-text" }, p.text),
        el("div", { class: "muted lib-passage-id" }, p.id || c.passage_id));
    }

    function renderAnswer(a) {
      answer.innerHTML = "";
      const byN = new Map(a.citations.map((c) => [c.n, c]));
      const para = el("div", { class: "lib-answer-text" + (a.not_found ? " lib-not-found" : "") });
      // the text is plain; only [n] markers become links, so nothing from the model is ever parsed as HTML
      const parts = a.answer.split(/(\[\d+\]|\[unverified\]|\[未核实\])/);
      for (const part of parts) {
        const m = part.match(/^\[(\d+)\]$/);
        if (m && byN.has(+m[1])) {
          const c = byN.get(+m[1]);
          para.append(el("a", { href: "#", class: "lib-cite", "data-n": m[1], "data-passage-id": c.passage_id,
            title: c.title, onclick: (ev) => { ev.preventDefault(); showPassage(c); } }, `[${m[1]}]`));
        } else if (part === "[unverified]" || part === "[未核实]") {
          para.append(el("span", { class: "lib-unverified" }, part));
        } else if (part) {
          para.append(part);
        }
      }
      answer.append(para);
      if (a.references && a.references.length) {
        answer.append(el("h4", {}, T.refs));
        const ol = el("ul", { class: "lib-refs" });
        a.citations.forEach((c, i) => ol.append(el("li", {}, el("a", { href: "#", class: "lib-ref", onclick: (ev) => { ev.preventDefault(); showPassage(c); } }, a.references[i]))));
        answer.append(ol);
      }
      const v = a.verification || {};
      if (v.removed && v.removed.length) {
        answer.append(el("h4", {}, T.removed));
        const ul = el("ul", { class: "lib-removed" });
        v.removed.forEach((r) => ul.append(el("li", {}, `${r.citation} — ${r.reason}`)));
        answer.append(ul);
      }
      const flagged = (v.sentences || []).filter((s) => !s.supported);
      if (flagged.length) {
        answer.append(el("h4", {}, T.flagged));
        const ul = el("ul", { class: "lib-flagged" });
        flagged.forEach((s) => ul.append(el("li", {}, `${s.text} (${s.reason}, ${s.score})`)));
        answer.append(ul);
      }
    }

    async function ask() {
      const q = question.value.trim();
      if (!q) return;
      answer.textContent = T.asking;
      passage.classList.add("hidden");
      try {
        renderAnswer(await call("POST", "/v1/library/ask", { question: q, mode: mode.value }));
      } catch (e) { answer.textContent = e.message; }
    }

    question.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); ask(); } });
    root.classList.add("alignchat-library");
    root.append(
      el("section", { class: "lib-add" }, el("h3", {}, T.add), fileInput,
        el("button", { type: "button", id: "lib-upload", onclick: upload }, T.upload), status),
      el("section", { class: "lib-list" }, el("h3", {}, T.docs), docs),
      detail,
      el("section", { class: "lib-review-box" }, el("h3", {}, T.review),
        el("div", { class: "lib-ask-row" }, topic, el("button", { type: "button", id: "lib-review-run", onclick: runReview }, T.review)),
        reviewOut),
      el("section", { class: "lib-ask" }, question,
        el("div", { class: "lib-ask-row" }, mode, el("button", { type: "button", id: "lib-ask", onclick: ask }, T.ask)),
        answer),
      passage);
    refresh().catch((e) => { status.textContent = e.message; });
  }

  window.AlignchatLibrary = { mount };
})();
