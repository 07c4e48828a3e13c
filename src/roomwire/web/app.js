// roomwire demo call page. Uses the official browser SDK (@metered-ca/realtime, MeteredPeer)
// through its documented API only; the SDK itself is served by roomwire from an npm install
// at /demo/sdk.js.
//
// URL options: ?room=NAME&name=YOUR_NAME&autojoin=1, and #token=JWT (a token minted with
// `roomwire token --sub alice --peer-metadata '{"name": "Alice"}'`) instead of the development
// key. window.demo exposes the state for the console and for the browser tests.

const config = JSON.parse(document.getElementById("roomwire-config").textContent);
const params = new URLSearchParams(location.search);
const hashParams = new URLSearchParams(location.hash.slice(1));
const $ = (id) => document.getElementById(id);

const els = {
  conn: $("conn"), connText: $("conn-text"), banner: $("banner"), help: $("setup-help"),
  joinForm: $("join-form"), name: $("name"), room: $("room"), keyRow: $("key-row"),
  credential: $("credential"), join: $("join"), leave: $("leave"), screen: $("screen"),
  tiles: $("tiles"), roster: $("roster"), count: $("count"), chatLog: $("chat-log"),
  chatForm: $("chat-form"), chatInput: $("chat-input"), chatSend: $("chat-send"),
  footer: $("footer"),
};

let sdk = null;          // the imported SDK module
let peer = null;         // MeteredPeer
let myName = "";
let localStream = null;  // camera + microphone
let screenStream = null; // screen share, sent as a second stream with role "screen"
const remotes = new Map(); // peerId -> { remote, tile, streams: Map(streamId -> {stream, meta, tile}) }
const chat = [];
const events = [];

// Stuck-connection watchdog, the last resort. When both tabs offer at once (glare), the polite
// side rolls back and answers, and Chromium sometimes leaves that RTCPeerConnection wedged for
// good (ICE gathering never produces a candidate; ICE restarts do not help, only a new
// connection does). The page now keeps the two sides from offering at once ("who offers first"
// below), so this is for connections that fail anyway.
// The SDK offers no per-peer "new connection" call, so the page leaves and re-joins the room:
// a fresh MeteredPeer (same credentials, same local media) means fresh connections on both
// sides. Only the polite side of a stuck pair rejoins first; the impolite side waits one more
// period, so normally exactly one tab rejoins. Bounded to MAX_REJOINS attempts in a row.
const WATCHDOG_MS = Number(params.get("watchdog") || 6000);
const MAX_REJOINS = 3;
let room = "";
let creds = null;
let generation = 0;    // bumped per MeteredPeer: events from a replaced peer are ignored
let rejoins = 0;       // consecutive rejoin attempts without a healthy connection in between
let rejoining = false;

function note(kind, detail) {
  events.push({ t: Math.round(performance.now()), kind, ...detail });
  if (params.get("debug") === "1") console.log(Date.now() % 100000, "demo", kind, JSON.stringify(detail));
  if (events.length > 500) events.shift();
}

function shortId(id) { return id ? String(id).slice(0, 8) : "?"; }

// -- connection state and banner ---------------------------------------------------------------

const STATE_TEXT = {
  idle: "not connected", joining: "connecting…", joined: "connected",
  reconnecting: "reconnecting…", leaving: "leaving…", closed: "disconnected",
};

function setConn(state) {
  els.conn.dataset.state = state;
  let text = STATE_TEXT[state] || state;
  if (state === "joined" && peer?.peerId) text += ` as ${shortId(peer.peerId)} in ${peer.channel}`;
  els.connText.textContent = text;
  if (state === "reconnecting") {
    showBanner("Reconnecting to the server… the call resumes by itself.");
  } else if (state === "joined" || state === "idle") {
    hideBanner();
  }
}

function showBanner(text, error = false) {
  els.banner.textContent = text;
  els.banner.classList.toggle("error", error);
  els.banner.hidden = false;
}

function hideBanner() { els.banner.hidden = true; }

// -- tiles -------------------------------------------------------------------------------------

