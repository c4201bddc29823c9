// The history panel's front end (anywidget ESM).
// Safety: text from a chat enters the page only as HTML sanitised in Python
// (fields named `html`, `thinking`, `user`) or through textContent / .value.
// Nothing here parses model text into markup.

const views = new WeakMap(); // model -> number of live views (to notice a cleared output)
let serial = 0;

function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function button(label, cls, title, onClick) {
  const b = h("button", "om-btn " + (cls || ""), label);
  b.type = "button";
  if (title) b.title = title;
  b.addEventListener("click", (ev) => { ev.stopPropagation(); onClick(ev); });
  return b;
}

function count(n, word, plural) {
  return n.toLocaleString("en-US") + " " + (n === 1 ? word : (plural || word + "s"));
}

function when(epoch) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  const now = new Date();
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === now.toDateString() ? hm : d.toLocaleDateString() + " " + hm;
}

// Keys typed in the panel's fields are the panel's, not the notebook's shortcuts.
function ownKeys(el) {
  el.addEventListener("keydown", (ev) => ev.stopPropagation());
  return el;
}

function render({ model, el }) {
  const me = "v" + (++serial) + Math.random().toString(36).slice(2, 7);
  let req = 0;
  const pending = new Map();
  const rows = []; // shown turns in order: {index, key, data, el}
  let filtered = null; // the query while a search filters the turns
  let jump = null; // a turn to show once the chat has switched
  let live = null;
  let notice = null;
  let statusTimer = null;
  const ask = (msg, cb) => {
    const id = me + ":" + (++req);
    if (cb) pending.set(id, cb);
    model.send({ ...msg, req: id });
  };
  const send = (msg) => model.send(msg);
  const offs = [];
  const on = (name, cb) => { model.on(name, cb); offs.push(() => model.off(name, cb)); };

  // -- skeleton ------------------------------------------------------------------
  const root = h("div", "om-panel tex2jax_ignore mathjax_ignore"); // no MathJax in here
  const top = h("div", "om-top");
  const chatSel = ownKeys(h("select", "om-chat"));
  chatSel.title = "Chat shown (and active in the notebook)";
  chatSel.addEventListener("change", () => send({ do: "switch", name: chatSel.value }));
  const modelBox = h("span", "om-model");
  const newChat = h("span", "om-new");
  const newName = ownKeys(h("input", "om-input om-small"));
  newName.placeholder = "new chat name";
  const newBtn = button("New chat", "om-quiet", "Create a chat (with this chat's model and options) and show it", () => {
    send({ do: "new_chat", name: newName.value });
    newName.value = "";
  });
  newChat.append(newName, newBtn);
  const more = h("details", "om-more");
  more.append(h("summary", "om-btn om-quiet", "More"));
  const moreBox = h("div", "om-more-box");
  const exportPath = ownKeys(h("input", "om-input om-small"));
  exportPath.placeholder = "chat.md";
  const copyName = ownKeys(h("input", "om-input om-small"));
  const copyBtn = button("Copy messages", "", "Put a copy of the message list into this notebook variable", () =>
    send({ do: "copy", name: copyName.value }));
  const replaceBtn = button("Replace it", "om-danger", "Overwrite the existing variable", () => {
    replaceBtn.hidden = true;
    send({ do: "copy", name: copyName.value, replace: true });
  });
  replaceBtn.hidden = true;
  copyName.addEventListener("input", () => { replaceBtn.hidden = true; });
  const resetBtn = button("Reset chat…", "om-danger", "Remove all turns of this chat (undoable)", () => {
    resetBtn.hidden = true;
    confirmReset.hidden = false;
  });
  const confirmReset = h("span", "om-confirm");
  confirmReset.append(
    h("span", null, "Remove every turn? "),
    button("Remove all", "om-danger", null, () => { confirmReset.hidden = true; resetBtn.hidden = false; send({ do: "reset" }); }),
    button("Keep", "", null, () => { confirmReset.hidden = true; resetBtn.hidden = false; }));
  confirmReset.hidden = true;
  const line1 = h("div", "om-row");
  line1.append(exportPath, button("Export Markdown", "", "Write this chat as Markdown to the path on the left", () =>
    send({ do: "export", path: exportPath.value })));
  const line2 = h("div", "om-row");
  line2.append(h("span", "om-label", "into variable"), copyName, copyBtn, replaceBtn);
  const line3 = h("div", "om-row");
  line3.append(resetBtn, confirmReset);
  moreBox.append(line1, line2, line3);
  more.append(moreBox);
  top.append(chatSel, modelBox, newChat, h("span", "om-spacer"), more);

  const head = h("div", "om-head");
  const headText = h("span", "om-head-text");
  const undoBtn = button("Undo", "om-quiet", "", () => send({ do: "undo" }));
  head.append(headText, h("span", "om-spacer"), undoBtn);

  const system = h("details", "om-system");
  const sysSummary = h("summary", "om-system-summary");
  const sysText = ownKeys(h("textarea", "om-textarea"));
  sysText.rows = 2;
  sysText.placeholder = "System prompt (none)";
  const sysSave = button("Save system prompt", "", "Store this text as the chat's system prompt (empty removes it)", () =>
    send({ do: "system", text: sysText.value }));
  const sysRow = h("div", "om-row");
  sysRow.append(sysSave);
  system.append(sysSummary, sysText, sysRow);

  const find = h("div", "om-find");
  const query = ownKeys(h("input", "om-input om-search"));
  query.type = "search";
  query.placeholder = "Find in this chat…";
  const allLabel = h("label", "om-label");
  const allBox = h("input");
  allBox.type = "checkbox";
  allLabel.append(allBox, document.createTextNode(" all chats"));
  const findInfo = h("span", "om-find-info");
  find.append(query, allLabel, findInfo);

  const status = h("div", "om-status");
  const list = h("div", "om-list");
  const earlier = button("", "om-earlier", "Load the previous page of turns", () => loadEarlier());
  const hits = h("div", "om-hits");
  hits.hidden = true;
  list.append(earlier);
  root.append(top, head, system, find, status, hits, list);
  el.append(root);

  // -- header, chats, model, system, status: from synced traits ---------------------
  function drawChats() {
    const chats = model.get("chats") || [];
    chatSel.replaceChildren(...chats.map((c) => {
      const o = h("option", null, c.name + " · " + count(c.turns, "turn") + (c.changed ? " · " + when(c.changed) : ""));
      o.value = c.name;
      return o;
    }));
    chatSel.value = model.get("chat");
  }
  function drawModel() {
    const models = model.get("models");
    const current = model.get("model");
    let input;
    if (Array.isArray(models)) {
      input = ownKeys(h("select", "om-model-select"));
      const names = models.includes(current) || !current ? models : [current, ...models];
      const def = h("option", null, "(default model)");
      def.value = "";
      input.append(def, ...names.map((m) => { const o = h("option", null, m); o.value = m; return o; }));
      input.value = current;
    } else {
      input = ownKeys(h("input", "om-input om-small"));
      input.placeholder = "model (default)";
      input.value = current;
    }
    input.title = "Model of this chat";
    input.addEventListener("change", () => send({ do: "model", name: input.value }));
    modelBox.replaceChildren(input);
  }
  function drawHead() {
    headText.textContent = model.get("header");
    head.classList.toggle("om-warn", !!model.get("warn"));
    const label = model.get("undo_label");
    undoBtn.disabled = !label;
    undoBtn.title = label ? "Undo " + label : "Nothing to undo";
    const total = model.get("total");
    const first = rows.length ? rows[0].index : total;
    earlier.hidden = filtered !== null || first <= 0;
    earlier.textContent = "Show " + count(Math.min(first, model.get("page")), "earlier turn") + " (" + first.toLocaleString("en-US") + " not shown)";
  }
  function drawSystem() {
    const text = model.get("system");
    sysText.value = text;
    sysSummary.textContent = text ? "System prompt: " + (text.length > 80 ? text.slice(0, 79) + "…" : text) : "System prompt: none";
  }
  function drawStatus() {
    const s = model.get("status") || {};
    status.replaceChildren();
    status.className = "om-status" + (s.error ? " om-error" : "");
    clearTimeout(statusTimer);
    if (!s.text) return;
    status.append(h("span", null, (s.error ? "⚠ " : "✓ ") + s.text));
    if (!s.error && !s.undo) statusTimer = setTimeout(() => status.replaceChildren(), 15000); // news, not state
    if (notice) { notice.remove(); notice = null; }
    if (s.undo) {
      status.append(button("Undo", "om-link", "Undo " + (model.get("undo_label") || "it"), () => send({ do: "undo" })));
      if (s.where != null && filtered === null) {
        notice = h("div", "om-notice");
        notice.append(h("span", null, s.text + " "), button("Undo", "om-link", null, () => send({ do: "undo" })));
        const after = rows.find((r) => r.index >= s.where);
        list.insertBefore(notice, after ? after.el : (live ? live.el : null));
      }
    }
  }
  copyName.value = model.get("copy_name");
  on("change:copy_name", () => { copyName.value = model.get("copy_name"); });
  on("change:chats", drawChats);
  on("change:chat", drawChats);
  on("change:models", drawModel);
  on("change:model", drawModel);
  on("change:header", drawHead);
  on("change:total", drawHead);
  on("change:undo_label", drawHead);
  on("change:system", drawSystem);
  on("change:status", drawStatus);

  // -- rows ------------------------------------------------------------------------
  function atBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }
  function toBottom() {
    list.scrollTop = list.scrollHeight;
  }

  function metaLine(meta, role) {
    const bits = [];
    if (role === "user") {
      bits.push("You");
    } else {
      if (meta.model) bits.push(meta.model);
      if (meta.tokens != null) bits.push(count(meta.tokens, "token"));
      if (meta.seconds != null) bits.push(meta.seconds.toFixed(1) + " s");
      if (meta.created) bits.push(when(meta.created));
    }
    const line = h("div", "om-meta", bits.join(" · "));
    if (role === "user" && meta.prompt != null) line.append(h("span", null, " · prompt " + count(meta.prompt, "token")));
    if (role !== "user" && meta.status === "interrupted") line.append(h("span", "om-bad", " · interrupted"));
    if (role === "user" && meta.cell) {
      const cell = h("span", "om-cell", meta.cell);
      cell.title = "The notebook cell that asked (click to go there)";
      cell.addEventListener("click", () => goToCell(meta.cell));
      line.append(h("span", null, " · cell "), cell);
    }
    return line;
  }

  function goToCell(id) {
    const app = window.jupyterapp;
    const nb = app && app.shell && app.shell.currentWidget && app.shell.currentWidget.content;
    if (!nb || !nb.widgets) return;
    const i = nb.widgets.findIndex((c) => c.model && c.model.id === id);
    if (i >= 0) {
      nb.activeCellIndex = i;
      if (nb.scrollToItem) nb.scrollToItem(i); else nb.widgets[i].node.scrollIntoView({ block: "center" });
    }
  }

  function message(row, m) {
    const box = h("div", "om-msg om-" + (m.role || "other"));
    const bubble = h("div", "om-bubble");
    if (m.thinking) {
      const d = h("details", "om-think");
      d.append(h("summary", null, "Thinking"));
      const body = h("div", "om-md");
      body.innerHTML = m.thinking; // sanitised in Python
      d.append(body);
      bubble.append(d);
    }
    if (m.role === "tool") bubble.append(h("div", "om-tool-name", "↳ " + m.tool));
    if (m.calls) for (const c of m.calls) bubble.append(h("div", "om-call", "→ " + c));
    const md = h("div", "om-md");
    md.innerHTML = m.html; // sanitised in Python
    bubble.append(md);
    if (m.images && m.images.length) {
      const imgs = h("div", "om-images");
      for (const src of m.images) {
        if (!src.startsWith("data:image/")) continue;
        const img = h("img", "om-thumb");
        img.src = src; // a data: URL Python built from checked PNG/JPEG bytes
        imgs.append(img);
      }
      bubble.append(imgs);
    }
    if (m.unreadable) bubble.append(h("div", "om-meta", "(" + count(m.unreadable, "unreadable image") + ")"));
    const edit = button("Edit", "om-edit om-quiet", "Edit this message", () => openEditor(row, m.part, box, bubble));
    box.append(bubble, edit);
    return box;
  }

  function turnEl(data) {
    const row = { index: data.index, key: data.key, data, el: h("div", "om-turn") };
    row.el.dataset.index = data.index;
    const headRow = h("div", "om-turn-head");
    row.no = h("span", "om-turn-no", "Turn " + (data.index + 1));
    headRow.append(row.no);
    if (data.meta.edited) headRow.append(h("span", "om-badge", "edited"));
    row.stale = h("span", "om-stale");
    headRow.append(row.stale);
    setStale(row, data.stale);
    headRow.append(h("span", "om-spacer"));
    const menu = h("details", "om-menu");
    menu.append(h("summary", "om-btn om-quiet", "⋯"));
    const items = h("div", "om-menu-box");
    const act = (what) => () => { menu.open = false; send({ do: what, index: row.index, key: row.key }); };
    items.append(
      button("Delete turn", "om-item", "Remove this question and its answer (undoable)", act("delete")),
      button("Rewind to here", "om-item", "Remove every later turn (undoable)", act("rewind")),
      button("Branch from here", "om-item", "Copy the chat up to this turn into a new chat", act("branch")));
    menu.append(items);
    headRow.append(menu);
    row.el.append(headRow);
    const msgs = data.messages;
    const last = msgs.length - 1;
    let tools = null;
    msgs.forEach((m, i) => {
      const inTools = i > 0 && i < last; // tool calls and their answers, between question and reply
      if (inTools) {
        if (!tools) {
          tools = h("details", "om-tools");
          const n = msgs.slice(1, last).reduce((a, x) => a + (x.calls ? x.calls.length : 0), 0);
          tools.append(h("summary", null, count(n, "tool call")));
          row.el.append(tools);
        }
        tools.append(message(row, m));
      } else {
        const box = message(row, m);
        if (i === last) {
          box.append(metaLine(data.meta, "assistant"));
        } else {
          box.append(metaLine(data.meta, "user"));
        }
        row.el.append(box);
      }
    });
    return row;
  }

  // A variable this turn interpolated now renders differently (names are user text: textContent only).
  function setStale(row, refs) {
    row.data.stale = refs || null;
    row.stale.hidden = !refs || !refs.length;
    row.stale.textContent = row.stale.hidden ? "" : "stale: " + refs.map((r) => "{" + r + "}").join(", ") + " changed";
    row.stale.title = row.stale.hidden ? "" : "Re-run this turn's cell to ask again with the current values";
  }

  function openEditor(row, part, box, bubble) {
    if (box.querySelector(".om-editor")) return;
    ask({ do: "source", index: row.index, key: row.key, part }, (msg) => {
      const original = msg.text;
      const ed = h("div", "om-editor");
      const ta = ownKeys(h("textarea", "om-textarea"));
      ta.value = original;
      ta.rows = Math.min(14, Math.max(2, original.split("\n").length + Math.floor(original.length / 90)));
      const mark = h("span", "om-unsaved", "unsaved changes");
      mark.hidden = true;
      const close = () => { ed.remove(); bubble.hidden = false; box.classList.remove("om-editing"); };
      const save = () => { ed.dataset.saving = "1"; send({ do: "save", index: row.index, key: row.key, part, text: ta.value }); };
      ta.addEventListener("input", () => { mark.hidden = ta.value === original; ed.classList.toggle("om-dirty", ta.value !== original); });
      ta.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); save(); }
        if (ev.key === "Escape") close();
      });
      const bar = h("div", "om-row");
      bar.append(button("Save", "om-primary", "Store this text (Ctrl+Enter); the next cell sends it", save),
                 button("Cancel", "", "Discard the changes (Esc)", close), mark);
      ed.append(ta, bar);
      ed.dataset.part = part;
      bubble.hidden = true;
      box.classList.add("om-editing");
      box.insertBefore(ed, bubble.nextSibling);
      ta.focus();
    });
  }

  function clearRows() {
    for (const r of rows) r.el.remove();
    rows.length = 0;
    if (notice) { notice.remove(); notice = null; }
  }
  function setRows(data) {
    clearRows();
    for (const d of data) {
      const r = turnEl(d);
      rows.push(r);
      list.insertBefore(r.el, live ? live.el : null);
    }
    drawHead();
  }
  function trim(keep) {
    while (rows.length > keep) rows.shift().el.remove();
    drawHead();
  }
  function loadLast() {
    filtered = null;
    ask({ do: "page" }, (msg) => {
      setRows(msg.rows);
      if (jump !== null) { const j = jump; jump = null; showAround(j); return; }
      toBottom();
      requestAnimationFrame(toBottom);
    });
  }
  function loadEarlier() {
    if (!rows.length) return loadLast();
    const first = rows[0].index;
    ask({ do: "page", end: first }, (msg) => {
      const before = list.scrollHeight;
      const anchor = rows.length ? rows[0].el : null;
      const made = msg.rows.filter((d) => d.index < first).map(turnEl);
      for (const r of made) list.insertBefore(r.el, anchor);
      rows.unshift(...made);
      list.scrollTop += list.scrollHeight - before;
      drawHead();
    });
  }
  function showAround(index) {
    filtered = null;
    ask({ do: "page", end: Math.min(model.get("total"), index + 3) }, (msg) => {
      setRows(msg.rows);
      const r = rows.find((x) => x.index === index);
      if (r) { r.el.classList.add("om-hit"); r.el.scrollIntoView({ block: "nearest" }); }
    });
  }
  function renumber(from, by) {
    for (const r of rows) {
      if (r.index >= from) {
        r.index += by;
        r.el.dataset.index = r.index;
        r.no.textContent = "Turn " + (r.index + 1);
      }
    }
  }

  // -- messages from Python ----------------------------------------------------------------
  function onMessage(msg) {
    if (msg.req) {
      const cb = pending.get(msg.req);
      if (cb) { pending.delete(msg.req); cb(msg); }
      return;
    }
    const follow = atBottom();
    switch (msg.kind) {
      case "append": {
        if (filtered !== null) break;
        const lastShown = rows.length ? rows[rows.length - 1].index : -1;
        if (lastShown !== msg.row.index - 1 && rows.length) break; // not next to what is shown
        const r = turnEl(msg.row);
        rows.push(r);
        list.insertBefore(r.el, live ? live.el : null);
        // Following the newest turn, the page stays one page; reading older
        // turns, it keeps a few pages at most.
        trim(follow ? model.get("page") : 3 * model.get("page"));
        break;
      }
      case "replace": {
        const i = rows.findIndex((x) => x.index === msg.row.index);
        if (i < 0) break;
        const old = rows[i];
        const r = turnEl(msg.row);
        // An unsaved edit of another message of this turn survives the redraw.
        for (const ed of old.el.querySelectorAll(".om-editor.om-dirty:not([data-saving])")) {
          const part = Number(ed.dataset.part);
          const box = r.el.querySelectorAll(".om-msg")[msg.row.messages.findIndex((m) => m.part === part)];
          if (box) { box.querySelector(".om-bubble").hidden = true; box.classList.add("om-editing"); box.insertBefore(ed, box.querySelector(".om-edit")); }
        }
        old.el.replaceWith(r.el);
        rows[i] = r;
        break;
      }
      case "deleted": {
        const i = rows.findIndex((x) => x.index === msg.index);
        if (i >= 0) { rows[i].el.remove(); rows.splice(i, 1); }
        renumber(msg.index, -1);
        if (!rows.length && msg.total) loadLast();
        break;
      }
      case "truncated": {
        while (rows.length && rows[rows.length - 1].index >= msg.keep) rows.pop().el.remove();
        if (!rows.length && msg.total) loadLast();
        break;
      }
      case "stale": for (const r of rows) setStale(r, Object.hasOwn(msg.marks, r.key) ? msg.marks[r.key] : null); break;
      case "live": onLive(msg); break;
      case "confirm_copy": replaceBtn.hidden = false; more.open = true; break;
    }
    drawHead();
    if (follow) toBottom();
  }

  function onLive(msg) {
    if (msg.end) { if (live) { live.el.remove(); live = null; } return; }
    if (msg.start || !live) {
      if (live) live.el.remove();
      const wrap = h("div", "om-turn om-live");
      const headRow = h("div", "om-turn-head");
      headRow.append(h("span", "om-turn-no", "Turn " + ((msg.index || 0) + 1)), h("span", "om-badge om-pulse", "replying…"));
      wrap.append(headRow);
      if (msg.user) {
        const u = h("div", "om-msg om-user");
        const b = h("div", "om-bubble");
        const md = h("div", "om-md");
        md.innerHTML = msg.user; // sanitised in Python
        b.append(md);
        u.append(b);
        wrap.append(u);
      }
      const a = h("div", "om-msg om-assistant");
      const b = h("div", "om-bubble");
      const text = h("div", "om-stream");
      b.append(text);
      a.append(b);
      wrap.append(a);
      live = { el: wrap, text };
      list.append(wrap);
    }
    if (msg.text) live.text.append(document.createTextNode(msg.text)); // plain text while it streams
  }

  on("msg:custom", onMessage);
  on("change:version", () => { if (jump === null) clearHits(); loadLast(); });

  // -- find ------------------------------------------------------------------------------
  let timer = null;
  function clearHits() { hits.hidden = true; hits.replaceChildren(); }
  function search() {
    const q = query.value.trim();
    if (!q) {
      findInfo.textContent = "";
      clearHits();
      if (filtered !== null) loadLast();
      return;
    }
    const all = allBox.checked;
    ask({ do: "search", q, all }, (msg) => {
      if (query.value.trim() !== q) return; // typed on meanwhile
      const more = msg.more ? "+" : "";
      if (all) {
        findInfo.textContent = count(msg.hits.length, "match", "matches") + more + " in all chats";
        hits.replaceChildren(...msg.hits.map((x) => {
          const b = h("button", "om-hit-row");
          b.type = "button";
          b.append(h("b", null, x.chat + " · turn " + (x.index + 1) + " "), h("span", null, x.text));
          b.addEventListener("click", () => {
            if (x.chat === model.get("chat")) showAround(x.index);
            else { jump = x.index; send({ do: "switch", name: x.chat }); }
          });
          return b;
        }));
        hits.hidden = false;
        return;
      }
      clearHits();
      filtered = q;
      findInfo.textContent = count(msg.hits.length, "turn") + more + (msg.hits.length === 1 ? " matches" : " match");
      ask({ do: "rows", indices: msg.hits.map((x) => x.index) }, (res) => { setRows(res.rows); list.scrollTop = 0; });
    });
  }
  query.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 200); });
  allBox.addEventListener("change", search);

  drawChats(); drawModel(); drawHead(); drawSystem(); drawStatus();
  loadLast();

  // A cleared or re-run output (its notebook still open) retires the panel in the kernel.
  const cell = el.closest(".jp-Cell");
  const notebook = el.closest(".jp-Notebook");
  views.set(model, (views.get(model) || 0) + 1);
  return () => {
    for (const off of offs) off();
    const n = (views.get(model) || 1) - 1;
    views.set(model, n);
    if (n === 0 && notebook) {
      setTimeout(() => {
        if ((views.get(model) || 0) === 0 && notebook.isConnected && !(cell && cell.contains(el) && el.isConnected)) {
          send({ do: "gone" });
        }
      }, 2000);
    }
  };
}

export default { render };
