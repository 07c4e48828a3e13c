// A backend on the official JS SDK (@metered-ca/realtime) that subscribes to a channel
// pattern, as the IoT guides do. Run by tests/interop/test_wildcards.py with
// `node --experimental-websocket` (Node 20's global WebSocket).
//
//   node pattern_backend.mjs <web dir> <ws base url> <publishable key> <pattern> <count>
//
// Prints "READY" once the subscribe resolved, then one "RESULT <json>" line: the first
// <count> `message` events ({channel, from, data}) and any `presence` event seen.

import path from "node:path";
import { createRequire } from "node:module";

const [webDir, url, apiKey, pattern, count] = process.argv.slice(2);
const require = createRequire(path.join(webDir, "package.json"));
const { SignallingClient } = await import(require.resolve("@metered-ca/realtime"));

const messages = [];
const presence = [];
const client = new SignallingClient({ url, apiKey });
const done = new Promise((resolve) => {
  client.on("message", (ev) => {
    messages.push({ channel: ev.channel, from: ev.from, data: ev.data });
    if (messages.length >= Number(count)) resolve();
  });
});
client.on("presence", (ev) => presence.push(ev));
const timeout = setTimeout(() => finish("timed out"), 15000);

function finish(error) {
  clearTimeout(timeout);
  console.log("RESULT " + JSON.stringify({ messages, presence, error: error ?? null }));
  client.close().finally(() => process.exit(0));
}

await client.connect();
await client.subscribe(pattern);
console.log("READY");
await done;
finish();
