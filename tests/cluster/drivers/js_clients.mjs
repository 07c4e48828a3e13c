// Several official JS SignallingClients (@metered-ca/realtime) in one Node process, driven
// over pipes by tests/cluster/test_rolling_restart.py. Uses only the SDK's public API.
//
//   node --experimental-websocket js_clients.mjs SDK_ENTRY URL < commands
//
// stdin, one JSON command per line:
//   {"op": "add", "client": NAME, "token": JWT, "room": CHANNEL}   connect, then subscribe
//   {"op": "publish", "client": NAME, "room": CHANNEL, "data": ANY}
//   {"op": "close"}                                                 close every client, exit
// stdout, one JSON event per line, each with "client" (except "exit") and "t" (ms):
//   connected {peerId, isReconnect} | disconnected {code, willReconnect} |
//   presence {channel, joined: [peerId], left: [peerId]} | message {channel, from, data} |
//   going_away {retryAfterMs} | subscribed {room} | error {op, message}
import readline from "node:readline";

const [entry, url] = process.argv.slice(2);
const { SignallingClient } = await import(entry);
const t0 = Date.now();
const clients = new Map();

function emit(ev) {
  process.stdout.write(JSON.stringify({ ...ev, t: Date.now() - t0 }) + "\n");
}

function ids(list) {
  return (list || []).map((p) => p.peerId);
}

async function add(name, token, room) {
  const client = new SignallingClient({ url, tokenProvider: async () => token });
  clients.set(name, client);
  client.on("connected", (e) =>
    emit({ client: name, event: "connected", peerId: e.peerId, isReconnect: e.isReconnect }));
  client.on("disconnected", (e) =>
    emit({ client: name, event: "disconnected", code: e.code, willReconnect: e.willReconnect }));
  client.on("presence", (e) =>
    emit({ client: name, event: "presence", channel: e.channel, joined: ids(e.joined),
           left: ids(e.left) }));
  client.on("message", (e) =>
    emit({ client: name, event: "message", channel: e.channel, from: e.from, data: e.data }));
  client.on("going-away", (e) =>
    emit({ client: name, event: "going_away", retryAfterMs: e.retryAfterMs }));
  await client.connect();
  await client.subscribe(room);
  emit({ client: name, event: "subscribed", room });
}

async function run(cmd) {
  try {
    if (cmd.op === "add") await add(cmd.client, cmd.token, cmd.room);
    else if (cmd.op === "publish") await clients.get(cmd.client).publish(cmd.room, cmd.data);
    else if (cmd.op === "close") {
      await Promise.all([...clients.values()].map((c) => c.close()));
      emit({ event: "exit" });
      process.exit(0);
    }
  } catch (err) {
    emit({ client: cmd.client, event: "error", op: cmd.op, message: String(err) });
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (line.trim()) run(JSON.parse(line));
});
rl.on("close", () => run({ op: "close" }));
