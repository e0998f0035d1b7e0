// The box's page: live updates over server-sent events. Plain JS, no build step; every
// page works without it (forms post and reload), this only makes changes show at once.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function post(url, fields) {
  const body = new URLSearchParams(fields);
  return fetch(url, { method: "POST", body, headers: { "X-CSRF-Token": csrf(), "Accept": "application/json" },
                      credentials: "same-origin" });
}

function chat() {
  const list = document.getElementById("transcript");
  const form = document.getElementById("chat-form");
  const typing = document.getElementById("typing");
  if (!list || !form) return;
  const text = document.getElementById("chat-text");
  const show = (id, role, value) => {
    let item = list.querySelector(`li[data-id="${CSS.escape(id)}"]`);
    if (!item) {
      item = document.createElement("li");
      item.className = `msg ${role}`;
      item.dataset.id = id;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = role === "user" ? "you" : "box";
      const body = document.createElement("div");
      body.className = "text";
      item.append(who, body);
      list.append(item);
    }
    item.querySelector(".text").textContent = value;
    item.scrollIntoView({ block: "end" });
  };
  const events = new EventSource("/ui/chat/events");
  events.addEventListener("message", (e) => { const m = JSON.parse(e.data); show(m.id, m.role, m.text); typing.hidden = m.role !== "user"; });
  events.addEventListener("edit", (e) => { const m = JSON.parse(e.data); show(m.id, "assistant", m.text); typing.hidden = true; });
  events.addEventListener("typing", () => { typing.hidden = false; });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = text.value.trim();
    if (!value) return;
    text.value = "";
    const r = await post(form.action, { text: value });
    if (!r.ok) show(`error-${Date.now()}`, "assistant", `Not sent: ${r.status}`);
  });
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
}

function models() {
  const table = document.getElementById("models");
  if (!table) return;
  const row = (name) => table.querySelector(`tr[data-model="${CSS.escape(name)}"]`);
  const events = new EventSource("/ui/models/events");
  events.addEventListener("pull", (e) => {
    const s = JSON.parse(e.data);
    const tr = row(s.model);
    if (!tr) return;
    const bar = tr.querySelector("progress");
    bar.max = s.total || 1;
    bar.value = s.done;
    const pct = s.total ? Math.floor((100 * s.done) / s.total) : 0;
    tr.querySelector(".pull-state").textContent =
      s.state === "running" ? `${pct}%` : s.state === "done" ? "100% verified" : `failed: ${s.error}`;
    if (s.state === "done") tr.querySelector(".present").textContent = "yes";
  });
  for (const form of table.querySelectorAll("form.pull-form")) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const tr = form.closest("tr");
      tr.querySelector(".pull-state").textContent = "starting";
      const r = await post(form.action, {});
      if (!r.ok) tr.querySelector(".pull-state").textContent = `refused: ${r.status}`;
    });
  }
}

function logs() {
  const list = document.getElementById("log");
  if (!list) return;
  const events = new EventSource(`/ui/logs/events?level=${encodeURIComponent(list.dataset.level)}`);
  events.addEventListener("line", (e) => {
    const l = JSON.parse(e.data);
    const li = document.createElement("li");
    li.className = `lvl-${l.level}`;
    const time = document.createElement("time");
    time.textContent = l.ts.slice(0, 19).replace("T", " ");
    const lvl = document.createElement("b");
    lvl.textContent = l.level;
    li.append(time, " ", lvl, ` ${l.logger}: ${l.msg}`);
    list.append(li);
    while (list.children.length > 500) list.firstElementChild.remove();
  });
}

document.addEventListener("DOMContentLoaded", () => { chat(); models(); logs(); });
