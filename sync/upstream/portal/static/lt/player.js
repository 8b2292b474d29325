// The call player: verifies the manifest (signature, signer, chain head) before the
// first sound, then fetches, hash-checks and decodes one segment at a time just ahead
// of playback (Web Audio buffers scheduled back to back). Seek, pause, 1x/1.5x/2x.
import { checkManifest, openManifest } from "./crypto.js";
import { decodeSegment } from "./audio.js";
import { callUrl, fetchBytes } from "./call.js";
import { hex, num } from "./format.js";

const AHEAD_S = 12;     // decode this far ahead of the play head (s)

export class Player {
  constructor(root, keyPairFn, report) {
    this.root = root;
    this.key = keyPairFn;
    this.report = report;
    this.q = (sel) => root.querySelector(sel);
    this.ctx = null;
    this.sources = [];
    this.cache = new Map();   // seq -> Promise<AudioBuffer>
    this.speed = 1;
    this.pos = 0;             // seconds of call time at anchor
    this.anchor = 0;          // ctx time when pos was current
    this.playing = false;
    this.stats = { decoded: 0, peak: 0, scheduled: 0 };
    this.q("#player-toggle").addEventListener("click", () => this.toggle());
    this.q("#player-speed").addEventListener("change", (e) => this.setSpeed(Number(e.target.value)));
    this.q("#player-seek").addEventListener("change", (e) => this.seek(Number(e.target.value)));
    this.q("#player-close").addEventListener("click", () => this.close());
    this.timer = null;
  }

  /** Load a call and verify its manifest. Resolves to the verdict {status, problems}. */
  async load(device, call) {
    await this.close();
    this.device = device; this.call = call;
    const base = callUrl(device, call);
    const detail = await (await fetch(base, { credentials: "same-origin" })).json();
    if (detail.error) throw new Error(detail.error);
    const mdata = await fetchBytes(base + "/manifest");
    const [header, problems] = await checkManifest(mdata, call, device, detail.device_key);
    const body = await openManifest(mdata, this.key());
    if (!body) throw new Error("this call's manifest does not open with the key");
    const have = new Set(detail.segment_list.map((s) => s.seq));
    for (const s of header.segments || []) if (!have.has(s.seq)) problems.push(`segment ${s.seq} missing`);
    this.header = header; this.body = body; this.problems = problems;
    this.rate = num(body.rate);
    this.first = num(body.first_sample);
    this.segs = (body.segments || []).map((s) => ({ seq: num(s.seq), sha256: s.sha256,
      t0: (num(s.first_sample) - this.first) / this.rate, dur: num(s.samples) / this.rate }));
    this.length = this.segs.reduce((m, s) => Math.max(m, s.t0 + s.dur), 0);
    this.pos = 0;
    this.root.hidden = false;
    this.q("#player-title").textContent = `Call ${call} — ${body.direction}, line ${num(body.line)}, ${this.length.toFixed(1)} s`;
    const v = this.q("#player-verdict");
    v.textContent = problems.length ? `Verification failed: ${problems.join("; ")}` : "Verified: signature, signer and hash chain";
    v.className = problems.length ? "bad" : "good";
    const seek = this.q("#player-seek");
    seek.max = String(this.length); seek.value = "0";
    this.marks();
    this.show();
    return { status: problems.length ? "failed" : "verified", problems };
  }

  marks() {
    const ol = this.q("#player-marks");
    ol.replaceChildren();
    const t0 = Date.parse(this.body.start);
    const at = (iso) => (Date.parse(iso) - t0) / 1000;
    const add = (kind, a, b, label) => {
      if (!(a >= 0)) return;
      const li = document.createElement("li");
      li.className = `mark ${kind}`;
      li.dataset.kind = kind;
      li.style.setProperty("--a", String(Math.min(1, a / this.length)));
      li.style.setProperty("--w", String(Math.max(0.004, Math.min(1, ((b ?? a) - a) / this.length))));
      li.title = label;
      li.textContent = label;
      ol.append(li);
    };
    const b = this.body;
    if (b.announcement) add("announcement", at(b.announcement.start), at(b.announcement.start) + 1, "announcement");
    for (const p of b.pauses || []) add("pause", at(p.start), p.end ? at(p.end) : this.length, `pause ${((p.end ? at(p.end) : this.length) - at(p.start)).toFixed(1)} s`);
    for (const m of b.masked_dtmf || []) add("masked", at(m.start), at(m.end), "masked digits");
    for (const f of b.flashes || []) add("flash", at(f.at), at(f.at) + num(f.length_s), "hook flash");
    for (const g of b.gaps || []) add("gap", at(g.start), at(g.end), "lost audio");
  }

  segAt(t) {
    return this.segs.find((s) => t >= s.t0 && t < s.t0 + s.dur);
  }

