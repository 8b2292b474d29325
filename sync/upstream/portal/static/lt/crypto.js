// Opening and verifying Linetap files in the browser.
// HPKE (RFC 9180) is @hpke/core with @hpke/chacha20poly1305; Ed25519, SHA-256 and
// AES-GCM are WebCrypto. The messages match recorder/evidence.py word for word, so an
// export made here carries the same integrity detail as `linetap export`.
import { Aes128Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from "/vendor/@hpke/core/esm/mod.js";
import { Chacha20Poly1305 } from "/vendor/@hpke/chacha20poly1305/esm/mod.js";
import { hmac, sha256 as nobleSha256 } from "/vendor/@hpke/common/esm/mod.js";
import { concat, dec, enc, hex, KIND_MANIFEST, KIND_PERSONAL, KIND_SEGMENT, parseFile, parseRaw, unhex }
  from "./format.js";

const INFO = enc.encode("linetap-v1");
const KEY_INFO = enc.encode("linetap-v1 content-key");
const suites = new Map();

// @hpke/core's HKDF calls WebCrypto HMAC seven times per open (an importKey and a sign
// each, every one a round trip to WebCrypto's thread): most of an open's time. The
// same HKDF code runs on this stand-in, whose HMAC is the noble-hashes HMAC-SHA256
// that @hpke/common ships; every other operation goes to WebCrypto unchanged.
const JS_HMAC = {
  async importKey(format, data, alg, extractable, usages) {
    if (format === "raw" && alg && alg.name === "HMAC" && alg.hash === "SHA-256") {
      return { jsHmacKey: new Uint8Array(data.slice(0)) };
    }
    return crypto.subtle.importKey(format, data, alg, extractable, usages);
  },
  async sign(alg, key, data) {
    if (key && key.jsHmacKey) return hmac(nobleSha256, key.jsHmacKey, new Uint8Array(data)).slice().buffer;
    return crypto.subtle.sign(alg, key, data);
  },
  deriveBits: (alg, key, bits) => crypto.subtle.deriveBits(alg, key, bits),
};

function suite(ids) {
  if (!ids || ids.kem !== 0x20 || ids.kdf !== 1 || (ids.aead !== 3 && ids.aead !== 1)) {
    throw new Error(`unsupported HPKE suite ${JSON.stringify(ids)}`);
  }
  if (!suites.has(ids.aead)) {
    const aead = ids.aead === 3 ? new Chacha20Poly1305() : new Aes128Gcm();
    const kem = new DhkemX25519HkdfSha256();
    const kdf = new HkdfSha256();
    kdf._api = JS_HMAC;          // _setup() keeps an _api already set
    kem._kdf._api = JS_HMAC;
    suites.set(ids.aead, { hpke: new CipherSuite({ kem, kdf, aead }), aead });
  }
  return suites.get(ids.aead);
}

/** Decrypt and authenticate a parsed file's payload (segfile.open_payload). */
export async function openPayload(p, keyPair) {
  const s = suite(p.header.suite);
  try {
    if (!p.keyed) {
      return new Uint8Array(await s.hpke.open({ recipientKey: keyPair, enc: p.sealed.subarray(0, 32),
        info: concat(INFO, p.preamble) }, p.sealed.subarray(32)));
    }
    const sk = unhex(p.header.key);
    const key = await s.hpke.open({ recipientKey: keyPair, enc: sk.subarray(0, 32), info: KEY_INFO },
      sk.subarray(32));
    const nonce = new Uint8Array(12);
    new DataView(nonce.buffer).setUint32(8, p.header.seq);
    const ctx = await s.aead.createEncryptionContext(key);
    return new Uint8Array(await ctx.open(nonce, p.sealed, concat(INFO, p.preamble)));
  } catch (e) {
    if (e instanceof Error && /suite|hex/.test(e.message)) throw e;
    throw new Error("payload does not decrypt: wrong key, or the file was altered");
  }
}

/** The sealed metadata of a manifest file, or null. ``raw``: numbers kept as their
 * literals (RawNumber), for an export that must match Python's bytes; otherwise the
 * browser's own (much faster) JSON.parse. */
export async function openManifest(bytes, keyPair, raw = false) {
  let body;
  try {
    const p = parseFile(bytes);
    const text = dec.decode(await openPayload(p, keyPair));
    body = raw ? parseRaw(text) : JSON.parse(text);
  } catch { return null; }
  return reveal(body, keyPair);
}

const PERSONAL = ["caller_number", "caller_name", "dialled_digits"];

/** A manifest body with its ``personal_sealed`` (a manifest signed by crash recovery,
 * without the numbers in memory) opened into the three fields, as
 * recorder/evidence/personal.py ``reveal`` does; the fields stay null if it does not
 * open. */
async function reveal(body, keyPair) {
  if (!body || typeof body !== "object" || !("personal_sealed" in body)) return body;
  const out = { ...body };
  delete out.personal_sealed;
  try {
    const p = parseFile(unhex(String(body.personal_sealed)), false);
    if (p.kind !== KIND_PERSONAL || p.header.call !== body.call_id) return out;
    const f = JSON.parse(dec.decode(await openPayload(p, keyPair)));
    for (const k of PERSONAL) out[k] = (f && f[k]) || null;
  } catch { /* not this practice's key, or damaged: the fields stay null */ }
  return out;
}

async function sha256(b) { return new Uint8Array(await crypto.subtle.digest("SHA-256", b)); }

export async function chainOf(device, call, shas) {
  let c = await sha256(concat(enc.encode("linetap-chain-v1\0"), enc.encode(device), new Uint8Array([0]), enc.encode(call)));
  for (let seq = 0; seq < shas.length; seq++) {
    const s = new Uint8Array(4);
    new DataView(s.buffer).setUint32(0, seq);
    c = await sha256(concat(c, s, shas[seq]));
  }
  return hex(c);
}

/** evidence.check_manifest: [header, problems] against the device's pinned key (hex). */
export async function checkManifest(data, call, device, deviceKeyHex) {
  let p;
  try { p = parseFile(data); } catch (e) { return [{}, [`manifest unreadable: ${e.message}`]]; }
  const h = p.header;
  const problems = [];
  if (p.kind !== KIND_MANIFEST) return [h, ["manifest file is not a manifest"]];
  if (h.call !== call) problems.push(`manifest belongs to call ${h.call}, not ${call}`);
  let signer;
  try {
    signer = await crypto.subtle.importKey("raw", unhex(h.signer || ""), { name: "Ed25519" }, false, ["verify"]);
  } catch { return [h, [...problems, "manifest signer key unreadable"]]; }
  const ok = await crypto.subtle.verify({ name: "Ed25519" }, signer, p.signature, concat(p.preamble, p.sealed));
  if (!ok) problems.push("manifest signature invalid");
  else if (deviceKeyHex && h.signer.toLowerCase() !== deviceKeyHex.toLowerCase()) problems.push("signed by a different device");
  if (h.device !== device) problems.push(`manifest names device ${h.device}, not ${device}`);
  const segs = h.segments || [];
  try {
    const shas = segs.map((s) => unhex(s.sha256));
    if (segs.some((s, k) => s.seq !== k)) problems.push("manifest segment list is not in order");
    if ((await chainOf(h.device || "", h.call || "", shas)) !== h.chain_head) {
      problems.push("manifest chain head does not match its segment list");
    }
  } catch { problems.push("manifest segment list is malformed"); }
  return [h, problems];
}

/** evidence.diagnose for the common cases: missing, altered, truncated, extended,
 * swapped, duplicated and unexpected segments. ``found``: Map seq -> bytes. */
export async function diagnose(expected, found) {
  const problems = [];
  const sha = new Map();
  for (const [seq, b] of found) sha.set(seq, hex(await sha256(b)));
  const bySha = new Map(expected.map((e) => [e.sha256, e.seq]));
  const exp = new Map(expected.map((e) => [e.seq, e]));
  const swaps = new Set();
  for (const e of expected) {
    const b = found.get(e.seq);
    if (!b) { problems.push(`segment ${e.seq} missing`); continue; }
    const s = sha.get(e.seq);
    if (s === e.sha256) continue;
    const other = bySha.get(s);
    if (other !== undefined && other !== e.seq) {
      if (sha.get(other) === e.sha256) {
        if (!swaps.has(e.seq)) {
          const [a, c] = [e.seq, other].sort((x, y) => x - y);
          problems.push(`segments ${a} and ${c} swapped`); swaps.add(a); swaps.add(c);
        }
      } else problems.push(`segment ${e.seq} replaced by a copy of segment ${other}`);
      continue;
    }
    if (b.length < e.size) problems.push(`segment ${e.seq} truncated (${b.length} of ${e.size} bytes)`);
    else if (b.length > e.size) problems.push(`segment ${e.seq} altered (extra bytes appended)`);
    else problems.push(`segment ${e.seq} altered`);
  }
  for (const seq of [...found.keys()].filter((k) => !exp.has(k)).sort((a, b) => a - b)) {
    const d = bySha.get(sha.get(seq));
    problems.push(d !== undefined ? `segment ${seq} duplicates segment ${d}` : `unexpected segment ${seq} not in the manifest`);
  }
  return problems;
}

export const VERIFIED_DETAIL = "all segments, chain and signature verified";

export function segmentHeader(bytes) {
  const p = parseFile(bytes, false);
  if (p.kind !== KIND_SEGMENT) throw new Error("not a segment file");
  return p;
}
