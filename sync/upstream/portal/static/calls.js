// The calls page: open the key, index and search, play, download, export, delete, hold.
import { zipSync } from "/vendor/fflate/esm/browser.js";
import { openKey, KeyError } from "./lt/keyfile.js";
import { CallIndex, listPage, normNumber, rowsFor } from "./lt/index.js";
import { Player } from "./lt/player.js";
import { exportCall } from "./lt/call.js";
import { maskNumber, num } from "./lt/format.js";

const $ = (s) => document.querySelector(s);
const csrf = document.querySelector('meta[name="csrf"]').content;
const role = document.body.dataset.role;
const canOpen = role === "manager" || role === "staff";
const canManage = role === "manager";
const index = new CallIndex();
let keyPair = null;
let shown = [];             // the rows on screen (pages fetched so far)
// What the table is showing: the server's list ({q, next}) or index results ({ids, pos}).
let view = null;
const PAGE = 200;           // rows fetched per "Show more"

async function post(url, body) {
  const r = await fetch(url, { method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf }, body: JSON.stringify(body) });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || `${r.status}`);
  return j;
}

function report(action, extra) {
  return post("/api/event", { action, ...extra }).catch((e) => status("#search-status", `Audit record failed: ${e.message}`));
}

function status(sel, text, bad = false) {
  const el = $(sel);
  if (!el) return;
  el.textContent = text;
  el.className = bad ? "bad" : "";
}

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text;
  tr.append(td);
  return td;
}

function button(td, label, fn) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", () => fn(b));
  td.append(b);
  return b;
}

