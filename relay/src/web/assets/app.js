// Flotilla dashboard: confirmed actions through the JSON API, and live refresh from the
// event stream. Our own code, no framework. Text from the server is inserted with
// textContent only; refreshed page content comes from our own server-rendered, escaped HTML.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  const content = document.getElementById("content");
  const flash = document.getElementById("flash");
  const dialog = document.getElementById("confirm");
  const output = document.getElementById("output");
  let revision = 0;

  function say(text, ok) {
    if (!flash) return;
    flash.textContent = text;
    flash.className = ok ? "flash-ok" : "flash-error";
  }

  // Resolves true when the operator confirms `text` in the page's dialog.
  function confirmed(text) {
    return new Promise(function (resolve) {
      if (!dialog) { resolve(false); return; }
      document.getElementById("confirm-text").textContent = text;
      const yes = document.getElementById("confirm-yes");
      const no = document.getElementById("confirm-no");
      function done(answer) {
        yes.removeEventListener("click", onYes);
        no.removeEventListener("click", onNo);
        dialog.close();
        resolve(answer);
      }
      function onYes() { done(true); }
      function onNo() { done(false); }
      yes.addEventListener("click", onYes);
      no.addEventListener("click", onNo);
      dialog.showModal();
    });
  }

  async function call(method, url, body) {
    const headers = { "X-CSRF-Token": csrf, "Accept": "application/json" };
    const init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined && body !== null) {
      headers["Content-Type"] = "application/json";
      init.body = body;
    }
    const response = await fetch(url, init);
    let json = null;
    try { json = await response.json(); } catch (e) { json = null; }
    return { ok: response.ok, status: response.status, json: json };
  }

  function problem(r) {
    if (r.json && r.json.error) return r.json.error.code + ": " + r.json.error.message;
    return "HTTP " + r.status;
  }

  // A command result that failed on the agent is a failure too.
  function commandFailed(r) {
    const res = r.json && r.json.result;
    return res && res.status && res.status !== "succeeded";
  }

  function showOutput(title, lines) {
    if (!output) return;
    output.hidden = false;
    output.textContent = title + "\n" + lines.join("\n");
  }

  document.addEventListener("click", async function (ev) {
    const button = ev.target.closest("button.action, button.logs");
    if (!button) return;
    ev.preventDefault();
    if (button.classList.contains("logs")) {
      const r = await call("POST", button.dataset.url, button.dataset.body);
      const out = r.json && r.json.result && r.json.result.output;
      if (r.ok && out && out.lines) {
        showOutput("logs of " + button.dataset.container + (out.truncated ? " (truncated)" : ""), out.lines);
        say("logs of " + button.dataset.container, true);
      } else {
        say(r.ok ? "no logs returned" : problem(r), false);
      }
      return;
    }
    if (!(await confirmed(button.dataset.confirm || "Are you sure?"))) return;
    const r = await call(button.dataset.method || "POST", button.dataset.url, button.dataset.body);
    if (r.ok && !commandFailed(r)) {
      say(button.textContent.trim() + ": done", true);
    } else {
      say(button.textContent.trim() + " failed: " + (r.ok ? JSON.stringify(r.json.result.error || r.json.result) : problem(r)), false);
    }
    refresh();
  });

  // Forms of class api-form: their fields become a JSON body (empty fields are left out,
  // except those marked data-keep; number inputs are numbers).
  document.addEventListener("submit", async function (ev) {
    const form = ev.target;
    if (!form.classList || !form.classList.contains("api-form")) return;
    ev.preventDefault();
    const fields = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      const value = el.value.trim();
      if (value === "" && !el.hasAttribute("data-keep")) continue;
      fields[el.name] = el.type === "number" ? Number(value) : value;
    }
    let body = fields;
    if (form.dataset.kind) {
      body = { kind: form.dataset.kind, args: fields };
    }
    if (!(await confirmed(form.dataset.confirm || "Are you sure?"))) return;
    const r = await call(form.dataset.method || "POST", form.dataset.url, JSON.stringify(body));
    if (!r.ok) { say(problem(r), false); return; }
    if (form.dataset.output === "token" && r.json && r.json.token) {
      showOutput("the new token (shown once):", [r.json.token]);
    }
    say("done", true);
    if (form.dataset.go && r.json && r.json.id) {
      window.location.assign(form.dataset.go + encodeURIComponent(r.json.id));
      return;
    }
    form.reset();
    refresh();
  });

  // --- live refresh -----------------------------------------------------------------------
  let pending = null;
  let inFlight = false;

  async function refresh() {
    if (!content) return;
    if (inFlight) { schedule(); return; }
    inFlight = true;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (response.redirected && new URL(response.url).pathname === "/ui/login") {
        window.location.assign("/ui/login");
        return;
      }
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("content");
      if (!fresh) return;
      // Do not replace a form the operator is typing in.
      if (dialog && dialog.open) { schedule(); return; }
      const active = document.activeElement;
      if (active && content.contains(active) && active.form) { schedule(); return; }
      content.replaceChildren(...Array.from(fresh.childNodes).map(function (n) { return document.adoptNode(n); }));
      revision += 1;
      content.setAttribute("data-live-revision", String(revision));
    } finally {
      inFlight = false;
    }
  }

  function schedule() {
    if (pending) return;
    pending = setTimeout(function () { pending = null; refresh(); }, 250);
  }

  function relevant(ev) {
    const kinds = content.dataset.live || "";
    const agent = content.dataset.liveAgent;
    const subject = content.dataset.liveSubject;
    if (agent) return ev.agent_id === agent;
    if (subject) {
      if (ev.subject === subject) return true;
      return kinds.split(",").some(function (k) { return k && k !== "rollout" && ev.kind.startsWith(k + "."); });
    }
    if (kinds === "") return true;
    return kinds.split(",").some(function (k) { return ev.kind.startsWith(k + "."); });
  }

  if (content && content.hasAttribute("data-live") && window.EventSource) {
    const source = new EventSource("/api/v1/events/stream");
    source.onmessage = function (m) {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev && typeof ev.kind === "string" && relevant(ev)) schedule();
    };
    source.addEventListener("reset", schedule);
    // The browser reconnects by itself, sending Last-Event-ID; after a gap, refresh once.
    source.onopen = function () { if (revision > 0 || source.wasOpen) schedule(); source.wasOpen = true; };
  }
})();
