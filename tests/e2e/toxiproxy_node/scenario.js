// toxiproxy's Node.js client (npm toxiproxy-node-client) driving a toxiproxy API: the steps a
// test suite takes, each answer recorded. Usage: node scenario.js API_URL UPSTREAM
// Prints one JSON object; tests/e2e/test_toxiproxy_api.py checks it and what restcp holds.
"use strict";
const { Toxiproxy } = require("toxiproxy-node-client");

async function refusal(promise) {
  try {
    await promise;
    return "no error";
  } catch (err) {
    return `${err.name}: ${err.message}`;
  }
}

async function main() {
  const [api, upstream] = process.argv.slice(2);
  const toxiproxy = new Toxiproxy(api);
  const seen = {};
  seen.version = await toxiproxy.getVersion();
  const proxy = await toxiproxy.createProxy({ name: "db", listen: "localhost:0", upstream });
  seen.created = proxy.toJson();
  seen.duplicate = await refusal(toxiproxy.createProxy({ name: "db", listen: "localhost:0", upstream }));
  seen.missing = await refusal(toxiproxy.get("nope"));
  const latency = await proxy.addToxic({
    name: "slow",
    type: "latency",
    stream: "downstream",
    toxicity: 1,
    attributes: { latency: 100, jitter: 10 },
  });
  seen.toxic = latency.toJson();
  seen.toxicTaken = await refusal(proxy.addToxic({ name: "slow", type: "latency", stream: "upstream", toxicity: 1, attributes: {} }));
  seen.badType = await refusal(proxy.addToxic({ name: "x", type: "packet_storm", stream: "upstream", toxicity: 1, attributes: {} }));
  const cut = await proxy.addToxic({ type: "limit_data", stream: "upstream", toxicity: 0.5, attributes: { bytes: 5 } });
  seen.defaultName = cut.name;
  const updated = await latency.update({ ...latency.toJson(), toxicity: 0.25, attributes: { latency: 200 } });
  seen.updated = updated.toJson();
  seen.fetched = (await proxy.getToxic("slow")).toJson();
  const disabled = await proxy.update({ enabled: false, listen: proxy.listen, upstream });
  seen.disabled = disabled.toJson();
  seen.listedWhileDown = Object.fromEntries(
    Object.entries(await toxiproxy.getAll()).map(([name, p]) => [name, p.toJson()]),
  );
  await cut.remove();
  seen.afterRemove = (await toxiproxy.getApi().get(`${api}/proxies/db/toxics`)).data;
  const populated = await toxiproxy.populate([
    { name: "db", listen: disabled.listen, upstream },
    { name: "cache", listen: "127.0.0.1:0", upstream },
  ]);
  seen.populated = Object.keys(populated).sort();
  await toxiproxy.reset();
  seen.afterReset = (await toxiproxy.get("db")).toJson();
  seen.afterResetToxics = (await toxiproxy.getApi().get(`${api}/proxies/db/toxics`)).data;
  await (await toxiproxy.get("cache")).remove();
  seen.removedGone = await refusal(toxiproxy.get("cache"));
  console.log(JSON.stringify(seen));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
