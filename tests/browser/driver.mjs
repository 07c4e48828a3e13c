// Browser test driver: headless Debian chromium through playwright-core (no browser download).
// Started by harness.py inside an empty network namespace, next to a roomwire node.
//
//   node driver.mjs <scenario>        scenario: call | restart | stuck | pubsub | py-browser-first |
//                                     py-python-first | py-restart | py-screen-stop | bench |
//                                     sdk-app-browser-first | sdk-app-python-first
//
// Input: ROOMWIRE_BROWSER_ENV (JSON: base, ws, pk, tokens, keys, webDir, screenshot, chromium,
// offerWait: the demo page's ?offerwait= for the bench's tabs, null for the page's default).
// Talks to the harness over stdio: "CMD <name>" lines out, one reply line in.
// Last stdout line: "RESULT <json>" ({ok: true, ...} or {ok: false, error, diag}).

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";

const env = JSON.parse(process.env.ROOMWIRE_BROWSER_ENV);
const require = createRequire(path.join(env.webDir, "package.json"));
const { chromium } = require("playwright-core");

const T0 = Date.now();
const log = (...a) => console.error(`[driver +${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const timings = {};
const mark = (name) => { timings[name] = Date.now() - T0; };

// -- stdio control channel to the harness --------------------------------------------------

const stdin = readline.createInterface({ input: process.stdin });
const replies = [];
const waiters = [];
stdin.on("line", (line) => {
  const w = waiters.shift();
  if (w) w(line); else replies.push(line);
});
async function command(name) {
  process.stdout.write(`CMD ${name}\n`);
  const line = replies.length ? replies.shift() : await new Promise((r) => waiters.push(r));
  if (!line.startsWith("OK")) throw new Error(`harness: ${name} failed: ${line}`);
  return line;
}

// -- browser --------------------------------------------------------------------------------

const FLAGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
  "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
  "--auto-accept-this-tab-capture", "--auto-select-desktop-capture-source=Entire screen",
  "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
  "--disable-backgrounding-occluded-windows",
];

async function launch() {
  const dir = fs.mkdtempSync(path.join(env.workdir || os.tmpdir(), "chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: env.chromium, headless: true, args: FLAGS,
    viewport: { width: 1280, height: 760 }, timeout: 60_000,
  });
  ctx.profileDir = dir;
  return ctx;
}

function watchConsole(page, tag) {
  page.on("console", (m) => {
    if (env.debug || m.type() === "error" || m.type() === "warning") log(`${tag} console.${m.type()}:`, m.text());
  });
  page.on("pageerror", (e) => log(`${tag} pageerror:`, e.message));
}

// Poll `fn` in the page until `ok(value)`; throws with the last value on timeout.
async function until(page, what, fn, ok, timeoutMs, arg) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await page.evaluate(fn, arg);
    if (ok(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(last).slice(0, 1500)}`);
    }
    await sleep(200);
  }
}

const summary = () => window.demo.summary();
const stats = () => window.demo.stats();

function oneRemote(s) { return s.state === "joined" && s.remotes.length === 1; }

function mediaFlowing(st) {
  const ids = Object.keys(st);
  if (ids.length !== 1) return false;
  const a = st[ids[0]];
  return a.video.framesDecoded > 0 && a.audio.totalSamplesReceived > 0 && a.audio.packetsReceived > 0;
}

// Media flows *now*: decoded video frames and received audio packets both grow over ~1 s.
async function mediaGrowing(page, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let a = await until(page, `${what} (first frames)`, stats, mediaFlowing, timeoutMs);
  for (;;) {
    await sleep(1000);
    const b = await page.evaluate(stats);
    const ia = Object.keys(a)[0], ib = Object.keys(b)[0];
    if (ia === ib && mediaFlowing(b)
        && b[ib].video.framesDecoded > a[ia].video.framesDecoded
        && b[ib].audio.packetsReceived > a[ia].audio.packetsReceived) {
      return b[ib];
    }
    if (Date.now() > deadline) throw new Error(`media not growing for ${what}: ${JSON.stringify([a, b]).slice(0, 1500)}`);
    a = b;
  }
}

// Every demo tab a scenario opened, by tag: main() reports each one's watchdog rejoins.
const demoTabs = new Map();

// The demo page's stuck-connection watchdog, as the user sees it: each "rejoin" is a call that
// froze for the watchdog period before the page left and joined again.
const watchdogEvents = () => window.demo
  ? window.demo.events.filter((e) => e.kind === "rejoin" || e.kind === "rejoin-gave-up") : [];

const rejoinCount = (p) => p.evaluate(watchdogEvents).then((l) => l.length);

// What the page's first-offer hold did in a tab (app.js makePeerConnection): "offer-held" then
// "offer-answered" (the remote's offer came) or "offer-released" (it did not: we offered).
const offerNotes = (p) => p.evaluate(() => window.demo.events.filter((e) => e.kind.startsWith("offer-")).map((e) => e.kind));

async function openPeer(ctx, tag, { room, name, token, init }) {
  const page = await ctx.newPage();
  demoTabs.set(tag, page);
  watchConsole(page, tag);
  if (init) await page.addInitScript(init);
  if (env.debug) {
    // Log the signalling frames (debugging aid): track metadata and SDP/ICE signals.
    await page.addInitScript(() => {
      const W = window.WebSocket;
      const brief = (d) => {
        let f; try { f = JSON.parse(d); } catch { return null; }
        const x = f.data;
        if (!x || typeof x !== "object") return null;
        if (x.__meteredTrackMeta) return `meta ${x.__meteredTrackMeta.trackId} ${JSON.stringify(x.__meteredTrackMeta.metadata || null)}`;
        if (x.type === "rtc-description") return `sdp ${x.description?.type}`;
        if (x.type === "rtc-ice") return null;
        return null;
      };
      window.WebSocket = class extends W {
        constructor(...a) {
          super(...a);
          this.addEventListener("message", (e) => { const b = brief(e.data); if (b) console.log(Date.now() % 100000, "ws<", b); });
        }
        send(d) { const b = brief(d); if (b) console.log(Date.now() % 100000, "ws>", b); return super.send(d); }
      };
    });
  }
  const q = new URLSearchParams({ room, name, autojoin: "1", ...(env.debug ? { debug: "1" } : {}) });
  const url = `${env.base}/demo?${q}${token ? `#token=${encodeURIComponent(token)}` : ""}`;
  await page.goto(url, { waitUntil: "load", timeout: 30_000 });
  await until(page, `${tag} joined`, summary, (s) => s.state === "joined", 20_000);
  return page;
}

async function chatOnce(from, to, text, expectName) {
  await from.fill("#chat-input", text);
  await from.click("#chat-send");
  const s = await until(to, `chat "${text}"`, summary,
    (s) => s.chat.some((c) => c.text === text && !c.self), 10_000);
  const got = s.chat.find((c) => c.text === text && !c.self);
  if (expectName && got.name !== expectName) throw new Error(`chat "${text}" shown from ${got.name}, wanted ${expectName}`);
  return got;
}

