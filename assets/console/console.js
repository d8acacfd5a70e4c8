// user-monitor console. Plain JavaScript, no dependencies, no build step: it is embedded in the
// binary and talks only to this service's public API (/api/v1) with the caller's bearer token.
"use strict";

// ---------------------------------------------------------------------------------------------
// Small helpers: DOM building without innerHTML (text is always text), formatting.

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel, root) => (root || document).querySelector(sel);
const main = () => document.getElementById("main");
const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US", { maximumFractionDigits: 2 }) : String(n));

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3500);
}

function debounce(fn, ms) {
  let t;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

// ---------------------------------------------------------------------------------------------
// The API: bearer token from this tab's session, one sign-in dialog on 401.

const session = { token: sessionStorage.getItem("um.token") || "", who: null, timeUnit: "seconds" };

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.error || body.message)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (session.token) headers["Authorization"] = "Bearer " + session.token;
  return headers;
}

async function api(method, path, body, extraHeaders) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const init = { method, headers: authHeaders(extraHeaders) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = { error: text }; }
    if (res.status === 401 && attempt < 2) {
      await signIn(json && json.error);
      continue;
    }
    if (!res.ok) throw new ApiError(res.status, json);
    return json;
  }
  throw new ApiError(401, { error: "not signed in" });
}

const can = (scope) => !!(session.who && session.who.scopes.includes(scope));

let signingIn = null;
function signIn(why) {
  if (signingIn) return signingIn;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  error.textContent = session.token ? "That token was not accepted" + (why ? ": " + why : ".") : "";
  signingIn = new Promise((resolve) => {
    form.onsubmit = (e) => {
      e.preventDefault();
      session.token = input.value.trim();
      sessionStorage.setItem("um.token", session.token);
      input.value = "";
      dialog.close();
      signingIn = null;
      resolve();
    };
  });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return signingIn;
}

async function loadSession() {
  session.who = await api("GET", "/api/v1/session");
  const who = document.getElementById("who");
  who.textContent = session.who.auth === "open"
    ? "open mode (no token checked)"
    : `${session.who.name} · ${session.who.scopes.join(", ")}`;
  document.getElementById("sign-out").hidden = session.who.auth === "open";
  try {
    const rules = await api("GET", "/api/v1/rules");
    session.timeUnit = (rules.set && rules.set.time_unit) || "seconds";
    learnSet(rules.set);
    const shadow = await api("GET", "/api/v1/rules/shadow").catch(() => null);
    if (shadow) learnSet(shadow.set);
  } catch (_) { /* shown on the pages that need it */ }
}

// ---------------------------------------------------------------------------------------------
// Words for what the engine says.

function unitWord() { return session.timeUnit === "milliseconds" ? "ms" : "s"; }

const onWords = { deposit: ["deposit", "deposits"], withdraw: ["withdrawal", "withdrawals"], any: ["event", "events"] };

/** The rules of the sets this page knows (active and shadow), by version then code: an alert's
 *  evidence names its code, the rule says the window. */
const knownRules = new Map();
const knownSets = new Map();
function learnSet(set) {
  if (!set || !set.version) return;
  knownSets.set(set.version, set);
  const byCode = new Map();
  for (const r of set.rule || []) byCode.set(r.code, r);
  knownRules.set(set.version, byCode);
}
function ruleOf(version, code) {
  const set = knownRules.get(version);
  return set ? set.get(code) : undefined;
}

/** One evidence entry in words, e.g. "deposits of 207 within 30 s, over 200 at medium risk". */
function describeEvidence(e, version) {
  const [one, many] = onWords[e.on] || [e.on, e.on + "s"];
  const at = `at ${e.risk} risk`;
  const rule = ruleOf(version, e.code) || (e.window !== undefined ? e : undefined);
  const span = rule && rule.window !== undefined
    ? ` within ${typeof rule.window === "number" ? rule.window + " " + unitWord() : rule.window}`
    : (e.from_time !== undefined && e.to_time !== undefined ? ` between t=${e.from_time} and t=${e.to_time}` : "");
  const warming = e.warming_up ? " (window reaches past the history kept)" : "";
  switch (e.kind) {
    case "amount": return `${one} of ${e.observed}, over ${e.threshold} ${at}`;
    case "consecutive": return `${e.observed} ${many} in a row, ${e.threshold} needed ${at}`;
    case "increasing": return `${e.observed} increasing ${many} in a row, ${e.threshold} needed ${at}`;
    case "window_sum": return `${many} of ${e.observed}${span}, over ${e.threshold} ${at}${warming}`;
    case "window_count": return `${e.observed} ${many}${span}, more than ${e.threshold} ${at}${warming}`;
    default: return `${e.kind} on ${e.on}: ${e.observed} against ${e.threshold} ${at}`;
  }
}

function evidenceList(evidence, version) {
  if (!evidence || !evidence.length) return null;
  return h("ul", { class: "evidence" },
    evidence.map((e) => h("li", {}, h("span", { class: "chip alert" }, String(e.code)), " ", describeEvidence(e, version))));
}

function eventWords(view) {
  const ev = view.event;
  if (!ev || typeof ev !== "object") return view.event_text || "";
  return `${ev.type} ${ev.amount} at t=${ev.time}`;
}

function triageOf(view) {
  return view.triage || { status: "open" };
}

function statusBadge(t) {
  return h("span", { class: "status-wrap" },
    h("span", { class: "status " + t.status }, t.status + (t.resolution ? ": " + t.resolution : "")),
    t.triaged_by ? h("span", { class: "muted" }, ` by ${t.triaged_by}`) : null);
}

// ---------------------------------------------------------------------------------------------
// Server-sent events over fetch (EventSource cannot send an Authorization header).

/** Follows `path`, calling onEvent({event, id, data}) for each event; reconnects with the last
 *  id after an error or an overflow. Returns a function that stops it. */
