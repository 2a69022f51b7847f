// The tillmesh console: one page per tab, drawn from the node's own API with the session
// cookie, redrawn when the event stream says something changed. Every value from the API is
// put in the page as text (never as HTML), so a customer named "<script>" stays a name.
"use strict";

const PAGES = ["mesh", "conflicts", "alerts", "members", "bridge"];
// The mesh page also follows the network, which the event stream does not report.
const STATUS_POLL_MS = 2000;
const REDRAW_DEBOUNCE_MS = 250;
const CONFLICTS_REFRESH_MS = 10000;
// Listing conflicts reads every customer's, product's and sale's history: however busy the
// till, a page asks at most this often (and once more after, for what came meanwhile).
const CONFLICTS_MIN_GAP_MS = 3000;

// What a person chose on a page lives here, not only in the page: a redraw (on every event)
// must not undo a pick, a tick or a role chosen and not yet sent.
const state = {
  page: "mesh", status: null, lastEntries: null, rate: null, resolved: [],
  conflicts: null, conflictsAt: 0, conflictsDirty: true, conflictsNow: false, conflictsLater: null,
  picks: new Map(), ticked: new Set(), bulkDevice: "",
  inviteRole: "till", invite: null, roleChoice: new Map(),
};

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class NotSignedIn extends Error {}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) throw new NotSignedIn();
  const data = await r.json().catch(() => null);
  if (!r.ok) {
    const e = data && data.error;
    throw new Error(e ? `${e.message} (${e.code})` : `HTTP ${r.status}`);
  }
  return data;
}

function ago(ms) {
  if (ms === undefined || ms === null) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}

function fail(e) {
  if (e instanceof NotSignedIn) {
    show(h("section", { "data-testid": "signin" },
      h("h2", {}, "Sign in"),
      h("p", {}, "Run ", h("code", {}, "tillmesh console"),
        " on this machine: it prints a one-time link that signs this browser in.")));
    return;
  }
  show(h("p", { class: "error" }, String(e.message || e)));
}

// ---- Mesh -----------------------------------------------------------------------------

function peerState(member, peer, me, conflicted) {
  if (member.device_id === me) return "this device";
  if (!member.active) return "revoked";
  if (!peer) return "offline";
  if (conflicted.has(member.device_id)) return "conflict";
  if (peer.pull_failures > 0) return "failed";
  if (peer.synced && !peer.behind_entries) return "synced";
  return "syncing";
}

// Conflicts are read again when something changed (at most every CONFLICTS_MIN_GAP_MS), now
// and then, and at once after this page settled or undid one.
async function readConflicts() {
  const now = Date.now();
  const since = now - state.conflictsAt;
  const due = !state.conflicts || state.conflictsNow || since > CONFLICTS_REFRESH_MS
    || (state.conflictsDirty && since > CONFLICTS_MIN_GAP_MS);
  if (due) {
    state.conflictsDirty = false;
    state.conflictsNow = false;
    state.conflictsAt = now;
    state.conflicts = await api("GET", "/v1/conflicts");
  } else if (state.conflictsDirty && !state.conflictsLater) {
    state.conflictsLater = setTimeout(() => { state.conflictsLater = null; redraw(); },
      CONFLICTS_MIN_GAP_MS - since + 1);
  }
  return state.conflicts;
}

