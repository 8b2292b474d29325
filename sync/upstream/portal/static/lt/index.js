// The number index: built in this tab by opening every manifest the user may see (or
// read back sealed from the server), kept in memory only (never in browser storage),
// gone when the tab closes. The displayed list is the server's, a page at a time.
import { openManifest } from "./crypto.js";
import { num } from "./format.js";

const PAGE = 5000;          // manifests per bundle request (api.MAX_PAGE)
const INDEX_INFO = new TextEncoder().encode("linetap-portal-index-v1");
const csrf = () => document.querySelector('meta[name="csrf"]').content;

// The sealed index: a key only the practice key's holder can derive (X25519 of the
// practice private key with a fixed public point nobody holds the private half of,
// through HKDF-SHA256), AES-256-GCM. The server stores it without being able to read
// or forge it; the next key open reads it instead of opening every manifest again.
async function indexKey(keyPair, site) {
  const point = new Uint8Array(await crypto.subtle.digest("SHA-256", INDEX_INFO));
  const pub = await crypto.subtle.importKey("raw", point, { name: "X25519" }, false, []);
  const dh = await crypto.subtle.deriveBits({ name: "X25519", public: pub }, keyPair.privateKey, 256);
  const ikm = await crypto.subtle.importKey("raw", dh, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt: new TextEncoder().encode(site), info: INDEX_INFO },
    ikm, { name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
}

function aad(site) { return new TextEncoder().encode(`linetap-portal-index-v1|${site}`); }
const PARALLEL = 128;       // manifests opened at once (WebCrypto runs them off-thread)

/** The one rule for comparing numbers, as the box and the upstream CLI compare them
 * (recorder/privacy.py number_key): separators dropped, +44 or 0044 to the national 0
 * ("+44 (0)1632 960123" too), any other + to 00; "" when the rest is not all digits. */
export function normNumber(s) {
  let n = String(s || "").replace(/[\s().\-/]/g, "");
  if (!/\d/.test(n)) return "";
  const uk = /^(\+44|0044)(.*)$/.exec(n);
  if (uk) n = uk[2].startsWith("0") ? uk[2] : "0" + uk[2];
  else if (n.startsWith("+")) n = "00" + n.slice(1);
  return /^\d+$/.test(n) ? n : "";
}

function* bundle(buf) {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const td = new TextDecoder();
  for (let o = 0; o < buf.length;) {
    const il = dv.getUint16(o); o += 2;
    const id = td.decode(buf.subarray(o, o + il)); o += il;
    const bl = dv.getUint32(o); o += 4;
    yield [id, buf.subarray(o, o + bl)];
    o += bl;
  }
}

async function pool(items, n, fn) {
  let k = 0;
  const run = async () => { while (k < items.length) { const i = k++; await fn(items[i]); } };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, run));
}

const LIST_PAGE = 200;      // call-list rows per page (paging.DEFAULT_PAGE)

async function getJSON(url, init) {
  const r = await fetch(url, { credentials: "same-origin", ...init });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || `${url}: ${r.status}`);
  return j;
}

/** One page of the server's call list (metadata only), newest first: {calls, next,
 * total}. ``q``: from/to dates; ``after``: the previous page's ``next``. */
export async function listPage(q, after) {
  const p = new URLSearchParams({ limit: String(LIST_PAGE) });
  if (q.from) p.set("from", q.from);
  if (q.to) p.set("to", q.to);
  if (after) p.set("after", after);
  return getJSON(`/api/calls?${p}`);
}

/** The list rows of the named calls ("device/call"), in that order, in pages. */
export async function rowsFor(ids) {
  const out = [];
  for (let k = 0; k < ids.length; k += 1000) {
    const j = await getJSON("/api/calls/select", { method: "POST",
      headers: { "content-type": "application/json", "x-csrf-token": csrf() },
      body: JSON.stringify({ calls: ids.slice(k, k + 1000) }) });
    out.push(...j.calls);
  }
  return out;
}

export class CallIndex {
  constructor() {
    this.keys = new Map();         // "device/call" -> start (ms since 1970, or NaN)
    this.byNumber = new Map();     // normalised number -> Set of ids
    this.unreadable = 0;
    this.opened = 0;
    this.entries = new Map();      // id -> [line, direction, duration_s, caller, dialled]
  }

  /** Every live call with a manifest that the user may see (ids and start times only:
   * the key open's work list, not the displayed list, which the server pages). */
  async loadKeys() {
    const j = await getJSON("/api/calls/keys");
    this.site = j.site;
    this.keys.clear();
    for (const [dev, call, start] of j.calls) this.keys.set(`${dev}/${call}`, start === null ? NaN : start * 1000);
    return j;
  }

  /** A call gone from the list (deleted here): out of every result from now on. */
  forget(id) {
    this.keys.delete(id);
    this.entries.delete(id);
  }

  /** Copy the sealed fields of a list row's call from the index into the row. */
  fill(row) {
    const e = this.entries.get(`${row.device}/${row.call}`);
    if (e) [row.line, row.direction, row.duration_s, row.caller_number, row.dialled_digits] = e;
    return row;
  }