function follow(path, onEvent, onState) {
  let stopped = false;
  let lastId = null;
  let controller = null;
  async function run() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (lastId) headers["Last-Event-ID"] = lastId;
        const res = await fetch(path, { headers, signal: controller.signal });
        if (res.status === 401) { await signIn(); continue; }
        if (!res.ok) throw new Error(`stream: HTTP ${res.status} ${await res.text()}`);
        onState(true);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let event = { event: "message", data: "" };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          // One pass over what arrived (a chunk may hold thousands of lines after a pause:
          // cutting the buffer per line would copy it once per line).
          let start = 0;
          let nl;
          while ((nl = buffer.indexOf("\n", start)) >= 0) {
            let line = buffer.slice(start, nl);
            if (line.endsWith("\r")) line = line.slice(0, -1);
            start = nl + 1;
            if (line === "") {
              if (event.data) {
                if (event.id) lastId = event.id;
                onEvent(event);
              }
              event = { event: "message", data: "" };
            } else if (line.startsWith(":")) {
              // heartbeat
            } else {
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "data") event.data += (event.data ? "\n" : "") + val;
              else if (field === "event") event.event = val;
              else if (field === "id") event.id = val;
            }
          }
          buffer = buffer.slice(start);
        }
      } catch (err) {
        if (stopped) return;
        onState(false, err.message);
      }
      onState(false);
      if (!stopped) await new Promise((r) => setTimeout(r, 1000));
    }
  }
  run();
  return () => { stopped = true; if (controller) controller.abort(); };
}

// ---------------------------------------------------------------------------------------------
// Page 1: live alerts.

const MAX_ROWS = 200;
const FLUSH_ROWS = 25;
const FLUSH_MS = 250;

function alertsPage(params) {
  const filters = {
    code: params.get("code") || "", user_id: params.get("user_id") || "",
    status: params.get("status") || "", rules_version: params.get("rules_version") || "",
  };
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);

  const liveLabel = h("span", { class: "live", id: "live-state" }, "connecting");
  const count = h("span", { class: "muted", id: "alert-count" }, "");
  const tbody = h("tbody", { id: "alert-rows" });
  const form = h("form", { class: "filters", "aria-label": "Filter alerts", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const el of form.elements) if (el.name && el.value) q.set(el.name, el.value);
    location.hash = "#/alerts" + (q.toString() ? "?" + q : "");
  } },
    field("Code", h("input", { name: "code", id: "f-code", inputmode: "numeric", size: 6, value: filters.code })),
    field("User", h("input", { name: "user_id", id: "f-user", inputmode: "numeric", size: 10, value: filters.user_id })),
    field("Status", h("select", { name: "status", id: "f-status" },
      ["", "open", "acknowledged", "resolved"].map((s) => h("option", { value: s, selected: s === filters.status }, s || "any")))),
    field("Rule version", h("input", { name: "rules_version", id: "f-version", size: 12, value: filters.rules_version })),
    h("button", { type: "submit", class: "primary" }, "Apply"),
  );
  main().replaceChildren(
    h("h1", {}, "Live alerts"),
    h("div", { class: "panel" }, form),
    h("div", { class: "feedbar" }, liveLabel, count, h("span", { class: "muted", id: "freshness" })),
    h("div", { class: "panel scroll" }, h("table", { class: "alerts", "aria-describedby": "live-state" },
      h("caption", { class: "sr-only" }, "Alerts, newest first"),
      h("thead", {}, h("tr", {}, ["When (event time)", "Alert", "User", "Event", "Why", "Rules", "Status"].map((c) => h("th", { scope: "col" }, c)))),
      tbody)),
  );

  const seen = new Set();
  let received = 0;
  let passedBy = 0;
  let queue = [];
  let scheduled = false;
  let lastFlush = 0;
  const wanted = (view) => !filters.rules_version || view.rules_version === filters.rules_version;
  // Rendering is batched: at most FLUSH_ROWS rows at most every FLUSH_MS. A busy feed (hundreds
  // of alerts a second) shows the newest of each batch, counts the others as passed by, and
  // never blocks the page; a quiet one shows each alert in the next frame.
  const flush = () => {
    scheduled = false;
    lastFlush = performance.now();
    const batch = queue; queue = [];
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) frag.append(alertRow(batch[i], batch.length < 20));
    tbody.prepend(frag);
    while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
    count.textContent = `${fmt(received)} received live · showing ${tbody.rows.length}` +
      (passedBy ? ` · ${fmt(passedBy)} passed by unshown (filter to see fewer)` : "");
  };
  const add = (view, live) => {
    if (!view.alert_id || seen.has(view.alert_id) || !wanted(view)) return;
    seen.add(view.alert_id);
    if (seen.size > 20000) seen.clear();
    if (live) received++;
    queue.push(view);
    if (queue.length > FLUSH_ROWS) { passedBy += queue.length - FLUSH_ROWS; queue = queue.slice(-FLUSH_ROWS); }
    if (!scheduled) {
      scheduled = true;
      const wait = Math.max(0, FLUSH_MS - (performance.now() - lastFlush));
      setTimeout(() => requestAnimationFrame(flush), wait);
    }
  };

  // The rule version is filtered here (the API filters by code, user, status and time).
  const feed = new URLSearchParams(query);
  feed.delete("rules_version");
  const stop = follow("/api/v1/alerts/stream" + (feed.toString() ? "?" + feed : ""), (ev) => {
    if (ev.event === "alert") add(JSON.parse(ev.data), true);
    else if (ev.event === "overflow") toast("The feed fell behind and reconnects from the last alert shown.");
  }, (on, why) => {
    liveLabel.classList.toggle("on", on);
    liveLabel.textContent = on ? "live" : (why ? "reconnecting: " + why : "reconnecting");
  });

  const list = new URLSearchParams(query);
  list.delete("rules_version");
  list.set("limit", "100");
  api("GET", "/api/v1/alerts?" + list).then((page) => {
    const older = page.alerts.filter((v) => !seen.has(v.alert_id) && wanted(v));
    for (const v of older) seen.add(v.alert_id);
    const frag = document.createDocumentFragment();
    for (const v of older) frag.append(alertRow(v, false));
    tbody.append(frag);
    showFreshness(page.read_model);
    count.textContent = `${fmt(received)} received live · showing ${tbody.rows.length}`;
  }).catch((e) => toast("Could not load alerts: " + e.message));
  return stop;
}

function showFreshness(rm) {
  const el = document.getElementById("freshness");
  if (!el || !rm) return;
  el.textContent = rm.catching_up
    ? `read model catching up: ${fmt(rm.behind)} records behind`
    : (rm.behind ? `read model ${fmt(rm.behind)} records behind` : "read model up to date");
}

function field(label, control) {
  const id = control.id || ("c" + Math.random().toString(36).slice(2));
  control.id = id;
  return h("div", {}, h("label", { for: id }, label), control);
}