async function mesh() {
  const now = Date.now();
  const conflicts = await readConflicts();
  const [status, members] = await Promise.all([api("GET", "/v1/status"), api("GET", "/v1/members")]);
  state.status = status;
  if (state.lastEntries) {
    const dt = (now - state.lastEntries.at) / 1000;
    if (dt > 0.5) state.rate = (status.entries - state.lastEntries.n) / dt;
  }
  state.lastEntries = { n: status.entries, at: now };
  const me = status.device.id;
  const peers = new Map(((status.network || {}).peers || []).map((p) => [p.device_id, p]));
  const conflicted = new Set();
  for (const c of conflicts.conflicts) {
    for (const v of c.values || []) if (v.device_id) conflicted.add(v.device_id);
  }
  const rows = members.members.map((m) => {
    const p = peers.get(m.device_id);
    const st = peerState(m, p, me, conflicted);
    const cls = st === "this device" ? "self" : st === "revoked" ? "offline" : st;
    return h("tr", { "data-testid": "member-row", "data-device": m.device_id, "data-state": st },
      h("td", {}, m.device_id === me ? status.device.name : m.name || m.device_id.slice(0, 12)),
      h("td", {}, m.role),
      h("td", {}, h("span", { class: `state ${cls}`, "data-testid": "peer-state" }, st)),
      h("td", {}, p && p.behind_entries !== undefined ? `${p.behind_entries} / ${p.lacks_entries}` : "–"),
      h("td", {}, p ? `${p.found_by}, ${p.transport} ${p.address}` : "–"),
      h("td", {}, p && p.rtt_ms !== null && p.rtt_ms !== undefined ? `${p.rtt_ms.toFixed(1)} ms` : "–"),
      h("td", {}, p ? ago(p.last_contact_ms_ago) : "–"));
  });
  const store = status.store || {};
  show(
    h("section", {},
      h("h2", {}, "This node"),
      h("p", {},
        `${status.device.name} (${status.role || "not a member"}), mesh ${status.mesh_id.slice(0, 12)}: `,
        `${status.entries} entries, store ${bytes(store.bytes)}, `,
        state.rate === null ? "write rate measuring…" : `${state.rate.toFixed(1)} entries/s`)),
    h("section", {},
      h("h2", {}, "Devices"),
      h("table", { "data-testid": "mesh" },
        h("thead", {}, h("tr", {},
          ["Device", "Role", "State", "Behind / lacks (entries)", "Connected by", "Round trip", "Last contact"]
            .map((t) => h("th", {}, t)))),
        h("tbody", {}, rows)),
      h("p", { class: "muted" },
        "Behind: entries a device held that this node lacked at its last answer; lacks: entries this node holds that it lacked. ",
        "Offline: a member this node has no connection to.")));
}

// ---- Conflicts ------------------------------------------------------------------------

const keyOf = (c) => `${c.doc_id} ${c.path.join(".")}`;

function valueCard(c, v, i) {
  const name = `pick-${c.doc_id}-${c.path.join(".")}`;
  const value = JSON.stringify(v.value);
  const picked = state.picks.has(keyOf(c)) ? state.picks.get(keyOf(c)) === value : v.shown;
  return h("label", { class: v.shown ? "value shown" : "value", "data-testid": "conflict-value" },
    h("input", { type: "radio", name, value: String(i), checked: picked, "data-value": value,
      onchange: () => state.picks.set(keyOf(c), value) }),
    " ", h("strong", {}, JSON.stringify(v.value)),
    h("div", { class: "muted" }, `${v.device_name || "unknown device"}, ${when(v.at_ms)}`),
    v.shown ? h("div", { class: "muted" }, "shown now") : null);
}

function fieldConflict(c) {
  return h("tr", { "data-testid": "field-conflict", "data-doc": c.doc_id, "data-path": c.path.join(".") },
    h("td", {}, h("input", { type: "checkbox", class: "bulk", "data-testid": "bulk", checked: state.ticked.has(keyOf(c)),
      onchange: (e) => (e.target.checked ? state.ticked.add(keyOf(c)) : state.ticked.delete(keyOf(c))) })),
    h("td", {}, `${c.doc_type} `, h("strong", {}, c.name ?? c.doc_id), h("div", { class: "muted" }, c.doc_id)),
    h("td", {}, c.path.join(".")),
    h("td", {}, h("div", { class: "values" }, c.values.map((v, i) => valueCard(c, v, i)))),
    h("td", {}, h("button", { class: "primary", "data-testid": "resolve", onclick: () => resolveRows([c]) }, "Use this")));
}

function pickOf(c) {
  if (state.picks.has(keyOf(c))) return JSON.parse(state.picks.get(keyOf(c)));
  const shown = c.values.find((v) => v.shown);
  return shown ? shown.value : undefined;
}