// Two tabs in a call: A uses a token (sub "alice", peerMetadata {name: "Alice"}), B the
// development key (no presence metadata: its tile is labelled from track metadata).
async function setupCall(ctx, room) {
  const a = await openPeer(ctx, "A", { room, name: "Alice", token: env.tokens.alice });
  mark("a_joined");
  const b = await openPeer(ctx, "B", { room, name: "Bob" });
  mark("b_joined");
  await Promise.all([
    until(a, "A sees B", summary, oneRemote, 15_000),
    until(b, "B sees A", summary, oneRemote, 15_000),
  ]);
  mark("presence_both");
  const [sa, sb] = await Promise.all([
    until(a, "A decodes B's video and audio", stats, mediaFlowing, 25_000),
    until(b, "B decodes A's video and audio", stats, mediaFlowing, 25_000),
  ]);
  mark("media_both");
  return { a, b, statsA: sa, statsB: sb };
}

// -- scenarios -------------------------------------------------------------------------------

async function scenarioCall(ctx) {
  const room = `call-${Math.random().toString(36).slice(2, 8)}`;
  const { a, b, statsA, statsB } = await setupCall(ctx, room);

  // Presence and labels: B names A from presence metadata; A names B from track metadata.
  const labelled = (who) => (s) => s.remotes[0]?.name === who
    && s.remotes[0].streams.length === 1 && s.remotes[0].streams[0].role === "camera";
  const [pa, pb] = await Promise.all([
    until(a, "A labels B as Bob", summary, labelled("Bob"), 10_000),
    until(b, "B labels A as Alice", summary, labelled("Alice"), 10_000),
  ]);
  const earlyEvents = { a: await a.evaluate(() => window.demo.events.slice()), b: await b.evaluate(() => window.demo.events.slice()) };

  const chatAB = await chatOnce(a, b, "hello from Alice", "Alice");
  const chatBA = await chatOnce(b, a, "hi Alice, Bob here", "Bob");
  mark("chat_both");

  // Screen share from A: a second stream with metadata role "screen".
  await a.click("#screen");
  const withScreen = await until(b, "B gets A's screen stream", summary,
    (s) => s.remotes[0]?.streams.some((x) => x.role === "screen")
        && s.tiles.some((t) => t.role === "screen" && !t.local), 20_000);
  const screenStats = await until(b, "B decodes A's screen", stats, (st) => {
    const e = Object.values(st)[0];
    const vids = (e?.inbound || []).filter((i) => i.kind === "video" && i.framesDecoded > 0);
    return vids.length >= 2;
  }, 20_000);
  mark("screen_shared");
  await until(a, "A shows its screen tile", summary,
    (s) => s.tiles.some((t) => t.role === "screen" && t.local), 5_000);
  await sleep(600); // let the tiles paint a few frames
  if (env.screenshot) {
    fs.mkdirSync(path.dirname(env.screenshot), { recursive: true });
    await b.screenshot({ path: env.screenshot });
    mark("screenshot");
  }
  const tilesB = (await b.evaluate(summary)).tiles;

  await a.click("#screen");
  const afterStop = await until(b, "B drops A's screen tile", summary,
    (s) => !s.tiles.some((t) => t.role === "screen"), 15_000);
  mark("screen_stopped");

  return {
    presence: { a: pa, b: pb }, earlyEvents, stats: { a: statsA, b: statsB }, chat: [chatAB, chatBA],
    screen: { remote: withScreen.remotes[0], stats: Object.values(screenStats)[0], tilesB },
    afterStop: afterStop.remotes[0],
    offers: { a: await offerNotes(a), b: await offerNotes(b) },
  };
}


// Installed before the demo page loads: the tab sends none of its ICE candidates (what the
// other side sees of a Chromium connection wedged without candidates) until the call has been
// rescued: this tab's watchdog rejoined, or the other tab left or joined again (its watchdog
// rejoined).
function withholdIce() {
  const W = window.WebSocket;
  window.__rwWithheld = 0;
  const rescued = () => {
    const evs = window.demo?.events || [];
    return evs.some((e) => e.kind === "rejoin" || e.kind === "peer-left")
      || evs.filter((e) => e.kind === "peer-joined").length > 1;
  };
  window.WebSocket = class extends W {
    send(d) {
      if (!rescued()) {
        let f = null;
        try { f = JSON.parse(d); } catch { /* not JSON: pass it on */ }
        if (f?.data?.type === "rtc-ice") { window.__rwWithheld += 1; return; }
      }
      return super.send(d);
    }
  };
}

// The watchdog's job: a connection that never connects. Both tabs withhold their ICE
// candidates, so the first connection cannot connect; the polite tab's watchdog rejoins after
// its period, the new connection gets candidates, and the call must recover.
async function scenarioStuck(ctx) {
  const room = `stuck-${Math.random().toString(36).slice(2, 8)}`;
  const a = await openPeer(ctx, "A", { room, name: "Alice", token: env.tokens.alice, init: withholdIce });
  const b = await openPeer(ctx, "B", { room, name: "Bob", init: withholdIce });
  await Promise.all([
    until(a, "A sees B", summary, oneRemote, 15_000),
    until(b, "B sees A", summary, oneRemote, 15_000),
  ]);
  const first = { a: await a.evaluate(summary), b: await b.evaluate(summary) };
  const politeTab = first.a.peerId < first.b.peerId ? "A" : "B";
  mark("presence_both");
  // The watchdog period is 6 s; the polite tab rejoins at the first check, at most one more
  // period if the page was slow to see the peer.
  const deadline = Date.now() + 20_000;
  let rejoined = null;
  while (!rejoined) {
    for (const [tag, p] of [["A", a], ["B", b]]) {
      if ((await p.evaluate(watchdogEvents)).some((e) => e.kind === "rejoin")) rejoined = tag;
    }
    if (!rejoined && Date.now() > deadline) {
      throw new Error(`no watchdog rejoin within 20 s: ${JSON.stringify([await a.evaluate(summary), await b.evaluate(summary)]).slice(0, 1500)}`);
    }
    if (!rejoined) await sleep(200);
  }
  mark("rejoined");
  await Promise.all([
    until(a, "A sees the rejoined call", summary, (s) => oneRemote(s) && !s.banner, 20_000),
    until(b, "B sees the rejoined call", summary, (s) => oneRemote(s) && !s.banner, 20_000),
  ]);
  const [ga, gb] = await Promise.all([
    mediaGrowing(a, "A after the rejoin", 20_000),
    mediaGrowing(b, "B after the rejoin", 20_000),
  ]);
  mark("media_again");
  const chatAB = await chatOnce(a, b, "are you back?", "Alice");
  const chatBA = await chatOnce(b, a, "back, after a rejoin", "Bob");
  return {
    politeTab, rejoined, media: { a: ga, b: gb }, chat: [chatAB, chatBA],
    withheld: { a: await a.evaluate(() => window.__rwWithheld), b: await b.evaluate(() => window.__rwWithheld) },
    stuck: { a: await a.evaluate(() => window.demo.events.filter((e) => e.kind.startsWith("peer-stuck"))),
             b: await b.evaluate(() => window.demo.events.filter((e) => e.kind.startsWith("peer-stuck"))) },
    after: { a: await a.evaluate(summary), b: await b.evaluate(summary) },
  };
}

