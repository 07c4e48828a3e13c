// Browser test driver: headless Debian chromium through playwright-core (no browser download).
// Started by harness.py inside an empty network namespace, next to a roomwire node.
//
//   node driver.mjs <scenario>        scenario: call | restart | pubsub
//
// Input: ROOMWIRE_BROWSER_ENV (JSON: base, ws, pk, tokens, keys, webDir, screenshot, chromium).
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

async function openPeer(ctx, tag, { room, name, token }) {
  const page = await ctx.newPage();
  watchConsole(page, tag);
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

// -- main ------------------------------------------------------------------------------------

const scenarios = { call: scenarioCall, restart: scenarioRestart, pubsub: scenarioPubsub };

async function main() {
  const name = process.argv[2];
  const fn = scenarios[name];
  if (!fn) throw new Error(`unknown scenario ${name}`);
  const ctx = await launch();
  mark("launched");
  let result;
  try {
    result = await fn(ctx);
  } catch (err) {
    const diag = {};
    for (const [i, p] of ctx.pages().entries()) {
      try {
        diag[`page${i}`] = await p.evaluate(() => window.demo ? { summary: window.demo.summary(), events: window.demo.events.slice(-40) } : null);
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
  process.stdout.write(`RESULT ${JSON.stringify({ ok: false, error: "driver watchdog: over 100 s", timings })}\n`);
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