function fmtDur(s) {
  if (s === undefined || s === null) return "—";
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.round(s % 60)).padStart(2, "0")}`;
}

function render() {
  const tb = $("#calls tbody");
  tb.replaceChildren();
  for (const r of shown) {
    const tr = document.createElement("tr");
    tr.dataset.device = r.device;
    tr.dataset.call = r.call;
    cell(tr, r.start ? r.start.replace("T", " ").replace(/\.\d+Z$/, "Z") : "—");
    cell(tr, r.line ?? "—");
    cell(tr, r.direction ?? "—");
    cell(tr, r.direction === "outbound" ? (r.dialled_digits || "—") : (r.caller_number ?? "—"));
    cell(tr, fmtDur(r.duration_s));
    cell(tr, r.verdict || (r.complete ? "complete" : `incomplete (${r.segments}/${r.expected ?? "?"})`)).className = "integrity";
    cell(tr, r.hold ? "on hold" : (r.decision && r.decision.kind === "keep" ? `kept: ${r.decision.reason}` : "")).className = "hold";
    const act = cell(tr, "");
    if (canOpen) {
      button(act, "Play", () => play(r));
      button(act, "Download", (b) => download(r, b));
    }
    if (canManage) {
      button(act, "Delete", () => del(r, tr));
      button(act, "Legal hold", () => hold(r, tr));
    }
    tb.append(tr);
  }
  $("#more").hidden = !hasMore();
}

function hasMore() {
  return view !== null && (view.ids ? view.pos < view.ids.length : view.next !== null);
}

/** The next page of the current view, appended to the table. */
async function more() {
  let rows;
  if (view.ids) {
    const part = view.ids.slice(view.pos, view.pos + PAGE);
    view.pos += part.length;
    rows = await rowsFor(part);
  } else {
    const j = await listPage(view.q, view.next);
    view.next = j.next;
    if (j.total !== null && j.total !== undefined) view.total = j.total;
    rows = j.calls;
  }
  for (const r of rows) index.fill(r);
  shown.push(...rows);
  render();
}

function needKey() {
  if (!keyPair) { status("#search-status", "Open the practice key first.", true); return true; }
  return false;
}

function ask(text, okLabel, reasonRequired = false) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  const reason = $("#confirm-reason");
  reason.value = "";
  reason.required = reasonRequired;
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok" ? { reason: reason.value } : null), { once: true });
    d.showModal();
  });
}

function save(name, bytes, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const a = document.createElement("a");
  a.href = url; a.download = name; a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---- key and search

async function openKeyForm(ev) {
  ev.preventDefault();
  const f = $("#keyfile").files[0];
  if (!f) return;
  const t0 = performance.now();
  status("#key-status", "Opening the key…");
  try {
    keyPair = await openKey(await f.text(), $("#keypass").value);
  } catch (e) {
    status("#key-status", e instanceof KeyError ? e.message : `The key did not open: ${e.message}`, true);
    return;
  } finally {
    $("#keypass").value = "";
    $("#keyfile").value = "";
  }
  status("#key-status", "Key open; indexing calls…");
  await index.loadKeys();
  await index.build(keyPair, index.site, (n, total) => status("#key-status", `Key open; indexed ${n} of ${total} calls…`));
  const s = ((performance.now() - t0) / 1000).toFixed(2);
  if (index.opened === 0 && index.keys.size > 0) {
    keyPair = null;
    status("#key-status", "This key opens none of this practice's calls: it is not the practice key.", true);
    return;
  }
  status("#key-status", `Key open in this browser. ${index.opened} calls indexed in ${s} s` +
    ` (${index.fromCache} from the sealed index, ${index.fresh} manifests opened)` +
    (index.unreadable ? `; ${index.unreadable} did not open with this key.` : "."));
  document.body.dataset.keyOpen = "1";
  document.body.dataset.indexS = s;
  report("key_open", { matches: index.opened });
  runSearch();
}

async function runSearch(ev) {
  if (ev) ev.preventDefault();
  const q = { number: $("#number") ? $("#number").value : "", from: $("#from").value, to: $("#to").value,
    line: $("#line") ? $("#line").value : "", direction: $("#direction") ? $("#direction").value : "" };
  // Number, line and direction are sealed: only the index (the key open) knows them,
  // for every call the user may see. Dates alone the server pages itself.
  const sealed = normNumber(q.number) || q.line !== "" || q.direction !== "";
  if (sealed && !keyPair) { status("#search-status", "Open the practice key to search by number, line or direction.", true); return; }
  delete document.body.dataset.results;
  shown = [];
  if (sealed) {
    const ids = index.searchIds(q);
    view = { ids, pos: 0, total: ids.length };
  } else {
    view = { q, next: null, total: 0 };
  }
  try {
    await more();
  } catch (e) { status("#search-status", `Search failed: ${e.message}`, true); return; }
  const n = view.total;
  status("#search-status", `${n} call${n === 1 ? "" : "s"} found.`);
  document.body.dataset.results = String(n);
  if (ev || q.number) {
    report("search", { number: q.number ? maskNumber(normNumber(q.number)) : undefined, from: q.from || undefined,
      to: q.to || undefined, matches: n });
  }
}

/** Every call matching ``q`` (across all pages), as list rows, for the exports. */
async function allMatching(q) {
  return (await rowsFor(index.searchIds(q))).map((r) => index.fill(r));
}

// ---- play, download, export

let player;
async function play(r) {
  if (needKey()) return;
  try {
    const v = await player.load(r.device, r.call);
    r.verdict = v.status;
    if (v.status !== "verified") {
      const ok = await ask(`Call ${r.call} FAILED verification (${v.problems.join("; ")}). It may have been altered. Play it anyway?`, "Play anyway");
      if (!ok) { report("verify_failed_play", { device: r.device, call: r.call, status: "declined" }); return; }
      report("verify_failed_play", { device: r.device, call: r.call, status: "played" });
    }
    await report("play", { device: r.device, call: r.call, status: v.status });
    await player.start(0);
  } catch (e) {
    status("#search-status", `Cannot play ${r.call}: ${e.message}`, true);
  }
}

async function download(r, b) {
  if (needKey()) return;
  b.disabled = true;
  try {
    const x = await exportCall(r.device, r.call, keyPair);
    r.verdict = x.status;
    await report("download", { device: r.device, call: r.call, status: x.status });
    save(`${r.call}.wav`, x.wav, "audio/wav");
    save(`${r.call}.json`, x.json, "application/json");
    status("#search-status", `Downloaded ${r.call} (${x.status}).`, x.status !== "verified");
  } catch (e) {
    status("#search-status", `Cannot download ${r.call}: ${e.message}`, true);
  } finally { b.disabled = false; }
}

function reportText(items, title) {
  const lines = [title, `Made ${new Date().toISOString()} in the Linetap portal by ${document.querySelector(".who span")?.textContent || ""}.`, "",
    "Each call was checked in the browser before export: the manifest's Ed25519 signature against the",
    "box's pinned identity key, the SHA-256 hash chain over every segment, and each segment's hash.", ""];
  for (const it of items) {
    lines.push(`${it.call}: ${it.status}${it.problems.length ? ` (${it.problems.join("; ")})` : ""}`);
    if (it.decision && it.decision.kind === "keep") {
      lines.push(`  Kept: ${it.decision.reason}, until ${it.decision.until}. To check its authenticity later, keep this ZIP's`,
        `  ${it.call}.json with the upstream's manifest file; verify the manifest signature with the box key ${it.signer || ""}`,
        "  and recompute the chain as in Linetap docs/formats.md (linetap verify does both).");
    }
  }
  return new TextEncoder().encode(lines.join("\n") + "\n");
}