async function scenarioRestart(ctx) {
  const room = `restart-${Math.random().toString(36).slice(2, 8)}`;
  const { a, b } = await setupCall(ctx, room);
  const before = { a: await a.evaluate(summary), b: await b.evaluate(summary) };
  await command("restart");
  mark("server_restarted");
  const sawReconnecting = (p) => p.evaluate(() => window.demo.events.some((e) => e.kind === "state" && e.to === "reconnecting"));
  const bannerSeen = { a: false, b: false };
  // The banner shows while reconnecting; catch it if we are quick enough (not required).
  for (const [k, p] of [["a", a], ["b", b]]) {
    const s = await p.evaluate(summary);
    bannerSeen[k] = Boolean(s.banner && s.banner.includes("Reconnecting"));
  }
  await Promise.all([
    until(a, "A reconnecting", () => window.demo.events.some((e) => e.kind === "state" && e.to === "reconnecting"), (v) => v, 10_000),
    until(b, "B reconnecting", () => window.demo.events.some((e) => e.kind === "state" && e.to === "reconnecting"), (v) => v, 10_000),
  ]);
  await Promise.all([
    until(a, "A rejoined with B", summary, (s) => oneRemote(s) && !s.banner, 25_000),
    until(b, "B rejoined with A", summary, (s) => oneRemote(s) && !s.banner, 25_000),
  ]);
  mark("rejoined");
  const [ga, gb] = await Promise.all([
    mediaGrowing(a, "A after the restart", 30_000),
    mediaGrowing(b, "B after the restart", 30_000),
  ]);
  mark("media_again");
  const chatAB = await chatOnce(a, b, "still here?", "Alice");
  const chatBA = await chatOnce(b, a, "yes, back again", "Bob");
  mark("chat_again");
  const after = { a: await a.evaluate(summary), b: await b.evaluate(summary) };
  return {
    before, after, media: { a: ga, b: gb }, chat: [chatAB, chatBA], bannerSeen,
    offers: { a: await offerNotes(a), b: await offerNotes(b) },
    reconnecting: { a: await sawReconnecting(a), b: await sawReconnecting(b) },
    events: { a: await a.evaluate(() => window.demo.events.filter((e) => e.kind === "state")),
              b: await b.evaluate(() => window.demo.events.filter((e) => e.kind === "state")) },
  };
}

// The official SignallingClient (pub/sub only) in the page, against our server.
async function scenarioPubsub(ctx) {
  const page = await ctx.newPage();
  watchConsole(page, "P");
  await page.goto(`${env.base}/healthz`, { waitUntil: "load" });
  return await page.evaluate(async (env) => {
    const { SignallingClient } = await import("/demo/sdk.js");
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const seen = { alice: [], bob: [], carol: [] };
    const ids = {};
    const mk = (name, opts) => {
      const c = new SignallingClient({ url: env.ws, reconnect: false, ...opts });
      for (const ev of ["connected", "presence", "message", "direct", "server-error", "disconnected"]) {
        c.on(ev, (p) => {
          if (ev === "connected") ids[name] = p.peerId;
          seen[name].push({ ev, ...JSON.parse(JSON.stringify(p)) });
        });
      }
      return c;
    };
    const waitFor = async (name, pred, what) => {
      for (let i = 0; i < 100; i++) {
        const hit = seen[name].find(pred);
        if (hit) return hit;
        await sleep(50);
      }
      throw new Error(`${name} never saw ${what}: ${JSON.stringify(seen[name])}`);
    };
    const failure = async (p) => {
      try { await p; return { ok: true }; } catch (e) {
        return { ok: false, name: e?.name, code: e?.code, message: String(e?.message || e),
                 keys: Object.keys(e || {}) };
      }
    };
    const ch = "lobby/pubsub";
    const alice = mk("alice", { tokenProvider: async () => env.tokens.alice });
    const bob = mk("bob", { apiKey: env.pk });
    const carol = mk("carol", { apiKey: env.keys.restricted });
    const out = {};
    await bob.connect();
    await alice.connect();
    await carol.connect();
    out.ids = { ...ids };

    await bob.subscribe(ch);
    out.bobSnapshot = await waitFor("bob", (e) => e.ev === "presence" && e.channel === ch, "snapshot");
    await alice.subscribe(ch, { includeSenderMetadata: true });
    out.aliceSnapshot = await waitFor("alice", (e) => e.ev === "presence" && e.channel === ch, "snapshot");
    out.bobSeesAlice = await waitFor("bob", (e) => e.ev === "presence" && e.joined.some((j) => j.peerId === "alice"), "alice joined");

    await alice.publish(ch, { hello: "from alice" });
    out.bobMessage = await waitFor("bob", (e) => e.ev === "message", "a message");
    await bob.publish(ch, { hi: "from bob" });
    out.aliceMessage = await waitFor("alice", (e) => e.ev === "message", "a message");
    await bob.send("alice", { dm: "bob to alice" });
    out.aliceDirect = await waitFor("alice", (e) => e.ev === "direct", "a direct");
    await alice.send(ids.bob, { dm: "alice to bob" });
    out.bobDirect = await waitFor("bob", (e) => e.ev === "direct", "a direct");

    // Server errors: each request rejects with the server's code.
    out.errors = {
      peerNotFound: await failure(bob.send("nobody-is-here", { x: 1 })),
      notAuthorized: await failure(carol.subscribe("elsewhere/room")),
      notPermitted: await failure(carol.publish("allowed/room", { x: 1 })),
      sendNotPermitted: await failure(carol.send(ids.bob, { x: 1 })),
    };
    out.carolSubscribeAllowed = await failure(carol.subscribe("allowed/room"));
    await sleep(200);
    out.serverErrorEvents = {
      bob: seen.bob.filter((e) => e.ev === "server-error"),
      carol: seen.carol.filter((e) => e.ev === "server-error"),
    };

    await alice.unsubscribe(ch);
    out.bobSeesAliceLeave = await waitFor("bob", (e) => e.ev === "presence" && e.left.some((j) => j.peerId === "alice"), "alice left");
    await alice.close();
    await bob.close();
    await carol.close();
    out.states = { alice: alice.state, bob: bob.state, carol: carol.state };
    return out;
  }, env);
}

