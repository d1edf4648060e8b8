// The streamsrv browser tool: a sidebar of pods (live, from a watch) and recordings, and tabs
// of sessions (exec, attach), logs and replays. Modules: api.js (token, fetch, streams),
// pods.js (the watch and the sidebar), tabs.js, terminal.js (sessions), logs.js,
// recordings.js (the list and asciinema-player).
import { onUnauthorized, setToken, splitCommand, takeToken } from "./api.js";
import { LogsTab } from "./logs.js";
import { PodWatch, renderPods } from "./pods.js";
import { RecordingList, ReplayTab } from "./recordings.js";
import { Tabs } from "./tabs.js";
import { SessionTab } from "./terminal.js";

const $ = (id) => document.getElementById(id);
let tabs = null;
let watch = null;
let recordings = null;
let refreshTimers = [];

function showActive(tab) {
  const status = $("status");
  status.dataset.state = tab ? tab.state : "idle";
  if (tab && tab.exitCode !== null) status.dataset.exitCode = String(tab.exitCode);
  else delete status.dataset.exitCode;
  status.textContent = tab ? tab.stateText : "no tab open";
  document.title = tab ? `${tab.title} – streamsrv` : "streamsrv";
}

/** After a session ends its recording is complete: list the recordings again, twice (the
 * server may close the file a moment after the socket). */
function recordingsChanged() {
  for (const t of refreshTimers) clearTimeout(t);
  refreshTimers = [300, 1500].map((ms) => setTimeout(() => recordings.refresh(), ms));
}

function openTab(kind, target) {
  if (kind === "logs") {
    const tail = parseInt($("tail").value, 10);
    return tabs.add(new LogsTab(target, { tailLines: Number.isFinite(tail) && tail >= 0 ? tail : 500 }));
  }
  const command = splitCommand($("command").value);
  const tab = new SessionTab(target, {
    mode: kind, command: command.length ? command : ["sh"], readOnly: $("readonly").checked,
    onEnd: recordingsChanged,
  });
  tabs.add(tab);
  tab.connect();
  return tab;
}

function showLogin(message) {
  watch?.stop();
  $("login-message").textContent = message || "";
  $("login").hidden = false;
  $("app").hidden = true;
  $("token").focus();
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  watch.start();
  recordings.refresh();
}

function setWatchState(state, text) {
  const node = $("watch-state");
  node.dataset.state = state;
  node.textContent = { live: "live", connecting: "listing…", retrying: "reconnecting…", error: "stopped" }[state] || state;
  node.title = text;
}

document.addEventListener("DOMContentLoaded", () => {
  tabs = new Tabs($("tabbar"), $("panels"), $("empty"), showActive);
  watch = new PodWatch((pods) => renderPods($("pods"), pods, openTab), setWatchState);
  recordings = new RecordingList($("recordings"), $("recordings-note"),
    (item) => tabs.add(new ReplayTab(item)));
  onUnauthorized(() => showLogin("The server refused the token."));
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
    start();
  });
  $("refresh-recordings").addEventListener("click", () => recordings.refresh());
  $("toggle-sidebar").addEventListener("click", () => {
    document.body.classList.toggle("no-sidebar");
    tabs.active?.shown();
  });
  showActive(null);
  if (takeToken()) start(); else showLogin();
});

// What the browser tests read (and a console user may find handy).
window.streamsrv = {
  get tabs() { return tabs.list.map((t) => t.info()); },
  tab(id) { return tabs.get(id); },
  get active() { return tabs.active; },
  text(id) { return tabs.get(id)?.text() ?? null; },
  activate(id) { tabs.activate(id); },
  get watch() { return { state: watch.state, lists: watch.lists, rv: watch.rv, pods: [...watch.pods.keys()] }; },
  get recordings() { return recordings.items; },
  open: openTab,
};
// The active session tab, as the single-terminal page of old exposed it.
const activeSession = () => (tabs?.active instanceof SessionTab ? tabs.active : null);
window.streamsrvTerminal = {
  get term() { return activeSession()?.term ?? null; },
  text() { return activeSession()?.text() ?? ""; },
  get state() { return activeSession()?.state ?? "idle"; },
  get exitCode() { return activeSession()?.exitCode ?? null; },
  get readOnly() { return activeSession()?.readOnly ?? false; },
};
