// Every route in one table that filters and sorts; rows are built once and only the rows of
// routes that changed are rewritten, so 1,000 routes cost what the changes cost.
import { ApiError } from "./api.js";
import { bytes, h, rate, reportError, reportWrite } from "./dom.js";

const COLUMNS = [
  ["route", "Route", (r) => `${r.app}/${String(r.id).padStart(8, "0")}`],
  ["url", "URL", (r) => r.url],
  ["balance", "Balance", (r) => r.balance],
  ["enabled", "Enabled", (r) => (r.enabled ? 1 : 0)],
  ["now", "Sessions now", (r) => r.stats?.connections_active ?? -1],
  ["max", "Max", (r) => r.stats?.connections_max ?? -1],
  ["limit", "Limit", (r) => r.max_connections ?? Infinity],
  ["total", "Total", (r) => r.stats?.connections_total ?? -1],
  ["rate", "Conn/s", (r) => r.stats?.rates?.connections ?? -1],
  ["in", "Bytes in", (r) => r.stats?.bytes_in ?? -1],
  ["out", "Bytes out", (r) => r.stats?.bytes_out ?? -1],
  ["errors", "Errors", (r) => r.stats?.errors ?? -1],
  ["toxics", "Toxics", (r) => r.toxics.length],
  ["health", "Health", (r) => r.backends.filter((b) => b.health === "up").length],
];

function healthSummary(route) {
  const count = { up: 0, down: 0, unknown: 0 };
  for (const b of route.backends) count[b.health] = (count[b.health] || 0) + 1;
  if (!route.backends.length) return [h("span", { class: "muted" }, "no backends")];
  return ["up", "down", "unknown"]
    .filter((s) => count[s])
    .map((s) => h("span", { class: `badge health-${s}` }, `${count[s]} ${s}`));
}

function cells(route) {
  const s = route.stats;
  const href = `#/route/${encodeURIComponent(route.app)}/${route.id}`;
  return [
    h("th", { scope: "row" }, h("a", { href }, `${route.app}/${route.id}`), route.name ? h("span", { class: "muted" }, ` ${route.name}`) : null),
    h("td", {}, route.url),
    h("td", {}, route.balance),
    h("td", {}, h("span", { class: route.enabled ? "badge state-enabled" : "badge state-disabled" }, route.enabled ? "yes" : "no")),
    h("td", { class: "num" }, s ? String(s.connections_active) : "–"),
    h("td", { class: "num" }, s ? String(s.connections_max) : "–"),
    h("td", { class: "num" }, route.max_connections ?? "–"),
    h("td", { class: "num" }, s ? String(s.connections_total) : "–"),
    h("td", { class: "num" }, rate(s?.rates?.connections, "")),
    h("td", { class: "num" }, s ? bytes(s.bytes_in) : "–"),
    h("td", { class: "num" }, s ? bytes(s.bytes_out) : "–"),
    h("td", { class: "num" }, s ? String(s.errors) : "–"),
    h("td", { class: "num" }, String(route.toxics.length)),
    h("td", {}, healthSummary(route)),
  ];
}

export function routesView(ctx) {
  const { api, state } = ctx;
  const rows = new Map(); // key -> <tr>
  let sortBy = "route";
  let ascending = true;
  let filterText = "";

  const filter = h("input", { id: "routes-filter", type: "search", placeholder: "app, id, name, URL, backend…" });
  const count = h("p", { class: "muted", id: "routes-count", "aria-live": "polite" });
  const headRow = h("tr");
  const tbody = h("tbody");
  const table = h("table", { class: "grid", id: "routes-table" }, h("caption", {}, "Routes"), h("thead", {}, headRow), tbody);

  for (const [name, label] of COLUMNS) {
    const button = h("button", { type: "button", class: "sort", onclick: () => sort(name) }, label);
    headRow.append(h("th", { scope: "col", "data-col": name }, button));
  }

  const appInput = api.app
    ? h("input", { id: "new-route-app", value: api.app, readonly: true })
    : h("input", { id: "new-route-app", required: true, pattern: "[A-Za-z0-9._-]{1,64}" });
  const form = h(
    "form",
    { class: "inline", id: "new-route", onsubmit: create },
    h("fieldset", {}, h("legend", {}, "Create a route"),
      h("label", { for: "new-route-app" }, "App"), appInput,
      h("label", { for: "new-route-port" }, "Port (empty: next free)"), h("input", { id: "new-route-port", type: "number", min: 1, max: 65535 }),
      h("label", { for: "new-route-balance" }, "Balance"),
      h("select", { id: "new-route-balance" }, ["random", "round_robin", "least_conn", "two_choices", "source_hash"].map((b) => h("option", { value: b }, b))),
      h("label", { for: "new-route-name" }, "Name (optional)"), h("input", { id: "new-route-name" }),
      h("button", { type: "submit" }, "Create")),
  );

  async function create(event) {
    event.preventDefault();
    const app = appInput.value.trim();
    const body = { balance: form.querySelector("#new-route-balance").value };
    const port = form.querySelector("#new-route-port").value;
    const name = form.querySelector("#new-route-name").value.trim();
    if (port) body.port = Number(port);
    if (name) body.name = name;
    try {
      const result = await api.call("PUT", `/apps/${encodeURIComponent(app)}/routes`, body);
      reportWrite(result, `route ${app}/${result.body.id} created`);
    } catch (err) {
      reportError(err instanceof ApiError ? err : new Error(String(err)), "creating the route");
    }
  }

  const el = h("article", { "aria-labelledby": "routes-title" }, h("h2", { id: "routes-title" }, "Routes"),
    h("label", { for: "routes-filter" }, "Filter"), filter, count, h("div", { class: "scroll" }, table), form);

  function matches(route) {
    if (!filterText) return true;
    const hay = `${route.app}/${route.id} ${route.name || ""} ${route.url} ${route.backends.map((b) => `${b.ip}:${b.port}`).join(" ")}`.toLowerCase();
    return hay.includes(filterText);
  }

  function sortKey() {
    return COLUMNS.find((c) => c[0] === sortBy)[2];
  }

  function order() {
    const key = sortKey();
    const keys = [...state.routes.keys()];
    keys.sort((a, b) => {
      const x = key(state.routes.get(a));
      const y = key(state.routes.get(b));
      const c = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? c : -c;
    });
    const fragment = document.createDocumentFragment();
    for (const k of keys) fragment.append(rows.get(k));
    tbody.append(fragment);
    for (const th of headRow.children) {
      if (th.dataset.col === sortBy) th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function sort(name) {
    if (sortBy === name) ascending = !ascending;
    else {
      sortBy = name;
      ascending = true;
    }
    order();
  }

  function refreshCount() {
    let shown = 0;
    for (const row of rows.values()) if (!row.hidden) shown += 1;
    count.textContent = `${shown} of ${rows.size} routes`;
  }

  filter.addEventListener("input", () => {
    filterText = filter.value.trim().toLowerCase();
    for (const [key, row] of rows) row.hidden = !matches(state.routes.get(key));
    refreshCount();
  });

  function update(event) {
    let added = false;
    for (const key of event.removed) {
      rows.get(key)?.remove();
      rows.delete(key);
    }
    for (const key of event.changed) {
      const route = state.routes.get(key);
      if (!route) continue;
      let row = rows.get(key);
      if (!row) {
        row = h("tr", { "data-key": key });
        rows.set(key, row);
        added = true;
      }
      row.replaceChildren(...cells(route));
      row.hidden = !matches(route);
    }
    if (added || (event.changed.size && sortBy !== "route")) order();
    refreshCount();
  }

  return { el, update };
}