// -- a browser and a roomwire Python peer ----------------------------------------------------
// The Python MeteredPeer runs in pypeer.py, started by the harness in the same namespace; the
// driver sends it requests with py(op, args) ("CMD py {...}" on the control channel).

async function py(op, args = {}) {
  const line = await command(`py ${JSON.stringify({ op, ...args })}`);
  return JSON.parse(line.slice(3));
}

// Installed before the demo page loads: records what the official SDK delivers (its
// RemotePeer events, hooked the moment the demo creates its MeteredPeer) and what reaches the
// page on the wire (track metadata and SDP descriptions, both directions).
function recorder() {
  const rec = window.__rw = { sdk: [], wire: [], remotes: {} };
  const W = window.WebSocket;
  const look = (raw, dir) => {
    let f; try { f = JSON.parse(raw); } catch { return; }
    const x = f && f.data;
    if (!x || typeof x !== "object") return;
    const peer = dir === "in" ? f.from : f.to;
    if (x.__meteredTrackMeta) rec.wire.push({ t: Date.now(), dir, peer, meta: x.__meteredTrackMeta });
    else if (x.type === "rtc-description") rec.wire.push({ t: Date.now(), dir, peer, sdpType: x.description?.type, sdp: x.description?.sdp });
    else if (x.type === "rtc-ice") rec.wire.push({ t: Date.now(), dir, peer, ice: x.candidate ? `${x.candidate.candidate} ufrag=${x.candidate.usernameFragment}` : null });
  };
  window.WebSocket = class extends W {
    constructor(...a) { super(...a); this.addEventListener("message", (e) => look(e.data, "in")); }
    send(d) { look(d, "out"); return super.send(d); }
  };
  const hook = (peer) => {
    const push = (ev, d) => rec.sdk.push({ t: Date.now(), ev, ...d });
    peer.on("data", (e) => push("data", { peer: e.senderPeerId, kind: e.kind, data: e.data }));
    peer.on("peer-joined", ({ peer: r }) => {
      rec.remotes[r.id] = r;
      push("peer-joined", { peer: r.id });
      r.on("track", (e) => push("track", { peer: r.id, kind: e.track.kind, trackId: e.track.id,
        streams: (e.streams || []).map((x) => x.id), metadata: e.metadata ?? null }));
      r.on("stream-added", (e) => push("stream-added", { peer: r.id, streamId: e.stream.id, metadata: e.metadata ?? null }));
      r.on("stream-removed", (e) => push("stream-removed", { peer: r.id, streamId: e.stream.id }));
      r.on("negotiation-error", (e) => push("negotiation-error", { peer: r.id,
        error: String(e?.error?.message || e?.error || e?.message || JSON.stringify(e)) }));
      r.on("connection-reset", () => push("connection-reset", { peer: r.id }));
    });
  };
  let demo;
  Object.defineProperty(window, "demo", {
    configurable: true, get: () => demo,
    set: (v) => {
      demo = v;
      let p = v && v.peer;
      if (v) Object.defineProperty(v, "peer", { configurable: true, enumerable: true,
        get: () => p, set: (x) => { p = x; if (x) hook(x); } });
    },
  });
}

const consoleErrors = [];

// A demo tab with the recorder. join: "auto" (autojoin), "manual" (the caller joins).
async function openTab(ctx, tag, { room, name, token, join = "auto" }) {
  const page = await ctx.newPage();
  demoTabs.set(tag, page);
  watchConsole(page, tag);
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`${tag}: ${m.text()}`); });
  await page.addInitScript(recorder);
  const q = new URLSearchParams({ room, name, ...(join === "auto" ? { autojoin: "1" } : {}),
                                  ...(env.offerWait != null ? { offerwait: String(env.offerWait) } : {}),
                                  ...(env.debug ? { debug: "1" } : {}) });
  const url = `${env.base}/demo?${q}${token ? `#token=${encodeURIComponent(token)}` : ""}`;
  await page.goto(url, { waitUntil: "load", timeout: 30_000 });
  if (join === "auto") {
    await until(page, `${tag} joined`, summary, (s) => s.state === "joined", 20_000);
  } else {
    await until(page, `${tag} ready`, () => window.demo.ready, (v) => v === "ok", 20_000);
  }
  return page;
}

const rec = () => window.__rw ? { sdk: window.__rw.sdk, wire: window.__rw.wire } : null;
const sdkEvents = (page, pred) => page.evaluate(() => window.__rw.sdk).then((l) => l.filter(pred));

async function untilSdk(page, what, pred, count = 1, timeoutMs = 20_000) {
  return await until(page, what, () => window.__rw.sdk, (l) => l.filter(pred).length >= count, timeoutMs)
    .then((l) => l.filter(pred));
}

// Python frames: retries inside pypeer; fails loudly when fewer than `want` arrive.
async function pyFrames(what, args) {
  const r = await py("frames", { want: 10, timeout: 25, ...args });
  if (r.frames < (args.want ?? 10)) throw new Error(`Python: ${what}: ${JSON.stringify(r).slice(0, 1500)}`);
  return r;
}

// Browser tab B and the Python peer in one room; `first` says who joins first.
async function setupPyCall(ctx, room, { first, token }) {
  await py("start", { width: 320, height: 240, fps: 30,
                      metadata: { role: "camera", label: "Py cam", name: "Py" } });
  let b;
  if (first === "browser") {
    b = await openTab(ctx, "B", { room, name: "Browser", token });
    mark("browser_joined");
    await py("join", { room });
    mark("py_joined");
  } else {
    await py("join", { room });
    mark("py_joined");
    b = await openTab(ctx, "B", { room, name: "Browser", token });
    mark("browser_joined");
  }
  const bs = await until(b, "B sees the Python peer", summary, oneRemote, 15_000);
  const remote = await py("remote", { id: bs.peerId, timeout: 15 });
  mark("presence_both");
  const statsB = await until(b, "B decodes the Python peer's video and audio", stats, mediaFlowing, 30_000);
  const pyVideo = await pyFrames("decode the browser's camera video", { remote: bs.peerId, kind: "video", role: "camera" });
  const pyAudio = await pyFrames("decode the browser's microphone", { remote: bs.peerId, kind: "audio" });
  mark("media_both");
  return { b, browserId: bs.peerId, remote, statsB: Object.values(statsB)[0], pyVideo, pyAudio };
}

