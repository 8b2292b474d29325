// Open the practice key in this browser: PKCS#8 PEM, plain or PBES2-encrypted
// (PBKDF2-HMAC-SHA1/SHA256/SHA512 with AES-128/256-CBC). The private key is imported
// into WebCrypto as non-extractable; the file's bytes are overwritten after import.
// Only the ASN.1 reading is ours; PBKDF2, AES-CBC and X25519 are WebCrypto's.

const OID = {
  pbes2: "1.2.840.113549.1.5.13",
  pbkdf2: "1.2.840.113549.1.5.12",
  sha1: "1.2.840.113549.2.7",
  sha256: "1.2.840.113549.2.9",
  sha512: "1.2.840.113549.2.11",
  aes128: "2.16.840.1.101.3.4.1.2",
  aes256: "2.16.840.1.101.3.4.1.42",
  x25519: "1.3.101.110",
};
const PRF = { [OID.sha1]: "SHA-1", [OID.sha256]: "SHA-256", [OID.sha512]: "SHA-512" };
const CIPHER = { [OID.aes128]: 16, [OID.aes256]: 32 };

export class KeyError extends Error {}

// Minimal DER reader: tag, length, contents.
function tlv(buf, pos) {
  if (pos + 2 > buf.length) throw new KeyError("key file is truncated");
  const tag = buf[pos];
  let len = buf[pos + 1];
  let off = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 3 || off + n > buf.length) throw new KeyError("key file is not valid DER");
    len = 0;
    for (let k = 0; k < n; k++) len = (len << 8) | buf[off + k];
    off += n;
  }
  if (off + len > buf.length) throw new KeyError("key file is truncated");
  return { tag, start: off, end: off + len, body: buf.subarray(off, off + len) };
}

function children(buf) {
  const out = [];
  for (let p = 0; p < buf.length;) { const t = tlv(buf, p); out.push(t); p = t.end; }
  return out;
}

function oid(t) {
  if (t.tag !== 0x06) throw new KeyError("key file: expected an OID");
  const b = t.body;
  const parts = [Math.floor(b[0] / 40), b[0] % 40];
  let v = 0;
  for (let k = 1; k < b.length; k++) {
    v = v * 128 + (b[k] & 0x7f);
    if (!(b[k] & 0x80)) { parts.push(v); v = 0; }
  }
  return parts.join(".");
}

function int(t) {
  if (t.tag !== 0x02) throw new KeyError("key file: expected an INTEGER");
  let v = 0;
  for (const x of t.body) v = v * 256 + x;
  return v;
}

function pem(text) {
  const m = /-----BEGIN ([A-Z ]+)-----([\s\S]*?)-----END \1-----/.exec(text);
  if (!m) throw new KeyError("not a PEM key file (no BEGIN/END lines)");
  let der;
  try {
    der = Uint8Array.from(atob(m[2].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
  } catch { throw new KeyError("the PEM body is not base64"); }
  return { label: m[1], der };
}

async function decryptPbes2(der, passphrase) {
  const top = children(tlv(der, 0).body);
  const alg = children(top[0].body);
  if (oid(alg[0]) !== OID.pbes2) throw new KeyError("encrypted key does not use PBES2");
  const [kdf, scheme] = children(alg[1].body);
  const kdfParts = children(kdf.body);
  if (oid(kdfParts[0]) !== OID.pbkdf2) throw new KeyError("encrypted key does not use PBKDF2");
  const p = children(kdfParts[1].body);
  const salt = p[0].body;
  const iterations = int(p[1]);
  let hash = "SHA-1";
  for (const extra of p.slice(2)) {
    if (extra.tag === 0x30) {
      hash = PRF[oid(children(extra.body)[0])];
      if (!hash) throw new KeyError("encrypted key uses an unsupported PBKDF2 hash");
    }
  }
  const sch = children(scheme.body);
  const keyLen = CIPHER[oid(sch[0])];
  if (!keyLen) throw new KeyError("encrypted key uses an unsupported cipher (AES-CBC needed)");
  const iv = sch[1].body;
  if (!passphrase) throw new KeyError("this key is encrypted: enter its passphrase");
  const base = await crypto.subtle.importKey("raw", new TextEncoder().encode(passphrase),
    "PBKDF2", false, ["deriveKey"]);
  const aes = await crypto.subtle.deriveKey({ name: "PBKDF2", salt, iterations, hash }, base,
    { name: "AES-CBC", length: keyLen * 8 }, false, ["decrypt"]);
  try {
    return new Uint8Array(await crypto.subtle.decrypt({ name: "AES-CBC", iv }, aes, top[1].body));
  } catch { throw new KeyError("wrong passphrase for this key"); }
}

/** The practice key pair for @hpke/core: {privateKey (non-extractable), publicKey}. */
export async function openKey(text, passphrase) {
  const { label, der } = pem(text);
  let pkcs8;
  if (label === "ENCRYPTED PRIVATE KEY") pkcs8 = await decryptPbes2(der, passphrase);
  else if (label === "PRIVATE KEY") pkcs8 = der;
  else throw new KeyError(`this is a ${label.toLowerCase()}, not the practice private key`);
  try {
    const alg = children(children(tlv(pkcs8, 0).body)[1].body);
    if (oid(alg[0]) !== OID.x25519) throw new KeyError("this is not an X25519 practice key");
  } catch (e) {
    if (e instanceof KeyError && /X25519/.test(e.message)) throw e;
    throw new KeyError("wrong passphrase, or not a PKCS#8 key");
  }
  try {
    // The public half is needed by HPKE (kem_context); WebCrypto gives it only from an
    // extractable copy, which is dropped at once.
    const tmp = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "X25519" }, true, ["deriveBits"]);
    const jwk = await crypto.subtle.exportKey("jwk", tmp);
    const pubRaw = Uint8Array.from(atob(jwk.x.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
    jwk.d = ""; // drop the private scalar's text
    const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "X25519" }, false, ["deriveBits"]);
    const publicKey = await crypto.subtle.importKey("raw", pubRaw, { name: "X25519" }, true, []);
    return { privateKey, publicKey };
  } finally {
    pkcs8.fill(0);
    der.fill(0);
  }
}
