// One call, as the browser sees it: fetch the sealed blobs, verify the evidence,
// decode the audio, and build the export exactly as upstream_ops.export_call does.
import { checkManifest, diagnose, openManifest, VERIFIED_DETAIL } from "./crypto.js";
import { decodeSegment, wavBytes } from "./audio.js";
import { num, pyDumps } from "./format.js";

export async function fetchBytes(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

export function callUrl(device, call) {
  return `/api/call/${encodeURIComponent(device)}/${encodeURIComponent(call)}`;
}

/** Fetch a call's detail and manifest; verify signature, signer, chain and every
 * segment's hash. Returns {detail, header, body, problems, status, blobs}. Segments are
 * fetched here too (they are needed for the hashes); audio is decoded separately. */
export async function verifyCall(device, call, keyPair, { fetchSegments = true } = {}) {
  const base = callUrl(device, call);
  const detail = await (await fetch(base, { credentials: "same-origin" })).json();
  if (detail.error) throw new Error(detail.error);
  if (!detail.has_manifest) {
    return { detail, header: {}, body: null, problems: ["manifest missing"], status: "failed", blobs: new Map() };
  }
  const mdata = await fetchBytes(base + "/manifest");
  const [header, problems] = await checkManifest(mdata, call, device, detail.device_key);
  const blobs = new Map();
  if (fetchSegments) {
    await Promise.all(detail.segment_list.map(async (s) => {
      blobs.set(s.seq, await fetchBytes(`${base}/seg/${s.seq}`));
    }));
    const expected = (header.segments || []).map((s) => ({ seq: s.seq, sha256: s.sha256, size: s.size }));
    problems.push(...await diagnose(expected, blobs));
  }
  const body = await openManifest(mdata, keyPair, true);
  return { detail, header, body, problems, status: problems.length ? "failed" : "verified", blobs };
}

/** decode_segments: place each segment at first_sample - the call's first sample. */
export async function decodeAll(blobs, keyPair, firstSample) {
  const problems = [];
  const parts = [];
  for (const seq of [...blobs.keys()].sort((a, b) => a - b)) {
    try { parts.push(await decodeSegment(blobs.get(seq), keyPair)); } catch (e) {
      problems.push(`segment ${seq} not exported: ${e.message}`);
    }
  }
  const first = firstSample ?? Math.min(...parts.map((p) => p.first_sample));
  const keep = parts.filter((p) => {
    const ok = p.first_sample >= first && p.first_sample + p.pcm.length - first <= 86400 * 16000;
    if (!ok) problems.push(`segment at sample ${p.first_sample} lies outside the call`);
    return ok;
  });
  if (!keep.length) return { pcm: new Int16Array(0), problems };
  const end = Math.max(...keep.map((p) => p.first_sample + p.pcm.length));
  const pcm = new Int16Array(end - first);
  for (const p of keep) pcm.set(p.pcm, p.first_sample - first);
  return { pcm, problems };
}

/** WAV + JSON bytes identical to `linetap upstream export` for this call. */
export async function exportCall(device, call, keyPair) {
  const v = await verifyCall(device, call, keyPair);
  if (!v.body) throw new Error(`call ${call}: manifest does not open with this key`);
  const { pcm, problems } = await decodeAll(v.blobs, keyPair, num(v.body.first_sample));
  const all = [...v.problems, ...problems];
  const status = all.length ? "failed" : "verified";
  const meta = Object.assign({}, v.body);
  const segs = meta.segments || [];
  delete meta.segments;
  meta.segments = segs.length;
  meta.segment_list = segs;
  meta.integrity = { status, detail: all.length ? all.join("; ") : VERIFIED_DETAIL };
  const json = new TextEncoder().encode(pyDumps(meta) + "\n");
  return { wav: wavBytes(pcm, num(v.body.rate)), json, status, problems: all, body: v.body, header: v.header };
}