// send/send_to both ways (the Python peer is "py").
async function pyData(b, browserId, tag) {
  await b.evaluate((t) => window.demo.sendChat(`broadcast from the browser ${t}`), tag);
  await b.evaluate((t) => window.demo.peer.sendTo("py", { type: "dm", text: `direct from the browser ${t}` }), tag);
  await py("send", { data: { type: "chat", text: `broadcast from Python ${tag}`, name: "Py" } });
  await py("send_to", { to: browserId, data: { type: "dm", text: `direct from Python ${tag}` } });
  const fromBrowser = await py("data", { want: 2, timeout: 10, contains: tag });
  const toBrowser = await untilSdk(b, "B gets Python's data", (e) => e.ev === "data" && JSON.stringify(e.data).includes(tag), 2, 10_000);
  return { toPython: fromBrowser, toBrowser };
}

async function pyMediaScenario(ctx, first, token) {
  const room = `py-${first}-${Math.random().toString(36).slice(2, 8)}`;
  const call = await setupPyCall(ctx, room, { first, token });
  const { b, browserId } = call;
  const data = await pyData(b, browserId, "#1");
  mark("data_both");

  // Second streams, both ways: Python adds a "screen" stream (a renegotiation), and the
  // browser shares its screen (a second stream with role "screen", from the demo page).
  const pyScreen = await py("add_stream", { name: "screen", metadata: { role: "screen", label: "Py screen" } });
  const screenAdded = await untilSdk(b, "B's SDK reports the Python screen stream",
    (e) => e.ev === "stream-added" && e.streamId === pyScreen.streamId, 1, 20_000);
  await until(b, "B decodes two videos from Python", stats, (st) => {
    const e = Object.values(st)[0];
    return (e?.inbound || []).filter((i) => i.kind === "video" && i.framesDecoded > 0).length >= 2;
  }, 20_000);
  await b.click("#screen");
  const pyGotScreen = await pyFrames("decode the browser's screen share", { remote: browserId, kind: "video", role: "screen", want: 5 });
  mark("second_streams");

  const pyEvents = await py("events");
  return {
    browserId, first, remote: call.remote, statsB: call.statsB, pyVideo: call.pyVideo, pyAudio: call.pyAudio,
    data, pyScreen, screenAdded, pyGotScreen, pyEvents,
    recB: await b.evaluate(rec), summaryB: await b.evaluate(summary),
    statsAfter: Object.values(await b.evaluate(stats))[0],
  };
}

// 1 and 3: the browser joins first; it is "alice", polite towards "py": Python offers.
const scenarioPyBrowserFirst = (ctx) => pyMediaScenario(ctx, "browser", env.tokens.alice);
// 2 and 3: the Python peer joins first; the browser is "zoe", impolite: the browser offers.
const scenarioPyPythonFirst = (ctx) => pyMediaScenario(ctx, "python", env.tokens.zoe);

// 7: the Python peer's camera carries no metadata: roomwire sends a metadata clear with kind
// and streamId for each of its tracks, which the JS SDK must take as a no-op (no data event,
// no label) while media and data flow both ways.
async function scenarioPyUnlabelled(ctx) {
  const room = `py-unlabelled-${Math.random().toString(36).slice(2, 8)}`;
  const started = await py("start", { width: 320, height: 240, fps: 30, metadata: null });
  await py("join", { room });
  const b = await openTab(ctx, "B", { room, name: "Browser", token: env.tokens.zoe });
  const bs = await until(b, "B sees the Python peer", summary, oneRemote, 15_000);
  const remote = await py("remote", { id: bs.peerId, timeout: 15 });
  const statsB = await until(b, "B decodes the Python peer's video and audio", stats, mediaFlowing, 30_000);
  const pyVideo = await pyFrames("decode the browser's camera video", { remote: bs.peerId, kind: "video", role: "camera" });
  const data = await pyData(b, bs.peerId, "#u");
  return {
    browserId: bs.peerId, remote, started, statsB: Object.values(statsB)[0], pyVideo, data,
    pyEvents: await py("events"), recB: await b.evaluate(rec),
  };
}

// 4: the server restarts (same port and data dir): both sides recover, media flows again.
async function scenarioPyRestart(ctx) {
  const room = `py-restart-${Math.random().toString(36).slice(2, 8)}`;
  const { b, browserId } = await setupPyCall(ctx, room, { first: "browser", token: env.tokens.alice });
  await command("restart");
  mark("server_restarted");
  await until(b, "B reconnecting", () => window.demo.events.some((e) => e.kind === "state" && e.to === "reconnecting"), (v) => v, 15_000);
  mark("b_reconnecting");
  await until(b, "B rejoined with the Python peer", summary, (s) => oneRemote(s) && !s.banner, 30_000);
  mark("b_rejoined");
  await py("wait_state", { state: "joined", timeout: 40 });
  mark("py_rejoined");
  const pyState = await py("wait_state", { state: "joined", remoteState: "connected", timeout: 40 });
  mark("rejoined");
  const mediaB = await mediaGrowing(b, "B after the restart", 30_000);
  const pyVideo = await pyFrames("decode the browser's video after the restart", { remote: browserId, kind: "video", fresh: true, timeout: 30 });
  const pyAudio = await pyFrames("decode the browser's audio after the restart", { remote: browserId, kind: "audio", fresh: true, timeout: 20 });
  mark("media_again");
  const data = await pyData(b, browserId, "#after-restart");
  mark("data_again");
  return {
    browserId, pyState, mediaB, pyVideo, pyAudio, data,
    statesB: await b.evaluate(() => window.demo.events.filter((e) => e.kind === "state").map((e) => e.to)),
    summaryB: await b.evaluate(summary), pyEvents: await py("events"),
  };
}

