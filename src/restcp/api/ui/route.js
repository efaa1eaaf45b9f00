// One route: its settings, its backends (status colours, last check, weight, connections,
// failures) with their actions, five minutes of charts, and its toxics with their forms.
import { Series, chart } from "./charts.js";
import { ago, byteRate, bytes, confirmAction, h, rate, reportError, reportWrite } from "./dom.js";
import { TOXICS } from "./toxics.js";

export function routeView(ctx, app, id) {
  const { api, state } = ctx;
  const key = `${app}/${id}`;
  const base = `/apps/${encodeURIComponent(app)}/routes/${id}`;

  async function write(method, path, body, what) {
    try {
      const result = await api.call(method, path, body);
      reportWrite(result, what);
      return result;
    } catch (err) {
      reportError(err, what);
      return null;
    }
  }

  // -- the route itself ---------------------------------------------------------------
  const title = h("h2", { id: "route-title" }, `Route ${key}`);
  const summary = h("dl", { class: "figures" });
  const enabled = h("input", { type: "checkbox", role: "switch", id: "route-enabled" });
  enabled.addEventListener("change", async () => {
    const want = enabled.checked;
    if (!want && !(await confirmAction(`Disable route ${key}? Its port refuses new clients and its open connections are closed.`))) {
      enabled.checked = true;
      return;
    }
    await write("PATCH", base, { enabled: want }, `route ${key} ${want ? "enabled" : "disabled"}`);
  });
  const deleteButton = h("button", { type: "button", class: "danger", id: "route-delete" }, "Delete route");
  deleteButton.addEventListener("click", async () => {
    if (!(await confirmAction(`Delete route ${key}? Its port refuses new clients at once.`))) return;
    const done = await write("DELETE", base, undefined, `route ${key} deleted`);
    if (done) location.hash = "#/routes";
  });

  // -- charts -------------------------------------------------------------------------
  const connBox = h("div", { class: "chart" });
  const bytesBox = h("div", { class: "chart" });
  const errBox = h("div", { class: "chart" });
  // The charts in words (a canvas says nothing to a screen reader): how far back, the peaks.
  const chartSummary = h("p", { class: "muted", id: "route-chart-summary" });
  let charts = null;
  let closed = false;

  // What the node kept of the last five minutes, so a page opened now shows them at once;
  // the stream's updates go on from there.
  api
    .call("GET", `${base}/stats/history`)
    .then(({ body: past }) => {
      if (closed) return;
      let series = state.history.get(key);
      if (!series) state.history.set(key, (series = new Series(["conn/s", "in B/s", "out B/s", "errors/s"])));
      series.prepend(past.at, [past.connections, past.bytes_in, past.bytes_out, past.errors]);
      update({ kind: "history", changed: new Set(), removed: [] });
    })
    .catch(() => {
      // No history (the route is gone, or the token cannot read it): the page's own points.
    });

  // -- backends -----------------------------------------------------------------------
  const backendsBody = h("tbody");
  const backendsTable = h(
    "table",
    { class: "grid", id: "backends-table" },
    h("caption", {}, "Backends"),
    h("thead", {}, h("tr", {}, ["Id", "Address", "State", "Health", "Last check", "Weight", "Active", "Max", "Total", "Failures", "Bytes in/out", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
    backendsBody,
  );
  const backendForm = h(
    "form",
    { class: "inline", id: "backend-form" },
    h("fieldset", {}, h("legend", { id: "backend-form-legend" }, "Add a backend"),
      h("label", { for: "backend-ip" }, "IP or host name"), h("input", { id: "backend-ip", required: true }),
      h("label", { for: "backend-port" }, "Port"), h("input", { id: "backend-port", type: "number", min: 1, max: 65535, required: true }),
      h("label", { for: "backend-weight" }, "Weight"), h("input", { id: "backend-weight", type: "number", min: 0, max: 256, value: "1" }),
      h("button", { type: "submit", id: "backend-submit" }, "Add backend"),
      h("button", { type: "button", id: "backend-cancel", hidden: true }, "Cancel")),
  );
  let replacing = null; // the backend id the form replaces, or null: it adds
  function resetBackendForm() {
    replacing = null;
    backendForm.reset();
    backendForm.querySelector("#backend-form-legend").textContent = "Add a backend";
    backendForm.querySelector("#backend-submit").textContent = "Add backend";
    backendForm.querySelector("#backend-cancel").hidden = true;
  }
  backendForm.querySelector("#backend-cancel").addEventListener("click", resetBackendForm);
  backendForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      ip: backendForm.querySelector("#backend-ip").value.trim(),
      port: Number(backendForm.querySelector("#backend-port").value),
      weight: Number(backendForm.querySelector("#backend-weight").value || 1),
    };
    if (replacing !== null) {
      if (!(await confirmAction(`Replace backend ${replacing} of ${key} with ${body.ip}:${body.port}? New clients go to the new address.`))) return;
      const done = await write("POST", `${base}/backends/${replacing}`, body, `backend ${replacing} replaced`);
      if (done) resetBackendForm();
    } else {
      const done = await write("PUT", `${base}/backends`, body, "backend added");
      if (done) resetBackendForm();
    }
  });

  function backendActions(b) {
    const buttons = [];
    const setState = (to) => async () => {
      if (to !== "enabled" && !(await confirmAction(`${to === "drain" ? "Drain" : "Disable"} backend ${b.id} of ${key}? ${to === "drain" ? "It takes no new clients; open ones finish." : "Its open connections are closed at once."}`))) return;
      await write("PATCH", `${base}/backends/${b.id}`, { state: to }, `backend ${b.id} ${to}`);
    };
    for (const [to, label] of [["drain", "Drain"], ["enabled", "Enable"], ["disabled", "Disable"]]) {
      if (b.state !== to) buttons.push(h("button", { type: "button", "data-action": to, "aria-label": `${label} backend ${b.id}`, onclick: setState(to) }, label));
    }
    buttons.push(
      h("button", {
        type: "button", "data-action": "replace", "aria-label": `Replace backend ${b.id}`,
        onclick: () => {
          replacing = b.id;
          backendForm.querySelector("#backend-ip").value = b.ip;
          backendForm.querySelector("#backend-port").value = b.port;
          backendForm.querySelector("#backend-weight").value = b.weight;
          backendForm.querySelector("#backend-form-legend").textContent = `Replace backend ${b.id}`;
          backendForm.querySelector("#backend-submit").textContent = "Replace backend";
          backendForm.querySelector("#backend-cancel").hidden = false;
          backendForm.querySelector("#backend-ip").focus();
        },
      }, "Replace…"),
      h("button", {
        type: "button", class: "danger", "data-action": "remove", "aria-label": `Remove backend ${b.id}`,
        onclick: async () => {
          if (!(await confirmAction(`Remove backend ${b.id} (${b.ip}:${b.port}) from ${key}? Open connections finish on their own.`))) return;
          await write("DELETE", `${base}/backends/${b.id}`, undefined, `backend ${b.id} removed`);
        },
      }, "Remove"),
    );
    return buttons;
  }

  function lastCheck(b) {
    if (!b.last_check) return h("span", { class: "muted" }, "no checks");
    const c = b.last_check;
    return h("span", { class: c.ok ? "check-ok" : "check-failed", title: new Date(c.at * 1000).toISOString() },
      `${c.ok ? "passed" : `failed: ${c.reason}`} · ${ago(c.at)}`);
  }

  // -- toxics -------------------------------------------------------------------------
  const toxicsBody = h("tbody");
  const toxicsTable = h(
    "table",
    { class: "grid", id: "toxics-table" },
    h("caption", {}, "Toxics"),
    h("thead", {}, h("tr", {}, ["Name", "Type", "Stream", "Toxicity", "Attributes", "Clients", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
    toxicsBody,
  );
  const typeSelect = h("select", { id: "toxic-type" }, Object.keys(TOXICS).map((t) => h("option", { value: t }, t)));
  const attrs = h("div", { class: "attrs", id: "toxic-attrs" });
  const toxicForm = h(
    "form",
    { class: "inline", id: "toxic-form" },
    h("fieldset", {}, h("legend", { id: "toxic-form-legend" }, "Add a toxic"),
      h("label", { for: "toxic-type" }, "Type"), typeSelect,
      h("label", { for: "toxic-name" }, "Name (optional)"), h("input", { id: "toxic-name", pattern: "[A-Za-z0-9_.-]{1,64}" }),
      h("label", { for: "toxic-stream" }, "Stream"),
      h("select", { id: "toxic-stream" }, h("option", { value: "downstream" }, "downstream (backend → client)"), h("option", { value: "upstream" }, "upstream (client → backend)")),
      h("label", { for: "toxic-toxicity" }, "Toxicity (0 to 1)"), h("input", { id: "toxic-toxicity", type: "number", min: 0, max: 1, step: "0.01", value: "1" }),
      attrs,
      h("button", { type: "submit", id: "toxic-submit" }, "Add toxic"),
      h("button", { type: "button", id: "toxic-cancel", hidden: true }, "Cancel")),
  );
  let editing = null; // the toxic's name the form edits, or null: it adds
  function showAttrs(type, values = {}) {
    attrs.replaceChildren(
      ...Object.entries(TOXICS[type]).flatMap(([name, [unit, dflt]]) => [
        h("label", { for: `toxic-attr-${name}` }, `${name} (${unit})`),
        h("input", { id: `toxic-attr-${name}`, "data-attr": name, type: "number", min: 0, step: 1, required: dflt === null, value: String(values[name] ?? dflt ?? "") }),
      ]),
    );
  }
  function resetToxicForm() {
    editing = null;
    toxicForm.reset();
    for (const id of ["#toxic-type", "#toxic-name", "#toxic-stream"]) toxicForm.querySelector(id).disabled = false;
    toxicForm.querySelector("#toxic-form-legend").textContent = "Add a toxic";
    toxicForm.querySelector("#toxic-submit").textContent = "Add toxic";
    toxicForm.querySelector("#toxic-cancel").hidden = true;
    showAttrs(typeSelect.value);
  }
  typeSelect.addEventListener("change", () => showAttrs(typeSelect.value));
  toxicForm.querySelector("#toxic-cancel").addEventListener("click", resetToxicForm);
  showAttrs(typeSelect.value);
  toxicForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const attributes = {};
    for (const input of attrs.querySelectorAll("input")) if (input.value !== "") attributes[input.dataset.attr] = Number(input.value);
    const toxicity = Number(toxicForm.querySelector("#toxic-toxicity").value);
    if (editing !== null) {
      const done = await write("PATCH", `${base}/toxics/${encodeURIComponent(editing)}`, { toxicity, attributes }, `toxic ${editing} changed`);
      if (done) resetToxicForm();
      return;
    }
    const body = { type: typeSelect.value, stream: toxicForm.querySelector("#toxic-stream").value, toxicity, attributes };
    const name = toxicForm.querySelector("#toxic-name").value.trim();
    if (name) body.name = name;
    const done = await write("PUT", `${base}/toxics`, body, "toxic added");
    if (done) resetToxicForm();
  });

  function toxicRow(t) {
    return h("tr", { "data-toxic": t.name },
      h("th", { scope: "row" }, t.name), h("td", {}, t.type), h("td", {}, t.stream), h("td", { class: "num" }, String(t.toxicity)),
      h("td", {}, Object.entries(t.attributes).map(([n, v]) => `${n}=${v} ${TOXICS[t.type]?.[n]?.[0] ?? ""}`).join(", ")),
      h("td", {}, t.clients.length ? t.clients.join(", ") : "all"),
      h("td", {},
        h("button", {
          type: "button", "data-action": "edit", "aria-label": `Edit toxic ${t.name}`,
          onclick: () => {
            editing = t.name;
            typeSelect.value = t.type;
            toxicForm.querySelector("#toxic-name").value = t.name;
            toxicForm.querySelector("#toxic-stream").value = t.stream;
            for (const id of ["#toxic-type", "#toxic-name", "#toxic-stream"]) toxicForm.querySelector(id).disabled = true;
            toxicForm.querySelector("#toxic-toxicity").value = t.toxicity;
            showAttrs(t.type, t.attributes);
            toxicForm.querySelector("#toxic-form-legend").textContent = `Edit toxic ${t.name}`;
            toxicForm.querySelector("#toxic-submit").textContent = "Save toxic";
            toxicForm.querySelector("#toxic-cancel").hidden = false;
          },
        }, "Edit"),
        h("button", {
          type: "button", class: "danger", "data-action": "remove", "aria-label": `Remove toxic ${t.name}`,
          onclick: async () => {
            if (!(await confirmAction(`Remove toxic ${t.name} from ${key}?`))) return;
            await write("DELETE", `${base}/toxics/${encodeURIComponent(t.name)}`, undefined, `toxic ${t.name} removed`);
          },
        }, "Remove")));
  }

  const gone = h("p", { class: "error", hidden: true, role: "alert" }, `Route ${key} does not exist (any more).`);
  const body = h("div", {},
    h("div", { class: "route-actions" }, h("label", { for: "route-enabled", class: "switch" }, enabled, " Enabled"), deleteButton),
    summary,
    h("h3", {}, "Last 5 minutes"), h("div", { class: "charts" }, connBox, bytesBox, errBox), chartSummary,
    h("div", { class: "scroll" }, backendsTable), backendForm,
    h("div", { class: "scroll" }, toxicsTable), toxicForm);
  const el = h("article", { "aria-labelledby": "route-title" }, h("p", {}, h("a", { href: "#/routes" }, "← Routes")), title, gone, body);

  function update(event) {
    const route = state.routes.get(key);
    gone.hidden = Boolean(route);
    body.hidden = !route;
    if (!route) return;
    const s = route.stats;
    const series = state.history.get(key);
    if (series) {
      const conn = [series.t, series.values[0]];
      const byteData = [series.t, series.values[1], series.values[2]];
      const errs = [series.t, series.values[3]];
      if (!charts) {
        charts = [
          chart(connBox, "New connections per second", { names: ["conn/s"], data: () => conn }, (v) => rate(v, "")),
          chart(bytesBox, "Bytes per second", { names: ["in", "out"], data: () => byteData }, bytes),
          chart(errBox, "Errors per second", { names: ["errors/s"], data: () => errs }, (v) => rate(v, "")),
        ];
      }
      charts[0].setData(conn);
      charts[1].setData(byteData);
      charts[2].setData(errs);
      const peak = (column) => column.reduce((m, v) => (v !== null && v > m ? v : m), 0);
      const span = series.t.length ? Math.round(series.t[series.t.length - 1] - series.t[0]) : 0;
      chartSummary.textContent =
        `${series.t.length} samples over ${span} s; peaks: ${rate(peak(series.values[0]), " conn/s")}, ` +
        `${byteRate(peak(series.values[1]))} in, ${byteRate(peak(series.values[2]))} out, ` +
        `${rate(peak(series.values[3]), " errors/s")}`;
      chartSummary.dataset.peakConnections = String(peak(series.values[0]));
    }
    if (!event.changed.has(key) && event.kind !== "snapshot") return;
    title.textContent = `Route ${key}${route.name ? ` (${route.name})` : ""}`;
    enabled.checked = route.enabled;
    const fig = (label, value) => [h("div", {}, h("dt", {}, label), h("dd", { "data-figure": label }, value))];
    summary.replaceChildren(
      ...fig("URL", route.url), ...fig("Balance", route.balance),
      ...fig("Sessions now", s ? String(s.connections_active) : "–"),
      ...fig("Max", s ? String(s.connections_max) : "–"),
      ...fig("Limit", route.max_connections ?? "none"),
      ...fig("Total", s ? String(s.connections_total) : "–"),
      ...fig("Conn/s", rate(s?.rates?.connections)),
      ...fig("Bytes in", s ? `${bytes(s.bytes_in)} (${byteRate(s.rates?.bytes_in)})` : "–"),
      ...fig("Bytes out", s ? `${bytes(s.bytes_out)} (${byteRate(s.rates?.bytes_out)})` : "–"),
      ...fig("Errors", s ? String(s.errors) : "–"),
      ...fig("Health check", route.health_check ? `every ${route.health_check.interval} s` : "off"),
    );
    const counts = new Map((s?.backends || []).map((b) => [b.id, b]));
    backendsBody.replaceChildren(
      ...route.backends.map((b) => {
        const c = counts.get(b.id);
        return h("tr", { "data-backend": String(b.id) },
          h("th", { scope: "row" }, String(b.id)),
          h("td", {}, `${b.ip}:${b.port}`),
          h("td", {}, h("span", { class: `badge state-${b.state}`, "data-field": "state" }, b.state)),
          h("td", {}, h("span", { class: `badge health-${b.health}`, "data-field": "health", title: b.health_reason }, b.health)),
          h("td", {}, lastCheck(b)),
          h("td", { class: "num", "data-field": "weight" }, String(b.weight)),
          h("td", { class: "num" }, String(b.active_connections)),
          h("td", { class: "num" }, c ? String(c.connections_max) : "–"),
          h("td", { class: "num" }, c ? String(c.connections_total) : "–"),
          h("td", { class: "num" }, c ? String(c.connect_failures) : "–"),
          h("td", { class: "num" }, c ? `${bytes(c.bytes_in)} / ${bytes(c.bytes_out)}` : "–"),
          h("td", { class: "actions" }, backendActions(b)));
      }),
    );
    if (!route.backends.length) backendsBody.replaceChildren(h("tr", {}, h("td", { colspan: 12, class: "muted" }, "No backends yet.")));
    toxicsBody.replaceChildren(...route.toxics.map(toxicRow));
    if (!route.toxics.length) toxicsBody.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No toxics.")));
  }

  return {
    el,
    update,
    destroy() {
      closed = true;
      for (const c of charts || []) c.destroy();
    },
  };
}