function makeTile({ stream, label, local = false, role = "camera", peerId = "" }) {
  const tile = document.createElement("div");
  tile.className = `tile ${local ? "local" : "remote"} ${role === "screen" ? "screen" : ""}`;
  tile.dataset.role = role;
  if (peerId) tile.dataset.peer = peerId;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = local; // never play back our own microphone
  const lab = document.createElement("div");
  lab.className = "label";
  lab.textContent = label;
  const ps = document.createElement("div");
  ps.className = "pstate";
  tile.append(video, lab, ps);
  els.tiles.append(tile);
  if (stream) attach(tile, stream);
  return tile;
}

function attach(tile, stream) {
  const video = tile.querySelector("video");
  if (video.srcObject !== stream) video.srcObject = stream;
  video.play().catch(() => {
    // Autoplay with sound needs a user gesture: start muted, unmute on click.
    video.muted = true;
    video.play().catch(() => {});
    tile.title = "click to unmute";
    tile.addEventListener("click", () => { video.muted = false; }, { once: true });
  });
}

function setLabel(tile, text) { tile.querySelector(".label").textContent = text; }

// -- naming remote peers: presence metadata first (server-stamped), then track metadata --------

function cameraMeta(entry) {
  for (const s of entry.streams.values()) if (s.meta && s.meta.role !== "screen") return s.meta;
  return entry.anyMeta || null;
}

function displayName(entry) {
  const pm = entry.remote.metadata || {};
  const tm = cameraMeta(entry) || {};
  return String(pm.name || pm.displayName || tm.name || tm.label || entry.card?.name
                || entry.chatName || shortId(entry.remote.id));
}

// -- stream cards ------------------------------------------------------------------------------
// The SDK labels a remote track from track metadata keyed by track id. When both sides send
// media from the start, Chromium hands the receiver pre-created tracks whose ids differ from
// the sender's, so the SDK's stream-added/track events come without metadata. Stream ids do
// survive (SDP msid), so each peer also answers a direct {type: "card?"} with its stream
// metadata keyed by stream id. Same data, one more lookup; SDK metadata wins when present.

function localCard() {
  const streams = {};
  if (localStream) streams[localStream.id] = peer.getStreamMetadata(localStream) || null;
  if (screenStream) streams[screenStream.id] = peer.getStreamMetadata(screenStream) || null;
  return { type: "card", name: myName, streams };
}

function askCard(entry, streamId) {
  if (entry.asked.has(streamId)) return;
  entry.asked.add(streamId);
  note("card-ask", { peerId: entry.remote.id, streamId });
  peer.sendTo(entry.remote.id, { type: "card?" }).catch((err) => note("card-ask-failed", { err: String(err) }));
}

function cleanMeta(m) {
  if (!m || typeof m !== "object") return null;
  const out = {};
  for (const k of ["role", "label", "name"]) if (typeof m[k] === "string") out[k] = m[k].slice(0, 80);
  return out;
}

function onCard(entry, data) {
  const streams = {};
  if (data.streams && typeof data.streams === "object") {
    for (const [id, m] of Object.entries(data.streams).slice(0, 8)) {
      const c = cleanMeta(m);
      if (c) streams[String(id)] = c;
    }
  }
  entry.card = { name: typeof data.name === "string" ? data.name.slice(0, 40) : null, streams };
  note("card", { peerId: entry.remote.id, streams: Object.keys(streams) });
  for (const [id, s] of entry.streams) {
    if (!s.meta && streams[id]) {
      s.meta = streams[id];
      if (s.meta.role === "screen" && s.tile === entry.tile) {
        // Now known as a screen share: move it to a tile of its own.
        entry.streams.delete(id);
        entry.tile.querySelector("video").srcObject = null;
        addRemoteStream(entry, s.stream, s.meta);
      }
    }
  }
  const cam = [...entry.streams.values()].find((x) => x.tile === entry.tile);
  if (cam) attach(entry.tile, cam.stream);
  refreshRemote(entry);
}