// 5: the browser stops its screen-share transceiver (transceiver.stop(), not the SDK's
// removeStream) and renegotiates with the Python peer: its offer rejects that m-line. Then it
// shares again. Chromium must accept the Python answers, and the second share must decode.
async function scenarioPyScreenStop(ctx) {
  const room = `py-stop-${Math.random().toString(36).slice(2, 8)}`;
  const { b, browserId } = await setupPyCall(ctx, room, { first: "browser", token: env.tokens.alice });
  await b.click("#screen");
  const first = await pyFrames("decode the first screen share", { remote: browserId, kind: "video", role: "screen", want: 5 });
  mark("shared");

  const stopped = await b.evaluate(async () => {
    const r = window.__rw.remotes.py;
    const pc = r.pc;
    const video = document.querySelector(".tile.local.screen video");
    const track = video.srcObject.getVideoTracks()[0];
    const t = pc.getTransceivers().find((x) => x.sender.track === track);
    if (!t) return { error: "no transceiver sends the screen track" };
    const mid = t.mid;
    t.stop(); // fires negotiationneeded: the SDK offers, with this m-line rejected (port 0)
    return { mid, transceivers: pc.getTransceivers().length };
  });
  if (stopped.error) throw new Error(stopped.error);
  // The renegotiation completes: back to stable, the stopped transceiver gone.
  const settled = await until(b, "B's renegotiation after stop() completes", (mid) => {
    const pc = window.__rw.remotes.py.pc;
    const answers = window.__rw.wire.filter((w) => w.sdpType === "answer" && w.dir === "in");
    const last = answers[answers.length - 1];
    return { state: pc.signalingState, mids: pc.getTransceivers().map((t) => t.mid),
             stoppedGone: !pc.getTransceivers().some((t) => t.mid === mid),
             answerRejects: Boolean(last && last.sdp.includes(`a=mid:${mid}`)
               && !/a=group:BUNDLE[^\r\n]*/.exec(last.sdp)[0].split(" ").includes(mid)) };
  }, (v) => v.state === "stable" && v.stoppedGone && v.answerRejects, 20_000, stopped.mid);
  const offerCheck = await b.evaluate(async () => {
    try { await window.__rw.remotes.py.pc.createOffer(); return "ok"; } catch (e) { return String(e); }
  });
  const removedOnPython = await py("events").then((e) => e.remotes[browserId].filter((x) => x.ev === "stream-removed"));
  mark("stopped");

  // The app's own cleanup (removeStream on an already stopped sender), then share again.
  await b.evaluate(() => window.demo.toggleScreen());
  await until(b, "B's screen tile gone", summary, (s) => !s.tiles.some((t) => t.role === "screen" && t.local), 5_000);
  await b.evaluate(() => window.demo.toggleScreen());
  await until(b, "B shares again", summary, (s) => s.tiles.some((t) => t.role === "screen" && t.local), 10_000);
  const secondStreamId = await b.evaluate(() => document.querySelector(".tile.local.screen video").srcObject.id);
  const second = await pyFrames("decode the second screen share", { remote: browserId, kind: "video", role: "screen", streamId: secondStreamId, want: 10, timeout: 30 });
  mark("shared_again");
  const camStill = await pyFrames("still decode the browser's camera", { remote: browserId, kind: "video", role: "camera", fresh: true, want: 5 });
  const mediaB = await mediaGrowing(b, "B still decodes Python", 15_000);
  const final = await b.evaluate(() => ({ state: window.__rw.remotes.py.pc.signalingState,
    conn: window.__rw.remotes.py.pc.connectionState }));
  return {
    browserId, first, stopped, settled, offerCheck, removedOnPython, secondStreamId, second, camStill,
    mediaB, final, recB: await b.evaluate(rec), pyEvents: await py("events"),
    consoleErrors: consoleErrors.slice(),
  };
}

// -- benchmark: a browser's join to the first decoded frame on the other side -----------------

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * (s.length - 1) + 0.5))] : null;
}

// In the page: wall time (ms) of the first decoded video frame from any remote.
async function firstDecoded(timeoutMs) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const st = await window.demo.stats();
    if (Object.values(st).some((e) => e.video.framesDecoded > 0)) return Date.now();
    await new Promise((r) => setTimeout(r, 10));
  }
  return null;
}

// Debugging aid (ROOMWIRE_BROWSER_DEBUG=1): a tab's signalling trace and peer connections.
function pcDump() {
  const cut = (sdp) => sdp && sdp.split("\r\n").filter((l) => /^a=(ice-ufrag|candidate|setup)/.test(l));
  return {
    wire: window.__rw.wire.map((w) => ({ ...w, sdp: cut(w.sdp) })),
    sdk: window.__rw.sdk,
    pcs: Object.fromEntries(Object.entries(window.__rw.remotes).map(([k, r]) => [k, r.pc && {
      sig: r.pc.signalingState, ice: r.pc.iceConnectionState, gath: r.pc.iceGatheringState,
      conn: r.pc.connectionState, local: cut(r.pc.localDescription?.sdp), remote: cut(r.pc.remoteDescription?.sdp) }])),
  };
}

async function scenarioBench(ctx) {
  const runs = Number(process.env.ROOMWIRE_BENCH_RUNS || 10);
  const which = (process.env.ROOMWIRE_BENCH_PAIRS || "bb,bp").split(",");
  const out = { runs, bb: [], bp: [], failures: { bb: 0, bp: 0 } };
  for (let i = 0; i < runs && which.includes("bb"); i++) {
    const room = `bench-bb-${i}-${Math.random().toString(36).slice(2, 6)}`;
    const a = await openTab(ctx, "A", { room, name: "A" });
    const b = await openTab(ctx, "B", { room, name: "B", join: "manual" });
    const t0 = Date.now();
    await b.evaluate(() => { window.demo.join(); });
    const [ta, tb] = await Promise.all([
      a.evaluate(firstDecoded, 30_000),
      b.evaluate(firstDecoded, 30_000),
    ]);
    if (ta == null || tb == null) {
      // Counted, not fatal: two tabs of the JS SDK sometimes never get media (see the report).
      out.failures.bb += 1;
      log(`bench bb ${i}: no decoded frame within 30 s (other ${ta}, joiner ${tb})`);
      if (env.debug) {
        log(`bench bb ${i} A dump: ${JSON.stringify(await a.evaluate(pcDump))}`);
        log(`bench bb ${i} B dump: ${JSON.stringify(await b.evaluate(pcDump))}`);
      }
      await a.close(); await b.close();
      continue;
    }
    const rj = (await rejoinCount(a)) + (await rejoinCount(b));
    const offers = [...await offerNotes(a), ...await offerNotes(b)];
    out.bb.push({ other: ta - t0, joiner: tb - t0, rejoins: rj, offers });
    log(`bench bb ${i}: other side ${ta - t0} ms, joiner ${tb - t0} ms, rejoins ${rj}, ${offers.join(" ") || "no held offer"}`);
    await a.close(); await b.close();
  }
  for (let i = 0; i < runs && which.includes("bp"); i++) {
    const room = `bench-bp-${i}-${Math.random().toString(36).slice(2, 6)}`;
    await py("start", { width: 320, height: 240, fps: 30 });
    await py("join", { room });
    const b = await openTab(ctx, "B", { room, name: "B", join: "manual" });
    const t0 = Date.now();
    await b.evaluate(() => { window.demo.join(); });
    const tb = await b.evaluate(firstDecoded, 30_000);
    const bid = await b.evaluate(() => window.demo.peer.peerId);
    const tp = await py("first_frame", { remote: bid, kind: "video", timeout: 30 }).catch(() => null);
    if (tb == null || tp == null) {
      out.failures.bp += 1;
      log(`bench bp ${i}: no decoded frame within 30 s (python ${tp}, browser ${tb})`);
      if (env.debug) log(`bench bp ${i} browser dump: ${JSON.stringify(await b.evaluate(pcDump))}`);
      await b.close(); await py("close");
      continue;
    }
    const rj = await rejoinCount(b);
    const offers = await offerNotes(b);
    out.bp.push({ other: Math.round(tp - t0), joiner: tb - t0, rejoins: rj, offers });
    log(`bench bp ${i}: Python ${Math.round(tp - t0)} ms, browser ${tb - t0} ms, rejoins ${rj}, ${offers.join(" ") || "no held offer"}`);
    await b.close();
    await py("close");
  }
  out.summary = {};
  for (const k of ["bb", "bp"]) {
    if (!out[k].length) continue;
    const o = out[k].map((r) => r.other), j = out[k].map((r) => r.joiner);
    out.summary[k] = { n: o.length, failed: out.failures[k], otherP50: pct(o, 0.5), otherMin: Math.min(...o), otherMax: Math.max(...o),
                       joinerP50: pct(j, 0.5), rejoinedRuns: out[k].filter((r) => r.rejoins > 0).length };
  }
  return out;
}

