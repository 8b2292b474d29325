// The number index: built in this tab by opening every manifest the user may see,
// kept in memory only (never in storage), gone when the tab closes or the key is closed.
import { openManifest } from "./crypto.js";
import { num } from "./format.js";

const PAGE = 5000;          // manifests per bundle request (api.MAX_PAGE)
const PARALLEL = 128;       // manifests opened at once (WebCrypto runs them off-thread)

export function normNumber(s) {
  return String(s || "").replace(/[\s().-]/g, "");
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

export class CallIndex {
  constructor() {
    this.rows = new Map();         // "device/call" -> row
    this.byNumber = new Map();     // normalised number -> Set of ids
    this.unreadable = 0;
    this.opened = 0;
  }

  /** Load the call list (metadata only: what a role without the key also sees). */
  async loadList() {
    const r = await fetch("/api/calls", { credentials: "same-origin" });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error || r.status);
    this.rows.clear();
    for (const c of j.calls) this.rows.set(`${c.device}/${c.call}`, c);
    return j;
  }

  /** Open every manifest with the key and index numbers, line, direction, duration. */
  async openAll(keyPair, onProgress) {
    this.byNumber.clear();
    this.unreadable = 0;
    this.opened = 0;
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
        const row = this.rows.get(id);
        if (!body) { this.unreadable++; return; }
        this.opened++;
        if (!row) return;
        row.line = num(body.line);
        row.direction = body.direction;
        row.duration_s = num(body.duration_s);
        row.caller_number = body.caller_number || "";
        row.dialled_digits = body.dialled_digits || "";
        for (const n of [row.caller_number, row.dialled_digits]) {
          const k = normNumber(n);
          if (!k) continue;
          if (!this.byNumber.has(k)) this.byNumber.set(k, new Set());
          this.byNumber.get(k).add(id);
        }
      });
      if (onProgress) onProgress(this.opened, this.rows.size);
      if (!next) break;
    }
  }

  /** Filter: number (exact, caller or dialled), from/to (YYYY-MM-DD, inclusive), line,
   * direction. Newest first. */
  search({ number, from, to, line, direction } = {}) {
    let ids;
    const k = normNumber(number);
    if (k) ids = [...(this.byNumber.get(k) || [])];
    else ids = [...this.rows.keys()];
    const lo = from ? Date.parse(from + "T00:00:00Z") : -Infinity;
    const hi = to ? Date.parse(to + "T00:00:00Z") + 86400000 : Infinity;
    const out = [];
    for (const id of ids) {
      const r = this.rows.get(id);
      if (!r) continue;
      const t = Date.parse(r.start);
      if (!(t >= lo && t < hi)) continue;
      if (line !== undefined && line !== "" && String(r.line) !== String(line)) continue;
      if (direction && r.direction !== direction) continue;
      out.push(r);
    }
    out.sort((a, b) => (a.start < b.start ? 1 : a.start > b.start ? -1 : 0));
    return out;
  }
}