async function resolveRows(list, pickByDevice) {
  const resolutions = [];
  for (const c of list) {
    let value = pickOf(c);
    if (pickByDevice) {
      const v = c.values.find((x) => x.device_id === pickByDevice);
      if (!v) continue;
      value = v.value;
    }
    if (value !== undefined) resolutions.push({ doc_id: c.doc_id, path: c.path, value });
  }
  if (!resolutions.length) return;
  const answer = await api("POST", "/v1/conflicts/resolve", { resolutions });
  for (const r of answer.results) {
    const c = list.find((x) => x.doc_id === r.doc_id && x.path.join(".") === r.path.join("."));
    if (c) { state.picks.delete(keyOf(c)); state.ticked.delete(keyOf(c)); }
    state.resolved.unshift({ ...r, doc_type: c && c.doc_type, name: c && c.name });
  }
  state.conflictsNow = true;
  await redraw();
}

// Undo writes back the value the field showed before the pick: an ordinary edit (PATCH),
// signed and replicated like the pick was.
async function undo(r) {
  const base = { customer: "/v1/customers/", vendor: "/v1/vendors/", product: "/v1/products/" }[r.doc_type];
  let body = r.previous;
  for (let i = r.path.length - 1; i >= 0; i--) {
    if (i > 0 && r.doc) {
      const parent = r.path.slice(0, i).reduce((at, k) => (at || {})[k], r.doc);
      body = { ...(parent || {}), [r.path[i]]: body };
    } else body = { [r.path[i]]: body };
  }
  await api("PATCH", base + r.doc_id, body);
  r.undone = true;
  state.conflictsNow = true;
  await redraw();
}

async function conflicts() {
  const { conflicts } = await readConflicts();
  const fields = conflicts.filter((c) => c.kind === "field");
  const others = conflicts.filter((c) => c.kind !== "field");
  const devices = new Map();
  for (const c of fields) for (const v of c.values) if (v.device_id) devices.set(v.device_id, v.device_name);
  const deviceSelect = h("select", { "data-testid": "bulk-device", onchange: (e) => { state.bulkDevice = e.target.value; } },
    h("option", { value: "" }, "the value picked in each row"),
    [...devices].map(([id, n]) => h("option", { value: id, selected: id === state.bulkDevice },
      `the value from ${n || id.slice(0, 12)}`)));
  const bulk = async () => {
    const chosen = fields.filter((c) => state.ticked.has(keyOf(c)));
    await resolveRows(chosen, state.bulkDevice || undefined);
  };
  const resolved = state.resolved.filter((r) => !r.error);
  show(
    h("section", {},
      h("h2", {}, "Fields set on two devices at once"),
      fields.length === 0
        ? h("p", { "data-testid": "no-field-conflicts" }, "None: every field holds one value.")
        : [h("table", {},
            h("thead", {}, h("tr", {}, ["", "Document", "Field", "Values (each device's)", ""].map((t) => h("th", {}, t)))),
            h("tbody", {}, fields.map(fieldConflict))),
          h("p", {}, "For the ticked rows use ", deviceSelect, " ",
            h("button", { "data-testid": "bulk-resolve", onclick: bulk }, "Resolve ticked"))],
      h("p", { class: "muted" },
        "A pick is a signed change (a manager's, an admin's or the owner's) and reaches every till.")),
    resolved.length ? h("section", { "data-testid": "resolved" },
      h("h2", {}, "Resolved here"),
      h("table", {}, h("tbody", {}, resolved.map((r) => h("tr", { "data-testid": "resolved-row" },
        h("td", {}, `${r.doc_type} ${r.name ?? r.doc_id}`),
        h("td", {}, r.path.join(".")),
        h("td", {}, `${JSON.stringify(r.previous)} → ${JSON.stringify(r.value)}`),
        h("td", {}, r.undone ? "undone"
          : h("button", { "data-testid": "undo", onclick: () => undo(r).catch(fail) }, "Undo"))))))) : null,
    state.resolved.some((r) => r.error) ? h("section", {},
      state.resolved.filter((r) => r.error).map((r) => h("p", { class: "error" }, `${r.path.join(".")}: ${r.error.message}`))) : null,
    h("section", {},
      h("h2", {}, "Money and stock (read-only)"),
      others.length === 0 ? h("p", {}, "Nothing to review.")
        : h("table", {}, h("tbody", {}, others.map(otherConflict)))));
}

