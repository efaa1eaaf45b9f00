// The node at a glance: status, version, uptime, connections, rates, and the cluster.
import { chart } from "./charts.js";
import { byteRate, bytes, duration, h, rate } from "./dom.js";

export function overview(ctx) {
  const { state } = ctx;
  const figures = h("dl", { class: "figures" });
  const nodes = h("div");
  const charts = h("div", { class: "charts" });
  const el = h(
    "article",
    { "aria-labelledby": "overview-title" },
    h("h2", { id: "overview-title" }, "This node"),
    figures,
    h("h3", {}, "Last 5 minutes"),
    charts,
    nodes,
  );
  const connBox = h("div", { class: "chart" });
  const bytesBox = h("div", { class: "chart" });
  charts.append(connBox, bytesBox);
  let connChart = null;
  let bytesChart = null;

  function figure(label, value, cls) {
    return [h("div", {}, h("dt", {}, label), h("dd", { class: cls || null, "data-figure": label }, value))];
  }

  function update() {
    const node = state.node;
    if (!node) return;
    const r = node.rates;
    figures.replaceChildren(
      ...figure("Status", node.status, `status-${node.status}`),
      ...figure("Version", node.version),
      ...figure("Uptime", duration(node.uptime)),
      ...figure("Routes", String(state.routes.size)),
      ...figure("Connections now", String(node.connections_active)),
      ...figure("New connections", rate(r?.connections)),
      ...figure("Bytes in", byteRate(r?.bytes_in)),
      ...figure("Bytes out", byteRate(r?.bytes_out)),
      ...figure("Errors", rate(r?.errors)),
    );
    const series = state.nodeHistory;
    const connData = [series.t, series.values[0], series.values[3]];
    const bytesData = [series.t, series.values[1], series.values[2]];
    if (!connChart && series.t.length) {
      connChart = chart(connBox, "Connections and errors per second", { names: ["conn/s", "errors/s"], data: () => connData }, (v) => rate(v, ""));
      bytesChart = chart(bytesBox, "Bytes per second", { names: ["in", "out"], data: () => bytesData }, bytes);
    }
    connChart?.setData(connData);
    bytesChart?.setData(bytesData);
    const list = node.nodes || [];
    if (list.length > 1 || list.some((n) => n.leases?.length)) {
      nodes.replaceChildren(
        h("h3", {}, "Cluster nodes"),
        h(
          "table",
          { class: "grid" },
          h("thead", {}, h("tr", {}, ["Node", "API", "Frontend IPs", "Leases", "Routes serving", "Last seen"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            list.map((n) =>
              h(
                "tr",
                {},
                h("td", {}, n.id),
                h("td", {}, n.api || "–"),
                h("td", {}, n.frontend_ips.join(", ")),
                h("td", {}, n.leases.map((l) => `${l.ip} (${duration(l.age)})`).join(", ") || "none"),
                h("td", {}, String(n.routes_serving)),
                h("td", {}, n.last_seen === null || n.last_seen === undefined ? "–" : `${n.last_seen.toFixed(1)} s ago`),
              ),
            ),
          ),
        ),
      );
    } else nodes.replaceChildren();
  }

  return {
    el,
    update,
    destroy() {
      connChart?.destroy();
      bytesChart?.destroy();
    },
  };
}