function alertRow(view, fresh) {
  const ev = view.event || {};
  const t = triageOf(view);
  const statusCell = h("td", {}, statusBadge(t));
  const tr = h("tr", { class: fresh ? "fresh" : null, "data-alert": view.alert_id },
    h("td", { class: "mono" }, ev.time !== undefined ? String(ev.time) : ""),
    h("td", { class: "mono" }, view.alert_id),
    h("td", {}, h("a", { href: "#/user/" + view.user_id }, String(view.user_id))),
    h("td", {}, eventWords(view)),
    h("td", {}, evidenceList(view.evidence, view.rules_version) || (view.alert_codes || []).map((c) => h("span", { class: "chip alert" }, String(c)))),
    h("td", { class: "mono" }, view.rules_version || ""),
    statusCell,
  );
  if (can("alerts:write")) statusCell.append(triageControls(view, statusCell));
  if (t.note) statusCell.append(h("div", { class: "muted" }, t.note));
  return tr;
}

function triageControls(view, cell) {
  const wrap = h("div", { class: "triage" });
  const t = triageOf(view);
  const ack = h("button", { type: "button", "data-action": "acknowledge", onclick: () => patch({ status: "acknowledged" }) }, "Acknowledge");
  // The resolve form is made when first asked for: a live list holds hundreds of rows, and
  // form controls are the costliest part of a row to create and lay out.
  let form = null;
  const resolve = h("button", { type: "button", "data-action": "resolve", "aria-expanded": "false", onclick: () => {
    if (!form) { form = resolveForm(); wrap.append(form); } else form.hidden = !form.hidden;
    resolve.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) form.querySelector("select").focus();
  } }, "Resolve…");
  const resolveForm = () => {
    const sel = h("select", { name: "resolution", "aria-label": "Resolution" },
      ["fraud", "legitimate", "duplicate"].map((r) => h("option", { value: r }, r)));
    const note = h("input", { name: "note", "aria-label": "Note", placeholder: "note", size: 18 });
    return h("form", { class: "triage", "data-form": "resolve", onsubmit: (e) => {
      e.preventDefault();
      patch({ status: "resolved", resolution: sel.value, note: note.value || undefined });
    } }, sel, note, h("button", { type: "submit", class: "primary" }, "Save"));
  };
  async function patch(body) {
    try {
      const triage = await api("PATCH", "/api/v1/alerts/" + view.alert_id, body);
      view.triage = triage.triage || triage;
      const status = (view.triage && view.triage.status) || body.status;
      const filter = new URLSearchParams(location.hash.split("?")[1] || "").get("status");
      if (filter && filter !== status) { cell.parentElement.remove(); toast(`${view.alert_id} is now ${status}`); return; }
      cell.replaceChildren(statusBadge(view.triage), triageControls(view, cell));
      if (view.triage.note) cell.append(h("div", { class: "muted" }, view.triage.note));
      toast(`${view.alert_id} ${status}`);
    } catch (e) { toast(`Could not change ${view.alert_id}: ${e.message}`); }
  }
  if (t.status === "open") wrap.append(ack);
  if (t.status !== "resolved") wrap.append(resolve);
  return wrap;
}

// ---------------------------------------------------------------------------------------------
// Page 2: a user.

function userPage(params, id) {
  const input = h("input", { id: "user-id", name: "user", inputmode: "numeric", value: id || "", required: true, size: 14 });
  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); location.hash = "#/user/" + input.value.trim(); } },
    field("User id", input), h("button", { type: "submit", class: "primary" }, "Open"));
  main().replaceChildren(h("h1", {}, id ? `User ${id}` : "A user"), h("div", { class: "panel" }, form));
  if (!id) { input.focus(); return null; }
  const body = h("div", { id: "user-body" }, h("p", { class: "muted" }, "Loading…"));
  main().append(body);
  loadUser(id, body);
  return null;
}

async function loadUser(id, body) {
  let view, events;
  try {
    [view, events] = await Promise.all([
      api("GET", `/api/v1/users/${encodeURIComponent(id)}`),
      api("GET", `/api/v1/users/${encodeURIComponent(id)}/events?limit=200`),
    ]);
  } catch (e) {
    body.replaceChildren(h("p", { class: "error", role: "alert" }, `Could not load user ${id}: ${e.message}`));
    return;
  }
  const riskLevel = view.risk;
  const riskPanel = h("div", { class: "panel", id: "user-risk" },
    h("h2", {}, "Risk"),
    h("p", {}, h("strong", { id: "user-risk-level" }, String(riskLevel)), " ", h("span", { class: "muted" }, riskSource(view.risk_source))));
  if (can("profiles:write")) {
    const sel = h("select", { id: "risk-select", name: "risk" },
      ["low", "medium", "high"].map((r) => h("option", { value: r, selected: r === riskLevel }, r)));
    riskPanel.append(h("form", { class: "filters", onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api("PUT", `/api/v1/users/${id}/risk`, { risk: sel.value });
        toast(`User ${id} is now ${sel.value} risk`);
        loadUser(id, body);
      } catch (err) { toast("Could not change the risk: " + err.message); }
    } }, field("Change risk", sel), h("button", { type: "submit" }, "Set")));
  }
  const counts = h("div", { class: "panel" }, h("h2", {}, "Activity"),
    h("p", { id: "user-counts" }, `${fmt(view.events)} events, ${fmt(view.alerts)} alerts`),
    view.last_event ? h("p", { class: "muted" }, "Last event: " + eventWords(view.last_event)) : null);
  const state = stateTable(view);
  const items = (events.events || events.items || []);
  body.replaceChildren(
    h("div", { class: "row" }, riskPanel, counts),
    state,
    h("div", { class: "panel" }, h("h2", {}, "Amounts over time"), amountChart(items)),
    h("div", { class: "panel scroll" }, h("h2", {}, "Timeline"), timeline(items)),
  );
  showFreshness(view.read_model);
}

function riskSource(risk) {
  if (!risk || typeof risk !== "object") return "";
  if (risk.kind === "default") return "(the default: no profile set)";
  const parts = ["set by the profiles record " + risk.partition + "-" + risk.offset];
  if (risk.timestamp) parts.push(new Date(risk.timestamp).toLocaleString());
  if (risk.cleared) parts.push("cleared");
  return "(" + parts.join(", ") + ")";
}

