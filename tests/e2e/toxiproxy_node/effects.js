// toxiproxy's Node.js client (npm toxiproxy-node-client) making toxics that act on real
// connections through restcp, measured by this script's own sockets (node's net module):
// a latency's delay on an open connection and on a new one, its removal, a limit_data's cut,
// a proxy down refusing new clients and closing open ones, and a reset_peer's reset.
// Usage: node effects.js API_URL UPSTREAM (an echo server). Prints one JSON object of
// measures; tests/e2e/test_toxiproxy_api.py judges them.
"use strict";
const net = require("net");
const { Toxiproxy } = require("toxiproxy-node-client");

const WAIT = 10000;

// A connection to the proxy's port, with what it receives queued: each read waits for
// bytes, the peer's end ("eof"), or a socket error (its code: "ECONNRESET"...).
function connect(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    const state = { sock, buffer: Buffer.alloc(0), ended: null, waiters: [] };
    const wake = () => {
      for (const waiter of state.waiters.splice(0)) waiter();
    };
    sock.setNoDelay(true);
    sock.on("data", (data) => {
      state.buffer = Buffer.concat([state.buffer, data]);
      wake();
    });
    sock.on("end", () => {
      state.ended = state.ended || "eof";
      wake();
    });
    sock.on("error", (err) => {
      state.ended = err.code || String(err);
      wake();
      reject(err);
    });
    sock.on("connect", () => resolve(state));
  });
}

function changed(state) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no answer within the wait")), WAIT);
    state.waiters.push(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// Exactly n bytes, or the end that came first.
async function readExactly(state, n) {
  while (state.buffer.length < n && !state.ended) await changed(state);
  const got = state.buffer.subarray(0, n);
  state.buffer = state.buffer.subarray(got.length);
  return got.toString();
}

// Everything up to the end, and how it ended.
async function readToEnd(state) {
  while (!state.ended) await changed(state);
  const got = state.buffer.toString();
  state.buffer = Buffer.alloc(0);
  return { got, ended: state.ended };
}

// Milliseconds from writing a message to its whole echo.
async function echoTime(state, message) {
  const began = process.hrtime.bigint();
  state.sock.write(message);
  const got = await readExactly(state, message.length);
  if (got !== message) throw new Error(`echo ${JSON.stringify(got)} for ${JSON.stringify(message)}`);
  return Number(process.hrtime.bigint() - began) / 1e6;
}

async function refused(port) {
  try {
    const state = await connect(port);
    state.sock.destroy();
    return "connected";
  } catch (err) {
    return err.code;
  }
}

async function main() {
  const [api, upstream] = process.argv.slice(2);
  const toxiproxy = new Toxiproxy(api);
  const seen = {};
  let proxy = await toxiproxy.createProxy({ name: "db", listen: "127.0.0.1:0", upstream });
  const port = Number(proxy.listen.split(":").pop());

  const open = await connect(port);
  seen.before = await echoTime(open, "before");
  const latency = await proxy.addToxic({
    name: "slow", type: "latency", stream: "downstream", toxicity: 1, attributes: { latency: 300 },
  });
  seen.openWithLatency = await echoTime(open, "slowed");
  const fresh = await connect(port);
  seen.newWithLatency = await echoTime(fresh, "new one");
  fresh.sock.end();
  await latency.update({ ...latency.toJson(), attributes: { latency: 600 } });
  seen.openAfterUpdate = await echoTime(open, "updated");
  await latency.remove();
  seen.openAfterRemoval = await echoTime(open, "removed");

  await proxy.addToxic({
    name: "cut", type: "limit_data", stream: "downstream", toxicity: 1, attributes: { bytes: 5 },
  });
  const cut = await connect(port);
  cut.sock.write("0123456789");
  seen.limited = await readToEnd(cut);
  await (await proxy.getToxic("cut")).remove();

  proxy = await proxy.update({ enabled: false, listen: proxy.listen, upstream });
  seen.openWhenDown = (await readToEnd(open)).ended;
  seen.newWhenDown = await refused(port);
  proxy = await proxy.update({ enabled: true, listen: proxy.listen, upstream });
  const back = await connect(port);
  seen.afterUp = await echoTime(back, "back up");

  // A reset_peer resets a connection opened before it (back) as well as a new one.
  await proxy.addToxic({
    name: "rst", type: "reset_peer", stream: "downstream", toxicity: 1, attributes: { timeout: 200 },
  });
  const rst = await connect(port);
  const began = process.hrtime.bigint();
  rst.sock.write("hello");
  seen.beforeReset = await readExactly(rst, 5);
  seen.reset = (await readToEnd(rst)).ended;
  seen.resetAfter = Number(process.hrtime.bigint() - began) / 1e6;
  seen.olderReset = (await readToEnd(back)).ended;
  await (await proxy.getToxic("rst")).remove();
  console.log(JSON.stringify(seen));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
