// The API as the page calls it: every request with the token in the Authorization header
// (never in a URL), and the event stream read with fetch, since EventSource cannot send
// that header. Same origin only: the API refuses other origins' writes (docs/api.md).

const KEY = "restcp.auth";

export function loadAuth() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

export function saveAuth(auth) {
  if (auth) sessionStorage.setItem(KEY, JSON.stringify(auth));
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export class Api {
  constructor(auth) {
    this.token = auth?.token || null;
    this.app = auth?.app || null;
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  // One request; resolves {status, body} for 2xx (202 included: pending in a cluster),
  // throws ApiError with the problem document otherwise.
  async call(method, path, body) {
    const init = { method, headers: this.headers(), credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return { status: response.status, body: data };
  }

  eventsPath() {
    return this.app ? `/apps/${encodeURIComponent(this.app)}/events` : "/events";
  }

  // Reads the event stream, calling onEvent(name, data) for each event; resolves when the
  // stream ends, rejects with ApiError when it is refused.
  async stream(onEvent, signal) {
    const response = await fetch(this.eventsPath(), {
      headers: this.headers({ Accept: "text/event-stream" }),
      credentials: "omit",
      cache: "no-store",
      signal,
    });
    if (!response.ok) {
      let problem = null;
      try {
        problem = await response.json();
      } catch {
        /* no body */
      }
      throw new ApiError(response.status, problem);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }
}
