// Retention review: the expiring list as the appraisal queue, keep with a reason and
// a new deadline, batch approval, and the practice's deletion setting.
const $ = (s) => document.querySelector(s);
const csrf = document.querySelector('meta[name="csrf"]').content;
let rows = [];

async function post(url, body) {
  const r = await fetch(url, { method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf }, body: JSON.stringify(body) });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || `${r.status}`);
  return j;
}

function say(sel, text, bad = false) { $(sel).textContent = text; $(sel).className = bad ? "bad" : ""; }

function td(tr, text) { const c = document.createElement("td"); c.textContent = text; tr.append(c); return c; }

async function load(ev) {
  if (ev) ev.preventDefault();
  const r = await fetch(`/api/expiring?days=${encodeURIComponent($("#days").value)}`, { credentials: "same-origin" });
  const j = await r.json();
  if (!r.ok) { say("#queue-status", j.error, true); return; }
  rows = j.calls;
  const s = j.settings;
  $("#deletion").value = s.deletion; $("#remind").value = s.remind_days; $("#escalate").value = s.escalate_days;
  $("#totp").checked = s.require_totp;
  $("#retention").textContent = `Each call is kept ${j.retention_days} days from its start, here and on the box, unless held or kept.`;
  if (!$("#retention-days").value) $("#retention-days").value = j.retention_days;
  const tb = $("#queue tbody");
  tb.replaceChildren();
  for (const c of rows) {
    const tr = document.createElement("tr");
    tr.dataset.call = c.call;
    const box = document.createElement("input");
    box.type = "checkbox"; box.id = `sel-${c.call}`;
    const lab = document.createElement("label");
    lab.htmlFor = box.id; lab.className = "sr"; lab.textContent = `Select ${c.call}`;
    td(tr, "").append(box, lab);
    td(tr, c.start); td(tr, c.deadline); td(tr, c.call); td(tr, c.hold ? "on hold" : "");
    td(tr, c.decision ? `${c.decision.kind}: ${c.decision.reason}${c.decision.until ? ` until ${c.decision.until.slice(0, 10)}` : ""} (${c.decision.user})` : "—").className = "decision";
    const b = document.createElement("button");
    b.type = "button"; b.textContent = "Keep";
    b.addEventListener("click", () => keep(c));
    td(tr, "").append(b);
    tb.append(tr);
  }
  say("#queue-status", `${rows.length} call(s) reach their deadline within ${j.days} days.`);
  document.body.dataset.queue = String(rows.length);
}

function keep(c) {
  const d = $("#keep");
  $("#keep-text").textContent = `Keep call ${c.call} (started ${c.start}, deadline ${c.deadline}) past its deadline?`;
  d.addEventListener("close", async () => {
    if (d.returnValue !== "ok") return;
    const reason = $("#keep-reason").value || $("#keep-other").value.trim();
    try {
      await post(`/api/call/${encodeURIComponent(c.device)}/${encodeURIComponent(c.call)}/keep`, { reason, until: $("#keep-until").value });
      await load();
      say("#queue-status", `Kept ${c.call}: ${reason}.`);
    } catch (e) { say("#queue-status", `Not kept: ${e.message}`, true); }
  }, { once: true });
  d.showModal();
}

async function approve(ev) {
  ev.preventDefault();
  const sel = rows.filter((c) => document.getElementById(`sel-${c.call}`).checked);
  if (!sel.length) { say("#queue-status", "Select the calls to approve.", true); return; }
  try {
    const j = await post("/api/approve", { reason: $("#approve-reason").value, calls: sel.map((c) => ({ device: c.device, call: c.call })) });
    await load();
    say("#queue-status", `${j.approved} call(s) approved for deletion at their deadline.`);
  } catch (e) { say("#queue-status", `Not approved: ${e.message}`, true); }
}

async function saveSettings(ev) {
  ev.preventDefault();
  try {
    await post("/api/settings", { deletion: $("#deletion").value, remind_days: Number($("#remind").value),
      escalate_days: Number($("#escalate").value), require_totp: $("#totp").checked });
    say("#settings-status", "Settings saved.");
  } catch (e) { say("#settings-status", `Not saved: ${e.message}`, true); }
}

async function setRetention(ev) {
  ev.preventDefault();
  try {
    const j = await post("/api/retention", { days: Number($("#retention-days").value), reason: $("#retention-reason").value });
    $("#retention-reason").value = "";
    await load();
    say("#retention-status", `Retention period set to ${j.retention_days} days (was ${j.previous}); ` +
      `the box is told by signed command. ${j.past_deadline} call(s) are now past their deadline.`);
  } catch (e) { say("#retention-status", `Not set: ${e.message}`, true); }
}

$("#days-form").addEventListener("submit", load);
$("#retention-form").addEventListener("submit", setRetention);
$("#approve-form").addEventListener("submit", approve);
$("#settings").addEventListener("submit", saveSettings);
load().then(() => { document.body.dataset.ready = "1"; });