function refreshRemote(entry) {
  const name = displayName(entry);
  setLabel(entry.tile, name);
  entry.tile.querySelector(".pstate").textContent = entry.remote.state;
  for (const s of entry.streams.values()) {
    if (s.tile && s.tile !== entry.tile) {
      setLabel(s.tile, s.meta?.label || `${name}'s screen`);
    }
  }
  renderRoster();
}

function renderRoster() {
  els.roster.textContent = "";
  if (peer?.peerId) {
    const li = document.createElement("li");
    li.className = "me";
    li.textContent = `${myName} (you)`;
    els.roster.append(li);
  }
  for (const entry of remotes.values()) {
    const li = document.createElement("li");
    li.dataset.peer = entry.remote.id;
    const screens = [...entry.streams.values()].filter((s) => s.meta?.role === "screen").length;
    li.textContent = `${displayName(entry)}${screens ? " · sharing screen" : ""}`;
    els.roster.append(li);
  }
  els.count.textContent = String(remotes.size + (peer?.peerId ? 1 : 0));
}

function onPeerJoined(remote) {
  const entry = { remote, tile: null, streams: new Map(), anyMeta: null, chatName: null,
                  card: null, asked: new Set() };
  entry.tile = makeTile({ label: shortId(remote.id), peerId: remote.id });
  remotes.set(remote.id, entry);
  note("peer-joined", { peerId: remote.id });

  remote.on("stream-added", ({ stream, metadata }) => {
    note("stream-added", { peerId: remote.id, streamId: stream.id, role: metadata?.role });
    addRemoteStream(entry, stream, metadata);
  });
  remote.on("track", ({ track, streams, metadata }) => {
    note("track", { peerId: remote.id, trackKind: track.kind, trackId: track.id, role: metadata?.role,
                    streams: (streams || []).map((x) => x.id) });
    if (metadata && !entry.anyMeta) entry.anyMeta = metadata;
    if (!streams || streams.length === 0) addRemoteStream(entry, new MediaStream([track]), metadata);
  });
  remote.on("stream-removed", ({ stream }) => {
    note("stream-removed", { peerId: remote.id, streamId: stream.id });
    removeRemoteStream(entry, stream.id);
  });
  remote.on("state-change", ({ to }) => {
    note("remote-state", { peerId: remote.id, to });
    refreshRemote(entry);
  });
  remote.on("connection-reset", () => {
    // The SDK swapped in a new RTCPeerConnection: the streams come again on it.
    note("connection-reset", { peerId: remote.id });
    for (const id of [...entry.streams.keys()]) removeRemoteStream(entry, id);
    armWatchdog(entry); // the new connection gets its own deadline
  });
  refreshRemote(entry);
  armWatchdog(entry);
}

// -- stuck-connection watchdog -------------------------------------------------------------------

function armWatchdog(entry, waited = 0) {
  clearTimeout(entry.watchdog);
  entry.healthy = false;
  entry.waited = waited;
  entry.watchdog = setTimeout(() => checkRemote(entry), WATCHDOG_MS);
}

function pcInfo(pc) {
  return { conn: pc?.connectionState, ice: pc?.iceConnectionState, gathering: pc?.iceGatheringState,
           signaling: pc?.signalingState };
}