// -- a plain app on the official JS SDK and a roomwire Python peer ---------------------------
// web/test-pages/sdk-app.html: no demo-page workaround; what its SDK events carry is what any
// app on @metered-ca/realtime gets.

// The app's own origin (as a real app is served apart from the signalling server): a static
// server on 127.0.0.1 with the page and the SDK's ESM bundle from web/node_modules.
let appOrigin = null;
async function appServer() {
  if (appOrigin) return appOrigin;
  const http = await import("node:http");
  const files = {
    "/sdk-app.html": [new URL("../../web/test-pages/sdk-app.html", import.meta.url), "text/html"],
    "/sdk.js": [path.join(env.webDir, "node_modules", "@metered-ca", "realtime", "dist", "index.mjs"), "text/javascript"],
  };
  const srv = http.createServer((req, res) => {
    const f = files[new URL(req.url, "http://x").pathname];
    if (!f) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { "content-type": f[1], "cache-control": "no-store" });
    res.end(fs.readFileSync(f[0]));
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  srv.unref();
  appOrigin = `http://127.0.0.1:${srv.address().port}`;
  return appOrigin;
}

// Installed before the app loads (test instrumentation, not part of the app): the SDP and
// track metadata it sends and receives, in order, in window.__wire.
function wireLog() {
  const wire = window.__wire = [];
  const W = window.WebSocket;
  const brief = (sdp) => sdp.split("\r\n").filter((l) => /^(m=|a=mid|a=msid|a=sendrecv|a=sendonly|a=recvonly|a=inactive|a=ice-ufrag|a=extmap)/.test(l));
  const look = (raw, dir) => {
    let f; try { f = JSON.parse(raw); } catch { return; }
    const x = f && f.data;
    if (!x || typeof x !== "object") return;
    if (x.__meteredTrackMeta) wire.push({ t: Date.now(), dir, meta: x.__meteredTrackMeta });
    else if (x.type === "rtc-description") wire.push({ t: Date.now(), dir, sdpType: x.description?.type, lines: brief(x.description?.sdp || "") });
  };
  window.WebSocket = class extends W {
    constructor(...a) { super(...a); this.addEventListener("message", (e) => look(e.data, "in")); }
    send(d) { look(d, "out"); return super.send(d); }
  };
}

async function openSdkApp(ctx, tag, { room, token, cam = true }) {
  const page = await ctx.newPage();
  watchConsole(page, tag);
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`${tag}: ${m.text()}`); });
  await page.addInitScript(wireLog);
  const q = new URLSearchParams({ room, cam: cam ? "1" : "0", server: env.ws });
  await page.goto(`${await appServer()}/sdk-app.html?${q}#token=${encodeURIComponent(token)}`,
    { waitUntil: "load", timeout: 30_000 });
  await until(page, `${tag} ready`, () => window.app?.ready, (v) => v === true, 20_000);
  return page;
}

const appEvents = () => window.app.events;
const appStats = () => window.app.stats();

// Decoded video frames from `peer` growing over ~1 s on the page (what the user sees moves).
async function appVideoGrowing(page, peer, what, timeoutMs = 20_000) {
  const frames = (st) => (st[peer] || []).filter((i) => i.kind === "video").reduce((n, i) => n + i.framesDecoded, 0);
  const first = await until(page, what, appStats, (st) => frames(st) > 0, timeoutMs);
  const deadline = Date.now() + timeoutMs;
  for (let before = frames(first); ;) {
    await sleep(1000);
    const now = frames(await page.evaluate(appStats));
    if (now > before) return now;
    if (Date.now() > deadline) throw new Error(`${what}: decoded video not growing (${before} -> ${now})`);
    before = now;
  }
}

// Every video track of `events` (SDK track events) decoded on the page (inbound-rtp stats by
// track id): each stream the user should see moves, not only one of them.
async function appDecodesEach(page, peer, events, what, timeoutMs = 20_000) {
  const ids = events.filter((e) => e.ev === "track" && e.kind === "video").map((e) => e.trackId);
  await until(page, what, appStats, (st) => ids.every((id) => (st[peer] || []).some(
    (i) => i.trackIdentifier === id && i.framesDecoded > 0)), timeoutMs);
  return ids;
}

// The SDK's track and stream-added events for the Python peer after `since`, once every stream
// of `want` ({streamId: [kinds]}) had a track event per kind and a stream-added event.
async function sdkLabels(page, since, what, want) {
  const mine = (l) => l.filter((e) => e.peer === "py" && e.t >= since
                                      && (e.ev === "track" || e.ev === "stream-added"));
  const l = await until(page, what, appEvents, (evs) => {
    const m = mine(evs);
    return Object.entries(want).every(([sid, kinds]) =>
      kinds.every((k) => m.some((e) => e.ev === "track" && e.kind === k && e.streams.includes(sid)))
      && m.some((e) => e.ev === "stream-added" && e.streamId === sid));
  }, 30_000);
  return mine(l);
}

async function sdkAppScenario(ctx, first) {
  try {
    return await sdkAppRun(ctx, first);
  } catch (err) {
    // The whole record, for a human (the RESULT's diag is cut short).
    const file = path.join(process.env.ROOMWIRE_BROWSER_DIAG_DIR || env.workdir || os.tmpdir(), `${first}-first-sdk-app-diag.json`);
    const pages = [];
    for (const p of ctx.pages()) pages.push(await p.evaluate(() => window.app ? { events: window.app.events, wire: window.__wire } : null).catch(String));
    fs.writeFileSync(file, JSON.stringify({ pages, py: await py("events").catch(String) }, null, 1));
    log(`sdk-app diagnostics in ${file}`);
    throw err;
  }
}