function stateTable(view) {
  const sets = [["Active", view.active], ["Shadow", view.shadow]].filter(([, set]) => set);
  const asOf = view.as_of;
  return h("div", { class: "panel", id: "user-state" },
    h("h2", {}, "How the engine sees this user now"),
    h("p", { class: "muted" }, asOf ? `Exact as of input partition ${asOf.partition}, offset ${asOf.next_offset} (the next event is ${asOf.next_event_id} at the earliest)` +
      (view.state && view.state.snapshot ? `; rebuilt from the snapshot at offset ${view.state.snapshot.covers}` : "") : ""),
    sets.map(([title, set]) => h("div", {},
      h("h3", {}, `${title} set `, h("span", { class: "mono" }, set.version)),
      h("table", { "data-set": title.toLowerCase() },
        h("caption", { class: "sr-only" }, `${title} rules and where the user stands`),
        h("thead", {}, h("tr", {}, ["Code", "Rule", "In words", "Observed", "Threshold", "", "To fire"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, set.rules.map((r) => standingRow(r, set.version)))))));
}

function standingRow(r, version) {
  const obs = Number(r.observed), thr = Number(r.threshold);
  const ratio = thr > 0 && isFinite(obs) ? Math.min(1, obs / thr) : 0;
  const meter = h("div", { class: "meter" + (r.firing ? " hot" : ""), role: "meter",
    "aria-valuemin": "0", "aria-valuemax": String(isFinite(thr) ? thr : 0), "aria-valuenow": String(isFinite(obs) ? obs : 0),
    "aria-label": `code ${r.code}: ${r.observed} of ${r.threshold}` }, h("span", {}));
  meter.firstChild.style.width = (ratio * 100).toFixed(1) + "%";
  const words = r.observed === null ? "no event of its type yet" : describeEvidence(r, version);
  return h("tr", { "data-code": r.code },
    h("td", {}, h("span", { class: r.firing ? "chip alert" : "chip" }, String(r.code))),
    h("td", {}, r.name || `${r.kind} on ${r.on}`),
    h("td", {}, words),
    h("td", { class: "num", "data-observed": "" }, r.observed === null ? "–" : String(r.observed)),
    h("td", { class: "num", "data-threshold": "" }, String(r.threshold)),
    h("td", {}, meter),
    h("td", {}, r.firing ? h("strong", { class: "error" }, "fires now") : toFire(r.to_fire, r)));
}

function toFire(t, r) {
  if (!t || t.events === null || t.events === undefined) return h("span", { class: "muted" }, "cannot fire");
  const [one, many] = onWords[r.on === "any" ? "deposit" : r.on] || [r.on, r.on + "s"];
  const n = t.events === 1 ? `the next ${one}` : `${t.events} more ${many}`;
  return t.amount_above ? `${n} above ${t.amount_above}` : n;
}

function timeline(items) {
  return h("table", {},
    h("caption", { class: "sr-only" }, "Events, newest first"),
    h("thead", {}, h("tr", {}, ["Event", "Time", "Type", "Amount", "Answer", "Why"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, items.map((v) => {
      const ev = v.event || {};
      const answer = v.error ? h("span", { class: "error" }, v.rejection || "rejected")
        : (v.alert ? (v.alert_codes || []).map((c) => h("span", { class: "chip alert" }, String(c))) : h("span", { class: "muted" }, "no alert"));
      return h("tr", {},
        h("td", { class: "mono" }, v.event_id),
        h("td", { class: "num" }, ev.time !== undefined ? String(ev.time) : ""),
        h("td", {}, ev.type || ""),
        h("td", { class: "num" }, ev.amount || ""),
        h("td", {}, answer),
        h("td", {}, evidenceList(v.evidence, v.rules_version) || (v.error ? v.error : "")));
    })));
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** Amounts over event time, deposits and withdrawals, alerts marked. */
function amountChart(items) {
  const pts = items.filter((v) => v.event && v.event.time !== undefined && v.event.amount)
    .map((v) => ({ t: Number(v.event.time), a: Number(v.event.amount), alert: !!v.alert, type: v.event.type, id: v.event_id }))
    .reverse();
  if (!pts.length) return h("p", { class: "muted" }, "No stored events.");
  const W = 800, H = 160, L = 50, B = 18;
  const t0 = Math.min(...pts.map((p) => p.t)), t1 = Math.max(...pts.map((p) => p.t));
  const aMax = Math.max(...pts.map((p) => p.a)) || 1;
  const x = (t) => L + (t1 === t0 ? (W - L) / 2 : ((t - t0) / (t1 - t0)) * (W - L - 6));
  const y = (a) => H - B - (a / aMax) * (H - B - 8);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `Amounts of ${pts.length} events from t=${t0} to t=${t1}; ${pts.filter((p) => p.alert).length} raised alerts` });
  svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }), s("line", { class: "axis", x1: L, y1: 4, x2: L, y2: H - B }),
    s("text", { x: 2, y: 12 }, fmt(aMax)), s("text", { x: 2, y: H - B }, "0"),
    s("text", { x: L, y: H - 4 }, "t=" + t0), s("text", { x: W - 60, y: H - 4 }, "t=" + t1));
  for (const p of pts) {
    const dot = s("circle", { class: "dot" + (p.alert ? " alert" : ""), cx: x(p.t).toFixed(1), cy: y(p.a).toFixed(1), r: p.alert ? 4 : 2.5 });
    dot.append(s("title", {}, `${p.id}: ${p.type} ${p.a} at t=${p.t}${p.alert ? " (alert)" : ""}`));
    svg.append(dot);
  }
  return svg;
}

// ---------------------------------------------------------------------------------------------
// Page 3: rule sets.

function rulesPage() {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  main().replaceChildren(h("h1", {}, "Rule sets"), body);
  loadRules(body);
  // The shadow set's disagreements, watched over time.
  const timer = setInterval(() => {
    const panel = document.getElementById("disagreements");
    if (panel) panel.replaceWith(disagreementsChart());
  }, SAMPLE_MS);
  return () => clearInterval(timer);
}