async function inboundPackets(pc) {
  let n = 0;
  try {
    (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp") n += Number(r.packetsReceived || 0); });
  } catch { /* closed */ }
  return n;
}

async function checkRemote(entry) {
  const gen = generation;
  if (remotes.get(entry.remote.id) !== entry || rejoining) return;
  if (!peer || peer.state === "leaving" || peer.state === "closed") return;
  if (peer?.state !== "joined") { armWatchdog(entry, entry.waited); return; } // reconnecting: wait
  const pc = entry.remote.pc;
  const info = pcInfo(pc);
  const connected = info.conn === "connected" || info.ice === "connected" || info.ice === "completed";
  const packets = await inboundPackets(pc);
  if (gen !== generation || remotes.get(entry.remote.id) !== entry) return;
  if (connected || packets > 0) {
    entry.healthy = true;
    rejoins = 0;
    note("peer-ok", { peerId: entry.remote.id, ...info, packets });
    return;
  }
  // Nothing to connect: neither side has sent an offer (no media on either side) is not stuck.
  const negotiating = Boolean(pc?.localDescription || pc?.remoteDescription) || info.signaling !== "stable";
  if (!negotiating && !localStream && !screenStream) { armWatchdog(entry, entry.waited); return; }
  const name = displayName(entry);
  if (!entry.remote.polite && entry.waited === 0) {
    // The polite side (whose connection is the one wedged by glare) rejoins first.
    note("peer-stuck-wait", { peerId: entry.remote.id, ...info });
    armWatchdog(entry, 1);
    return;
  }
  note("peer-stuck", { peerId: entry.remote.id, name, ...info, packets });
  await rejoin(`connection to ${name} stuck`);
}

async function rejoin(reason) {
  if (rejoining || !peer) return;
  if (rejoins >= MAX_REJOINS) {
    const text = `${reason}; still no connection after ${MAX_REJOINS} rejoins. Leave and join again, or reload.`;
    note("rejoin-gave-up", { reason, attempts: rejoins });
    console.warn("roomwire demo:", text);
    addSys(text);
    showBanner(text, true);
    return;
  }
  rejoining = true;
  rejoins += 1;
  const text = `${reason}; rejoining (attempt ${rejoins} of ${MAX_REJOINS})`;
  note("rejoin", { reason, attempt: rejoins });
  console.warn("roomwire demo:", text);
  addSys(text);
  showBanner(`${text}…`);
  try {
    const old = peer;
    generation += 1; // from here on, ignore the old peer's events
    dropRemotes();
    try { await old.close("rejoin: stuck connection"); } catch (err) { note("close-failed", { err: String(err) }); }
    await connect();
  } finally {
    rejoining = false;
  }
}

// -- who offers first -----------------------------------------------------------------------------
// When two peers with media meet, the SDK attaches the local tracks on both sides at once and
// both offer. Perfect negotiation resolves that collision by the polite side rolling back its own
// offer, and that rollback is what leaves Chromium's connection wedged (above). So the page keeps
// the collision from happening: it gives the SDK (through its rtcPeerConnectionFactory option)
// connections whose *first* negotiationneeded is held on the polite side, until the impolite
// side's offer arrives or OFFER_WAIT_MS passes. The polite side then answers instead of offering;
// its tracks ride in the answer (addTrack transceivers are matched to the remote m-lines), and if
// anything is left to negotiate the browser fires negotiationneeded again once stable, which goes
// straight to the SDK. The wait costs time only when the impolite side does not offer at once:
// it has no media (it never offers), or it waits for our offer first (a roomwire Python peer
// does, briefly). Later renegotiations (screen share, ICE restarts) are never held.
// ?offerwait=MS changes the wait (0 turns the hold off; capped at 10 s).
const OFFER_WAIT_MS = Math.min(10_000, Math.max(0, Number(params.get("offerwait") ?? 2000) || 0));

function remoteOf(pc) {
  for (const entry of remotes.values()) if (entry.remote.pc === pc) return entry.remote;
  return null;
}

function makePeerConnection(config) {
  const pc = new RTCPeerConnection(config);
  let settled = false; // first negotiation decided: events pass to the SDK from now on
  let held = null;     // timer of the held first offer
  const settle = () => { settled = true; clearTimeout(held); held = null; };
  // Registered before the SDK's own listener, so it runs first and can stop it.
  pc.addEventListener("negotiationneeded", (ev) => {
    if (settled) return;
    const remote = remoteOf(pc);
    if (pc.remoteDescription || pc.localDescription || !remote?.polite || !(OFFER_WAIT_MS > 0)) {
      settle();
      return;
    }
    ev.stopImmediatePropagation();
    if (held) return;
    note("offer-held", { peerId: remote.id, ms: OFFER_WAIT_MS });
    held = setTimeout(() => {
      settle();
      if (pc.signalingState !== "stable" || pc.remoteDescription) return;
      note("offer-released", { peerId: remote.id });
      pc.dispatchEvent(new Event("negotiationneeded"));
    }, OFFER_WAIT_MS);
  });
  pc.addEventListener("signalingstatechange", () => {
    if (held && pc.remoteDescription) {
      note("offer-answered", { peerId: remoteOf(pc)?.id });
      settle();
    }
  });
  return pc;
}

function dropRemotes() {
  for (const entry of remotes.values()) {
    clearTimeout(entry.watchdog);
    for (const s of entry.streams.values()) if (s.tile !== entry.tile) s.tile.remove();
    entry.tile.remove();
  }
  remotes.clear();
  renderRoster();
}

function addRemoteStream(entry, stream, meta) {
  const old = entry.streams.get(stream.id);
  meta = meta || old?.meta || entry.card?.streams[stream.id] || null;
  if (!meta) askCard(entry, stream.id);
  const role = meta?.role === "screen" ? "screen" : "camera";
  let tile;
  if (role === "screen") {
    tile = old?.tile || makeTile({ stream, label: "", role: "screen", peerId: entry.remote.id });
  } else {
    tile = entry.tile;
  }
  entry.streams.set(stream.id, { stream, meta, tile });
  attach(tile, stream);
  stream.addEventListener("removetrack", () => {
    if (stream.getTracks().length === 0) removeRemoteStream(entry, stream.id);
  });
  refreshRemote(entry);
}

function removeRemoteStream(entry, streamId) {
  const s = entry.streams.get(streamId);
  if (!s) return;
  entry.streams.delete(streamId);
  if (s.tile === entry.tile) {
    const video = entry.tile.querySelector("video");
    if (video.srcObject === s.stream) video.srcObject = null;
  } else {
    s.tile.remove();
  }
  refreshRemote(entry);
}

function onPeerLeft(remote) {
  const entry = remotes.get(remote.id);
  note("peer-left", { peerId: remote.id });
  if (!entry) return;
  clearTimeout(entry.watchdog);
  remotes.delete(remote.id);
  for (const s of entry.streams.values()) if (s.tile !== entry.tile) s.tile.remove();
  entry.tile.remove();
  renderRoster();
}

// -- chat --------------------------------------------------------------------------------------

function addChat(fromId, name, text, self = false) {
  chat.push({ from: fromId, name, text, self });
  const li = document.createElement("li");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = self ? `${name} (you)` : name;
  li.append(who, document.createTextNode(text));
  els.chatLog.append(li);
  els.chatLog.scrollTop = els.chatLog.scrollHeight;
}

function addSys(text) {
  const li = document.createElement("li");
  li.className = "sys";
  li.textContent = text;
  els.chatLog.append(li);
}

async function sendChat(text) {
  text = String(text).trim();
  if (!text || !peer) return;
  await peer.send({ type: "chat", text, name: myName });
  addChat(peer.peerId, myName, text, true);
}

function onData({ senderPeerId, data, kind }) {
  const from = remotes.get(senderPeerId);
  if (from && data && typeof data === "object" && kind === "direct") {
    if (data.type === "card?") {
      peer.sendTo(senderPeerId, localCard()).catch((err) => note("card-failed", { err: String(err) }));
      return;
    }
    if (data.type === "card") return onCard(from, data);
  }
  if (!data || typeof data !== "object" || data.type !== "chat" || typeof data.text !== "string") return;
  const entry = remotes.get(senderPeerId);
  if (entry && typeof data.name === "string" && !entry.chatName) {
    entry.chatName = data.name.slice(0, 40);
    refreshRemote(entry);
  }
  const name = entry ? displayName(entry) : shortId(senderPeerId);
  addChat(senderPeerId, name, data.text.slice(0, 500));
}

// -- screen share ------------------------------------------------------------------------------

let localScreenTile = null;

async function toggleScreen() {
  if (!peer) return;
  if (screenStream) return stopScreen();
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (err) {
    addSys(`screen share not started: ${err.name}`);
    return;
  }
  screenStream = stream;
  stream.getVideoTracks()[0]?.addEventListener("ended", () => stopScreen());
  peer.addStream(stream, { role: "screen", label: `${myName}'s screen`, name: myName });
  localScreenTile = makeTile({ stream, label: "your screen", local: true, role: "screen" });
  els.screen.textContent = "Stop sharing";
  els.screen.classList.add("on");
  note("screen", { on: true });
}

function stopScreen() {
  if (!screenStream) return;
  const stream = screenStream;
  screenStream = null;
  try { peer?.removeStream(stream); } catch (err) { console.warn(err); }
  for (const t of stream.getTracks()) t.stop();
  localScreenTile?.remove();
  localScreenTile = null;
  els.screen.textContent = "Share screen";
  els.screen.classList.remove("on");
  note("screen", { on: false });
}

// -- join / leave ------------------------------------------------------------------------------

function credentials() {
  const token = hashParams.get("token");
  if (token) return { tokenProvider: async () => token };
  const typed = els.credential.value.trim();
  if (typed) return typed.startsWith("pk_") ? { apiKey: typed } : { tokenProvider: async () => typed };
  if (config.apiKey) return { apiKey: config.apiKey };
  return null;
}

function serverUrl() {
  if (config.url) return config.url;
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
}

async function getLocalMedia() {
  for (const c of [{ video: true, audio: true }, { video: true }, { audio: true }]) {
    try { return await navigator.mediaDevices.getUserMedia(c); } catch (err) {
      note("gum-failed", { constraints: Object.keys(c).join("+"), err: err.name });
    }
  }
  addSys("no camera or microphone: joining to watch and chat only");
  return null;
}

async function join() {
  creds = credentials();
  if (!creds) {
    els.keyRow.hidden = false;
    showBanner("No development key on this server: paste a publishable key or a token.", true);
    return;
  }
  myName = els.name.value.trim() || `guest-${Math.random().toString(36).slice(2, 6)}`;
  room = els.room.value.trim() || "demo";
  els.join.disabled = true;
  for (const i of [els.name, els.room, els.credential]) i.disabled = true;

  localStream = await getLocalMedia();
  if (localStream) makeTile({ stream: localStream, label: `${myName} (you)`, local: true });

  if (!(await connect())) return;
  els.join.hidden = true;
  els.keyRow.hidden = true;
  els.leave.hidden = false;
  els.screen.disabled = false;
  els.chatInput.disabled = false;
  els.chatSend.disabled = false;
  renderRoster();
}

// A new MeteredPeer with the current credentials and local media, joined to `room`. Used by
// join() and by the watchdog's rejoin. Resolves true once joined.
async function connect() {
  const gen = ++generation;
  const live = () => gen === generation;
  const debug = params.get("debug") === "1";
  const p = new sdk.MeteredPeer({ ...creds, url: serverUrl(), rtcPeerConnectionFactory: makePeerConnection,
                                  ...(debug ? { logger: sdk.ConsoleLogger } : {}) });
  peer = p;
  window.demo.peer = p;
  p.on("state-change", ({ from, to }) => {
    if (!live()) return;
    note("state", { from, to });
    setConn(to);
    renderRoster();
  });
  p.on("peer-joined", ({ peer: remote }) => { if (live()) onPeerJoined(remote); });
  p.on("peer-left", ({ peer: remote }) => { if (live()) onPeerLeft(remote); });
  p.on("data", (ev) => { if (live()) onData(ev); });
  p.on("error", ({ err }) => {
    if (!live()) return;
    note("error", { name: err?.name, message: err?.message });
    showBanner(`Error: ${err?.name || "error"}${err?.message ? `: ${err.message}` : ""}`, true);
  });
  p.on("left", () => {
    if (!live()) return;
    for (const entry of remotes.values()) clearTimeout(entry.watchdog);
    showBanner("Disconnected. Reload the page to join again.", true);
    setConn("closed");
  });
  if (localStream) p.addStream(localStream, { role: "camera", label: myName, name: myName });
  if (screenStream) {
    p.addStream(screenStream, { role: "screen", label: `${myName}'s screen`, name: myName });
  }

  try {
    await p.join(room);
  } catch (err) {
    if (!live()) return false;
    note("join-failed", { name: err?.name, message: err?.message });
    showBanner(`Could not join: ${err?.message || err}`, true);
    setConn("closed");
    return false;
  }
  return live();
}

async function leave() {
  stopScreen();
  for (const entry of remotes.values()) clearTimeout(entry.watchdog);
  await peer?.close("left the call");
  for (const t of localStream?.getTracks() || []) t.stop();
  els.leave.hidden = true;
  els.screen.disabled = true;
  els.chatInput.disabled = true;
  els.chatSend.disabled = true;
}

// -- stats for the console and the tests -------------------------------------------------------

async function stats() {
  const out = {};
  for (const [id, entry] of remotes) {
    const agg = { video: { framesDecoded: 0, packetsReceived: 0, bytesReceived: 0 },
                  audio: { totalSamplesReceived: 0, packetsReceived: 0, totalAudioEnergy: 0 },
                  inbound: [] };
    let report;
    try { report = await entry.remote.pc.getStats(); } catch { out[id] = agg; continue; }
    report.forEach((r) => {
      if (r.type !== "inbound-rtp") return;
      const kind = r.kind || r.mediaType;
      agg.inbound.push({ kind, trackIdentifier: r.trackIdentifier, mid: r.mid,
                         framesDecoded: r.framesDecoded, packetsReceived: r.packetsReceived,
                         totalSamplesReceived: r.totalSamplesReceived });
      const a = agg[kind];
      if (!a) return;
      for (const k of Object.keys(a)) a[k] += Number(r[k] || 0);
    });
    out[id] = agg;
  }
  return out;
}

function summary() {
  return {
    state: peer?.state || "idle",
    peerId: peer?.peerId || null,
    name: myName,
    banner: els.banner.hidden ? null : els.banner.textContent,
    rejoins: events.filter((e) => e.kind === "rejoin").length,
    remotes: [...remotes.values()].map((e) => ({
      id: e.remote.id,
      name: displayName(e),
      presenceMetadata: e.remote.metadata || null,
      state: e.remote.state,
      streams: [...e.streams.values()].map((s) => ({
        id: s.stream.id, role: s.meta?.role || null, label: s.meta?.label || null,
        tracks: s.stream.getTracks().map((t) => t.kind),
      })),
    })),
    chat: chat.slice(),
    tiles: [...els.tiles.querySelectorAll(".tile")].map((t) => ({
      role: t.dataset.role, peer: t.dataset.peer || null, local: t.classList.contains("local"),
      label: t.querySelector(".label").textContent,
    })),
  };
}

window.demo = { peer: null, config, events, join, leave, sendChat, toggleScreen, stats, summary };

// -- boot --------------------------------------------------------------------------------------

async function boot() {
  els.name.value = params.get("name") || "";
  if (params.get("room")) els.room.value = params.get("room");
  if (!config.apiKey && !hashParams.get("token")) els.keyRow.hidden = false;

  if (!config.sdk) {
    els.help.hidden = false;
    els.join.disabled = true;
    setConn("idle");
    els.connText.textContent = "SDK missing";
    window.demo.ready = "no-sdk";
    return;
  }
  try {
    sdk = await import(config.sdk);
  } catch (err) {
    els.help.hidden = false;
    els.join.disabled = true;
    window.demo.ready = "no-sdk";
    console.error(err);
    return;
  }
  els.footer.textContent =
    `@metered-ca/realtime ${config.sdkVersion || ""} · server ${serverUrl()} · ` +
    (hashParams.get("token") ? "token from the URL" : config.apiKey ? "development key" : "no key");

  els.joinForm.addEventListener("submit", (ev) => { ev.preventDefault(); join(); });
  els.leave.addEventListener("click", () => leave());
  els.screen.addEventListener("click", () => toggleScreen());
  els.chatForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = els.chatInput.value;
    els.chatInput.value = "";
    sendChat(text).catch((err) => addSys(`not sent: ${err?.message || err}`));
  });
  window.demo.ready = "ok";
  if (params.get("autojoin") === "1") join();
}

boot();