function otherConflict(c) {
  const row = (what, detail) => h("tr", { "data-testid": `conflict-${c.kind}` }, h("td", {}, what), h("td", {}, detail));
  switch (c.kind) {
    case "qbo_total":
      return row(`Sale ${c.receipt_number}`, `QuickBooks says ${c.qbo_total}, the till rang up ${c.till_total}: QuickBooks wins, every till shows its figure.`);
    case "void_and_refund":
      return row(`Sale ${c.receipt_number}`, `voided on one till and refunded on another while apart: ${c.resolution}.`);
    case "oversold":
      return row(`Product ${c.sku}`, `stock ${c.stock}: ${c.resolution}.`);
    default:
      return row(c.kind, JSON.stringify(c));
  }
}

// ---- Rejected and alerts ----------------------------------------------------------------

async function alerts() {
  const [status, rejected] = await Promise.all([api("GET", "/v1/status"), api("GET", "/v1/rejected?limit=100")]);
  show(
    h("section", {}, h("h2", {}, "Alerts"),
      status.alerts.length === 0 ? h("p", {}, "None.")
        : h("ul", {}, status.alerts.map((a) => h("li", { "data-testid": "alert" }, `${a.kind}: ${a.message || JSON.stringify(a)}`)))),
    h("section", {}, h("h2", {}, `Refused entries (${rejected.count})`),
      rejected.entries.length === 0 ? h("p", {}, "None.")
        : h("table", {}, h("tbody", {}, rejected.entries.map((e) =>
          h("tr", { "data-testid": "rejected" }, h("td", {}, `${(e.author || "unknown").slice(0, 12)} #${e.seq ?? "?"}`),
            h("td", {}, e.reason)))))),
    h("section", {}, h("h2", {}, `Undone entries (${status.undone.count})`),
      h("p", { class: "muted" }, "Held but not applied: the membership says they do not stand (a revocation that arrived after them)."),
      h("table", {}, h("tbody", {}, status.undone.recent.map((u) => h("tr", {},
        h("td", {}, `${u.author.slice(0, 12)} #${u.seq}`), h("td", {}, u.reason),
        h("td", {}, `${(u.docs || []).length} document(s) rebuilt without it, ${when(u.at_ms)}`)))))));
}

// ---- Members ----------------------------------------------------------------------------