  _add(id, e) {
    if (!this.keys.has(id)) return;
    this.entries.set(id, e);
    for (const n of [e[3], e[4]]) {
      const k = normNumber(n);
      if (!k) continue;
      if (!this.byNumber.has(k)) this.byNumber.set(k, new Set());
      this.byNumber.get(k).add(id);
    }
  }

  async _openBundle(buf, keyPair) {
    const items = [...bundle(buf)];
    await pool(items, PARALLEL, async ([id, blob]) => {
      const body = await openManifest(blob, keyPair);
      if (!body) { this.unreadable++; return; }
      this.opened++;
      this.fresh++;
      this._add(id, [num(body.line), body.direction, num(body.duration_s), body.caller_number || "",
        body.dialled_digits || ""]);
    });
    return items.length;
  }

  /** Index every call: from the sealed index where it covers a call, else by opening
   * the call's manifest; then store the updated sealed index. */
  async build(keyPair, site, onProgress) {
    this.byNumber.clear();
    this.entries = new Map();
    this.unreadable = 0;
    this.opened = 0;
    this.fresh = 0;
    this.fromCache = 0;
    const key = await indexKey(keyPair, site);
    const r = await fetch("/api/index", { credentials: "same-origin" });
    if (r.ok) {
      const b = new Uint8Array(await r.arrayBuffer());
      try {
        const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: b.subarray(0, 12), additionalData: aad(site) }, key, b.subarray(12));
        const j = JSON.parse(new TextDecoder().decode(plain));
        for (const [id, e] of Object.entries(j.entries)) {
          if (this.keys.has(id)) { this._add(id, e); this.fromCache++; this.opened++; }
        }
      } catch { this.cacheRejected = true; }   // altered, or another key's: rebuild
    }
    const missing = [...this.keys.keys()].filter((id) => !this.entries.has(id));
    if (missing.length === this.keys.size) {
      await this.openAll(keyPair, onProgress);
    } else {
      for (let k = 0; k < missing.length; k += PAGE) {
        const res = await fetch("/api/manifests/select", { method: "POST", credentials: "same-origin",
          headers: { "content-type": "application/json", "x-csrf-token": csrf() },
          body: JSON.stringify({ calls: missing.slice(k, k + PAGE) }) });
        if (!res.ok) throw new Error(`manifests: ${res.status}`);
        await this._openBundle(new Uint8Array(await res.arrayBuffer()), keyPair);
        if (onProgress) onProgress(this.opened, this.keys.size);
      }
    }
    // Only a key that opened something stores: a wrong key must not wipe the index.
    if (this.fresh) await this.store(key, site);
  }

  async store(key, site) {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const plain = new TextEncoder().encode(JSON.stringify({ v: 1, site, built: new Date().toISOString(), entries: Object.fromEntries(this.entries) }));
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: aad(site) }, key, plain));
    plain.fill(0);
    const body = new Uint8Array(12 + ct.length);
    body.set(iv); body.set(ct, 12);
    await fetch("/api/index", { method: "PUT", credentials: "same-origin",
      headers: { "content-type": "application/octet-stream", "x-csrf-token": csrf() }, body });
  }

  /** Open every manifest with the key and index numbers, line, direction, duration. */
  async openAll(keyPair, onProgress) {
    let next = null;
    const get = (offset) => fetch(`/api/manifests?offset=${offset}&limit=${PAGE}`, { credentials: "same-origin" })
      .then(async (r) => { if (!r.ok) throw new Error(`manifests: ${r.status}`); return new Uint8Array(await r.arrayBuffer()); });
    next = get(0);
    for (let offset = 0; ; offset += PAGE) {
      const buf = await next;
      const items = [...bundle(buf)];
      next = items.length === PAGE ? get(offset + PAGE) : null;   // fetch while opening
      await pool(items, PARALLEL, async ([id, blob]) => {
        const body = await openManifest(blob, keyPair);
        if (!body) { this.unreadable++; return; }
        this.opened++;
        this.fresh++;
        this._add(id, [num(body.line), body.direction, num(body.duration_s), body.caller_number || "",
          body.dialled_digits || ""]);
      });
      if (onProgress) onProgress(this.opened, this.keys.size);
      if (!next) break;
    }
  }

  /** The ids of the calls matching number (exact, caller or dialled), from/to
   * (YYYY-MM-DD, inclusive, UTC), line and direction, newest first (the server
   * list's order): every call the user may see, not one page. */
  searchIds({ number, from, to, line, direction } = {}) {
    const k = normNumber(number);
    const ids = k ? [...(this.byNumber.get(k) || [])] : [...this.entries.keys()];
    const lo = from ? Date.parse(from + "T00:00:00Z") : -Infinity;
    const hi = to ? Date.parse(to + "T00:00:00Z") + 86400000 : Infinity;
    const out = [];
    for (const id of ids) {
      const e = this.entries.get(id);
      const t = this.keys.get(id);
      if (!e || t === undefined) continue;
      if ((from || to) && !(t >= lo && t < hi)) continue;
      if (line !== undefined && line !== "" && String(e[0]) !== String(line)) continue;
      if (direction && e[1] !== direction) continue;
      out.push(id);
    }
    const start = (id) => this.keys.get(id) || 0;
    const cmp = (a, b) => (a < b ? 1 : a > b ? -1 : 0);
    out.sort((a, b) => cmp(start(a), start(b)) || cmp(a, b));
    return out;
  }
}
