// A client on the official JS SDK (@metered-ca/realtime) authenticated by a JWT, subscribed
// to some channels, that reports what it sees. Run by tests/interop/test_replay.py with
// `node --experimental-websocket` (Node 20's global WebSocket).
//
//   node replay_client.mjs <web dir> <ws base url> <jwt> <channel> [<channel> ...]
//
// Prints one JSON object per line: {"event": "ready"} once every subscribe resolved, then
// {"event": "connected", isReconnect}, {"event": "disconnected", code, willReconnect},
// {"event": "message", channel, from, data}, {"event": "direct", from, data},
// {"event": "presence", channel, joined, left}. EOF on stdin closes the client.

import path from "node:path";
import { createRequire } from "node:module";

const [webDir, url, token, ...channels] = process.argv.slice(2);
const require = createRequire(path.join(webDir, "package.json"));
const { SignallingClient } = await import(require.resolve("@metered-ca/realtime"));

function emit(event, fields) {
  console.log(JSON.stringify({ event, ...fields }));
}

const client = new SignallingClient({ url, tokenProvider: async () => token });
client.on("connected", (ev) => emit("connected", { isReconnect: ev.isReconnect }));
client.on("disconnected", (ev) =>
  emit("disconnected", { code: ev.code, willReconnect: ev.willReconnect }));
client.on("message", (ev) =>
  emit("message", { channel: ev.channel, from: ev.from, data: ev.data }));
client.on("direct", (ev) => emit("direct", { from: ev.from, data: ev.data }));
client.on("presence", (ev) =>
  emit("presence", { channel: ev.channel, joined: ev.joined, left: ev.left }));

await client.connect();
for (const channel of channels) await client.subscribe(channel);
emit("ready", {});

process.stdin.resume();
process.stdin.on("end", () => client.close().finally(() => process.exit(0)));
