// Linetap file format (docs/formats.md) and the byte-exact JSON of `linetap export`.
// Parsing only: every cryptographic operation is WebCrypto's or @hpke/core's.

export const enc = new TextEncoder();
export const dec = new TextDecoder();

export function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

export function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function unhex(s) {
  if (typeof s !== "string" || s.length % 2 || /[^0-9a-fA-F]/.test(s)) throw new Error("not hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
  return out;
}

export const KIND_SEGMENT = 1;
export const KIND_MANIFEST = 2;
export const KIND_PERSONAL = 3;     // a call's personal data, sealed (docs/formats.md)

/** Split a segment or manifest file into preamble, header, sealed part and signature
 * (segfile.parse). Throws Error with the same words as the Python reader. */
export function parseFile(buf, signed) {
  if (buf.length < 10) throw new Error(`file too short (${buf.length} bytes)`);
  if (dec.decode(buf.subarray(0, 4)) !== "LTAP") throw new Error("bad magic: not a Linetap file");
  if (buf[4] !== 1) throw new Error(`format version ${buf[4]} is not supported`);
  const kind = buf[5];
  if (kind !== KIND_SEGMENT && kind !== KIND_MANIFEST && kind !== KIND_PERSONAL) {
    throw new Error(`unknown kind ${kind}`);
  }
  const hlen = new DataView(buf.buffer, buf.byteOffset + 6, 4).getUint32(0);
  if (10 + hlen > buf.length) throw new Error("header length runs past the end of the file");
  const preamble = buf.subarray(0, 10 + hlen);
  let header;
  try { header = JSON.parse(dec.decode(preamble.subarray(10))); } catch {
    throw new Error("header is not valid JSON");
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new Error("header is not a JSON object");
  }
  if (signed === undefined) signed = kind === KIND_MANIFEST;
  const tail = signed ? 64 : 0;
  const keyed = kind === KIND_SEGMENT && "key" in header;
  if (buf.length < preamble.length + (keyed ? 0 : 32) + 16 + tail) throw new Error("file is truncated");
  return {
    kind, header, preamble, keyed,
    sealed: buf.subarray(preamble.length, buf.length - tail),
    signature: signed ? buf.subarray(buf.length - tail) : null,
  };
}

// ---- JSON that keeps number literals, and Python's json.dumps(indent=2, sort_keys=True)

export class RawNumber {
  constructor(text) { this.text = text; }
  valueOf() { return Number(this.text); }
  toJSON() { return Number(this.text); }
}

/** JSON.parse, except numbers stay RawNumber with their literal text, so that writing
 * them back gives the same bytes Python wrote (45.0 stays 45.0, 1e-05 stays 1e-05). */
export function parseRaw(text) {
  let i = 0;
  const ws = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++; const o = {}; ws();
      if (text[i] === "}") { i++; return o; }
      for (;;) {
        ws(); const k = str(); ws();
        if (text[i++] !== ":") throw new Error("bad JSON object");
        o[k] = value(); ws();
        const d = text[i++];
        if (d === "}") return o;
        if (d !== ",") throw new Error("bad JSON object");
      }
    }
    if (c === "[") {
      i++; const a = []; ws();
      if (text[i] === "]") { i++; return a; }
      for (;;) {
        a.push(value()); ws();
        const d = text[i++];
        if (d === "]") return a;
        if (d !== ",") throw new Error("bad JSON array");
      }
    }
    if (c === '"') return str();
    for (const [w, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(w, i)) { i += w.length; return v; }
    }
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 64));
    if (!m) throw new Error("bad JSON value");
    i += m[0].length;
    return new RawNumber(m[0]);
  };
  const str = () => {
    if (text[i] !== '"') throw new Error("bad JSON string");
    let j = i + 1;
    while (text[j] !== '"') { if (text[j] === "\\") j++; j++; if (j >= text.length) throw new Error("bad JSON string"); }
    const s = JSON.parse(text.slice(i, j + 1));
    i = j + 1;
    return s;
  };
  const v = value(); ws();
  if (i !== text.length) throw new Error("trailing data after JSON");
  return v;
}

function pyString(s) {
  let out = '"';
  for (let k = 0; k < s.length; k++) {
    const c = s.charCodeAt(k);
    const ch = s[k];
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || c > 0x7e) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

/** Python's json.dumps(obj, indent=2, sort_keys=True) (ensure_ascii, ", " / ": "). */
export function pyDumps(v, ind = "") {
  if (v === null || v === undefined) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (v instanceof RawNumber) return v.text;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new Error("number is not finite");
    return Number.isInteger(v) ? String(v) : String(v);
  }
  if (typeof v === "string") return pyString(v);
  const inner = ind + "  ";
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    return "[\n" + v.map((x) => inner + pyDumps(x, inner)).join(",\n") + "\n" + ind + "]";
  }
  const keys = Object.keys(v).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (!keys.length) return "{}";
  return "{\n" + keys.map((k) => inner + pyString(k) + ": " + pyDumps(v[k], inner)).join(",\n") +
    "\n" + ind + "}";
}

export function num(v) {
  return v instanceof RawNumber ? Number(v.text) : v;
}

/** 0163*****23, the one masking rule (sync.upstream_ops.mask_number). */
export function maskNumber(n) {
  if (!n) return "";
  n = String(n);
  return n.length > 6 ? n.slice(0, 4) + "*".repeat(Math.max(0, n.length - 6)) + n.slice(-2)
    : "*".repeat(n.length);
}