async function loadRules(body) {
  let active, shadow = null, history = null;
  try { active = await api("GET", "/api/v1/rules"); } catch (e) { body.replaceChildren(h("p", { class: "error" }, e.message)); return; }
  try { shadow = await api("GET", "/api/v1/rules/shadow"); } catch (e) { if (e.status !== 404) toast(e.message); }
  try { history = await api("GET", "/api/v1/rules/history"); } catch (_) { history = null; }
  const writer = can("rules:write");
  const editor = h("textarea", { id: "rule-editor", rows: 22, spellcheck: "false", "aria-describedby": "rule-problems" },
    JSON.stringify(active.set, null, 2));
  const problems = h("div", { id: "rule-problems", "aria-live": "polite" });
  const result = h("div", { id: "backtest-result" });
  const validate = debounce(() => validateSet(editor, problems), 250);
  editor.addEventListener("input", validate);
  validateSet(editor, problems);

  const cards = h("div", { class: "row" },
    setCard("Active", active, null),
    shadow ? setCard("Shadow", shadow, writer ? h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", id: "promote", onclick: async () => {
        try {
          await api("POST", "/api/v1/rules/shadow/promote", {}, { "If-Match": shadow.set.version });
          toast(`Shadow ${shadow.set.version} is now active`); loadRules(body);
        } catch (e) { toast("Promote refused: " + e.message); }
      } }, "Promote to active"),
      h("button", { type: "button", class: "danger", onclick: async () => {
        try { await api("DELETE", "/api/v1/rules/shadow", undefined, { "If-Match": shadow.set.version }); toast("Shadow cleared"); loadRules(body); }
        catch (e) { toast("Clear refused: " + e.message); }
      } }, "Clear shadow")) : null)
      : h("div", { class: "panel" }, h("h2", {}, "Shadow"), h("p", { class: "muted" }, "No shadow set: publish a candidate below to watch how it would disagree.")),
  );
  const buttons = h("div", { class: "actions" },
    h("button", { type: "button", id: "backtest", onclick: () => backtest(editor, result) }, "Backtest against stored history"),
    writer ? h("button", { type: "button", class: "primary", id: "publish-shadow", onclick: async () => {
      try {
        const headers = shadow ? { "If-Match": shadow.set.version } : {};
        const done = await api("PUT", "/api/v1/rules/shadow", editor.value, headers);
        toast(`Published ${done.version} as shadow`); loadRules(body);
      } catch (e) { showProblems(problems, e.body); toast("Publish refused: " + e.message); }
    } }, "Publish as shadow") : null);
  body.replaceChildren(
    cards,
    h("div", { class: "panel" }, h("h2", {}, "Shadow disagreements"), disagreementsChart()),
    h("div", { class: "panel" }, h("h2", {}, h("label", { for: "rule-editor" }, "Candidate rule set (JSON)")), editor, problems, buttons, result),
    history ? historyPanel(history, [active, shadow]) : null,
  );
}

function setCard(title, view, actions) {
  const set = view.set || {};
  return h("div", { class: "panel" },
    h("h2", {}, `${title}: `, h("span", { class: "mono" }, set.version)),
    h("p", { class: "muted" }, `${(set.rule || []).length} rules, time in ${set.time_unit}; from ${view.source}` +
      (view.timestamp ? `, published ${new Date(view.timestamp).toLocaleString()}` : "")),
    h("ul", {}, (set.rule || []).map((r) => h("li", {}, h("span", { class: "chip" }, String(r.code)), " ", r.name || "", " ",
      h("span", { class: "muted" }, ruleWords(r))))),
    actions);
}

function ruleWords(r) {
  const [, many] = onWords[r.on] || [r.on, r.on + "s"];
  switch (r.kind) {
    case "amount": return `${r.on} over ${r.amount}`;
    case "consecutive": return `${r.count} ${many} in a row`;
    case "increasing": return `${r.count} increasing ${many}`;
    case "window_sum": return `${many} over ${r.amount} within ${r.window}`;
    case "window_count": return `more than ${r.count} ${many} within ${r.window}`;
    default: return r.kind;
  }
}

async function validateSet(editor, problems) {
  let parsed;
  try { parsed = JSON.parse(editor.value); } catch (e) {
    showProblems(problems, { problems: ["not JSON: " + e.message] });
    return;
  }
  try {
    const res = await api("POST", "/api/v1/rules/validate", parsed);
    problems.replaceChildren(h("p", { class: res.empty ? "error" : "ok" }, res.empty
      ? `✓ valid, but it has no rules: publishing it turns alerting off (the API asks for allow_empty=true)`
      : `✓ valid: ${res.rules} rules, version ${res.version}, time in ${res.time_unit}`));
  } catch (e) { showProblems(problems, e.body); }
}

function showProblems(el, body) {
  const list = (body && body.problems) || [];
  if (!list.length) {
    el.replaceChildren(body && body.error ? h("p", { class: "error" }, body.error) : h("p", { class: "ok" }, "✓ valid"));
    return;
  }
  el.replaceChildren(h("ul", { class: "problems" }, list.map((p) => {
    const text = typeof p === "string" ? p : (p.message || JSON.stringify(p));
    return h("li", {}, text, " ", locateButton(text));
  })));
}

