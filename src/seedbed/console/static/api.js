// The console's only way to the server: fetch() with the key as a Bearer header, kie's
// envelope unwrapped, every refusal turned into an ApiError with a readable message.

const KEY = "seedbed.apiKey";
const ADMIN = "seedbed.adminToken";

export const session = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
  get admin() { return sessionStorage.getItem(ADMIN) || ""; },
  set admin(value) { value ? sessionStorage.setItem(ADMIN, value) : sessionStorage.removeItem(ADMIN); },
};

export class ApiError extends Error {
  constructor(code, message, retryAfter = null) {
    super(message);
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// What a person should read for each kie code; the server's own message follows it.
const EXPLAIN = {
  401: "This API key is not valid (wrong, or revoked).",
  402: "Not enough credits on this key.",
  413: "Too large.",
  422: "The request was refused.",
  429: "Too many requests: slow down.",
  455: "The server is in maintenance: new tasks are refused for now.",
  500: "The server could not do this right now.",
  505: "This model is not available on this server.",
};

export function explain(error) {
  if (!(error instanceof ApiError)) return `Could not reach the server (${error.message}).`;
  const head = EXPLAIN[error.code] || "";
  const said = error.message && error.message !== head ? ` Server: ${error.message}` : "";
  const wait = error.retryAfter ? ` Try again in ${Math.ceil(error.retryAfter)} s.` : "";
  return (head + said + wait).trim();
}

function headers(token, extra = {}) {
  return token ? { Authorization: `Bearer ${token}`, ...extra } : extra;
}

async function unwrap(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(response.status, `Unexpected answer (HTTP ${response.status})`);
  }
  const code = body.code ?? response.status;
  if (code !== 200 || body.success === false) {
    const retry = Number(response.headers.get("Retry-After")) || null;
    throw new ApiError(code, body.msg || `HTTP ${response.status}`, retry);
  }
  return body.data;
}

export async function call(path, { method = "GET", body, token = session.key, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const init = { method, headers: headers(token), cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  return unwrap(await fetch(url, init));
}

export const admin = (path, options = {}) => call(path, { ...options, token: session.admin });

export async function upload(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("uploadPath", "console");
  // a fresh name each time: an upload of the same name would replace the earlier one
  form.append("fileName", `${Date.now().toString(36)}-${file.name}`.slice(-200));
  const response = await fetch("/api/file-stream-upload", {
    method: "POST", headers: headers(session.key), body: form,
  });
  return unwrap(response);
}

// Server-Sent Events over fetch: EventSource cannot send an Authorization header. Calls
// onEvent(kind, data) for each event until the stream ends or signal aborts; reconnects with
// Last-Event-ID after a dropped connection, as EventSource would.
export async function follow(taskId, onEvent, signal) {
  let lastId = "";
  for (let attempt = 0; attempt < 20 && !signal.aborted; attempt++) {
    const extra = lastId ? { "Last-Event-ID": lastId } : {};
    let response;
    try {
      response = await fetch(`/api/v1/jobs/events?taskId=${encodeURIComponent(taskId)}`, {
        headers: headers(session.key, extra), signal, cache: "no-store",
      });
    } catch (error) {
      if (signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    if (response.status === 204) return;
    if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      await unwrap(response); // a refusal in kie's envelope: throws
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let ended = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          const event = { kind: "message", data: [], id: null };
          for (const line of block.split(/\r?\n/)) {
            if (!line || line.startsWith(":")) continue;
            const at = line.indexOf(":");
            const field = at < 0 ? line : line.slice(0, at);
            const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
            if (field === "event") event.kind = text;
            else if (field === "data") event.data.push(text);
            else if (field === "id") event.id = text;
          }
          if (event.id !== null) lastId = event.id;
          if (!event.data.length) continue;
          const data = JSON.parse(event.data.join("\n"));
          onEvent(event.kind, data);
          if (data.state === "success" || data.state === "fail") ended = true;
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    if (ended) return;
  }
}
