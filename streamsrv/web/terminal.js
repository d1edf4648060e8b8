// The streamsrv browser terminal: xterm.js over the Kubernetes WebSocket channel protocol.
// The bearer token lives in sessionStorage (it comes in the URL fragment, which is never sent
// to the server); each session's WebSocket authenticates with a one-time URL only.
import { Terminal } from "./vendor/xterm.mjs";
import { FitAddon } from "./vendor/addon-fit.mjs";

const STDIN = 0, STDOUT = 1, STDERR = 2, STATUS = 3, RESIZE = 4, CLOSE = 255;
const PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();

const term = new Terminal({ cursorBlink: true, scrollback: 5000 });
const fit = new FitAddon();
term.loadAddon(fit);

let token = null;
let socket = null;
let readOnly = false;
const state = { value: "idle", exitCode: null };

function setState(value, text, exitCode = null) {
  state.value = value;
  state.exitCode = exitCode;
  const el = $("status");
  el.dataset.state = value;
  if (exitCode === null) delete el.dataset.exitCode; else el.dataset.exitCode = String(exitCode);
  el.textContent = text;
}

function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    sessionStorage.setItem("streamsrv-token", params.get("token"));
    history.replaceState(null, "", location.pathname);  // out of the address bar and history
  }
  token = sessionStorage.getItem("streamsrv-token");
}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.message || `${resp.status} ${resp.statusText}`);
  return data;
}

async function loadPods() {
  let list;
  try {
    list = await api("GET", "/api/v1/pods");
  } catch (err) {
    setState("error", `cannot list pods: ${err.message}`);
    if (String(err.message).includes("Unauthorized")) showLogin();
    return;
  }
  const select = $("target");
  const previous = select.value;
  select.replaceChildren();
  for (const pod of list.items) {
    for (const c of pod.spec.containers) {
      const option = document.createElement("option");
      option.value = JSON.stringify([pod.metadata.namespace, pod.metadata.name, c.name]);
      option.textContent = `${pod.metadata.namespace}/${pod.metadata.name}/${c.name} (${pod.status.phase})`;
      select.append(option);
    }
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  $("login").hidden = true;
  $("controls").hidden = false;
}

function showLogin() {
  $("controls").hidden = true;
  $("login").hidden = false;
}

function send(channel, payload) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  const frame = new Uint8Array(payload.length + 1);
  frame[0] = channel;
  frame.set(payload, 1);
  socket.send(frame);
}

function sendSize() {
  send(RESIZE, encoder.encode(JSON.stringify({ Width: term.cols, Height: term.rows })));
}

function exitCodeOf(status) {
  if (status.status === "Success") return 0;
  const cause = ((status.details || {}).causes || []).find((c) => c.reason === "ExitCode");
  return cause ? parseInt(cause.message, 10) : null;
}

async function open() {
  if (socket) {
    const old = socket;
    socket = null;
    old.close();
  }
  const [namespace, pod, container] = JSON.parse($("target").value);
  const mode = $("mode").value;
  readOnly = $("readonly").checked;
  const command = $("command").value.trim().split(/\s+/).filter(Boolean);
  setState("connecting", `connecting to ${namespace}/${pod}/${container}`);
  let session;
  try {
    session = await api("POST",
      `/api/streamsrv/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(pod)}/sessions`,
      { container, mode, command: command.length ? command : ["sh"], tty: true, stdin: !readOnly });
  } catch (err) {
    setState("error", `cannot open a session: ${err.message}`);
    term.write(`\r\n\x1b[31m[cannot open a session: ${err.message}]\x1b[0m\r\n`);
    return;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}${session.url}`, PROTOCOLS);
  ws.binaryType = "arraybuffer";
  socket = ws;
  $("reconnect").disabled = false;
  const label = `${mode} ${namespace}/${pod}/${container}${readOnly ? " (read-only)" : ""}`;
  let ended = false;
  ws.onopen = () => {
    if (socket !== ws) return;
    setState("open", label);
    fit.fit();
    sendSize();
    term.focus();
  };
  ws.onmessage = (event) => {
    if (socket !== ws) return;
    const data = new Uint8Array(event.data);
    if (data.length === 0) return;
    const channel = data[0];
    const payload = data.subarray(1);
    if (channel === STDOUT || channel === STDERR) {
      term.write(payload);
    } else if (channel === STATUS && payload.length) {
      let status;
      try { status = JSON.parse(new TextDecoder().decode(payload)); } catch { status = {}; }
      const code = exitCodeOf(status);
      ended = true;
      if (code === null) {
        setState("exited", `ended: ${status.message || "unknown error"}`);
        term.write(`\r\n\x1b[31m[${status.message || "session ended"}]\x1b[0m\r\n`);
      } else {
        setState("exited", `exited with status ${code}`, code);
        term.write(`\r\n\x1b[33m[process exited with status ${code}]\x1b[0m\r\n`);
      }
    }
  };
  ws.onclose = (event) => {
    if (socket !== ws) return;
    socket = null;
    if (!ended) {
      if (mode === "attach" && event.wasClean) {
        setState("exited", "the container ended", 0);
      } else {
        setState("closed", `connection closed (${event.code})`);
        term.write("\r\n\x1b[31m[connection closed]\x1b[0m\r\n");
      }
    }
  };
}

term.onData((text) => {
  if (readOnly) return;  // read-only: no keystroke ever leaves the page
  send(STDIN, encoder.encode(text));
});
term.onBinary((text) => {
  if (readOnly) return;
  send(STDIN, Uint8Array.from(text, (c) => c.charCodeAt(0)));
});
term.onResize(() => sendSize());
window.addEventListener("resize", () => fit.fit());

window.streamsrvTerminal = {
  term,
  text() {
    const buffer = term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return lines.join("\n");
  },
  get state() { return state.value; },
  get exitCode() { return state.exitCode; },
  get readOnly() { return readOnly; },
};

document.addEventListener("DOMContentLoaded", () => {
  term.open($("terminal"));
  fit.fit();
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("streamsrv-token", token);
    loadPods();
  });
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); open(); });
  $("reconnect").addEventListener("click", () => open());
  $("refresh").addEventListener("click", () => loadPods());
  takeToken();
  if (token) loadPods(); else showLogin();
});