/** A problem naming a rule ("rule 3", "rule[2]", "code 123") gets a button selecting it in the editor. */
function locateButton(text) {
  const m = /rule\s*\[?\s*#?(\d+)\]?/i.exec(text) || /code (\d+)/i.exec(text);
  if (!m) return null;
  return h("button", { type: "button", class: "link", onclick: () => {
    const editor = document.getElementById("rule-editor");
    const needle = /code/i.test(m[0]) ? `"code": ${m[1]}` : null;
    let at = -1;
    if (needle) at = editor.value.indexOf(needle);
    else {
      // the n-th rule object (1-based in messages that say "rule 3", 0-based for "rule[2]")
      const n = m[0].includes("[") ? Number(m[1]) : Number(m[1]) - 1;
      let from = editor.value.indexOf('"rule"');
      for (let i = 0; i <= n && from >= 0; i++) from = editor.value.indexOf("{", from + 1);
      at = from;
    }
    if (at >= 0) { editor.focus(); editor.setSelectionRange(at, editor.value.indexOf("}", at) + 1); }
  } }, "show");
}

async function backtest(editor, out) {
  let candidate;
  try { candidate = JSON.parse(editor.value); } catch (e) { toast("The candidate is not JSON"); return; }
  out.replaceChildren(h("p", { class: "muted" }, "Backtesting against stored history…"));
  try {
    const r = await api("POST", "/api/v1/rules/backtest", { candidate });
    out.replaceChildren(backtestReport(r));
  } catch (e) { out.replaceChildren(h("p", { class: "error", role: "alert" }, "Backtest refused: " + e.message)); showProblems(document.getElementById("rule-problems"), e.body); }
}

function backtestReport(r) {
  const codes = Object.entries(r.codes || {});
  const words = (ev, version) => (ev || []).map((e) => `${e.code}: ${describeEvidence(e, version)}`).join("; ");
  return h("div", { id: "backtest-report" },
    h("h2", {}, `Backtest: ${r.candidate_version} against ${r.baseline_version}`),
    h("p", { id: "backtest-summary" }, `${fmt(r.events)} stored events judged (${fmt(r.warm_up)} more replayed as history); ` +
      `${fmt(r.events_changed)} answered differently, ${fmt(r.users_affected)} users affected`),
    h("table", {}, h("thead", {}, h("tr", {}, ["Code", "Baseline", "Candidate", "Added", "Removed", "Users"].map((c) => h("th", { scope: "col", class: c === "Code" ? null : "num" }, c)))),
      h("tbody", {}, codes.map(([code, c]) => h("tr", { "data-code": code },
        h("td", {}, h("span", { class: "chip" }, code)),
        h("td", { class: "num", "data-baseline": "" }, fmt(c.baseline)), h("td", { class: "num", "data-candidate": "" }, fmt(c.candidate)),
        h("td", { class: "num", "data-added": "" }, fmt(c.added)), h("td", { class: "num", "data-removed": "" }, fmt(c.removed)),
        h("td", { class: "num" }, fmt(c.users_affected)))))),
    r.samples && r.samples.length ? h("details", {}, h("summary", {}, `Sample differences (${r.samples.length})`),
      h("table", {}, h("thead", {}, h("tr", {}, ["Event", "User", "Time", "Baseline", "Candidate"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, r.samples.map((d) => h("tr", {},
          h("td", { class: "mono" }, d.event_id || ""), h("td", {}, h("a", { href: "#/user/" + d.user_id }, String(d.user_id))),
          h("td", { class: "num" }, String(d.time)),
          h("td", {}, `[${d.baseline.join(", ")}] `, h("span", { class: "muted" }, words(d.baseline_evidence, r.baseline_version))),
          h("td", {}, `[${d.candidate.join(", ")}] `, h("span", { class: "muted" }, words(d.candidate_evidence, r.candidate_version)))))))) : null);
}

function historyPanel(history, configured) {
  const versions = history.versions || [];
  const byVersion = new Map(versions.map((v) => [v.version, v.set]));
  // The configured sets (never published, and those seen in this session) can be compared too.
  for (const view of configured) if (view && view.set) learnSet(view.set);
  for (const [version, set] of knownSets) if (!byVersion.has(version)) byVersion.set(version, set);
  const names = [...byVersion.keys()];
  const a = h("select", { id: "diff-a" }, names.map((v) => h("option", { value: v }, v)));
  const b = h("select", { id: "diff-b" }, names.map((v, i) => h("option", { value: v, selected: i === 0 }, v)));
  if (names.length > 1) a.selectedIndex = 1;
  const out = h("div", { id: "diff-out" });
  return h("div", { class: "panel", id: "rules-history" },
    h("h2", {}, "History"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Version", "Published", "By", "Now"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, versions.map((v) => h("tr", { "data-version": v.version },
        h("td", { class: "mono" }, v.version),
        h("td", {}, v.published_at || ""),
        h("td", {}, (v.published_by || "unknown") + (v.via ? ` (${v.via})` : "")),
        h("td", {}, [v.active ? h("span", { class: "chip" }, "active") : null, v.shadow ? h("span", { class: "chip" }, "shadow") : null]))))),
    names.length > 1 ? h("form", { class: "filters", onsubmit: (e) => {
      e.preventDefault();
      out.replaceChildren(diffLines(JSON.stringify(byVersion.get(a.value), null, 2), JSON.stringify(byVersion.get(b.value), null, 2)));
    } }, field("From", a), field("To", b), h("button", { type: "submit", id: "diff" }, "Diff")) : null,
    out);
}

/** A line diff (longest common subsequence), added and removed lines marked. */
function diffLines(x, y) {
  const a = x.split("\n"), b = y.split("\n");
  const n = a.length, m = b.length;
  const dp = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    dp[i][j] = a[i] === b[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const pre = h("pre", { class: "diff", "aria-label": "Differences between the two versions" });
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { pre.append(h("span", {}, "  " + a[i] + "\n")); i++; j++; }
    else if (j < m && (i >= n || dp[i][j + 1] >= dp[i + 1][j])) { pre.append(h("span", { class: "add" }, "+ " + b[j])); j++; }
    else { pre.append(h("span", { class: "del" }, "- " + a[i])); i++; }
  }
  return pre;
}

// ---------------------------------------------------------------------------------------------
// Page 4: operations, from /metrics (and the processor's, when it runs in this process).

const samples = [];      // { t, values: Map(name+labels -> number) }
const SAMPLE_MS = 2000, KEEP = 150; // five minutes

function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const sp = line.lastIndexOf(" ");
    const key = line.slice(0, sp), v = Number(line.slice(sp + 1));
    if (!isNaN(v)) values.set(key, v);
  }
  return values;
}

function sum(values, prefix, filter) {
  let total = 0;
  for (const [k, v] of values) if (k.startsWith(prefix) && (!filter || filter(k))) total += v;
  return total;
}