async function exportZip(rows, label, maxBytes) {
  const parts = [];
  let files = {}, size = 0, items = [];
  const flush = () => {
    if (!items.length) return;
    files["verification-report.txt"] = [reportText(items, label), { level: 6 }];
    files["verification-report.json"] = [new TextEncoder().encode(JSON.stringify(items.map(({ call, device, status, problems, decision }) => ({ call, device, status, problems, decision })), null, 2) + "\n"), { level: 6 }];
    parts.push(zipSync(files));
    files = {}; size = 0; items = [];
  };
  let n = 0;
  for (const r of rows) {
    const x = await exportCall(r.device, r.call, keyPair);
    if (size && size + x.wav.length > maxBytes) flush();
    files[`${r.call}.wav`] = [x.wav, { level: 0 }];
    files[`${r.call}.json`] = [x.json, { level: 6 }];
    size += x.wav.length + x.json.length;
    items.push({ call: r.call, device: r.device, status: x.status, problems: x.problems, decision: r.decision, signer: x.header.signer });
    n++;
    status("#search-status", `${label}: ${n} of ${rows.length} calls…`);
  }
  flush();
  return parts;
}

async function subjectAccess() {
  if (needKey()) return;
  const q = { number: $("#number").value, from: $("#from").value, to: $("#to").value };
  if (!normNumber(q.number)) { status("#search-status", "Enter the Number the request is about.", true); return; }
  const rows = await allMatching(q);
  const masked = maskNumber(normNumber(q.number));
  const parts = await exportZip(rows, `Subject access export for ${masked}, ${q.from || "any date"} to ${q.to || "any date"}`, Infinity);
  await report("subject_access_export", { number: masked, from: q.from || undefined, to: q.to || undefined,
    calls: rows.map((r) => ({ device: r.device, call: r.call })), matches: rows.length });
  const zip = parts[0] || zipSync({ "verification-report.txt": reportText([], "Subject access export: no calls") });
  save(`subject-access-${(q.from || "all")}-${(q.to || "all")}.zip`, zip, "application/zip");
  status("#search-status", `Subject access export: ${rows.length} calls in one ZIP.`);
}

async function bulk(b) {
  if (needKey()) return;
  const rows = await allMatching({});
  const parts = await exportZip(rows, "Export of every call", Number(b.dataset.maxBytes));
  await report("bulk_export", { matches: rows.length, files: parts.length });
  parts.forEach((z, k) => save(`linetap-export-part-${String(k + 1).padStart(3, "0")}.zip`, z, "application/zip"));
  status("#search-status", `Exported ${rows.length} calls in ${parts.length} ZIP file(s).`);
}

// ---- manage

async function del(r, tr) {
  const ok = await ask(`Delete call ${r.call} (started ${r.start})? It is deleted here and on the box, and cannot be recovered.`, "Delete call", true);
  if (!ok) return;
  try {
    await post(`/api/call/${encodeURIComponent(r.device)}/${encodeURIComponent(r.call)}/delete`, { confirm: r.call, reason: ok.reason });
    index.forget(`${r.device}/${r.call}`);
    if (view && view.ids) { view.ids = view.ids.filter((id) => id !== `${r.device}/${r.call}`); view.pos--; }
    shown = shown.filter((x) => x !== r);
    tr.remove();
    status("#search-status", `Deleted ${r.call}; the box is told by signed command.`);
  } catch (e) { status("#search-status", `Not deleted: ${e.message}`, true); }
}

async function hold(r, tr) {
  const on = !r.hold;
  const ok = await ask(on ? `Set legal hold on call ${r.call}? It will not be deleted until the hold is released.` : `Release legal hold on call ${r.call}?`,
    on ? "Set legal hold" : "Release legal hold", true);
  if (!ok) return;
  try {
    await post(`/api/call/${encodeURIComponent(r.device)}/${encodeURIComponent(r.call)}/hold`, { on, reason: ok.reason });
    r.hold = on;
    tr.querySelector(".hold").textContent = on ? "on hold" : "";
    status("#search-status", `Legal hold ${on ? "set" : "released"} for ${r.call}.`);
  } catch (e) { status("#search-status", `Hold not changed: ${e.message}`, true); }
}

async function init() {
  player = new Player($("#player"), () => keyPair);
  $("#search-form").addEventListener("submit", runSearch);
  $("#more").addEventListener("click", () => more().catch((e) => status("#search-status", e.message, true)));
  if ($("#key-form")) $("#key-form").addEventListener("submit", openKeyForm);
  if ($("#sar")) $("#sar").addEventListener("click", () => subjectAccess().catch((e) => status("#search-status", e.message, true)));
  if ($("#bulk")) $("#bulk").addEventListener("click", (e) => bulk(e.target).catch((x) => status("#search-status", x.message, true)));
  view = { q: {}, next: null, total: 0 };
  await more();
  status("#search-status", `${view.total} calls.`);
  document.body.dataset.ready = "1";
}

window.addEventListener("unload", () => { keyPair = null; });
init().catch((e) => status("#search-status", e.message, true));
export { num };
