// Segment audio: FLAC/Opus decoded by the browser's own decoder (Web Audio
// decodeAudioData in an OfflineAudioContext at the segment's rate, so nothing is
// resampled and 16-bit FLAC comes back sample-exact), raw PCM read directly.
// And the WAV file of `linetap export` (libsndfile's 44-byte PCM_16 header).
import { segmentHeader, openPayload } from "./crypto.js";

const MAX_SEGMENT_SAMPLES = 16000 * 600;

/** Decrypt and decode one segment file: {first_sample, pcm: Int16Array, rate}. */
export async function decodeSegment(bytes, keyPair) {
  const p = segmentHeader(bytes);
  const h = p.header;
  if (!Number.isInteger(h.first_sample) || h.first_sample < 0) throw new Error(`first_sample ${h.first_sample} is not a sample index`);
  const n = h.samples;
  if (!Number.isInteger(n) || n < 1 || n > MAX_SEGMENT_SAMPLES) throw new Error(`segment length ${n} is not 1..${MAX_SEGMENT_SAMPLES}`);
  const payload = await openPayload(p, keyPair);
  const codec = h.codec || "flac";
  let pcm;
  if (codec === "pcm") {
    if (payload.length !== 2 * n) throw new Error(`pcm audio has ${payload.length} bytes, header says ${n} samples`);
    pcm = new Int16Array(n);
    const dv = new DataView(payload.buffer, payload.byteOffset, payload.length);
    for (let k = 0; k < n; k++) pcm[k] = dv.getInt16(2 * k, true);
  } else if (codec === "flac" || codec === "opus") {
    const ctx = new OfflineAudioContext(1, 1, h.rate);
    let buf;
    try {
      buf = await ctx.decodeAudioData(payload.slice().buffer);
    } catch { throw new Error(`${codec} audio does not decode`); }
    const f = buf.getChannelData(0);
    if (codec === "flac" && f.length !== n) throw new Error(`FLAC audio has ${f.length} samples, header says ${n}`);
    pcm = new Int16Array(n);
    const m = Math.min(n, f.length);
    for (let k = 0; k < m; k++) {
      const v = Math.round(f[k] * 32768);
      pcm[k] = v > 32767 ? 32767 : v < -32768 ? -32768 : v;
    }
  } else throw new Error(`unknown codec ${codec}`);
  payload.fill(0);
  return { first_sample: h.first_sample, pcm, rate: h.rate };
}

/** The 16-bit mono WAV file soundfile writes (RIFF, fmt  16, data). */
export function wavBytes(pcm, rate) {
  const data = pcm.length * 2;
  const out = new Uint8Array(44 + data);
  const dv = new DataView(out.buffer);
  const w = (o, s) => { for (let k = 0; k < 4; k++) out[o + k] = s.charCodeAt(k); };
  w(0, "RIFF"); dv.setUint32(4, 36 + data, true); w(8, "WAVE");
  w(12, "fmt "); dv.setUint32(16, 16, true); dv.setUint16(20, 1, true); dv.setUint16(22, 1, true);
  dv.setUint32(24, rate, true); dv.setUint32(28, rate * 2, true); dv.setUint16(32, 2, true);
  dv.setUint16(34, 16, true); w(36, "data"); dv.setUint32(40, data, true);
  for (let k = 0; k < pcm.length; k++) dv.setInt16(44 + 2 * k, pcm[k], true);
  return out;
}