function labelsOf(key) {
  const out = {};
  const m = /\{(.*)\}/.exec(key);
  if (!m) return out;
  for (const part of m[1].match(/[a-z_]+="[^"]*"/g) || []) { const [k, v] = part.split("="); out[k] = v.slice(1, -1); }
  return out;
}

/** The q-quantile of a histogram's buckets (cumulative `_bucket{le=…}` series). */
function quantile(values, prefix, q, filter) {
  const buckets = new Map();
  for (const [k, v] of values) {
    if (!k.startsWith(prefix + "_bucket") || (filter && !filter(k))) continue;
    const le = labelsOf(k).le;
    buckets.set(le, (buckets.get(le) || 0) + v);
  }
  const sorted = [...buckets].map(([le, c]) => [le === "+Inf" ? Infinity : Number(le), c]).sort((x, y) => x[0] - y[0]);
  if (!sorted.length) return null;
  const total = sorted[sorted.length - 1][1];
  if (!total) return null;
  for (const [le, c] of sorted) if (c >= q * total) return le;
  return null;
}

/** The q-quantile of what a histogram observed over the last five samples (about 10 s), not
 *  since the process started: the buckets' increase between then and now. */
function quantileSince(values, prefix, q) {
  const then = samples.length > 5 ? samples[samples.length - 6].values : null;
  if (!then) return quantile(values, prefix, q);
  const delta = new Map();
  for (const [k, val] of values) if (k.startsWith(prefix + "_bucket")) delta.set(k, val - (then.get(k) || 0));
  return quantile(delta, prefix, q);
}

let sampler = null;
async function sample() {
  try {
    const res = await fetch("/metrics");
    const values = parseMetrics(await res.text());
    samples.push({ t: Date.now(), values });
    if (samples.length > KEEP) samples.shift();
  } catch (_) { /* the page shows the gap */ }
}
function startSampler() {
  if (!sampler) { sample(); sampler = setInterval(sample, SAMPLE_MS); }
}

/** Per-second rate of a counter between consecutive samples. */
function rateSeries(prefix, filter) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    const d = sum(samples[i].values, prefix, filter) - sum(samples[i - 1].values, prefix, filter);
    out.push({ t: samples[i].t, v: dt > 0 ? Math.max(0, d / dt) : 0 });
  }
  return out;
}
function gaugeSeries(fn) { return samples.map((smp) => ({ t: smp.t, v: fn(smp.values) })); }

function lineChart(series, label, unit) {
  const W = 400, H = 110, L = 40;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  const vs = series.map((p) => p.v).filter((v) => v !== null && isFinite(v));
  const last = vs.length ? vs[vs.length - 1] : null;
  svg.setAttribute("aria-label", `${label}: ${last === null ? "no data" : fmt(last) + " " + unit} now, last ${Math.round(series.length * SAMPLE_MS / 1000)} s`);
  const max = Math.max(1e-9, ...vs);
  svg.append(s("line", { class: "axis", x1: L, y1: H - 12, x2: W, y2: H - 12 }), s("text", { x: 0, y: 10 }, fmt(max)), s("text", { x: 0, y: H - 12 }, "0"));
  if (series.length > 1) {
    const x = (i) => L + (i / (KEEP - 1)) * (W - L);
    const off = KEEP - series.length;
    const d = series.map((p, i) => `${i ? "L" : "M"}${x(i + off).toFixed(1)},${(H - 12 - ((p.v || 0) / max) * (H - 24)).toFixed(1)}`).join("");
    svg.append(s("path", { class: "line", d }));
  }
  return svg;
}

function opsPage() {
  startSampler();
  const cards = h("div", { class: "cards", id: "ops-cards" });
  const extra = h("div", { id: "ops-extra" });
  main().replaceChildren(h("h1", {}, "Operations"), cards, extra);
  const render = async () => {
    const last = samples[samples.length - 1];
    if (!last) return;
    const v = last.values;
    const processed = rateSeries("user_monitor_events_processed_total");
    const answered = rateSeries("user_monitor_store_projected_records_total");
    const dlq = rateSeries("user_monitor_events_processed_total", (k) => /outcome="(invalid|dlq|dead_letter)/.test(k));
    // Event -> response: the processor's own histogram (input timestamp to the commit of its
    // answer) when it runs in this process, else what HTTP clients of POST /event waited.
    const eventResponse = [...v.keys()].some((k) => k.startsWith("user_monitor_event_response_seconds_bucket"));
    const latencyOf = (q) => gaugeSeries((vals) => eventResponse
      ? quantileSince(vals, "user_monitor_event_response_seconds", q)
      : quantile(vals, "user_monitor_http_response_seconds", q, (k) => k.includes('route="/event"') || k.includes("/api/v1/events")));
    const p50 = latencyOf(0.5);
    const p99 = latencyOf(0.99);
    const lag = gaugeSeries((vals) => sum(vals, "user_monitor_consumer_lag"));
    const behind = gaugeSeries((vals) => sum(vals, "user_monitor_read_model_lag_records"));
    const disagreements = rateSeries("user_monitor_shadow_disagreements_total");
    const hasProcessor = [...v.keys()].some((k) => k.startsWith("user_monitor_events_processed_total"));
    const card = (id, title, series, unit, now) => h("div", { class: "card", id },
      h("h3", {}, title), h("div", { class: "big" }, now), lineChart(series, title, unit));
    const lastOf = (series, f) => (series.length ? f(series[series.length - 1].v) : "–");
    const ms = (x) => (x === null || x === undefined ? "–" : x === Infinity ? "> max" : fmt(x * 1000) + " ms");
    cards.replaceChildren(
      hasProcessor ? card("ops-throughput", "Events processed / s", processed, "/s", lastOf(processed, fmt))
        : card("ops-throughput", "Responses stored / s (shim)", answered, "/s", lastOf(answered, fmt)),
      card("ops-latency", eventResponse ? "Event → response p50 / p99 (last 10 s)" : "POST /event → answer p50 / p99", p99, "s", `${lastOf(p50, ms)} / ${lastOf(p99, ms)}`),
      card("ops-lag", "Consumer lag (records)", lag, "records", hasProcessor ? lastOf(lag, fmt) : "in the processor"),
      card("ops-dlq", "Dead letters / s", dlq, "/s", lastOf(dlq, fmt)),
      card("ops-freshness", "Read model behind (records)", behind, "records", lastOf(behind, fmt)),
      card("ops-shadow", "Shadow disagreements / s", disagreements, "/s", lastOf(disagreements, fmt)),
    );
    const partitions = [...v].filter(([k]) => k.startsWith("user_monitor_consumer_lag")).map(([k, val]) => [labelsOf(k).partition, val]);
    let rules = null;
    try { rules = await api("GET", "/api/v1/rules"); } catch (_) { /* shown as unknown */ }
    let shadow = null;
    try { shadow = await api("GET", "/api/v1/rules/shadow"); } catch (_) { shadow = null; }
    let ready = null;
    try { ready = await (await fetch("/readyz")).json(); } catch (_) { ready = null; }
    if (renders++ % 5 === 0) {
      try { letters = (await api("GET", "/api/v1/dead-letters?limit=5")).dead_letters; } catch (e) { letters = e.message; }
    }
    extra.replaceChildren(h("div", { class: "row" },
      h("div", { class: "panel" }, h("h2", {}, "Rule sets"),
        h("p", {}, "Active: ", h("span", { class: "mono", id: "ops-active" }, rules ? rules.set.version : "unknown")),
        h("p", {}, "Shadow: ", h("span", { class: "mono", id: "ops-shadow-version" }, shadow ? shadow.set.version : "none"))),
      h("div", { class: "panel" }, h("h2", {}, "Lag per partition"),
        partitions.length ? h("table", {}, h("tbody", {}, partitions.map(([p, val]) => h("tr", {}, h("td", {}, "partition " + p), h("td", { class: "num" }, fmt(val))))))
          : h("p", { class: "muted" }, "The processor runs in another process: its lag is on its own /metrics.")),
      h("div", { class: "panel" }, h("h2", {}, "Readiness"), readinessTable(ready))),
      h("div", { class: "panel", id: "ops-dead-letters" }, h("h2", {}, "Latest dead letters"), deadLetters(letters)));
  };
  let renders = 0;
  let letters = null;
  render();
  const timer = setInterval(render, SAMPLE_MS);
  return () => clearInterval(timer);
}

function readinessTable(ready) {
  if (!ready) return h("p", { class: "muted" }, "unknown");
  const rows = [["ready", ready.ready]];
  for (const part of ["shim", "processor"]) {
    if (!ready[part]) continue;
    for (const [k, v] of Object.entries(ready[part])) rows.push([`${part}: ${k.replace(/_/g, " ")}`, v]);
  }
  return h("table", {}, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("td", {}, k),
    h("td", { class: typeof v === "boolean" ? (v === (k.includes("failing") || k.includes("stopped") ? false : true) ? "ok" : "error") : "num" }, String(v))))));
}