async function sdkAppRun(ctx, first) {
  const room = `sdkapp-${first}-${Math.random().toString(36).slice(2, 8)}`;
  const token = first === "browser" ? env.tokens.alice : env.tokens.zoe;
  const started = await py("start", { width: 320, height: 240, fps: 30,
                                      metadata: { role: "camera", label: "Py cam", name: "Py" } });
  const camWant = { [started.streams.camera]: ["audio", "video"] };
  const page = await openSdkApp(ctx, "S", { room, token });
  let browserId;
  const t0 = Date.now();
  if (first === "browser") {
    browserId = await page.evaluate(() => window.app.join());
    await py("join", { room });
  } else {
    await py("join", { room });
    browserId = await page.evaluate(() => window.app.join());
  }
  mark("both_joined");
  const initial = await sdkLabels(page, t0, "the SDK's track and stream-added events for the Python peer", camWant);
  const framesB = await appVideoGrowing(page, "py", "the page decodes the Python peer's video");
  const pyVideo = await pyFrames("decode the browser's camera video", { remote: browserId, kind: "video", role: "camera" });
  const pyAudio = await pyFrames("decode the browser's microphone", { remote: browserId, kind: "audio" });
  mark("media_both");

  // A second stream of the Python peer, added on the live connection: its events carry its
  // own label.
  const screenAt = Date.now();
  const screen = await py("add_stream", { name: "screen", metadata: { role: "screen", label: "Py screen" } });
  const screenWant = { [screen.streamId]: ["video"] };
  const screenEvents = await sdkLabels(page, screenAt, "the SDK's events for the Python peer's screen", screenWant);
  const screenDecoded = await appDecodesEach(page, "py", screenEvents, "the page decodes the Python peer's screen");
  mark("screen");

  // A reconnect of the Python peer: its socket is cut; it rejoins, the page sees it leave and
  // join again (a new RemotePeer, a new connection) and gets fresh track events.
  const dropped = await py("drop");
  await py("wait_state", { state: "joined", remoteState: "connected", timeout: 30 });
  const again = await sdkLabels(page, dropped.droppedAt, "the SDK's events for the Python peer after its reconnect",
                                { ...camWant, ...screenWant });
  const framesAgain = await appVideoGrowing(page, "py", "the page decodes the Python peer's video after its reconnect");
  const decodedAgain = await appDecodesEach(page, "py", again, "the page decodes each video of the Python peer after its reconnect");
  const pyVideoAgain = await pyFrames("decode the browser's camera after the reconnect", { remote: browserId, kind: "video", role: "camera", fresh: true });
  mark("reconnected");
  return {
    first, browserId, streams: { camera: started.streams.camera, screen: screen.streamId },
    initial, screenEvents, again, framesB, screenDecoded, decodedAgain, framesAgain, pyVideo, pyAudio, pyVideoAgain,
    appEvents: await page.evaluate(appEvents), pyEvents: await py("events"), consoleErrors,
  };
}

// Recording (issue 15): "py" records the room with a RoomRecorder while two Python peers and
// the browser tab (camera and microphone) send; the browser leaves mid-recording.
async function scenarioPyRecord(ctx) {
  const room = `py-rec-${Math.random().toString(36).slice(2, 8)}`;
  const started = await py("record_start", { room, out: `${env.workdir}/rec`, senders: 2 });
  const b = await openTab(ctx, "B", { room, name: "Browser", token: env.tokens.alice });
  mark("browser_joined");
  const browserFile = await py("record_wait", { peer: "alice", seconds: 10, timeout: 60 });
  mark("browser_recorded");
  const rejoinsB = await b.evaluate(watchdogEvents);
  const leftAt = Date.now();
  await b.close();
  const browserFinal = await py("record_wait", { peer: "alice", final: true, timeout: 30 });
  for (const id of started.senders) await py("record_wait", { peer: id, seconds: 12, timeout: 60 });
  const stopped = await py("record_stop");
  mark("stopped");
  return { started, browserFile, browserFinal, leftAt, rejoinsB, ...stopped };
}

// -- main ------------------------------------------------------------------------------------

const scenarios = {
  call: scenarioCall, restart: scenarioRestart, stuck: scenarioStuck, pubsub: scenarioPubsub,
  "py-browser-first": scenarioPyBrowserFirst, "py-python-first": scenarioPyPythonFirst,
  "py-restart": scenarioPyRestart, "py-screen-stop": scenarioPyScreenStop, bench: scenarioBench,
  "sdk-app-browser-first": (ctx) => sdkAppScenario(ctx, "browser"),
  "sdk-app-python-first": (ctx) => sdkAppScenario(ctx, "python"),
  "py-record": scenarioPyRecord, "py-unlabelled": scenarioPyUnlabelled,
};

async function main() {
  const name = process.argv[2];
  const fn = scenarios[name];
  if (!fn) throw new Error(`unknown scenario ${name}`);
  const ctx = await launch();
  mark("launched");
  let result;
  const rejoins = async () => {
    const out = {};
    for (const [tag, p] of demoTabs) {
      if (!p.isClosed()) out[tag] = await p.evaluate(watchdogEvents).catch((e) => [{ kind: "unknown", err: String(e) }]);
    }
    return out;
  };
  try {
    result = await fn(ctx);
    result.rejoins = await rejoins();
  } catch (err) {
    const diag = { rejoins: await rejoins().catch((e) => String(e)) };
    for (const [i, p] of ctx.pages().entries()) {
      try {
        diag[`page${i}`] = await p.evaluate(() => window.demo ? { summary: window.demo.summary(), events: window.demo.events.slice(-40) } : null);
        const app = await p.evaluate(() => window.app ? { events: window.app.events, wire: window.__wire } : null);
        if (app) diag[`page${i}app`] = app;
        const r = await p.evaluate(() => window.__rw ? { sdk: window.__rw.sdk, wire: window.__rw.wire.map((w) => w.sdp
          ? { dir: w.dir, sdpType: w.sdpType, lines: w.sdp.split("\r\n").filter((l) => /^(m=|a=mid|a=msid|a=group|a=sendrecv|a=sendonly|a=recvonly|a=inactive)/.test(l)) }
          : w) } : null);
        if (r) diag[`page${i}rec`] = r;
      } catch (e) { diag[`page${i}`] = String(e); }
    }
    throw Object.assign(err, { diag });
  } finally {
    await ctx.close().catch(() => {});
    try { fs.rmSync(ctx.profileDir, { recursive: true, force: true, maxRetries: 3 }); } catch {}
  }
  mark("done");
  return { ok: true, scenario: name, timings, ...result };
}

const watchdog = setTimeout(() => {
  process.stdout.write(`RESULT ${JSON.stringify({ ok: false, error: `driver watchdog: over ${Number(env.driverTimeoutMs || 100_000) / 1000} s`, timings })}\n`);
  process.exit(3);
}, Number(env.driverTimeoutMs || 100_000));

main().then((r) => {
  process.stdout.write(`RESULT ${JSON.stringify(r)}\n`);
  clearTimeout(watchdog);
  process.exit(0);
}, (err) => {
  process.stdout.write(`RESULT ${JSON.stringify({ ok: false, error: String(err?.stack || err), diag: err?.diag, timings })}\n`);
  clearTimeout(watchdog);
  process.exit(1);
});
