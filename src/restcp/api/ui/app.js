// The dashboard: signs in (when the API asks for a token), reads the event stream, keeps
// the routes and five minutes of their rates, and shows one view at a time (#/, #/routes,
// #/route/APP/ID). Plain ES modules; no build step.
import { Api, ApiError, loadAuth, saveAuth } from "./api.js";
import { Series } from "./charts.js";
import { overview } from "./overview.js";
import { routeView } from "./route.js";
import { routesView } from "./routes.js";

const state = {
  node: null,
  routes: new Map(), // "app/id" -> the route's JSON, with its stats
  history: new Map(), // "app/id" -> Series of its rates
  nodeHistory: new Series(["conn/s", "in B/s", "out B/s", "errors/s"]),
  received: 0,
};
// Timings the browser tests read (docs/dashboard.md): first paint and the last update.
const perf = (window.restcpPerf = { snapshotAt: null, firstPaint: null, updates: 0, lastApply: null });

let api = new Api(loadAuth());
let view = null;
let controller = null;

const $ = (id) => document.getElementById(id);

function setConn(text, kind) {
  const el = $("conn");
  el.textContent = text;
  el.dataset.state = kind;
}

function showLogin(message) {
  $("view").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("login-error").textContent = message || "";
  setConn("signed out", "off");
  $("login-token").focus();
}

function record(t, route) {
  const key = `${route.app}/${route.id}`;
  const rates = route.stats?.rates;
  if (!rates) return;
  let series = state.history.get(key);
  if (!series) state.history.set(key, (series = new Series(["conn/s", "in B/s", "out B/s", "errors/s"])));
  series.push(t, [rates.connections, rates.bytes_in, rates.bytes_out, rates.errors]);
}

function onEvent(name, data) {
  const t = Date.now() / 1000;
  state.received += 1;
  if (name === "snapshot") {
    state.node = data.node;
    state.routes = new Map(data.routes.map((r) => [`${r.app}/${r.id}`, r]));
    perf.snapshotAt = performance.now();
    $("login").hidden = true;
    $("view").hidden = false;
    $("logout").hidden = !api.token;
    setConn(api.app ? `live · app ${api.app}` : "live", "on");
    for (const route of state.routes.values()) record(t, route);
    recordNode(t);
    render({ kind: "snapshot", changed: new Set(state.routes.keys()), removed: [] });
    if (perf.firstPaint === null) requestAnimationFrame(() => (perf.firstPaint = performance.now()));
  } else if (name === "update") {
    const received = performance.now();
    state.node = data.node;
    const changed = new Set();
    for (const route of data.changed) {
      const key = `${route.app}/${route.id}`;
      state.routes.set(key, route);
      changed.add(key);
    }
    for (const key of data.removed) {
      state.routes.delete(key);
      state.history.delete(key);
    }
    for (const route of state.routes.values()) record(t, route);
    recordNode(t);
    render({ kind: "update", changed, removed: data.removed });
    perf.updates += 1;
    perf.lastApply = { changed: changed.size, ms: performance.now() - received };
  } else if (name === "end") {
    saveAuth(null);
    api = new Api(null);
    showLogin(`The stream ended: ${data.reason}. Sign in again.`);
  }
}

function recordNode(t) {
  const r = state.node?.rates;
  if (r) state.nodeHistory.push(t, [r.connections, r.bytes_in, r.bytes_out, r.errors]);
}

function route() {
  const hash = location.hash || "#/";
  const parts = hash.slice(2).split("/").map(decodeURIComponent);
  if (parts[0] === "routes") return { name: "routes" };
  if (parts[0] === "route" && parts.length === 3) return { name: "route", app: parts[1], id: Number(parts[2]) };
  return { name: "overview" };
}

function render(event) {
  const where = route();
  const key = JSON.stringify(where);
  if (!view || view.key !== key) {
    view?.destroy?.();
    const ctx = { api, state };
    const made =
      where.name === "routes" ? routesView(ctx) : where.name === "route" ? routeView(ctx, where.app, where.id) : overview(ctx);
    view = { key, ...made };
    const container = $("view");
    container.replaceChildren(view.el);
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.view === where.name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    view.update({ kind: "snapshot", changed: new Set(state.routes.keys()), removed: [] });
    return;
  }
  view.update(event);
}

async function run() {
  controller?.abort();
  controller = new AbortController();
  const mine = controller;
  for (;;) {
    try {
      setConn("connecting…", "wait");
      await api.stream(onEvent, mine.signal);
      if (mine.signal.aborted) return;
      setConn("reconnecting…", "wait");
    } catch (err) {
      if (mine.signal.aborted) return;
      if (err instanceof ApiError) {
        if (err.status === 401) {
          const had = Boolean(api.token);
          saveAuth(null);
          api = new Api(null);
          showLogin(had ? "That token is not valid (unknown or revoked)." : "");
          return;
        }
        if (err.status === 403) {
          saveAuth(null);
          api = new Api(null);
          showLogin("That token cannot see the whole node: it is an app's token, so give its app too.");
          return;
        }
        if (err.status === 404) {
          saveAuth(null);
          api = new Api(null);
          showLogin("That token is not a token of that app.");
          return;
        }
      }
      setConn("disconnected; retrying…", "off");
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (mine.signal.aborted) return;
  }
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("login-token").value.trim();
  const app = $("login-app").value.trim() || null;
  $("login-token").value = "";
  const auth = { token, app };
  saveAuth(auth);
  api = new Api(auth);
  view = null;
  run();
});

$("logout").addEventListener("click", () => {
  controller?.abort();
  saveAuth(null);
  api = new Api(null);
  view = null;
  showLogin("");
});

window.addEventListener("hashchange", () => {
  if (state.node) render({ kind: "snapshot", changed: new Set(state.routes.keys()), removed: [] });
});

run();