async function members() {
  const m = await api("GET", "/v1/members");
  const roles = ["admin", "manager", "till", "bridge", "viewer"];
  const role = h("select", { "data-testid": "invite-role", onchange: (e) => { state.inviteRole = e.target.value; } },
    roles.map((r) => h("option", { value: r, selected: r === state.inviteRole }, r)));
  const invite = async () => {
    try {
      state.invite = await api("POST", "/v1/invites", { role: state.inviteRole, expires_s: 600 });
    } catch (e) { state.invite = { error: e.message }; }
    await redraw();
  };
  const i = state.invite;
  const inviteOut = h("div", { "data-testid": "invite" }, !i ? null : i.error ? h("p", { class: "error" }, i.error) : [
    h("p", { "data-testid": "invite-for" }, `Invite for a ${i.role}, for ${Math.round(i.expires_in_s / 60)} min. On the new device run `,
      h("code", {}, "tillmesh join --name NAME CODE"), " with this code:"),
    h("div", { class: "big", "data-testid": "invite-code" }, i.code),
    h("p", {}, "From elsewhere (another network), the whole invite; or scan it:"),
    h("pre", { "data-testid": "invite-line" }, i.invite),
    i.qr_svg ? h("img", { alt: "the whole invite as a QR code", "data-testid": "invite-qr",
      src: "data:image/svg+xml;base64," + btoa(i.qr_svg) }) : null]);
  const rows = m.members.map((x) => {
    const to = h("select", { onchange: (e) => state.roleChoice.set(x.device_id, e.target.value) },
      roles.map((r) => h("option", { value: r, selected: r === (state.roleChoice.get(x.device_id) || x.role) }, r)));
    return h("tr", { "data-testid": "member" },
      h("td", {}, x.name || (x.device_id === m.this_device.id ? "this device" : x.device_id.slice(0, 12))),
      h("td", {}, x.role), h("td", {}, x.active ? "active" : "revoked"),
      h("td", {}, x.role === "owner" || !x.active ? "" : [to, " ",
        h("button", { onclick: () => api("PUT", `/v1/members/${x.device_id}/role`, { role: to.value })
          .then(() => { state.roleChoice.delete(x.device_id); return redraw(); }, fail) }, "Change role"), " ",
        h("button", { onclick: () => confirm(`Revoke ${x.name}? Its later entries are refused everywhere.`)
          && api("POST", `/v1/members/${x.device_id}/revoke`, {}).then(redraw, fail) }, "Revoke")]));
  });
  show(
    h("section", {}, h("h2", {}, "Members"),
      h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Role", "", ""].map((t) => h("th", {}, t)))), h("tbody", {}, rows))),
    h("section", {}, h("h2", {}, "Invite a device"), role, " ", h("button", { class: "primary", onclick: invite }, "Invite"), inviteOut));
}

// ---- Bridge -----------------------------------------------------------------------------

async function bridge() {
  let b;
  try { b = await api("GET", "/v1/bridge"); } catch (e) {
    if (e instanceof NotSignedIn) throw e;
    show(h("section", {}, h("h2", {}, "Bridge"), h("p", {}, "This node is not a QuickBooks bridge.")));
    return;
  }
  show(h("section", { "data-testid": "bridge" }, h("h2", {}, "QuickBooks"),
    h("p", {}, b.connected ? `Connected to company ${b.realm_id}.` : "Not connected: QuickBooks needs approval again (open the bridge's /connect page)."),
    h("p", {}, `Outbox: ${b.outbox} waiting; ${b.posted} posted. Last push ${when(b.last_push_ms)}, last pull ${when(b.last_pull_ms)}.`),
    h("p", {}, `QuickBooks figures that overrode a till's: ${b.conflicts}.`),
    b.last_error ? h("p", { class: "error" }, `Last error: ${b.last_error}`) : null,
    (b.failures || []).length ? h("table", {}, h("tbody", {}, b.failures.map((f) => h("tr", {},
      h("td", {}, f.doc_id || ""), h("td", {}, f.message || JSON.stringify(f)))))) : null));
}

// ---- Frame ------------------------------------------------------------------------------

const DRAW = { mesh, conflicts, alerts, members, bridge };

async function redraw() {
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("on", a.dataset.page === state.page);
  try {
    await DRAW[state.page]();
    const s = state.status || (await api("GET", "/v1/status"));
    state.status = s;
    document.getElementById("me").textContent = `${s.device.name} · ${s.role || "not a member"}`;
  } catch (e) { fail(e); }
}

let pending = null;
function soon() {
  state.conflictsDirty = true;
  clearTimeout(pending);
  pending = setTimeout(redraw, REDRAW_DEBOUNCE_MS);
}

function route() {
  const p = location.hash.replace("#", "");
  state.page = PAGES.includes(p) ? p : "mesh";
  redraw();
}

window.addEventListener("hashchange", route);
route();
// Live: every committed change is an event; the mesh page also follows the network.
const events = new EventSource("/v1/events", { withCredentials: true });
events.addEventListener("change", soon);
events.addEventListener("lagged", soon);
const poll = setInterval(() => { if (state.page === "mesh") redraw(); }, STATUS_POLL_MS);
// Signing out ends the session on the node (not only in this browser).
document.getElementById("signout").addEventListener("click", async () => {
  events.close();
  clearInterval(poll);
  await fetch("/v1/console/logout", { method: "POST", credentials: "same-origin" }).catch(() => null);
  document.getElementById("me").textContent = "";
  fail(new NotSignedIn());
});
