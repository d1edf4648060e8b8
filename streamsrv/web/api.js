// The gateway's API as the page uses it: the bearer token, JSON calls and streamed responses.
// The token lives in sessionStorage (it comes in the URL fragment, which the browser never
// sends); it travels only in Authorization headers, never in a URL the server sees.

const KEY = "streamsrv-token";
let token = null;
const unauthorized = new Set();  // called on any 401

export class ApiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** Takes a token from the URL fragment (#token=...) into sessionStorage; true when one is held. */
export function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    sessionStorage.setItem(KEY, params.get("token"));
    history.replaceState(null, "", location.pathname);  // out of the address bar and history
  }
  token = sessionStorage.getItem(KEY);
  return !!token;
}

export function setToken(value) {
  token = value;
  sessionStorage.setItem(KEY, value);
}

export function onUnauthorized(callback) {
  unauthorized.add(callback);
}

/** fetch() with the bearer token; a non-2xx answer throws an ApiError with its Status message. */
export async function authFetch(path, { method = "GET", body, signal, accept } = {}) {
  const headers = { "Authorization": `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (accept) headers["Accept"] = accept;
  const resp = await fetch(path, {
    method, headers, signal, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!resp.ok) {
    const text = await resp.text().catch(() => "");
    let data = null;
    try { data = JSON.parse(text); } catch { /* not a Status */ }
    const message = (data && data.message) || `${resp.status} ${resp.statusText}`;
    if (resp.status === 401) for (const callback of unauthorized) callback();
    throw new ApiError(resp.status, message, data);
  }
  return resp;
}

export async function api(method, path, body) {
  const resp = await authFetch(path, { method, body });
  return resp.json();
}

/** The text of a streamed response, chunk by chunk (decoded across chunk boundaries). */
export async function* textChunks(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const text = decoder.decode(value, { stream: true });
      if (text) yield text;
    }
    const rest = decoder.decode();
    if (rest) yield rest;
  } finally {
    reader.releaseLock();
  }
}

/** Whole lines of a streamed response (a watch's JSON lines, a log); a last unterminated
 * line is yielded too when the stream ends cleanly. */
export async function* lines(resp) {
  let pending = "";
  for await (const chunk of textChunks(resp)) {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      yield pending.slice(0, nl);
      pending = pending.slice(nl + 1);
    }
  }
  if (pending) yield pending;
}

export const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/** A command line into argv as a shell would split it: spaces, '...', "..." and \ escapes
 * (no expansion of any kind: `sh -c "echo $HOME"` is three words, the third for sh). */
export function splitCommand(line) {
  const argv = [];
  let word = null;
  let quote = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = null; else word += c;
    } else if (quote === '"') {
      if (c === '"') quote = null;
      else if (c === "\\" && i + 1 < line.length && '"\\$`'.includes(line[i + 1])) word += line[++i];
      else word += c;
    } else if (/\s/.test(c)) {
      if (word !== null) argv.push(word);
      word = null;
    } else {
      word ??= "";
      if (c === "'" || c === '"') quote = c;
      else if (c === "\\" && i + 1 < line.length) word += line[++i];
      else word += c;
    }
  }
  if (word !== null) argv.push(word);
  return argv;
}

/** `/api/...` path pieces, encoded. */
export const podPath = (namespace, pod) =>
  `namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(pod)}`;

/** An element with attributes and children: el("li", {class: "x"}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}
