// Small DOM helpers: elements built with text nodes only (nothing from the API is ever
// parsed as HTML), number formats, toasts and the confirmation dialog.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function rate(n, unit = "/s") {
  if (n === null || n === undefined) return "–";
  return `${Number(n).toFixed(n >= 100 ? 0 : 1)}${unit}`;
}

export function byteRate(n) {
  return n === null || n === undefined ? "–" : `${bytes(n)}/s`;
}

export function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  if (d) return `${d}d ${hh}h ${mm}m`;
  if (hh) return `${hh}h ${mm}m ${ss}s`;
  if (mm) return `${mm}m ${ss}s`;
  return `${ss}s`;
}

export function ago(unixSeconds) {
  if (!unixSeconds) return "never";
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  return `${duration(s)} ago`;
}

export function toast(text, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("p", { class: `toast ${kind}`, role: kind === "error" ? "alert" : null }, text);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
  return item;
}

// Resolves true when the user confirms ``text`` in the page's modal dialog.
export function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

// What a write answered: 202 is stored but pending on the node serving the route.
export function reportWrite(result, what) {
  if (result.status === 202) toast(`${what}: pending — stored, the node serving the route applies it`, "pending");
  else toast(`${what}: done`, "ok");
}

export function reportError(err, what) {
  toast(`${what} failed: ${err.message}`, "error");
}