function deadLetters(letters) {
  if (letters === null) return h("p", { class: "muted" }, "Loading…");
  if (typeof letters === "string") return h("p", { class: "error" }, letters);
  if (!letters.length) return h("p", { class: "ok" }, "None: every input was a valid event.");
  return h("table", {}, h("thead", {}, h("tr", {}, ["Input", "When", "Why", "Value"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, letters.map((d) => h("tr", {},
      h("td", { class: "mono" }, d.event_id || `${d.partition}-${d.offset}`),
      h("td", {}, d.timestamp ? new Date(d.timestamp).toLocaleTimeString() : ""),
      h("td", {}, h("strong", {}, d.rejection || ""), " ", d.error || ""),
      h("td", { class: "mono" }, d.value + (d.cut ? " …" : ""))))));
}

function disagreementsChart() {
  startSampler();
  const series = rateSeries("user_monitor_shadow_disagreements_total");
  const total = samples.length ? sum(samples[samples.length - 1].values, "user_monitor_shadow_disagreements_total") : 0;
  const where = samples.length && ![...samples[samples.length - 1].values.keys()].some((k) => k.startsWith("user_monitor_events_processed_total"))
    ? " (counted by the processor: see its /metrics)" : "";
  return h("div", { id: "disagreements" }, h("p", { id: "disagreements-total" }, `${fmt(total)} events judged differently by the shadow set since this process started${where}`),
    lineChart(series, "Shadow disagreements per second", "/s"));
}

// ---------------------------------------------------------------------------------------------
// Page 5: audit.

function auditPage(params) {
  const filters = { actor: params.get("actor") || "", action: params.get("action") || "", user_id: params.get("user_id") || "" };
  const form = h("form", { class: "filters", "aria-label": "Filter the audit trail", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const el of form.elements) if (el.name && el.value) q.set(el.name, el.value);
    location.hash = "#/audit" + (q.toString() ? "?" + q : "");
  } },
    field("Who", h("input", { name: "actor", id: "a-actor", value: filters.actor, size: 14 })),
    field("What", h("select", { name: "action", id: "a-action" }, ["", "risk.set", "rules.active.set", "rules.shadow.set", "rules.shadow.clear", "rules.shadow.promote", "alert.triage"]
      .map((a) => h("option", { value: a, selected: a === filters.action }, a || "any")))),
    field("User", h("input", { name: "user_id", id: "a-user", value: filters.user_id, inputmode: "numeric", size: 10 })),
    h("button", { type: "submit", class: "primary" }, "Apply"));
  const tbody = h("tbody", { id: "audit-rows" });
  main().replaceChildren(h("h1", {}, "Audit trail"), h("div", { class: "panel" }, form),
    h("div", { class: "panel scroll" }, h("table", {}, h("caption", { class: "sr-only" }, "Changes, newest first"),
      h("thead", {}, h("tr", {}, ["When", "Who", "What", "Subject", "Before", "After", "From"].map((c) => h("th", { scope: "col" }, c)))), tbody)));
  api("GET", "/api/v1/audit?limit=500").then((page) => {
    const entries = (page.entries || []).filter((e) =>
      (!filters.actor || e.actor.includes(filters.actor)) && (!filters.action || e.action === filters.action)
      && (!filters.user_id || String(e.user_id) === filters.user_id));
    tbody.replaceChildren(...entries.map((e) => h("tr", {},
      h("td", {}, e.at), h("td", {}, e.actor), h("td", { class: "mono" }, e.action),
      h("td", {}, e.alert_id ? h("span", { class: "mono" }, e.alert_id + " ") : null,
        e.user_id !== undefined ? h("a", { href: "#/user/" + e.user_id }, "user " + e.user_id) : null),
      h("td", {}, e.before), h("td", {}, e.after), h("td", {}, e.source))));
    if (!entries.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No changes match.")));
  }).catch((e) => toast("Could not load the audit trail: " + e.message));
  return null;
}

// ---------------------------------------------------------------------------------------------
// Routing: #/page/arg?query.

let cleanup = null;
async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  const hash = location.hash.replace(/^#\/?/, "") || "alerts";
  const [path, q] = hash.split("?");
  const [page, arg] = path.split("/");
  const params = new URLSearchParams(q || "");
  for (const a of document.querySelectorAll(".top nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const pages = { alerts: alertsPage, user: userPage, rules: rulesPage, ops: opsPage, audit: auditPage };
  const render = pages[page] || alertsPage;
  document.title = `${({ alerts: "Live alerts", user: "User", rules: "Rule sets", ops: "Operations", audit: "Audit" })[page] || "Live alerts"} · user-monitor`;
  cleanup = render(params, arg ? decodeURIComponent(arg) : "") || null;
  main().focus({ preventScroll: true });
}

async function start() {
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem("um.token");
    session.token = "";
    location.reload();
  });
  try { await loadSession(); } catch (e) {
    main().replaceChildren(h("p", { class: "error", role: "alert" }, "Cannot reach the API: " + e.message));
    return;
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