  buffer(seg) {
    if (!this.cache.has(seg.seq)) {
      this.cache.set(seg.seq, (async () => {
        const bytes = await fetchBytes(`${callUrl(this.device, this.call)}/seg/${seg.seq}`);
        const sha = hex(await crypto.subtle.digest("SHA-256", bytes));
        if (sha !== seg.sha256) throw new Error(`segment ${seg.seq} altered`);
        const d = await decodeSegment(bytes, this.key());
        const ab = this.ctx.createBuffer(1, d.pcm.length, d.rate);
        const ch = ab.getChannelData(0);
        let peak = this.stats.peak;
        for (let k = 0; k < d.pcm.length; k++) { ch[k] = d.pcm[k] / 32768; const a = Math.abs(d.pcm[k]); if (a > peak) peak = a; }
        d.pcm.fill(0);
        this.stats.decoded += ch.length; this.stats.peak = peak;
        return ab;
      })());
    }
    return this.cache.get(seg.seq);
  }

  now() {
    return this.playing ? this.pos + (this.ctx.currentTime - this.anchor) * this.speed : this.pos;
  }

  async start(at) {
    if (!this.ctx) this.ctx = new AudioContext({ sampleRate: this.rate });
    await this.ctx.resume();
    this.stopSources();
    this.pos = Math.max(0, Math.min(at, this.length));
    this.anchor = this.ctx.currentTime + 0.05;
    this.playing = true;
    this.gen = (this.gen || 0) + 1;
    this.schedule(this.gen);
    this.q("#player-toggle").textContent = "Pause";
    this.root.dataset.state = "playing";
    this.tick();
  }

  async schedule(gen) {
    // Schedule each segment from the play head on, keeping AHEAD_S decoded ahead.
    const startSeg = this.segAt(this.pos) || this.segs.find((s) => s.t0 >= this.pos);
    if (!startSeg) { this.ended(); return; }
    for (const seg of this.segs.filter((s) => s.t0 + s.dur > this.pos)) {
      while (gen === this.gen && this.playing && seg.t0 - this.now() > AHEAD_S) {
        await new Promise((r) => setTimeout(r, 250));
      }
      if (gen !== this.gen || !this.playing) return;
      let ab;
      try { ab = await this.buffer(seg); } catch (e) {
        this.q("#player-verdict").textContent = `Playback stopped: ${e.message}`;
        this.q("#player-verdict").className = "bad";
        this.pause();
        return;
      }
      if (gen !== this.gen || !this.playing) return;
      const src = this.ctx.createBufferSource();
      src.buffer = ab;
      src.playbackRate.value = this.speed;
      src.connect(this.ctx.destination);
      const offset = Math.max(0, this.pos - seg.t0);
      const when = this.anchor + (seg.t0 + offset - this.pos) / this.speed;
      src.start(Math.max(this.ctx.currentTime, when), offset);
      this.stats.scheduled++;
      this.root.dataset.scheduled = String(this.stats.scheduled);
      this.sources.push(src);
      this.show();
    }
  }

  stopSources() {
    for (const s of this.sources) { try { s.stop(); } catch { /* already stopped */ } }
    this.sources = [];
  }

  pause() {
    if (!this.playing) return;
    this.pos = this.now();
    this.playing = false;
    this.gen++;
    this.stopSources();
    this.q("#player-toggle").textContent = "Resume";
    this.root.dataset.state = "paused";
    this.show();
  }

  toggle() {
    if (this.playing) this.pause();
    else this.start(this.pos >= this.length ? 0 : this.pos);
  }

  seek(t) { if (this.playing) this.start(t); else { this.pos = t; this.show(); } }

  setSpeed(x) {
    const t = this.now();
    this.speed = x;
    if (this.playing) this.start(t); else this.show();
  }

  ended() {
    this.playing = false;
    this.pos = this.length;
    this.root.dataset.state = "ended";
    this.q("#player-toggle").textContent = "Play again";
    this.show();
  }

  tick() {
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      if (this.playing && this.now() >= this.length) { this.ended(); clearInterval(this.timer); }
      this.show();
    }, 200);
  }

  show() {
    const t = this.now();
    this.q("#player-seek").value = String(t);
    this.q("#player-time").textContent = `${fmt(t)} / ${fmt(this.length || 0)}`;
    this.root.dataset.decoded = String(this.stats.decoded);
    this.root.dataset.peak = String(this.stats.peak);
    this.root.dataset.position = t.toFixed(2);
  }

  async close() {
    this.playing = false;
    this.gen = (this.gen || 0) + 1;
    this.stopSources();
    clearInterval(this.timer);
    this.cache.clear();
    this.stats = { decoded: 0, peak: 0, scheduled: 0 };
    if (this.ctx) { await this.ctx.close(); this.ctx = null; }
    this.root.hidden = true;
    this.root.dataset.state = "closed";
  }
}

function fmt(s) {
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}
