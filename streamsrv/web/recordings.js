// Recorded sessions: the list (GET /api/streamsrv/v1/recordings, served when the server runs
// with --record DIR) and a replay tab that plays one .cast file with asciinema-player. The cast
// is fetched with the bearer token and handed to the player as text: the player itself never
// asks the server for anything (it would do so without the token).
import { ApiError, api, authFetch, el } from "./api.js";
import { Tab } from "./tabs.js";

const LIST = "/api/streamsrv/v1/recordings";
let playerScript = null;

/** asciinema-player's bundle, loaded on the first replay (a classic script: window.AsciinemaPlayer). */
function loadPlayer() {
  if (window.AsciinemaPlayer) return Promise.resolve(window.AsciinemaPlayer);
  playerScript ??= new Promise((resolve, reject) => {
    const script = el("script", { src: "/ui/static/vendor/asciinema-player.min.js" });
    script.onload = () => resolve(window.AsciinemaPlayer);
    script.onerror = () => { playerScript = null; reject(new Error("cannot load asciinema-player")); };
    document.head.append(script);
  });
  return playerScript;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function duration(item) {
  if (!item.start || !item.end) return "";
  const s = Math.max(0, (new Date(item.end) - new Date(item.start)) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** The list's command is an argv; a recording still in progress may say it as one string. */
const commandOf = (item) => (Array.isArray(item.command) ? item.command.join(" ") : String(item.command || ""));
const targetOf = (item) => (item.pod ? `${item.namespace}/${item.pod}/${item.container}` : item.title || item.name);

export class RecordingList {
  /** list: the <ul>; note: a <p> for what there is to say; open(item): play one. */
  constructor(list, note, open) {
    this.list = list;
    this.note = note;
    this.open = open;
    this.items = [];
    this.loading = null;
    this.again = false;
  }

  /** Lists again (at most one request at a time; a call meanwhile lists once more after it). */
  refresh() {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = this.load().finally(() => {
      this.loading = null;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    });
    return this.loading;
  }

  async load() {
    let data;
    try {
      data = await api("GET", LIST);
    } catch (err) {
      this.items = [];
      this.list.replaceChildren();
      this.say(err instanceof ApiError && err.status === 404
        ? "This server keeps no recordings." : `Cannot list recordings: ${err.message}`, "error");
      return;
    }
    this.items = Array.isArray(data.items) ? data.items : [];
    if (!data.enabled && !this.items.length) {
      this.say("Recording is off: start the server with --record DIR.", "off");
    } else if (!this.items.length) {
      this.say("No recordings yet: every session is recorded.", "empty");
    } else {
      this.say(data.enabled ? "" : "Recording is off; older recordings:", "listed");
    }
    this.list.replaceChildren(...this.items.map((item) => this.row(item)));
  }

  say(text, state) {
    this.note.textContent = text;
    this.note.hidden = !text;
    this.list.dataset.state = state;
  }

  row(item) {
    const what = item.kind === "attach" ? "attach" : commandOf(item) || item.kind || "";
    const exit = item.exitCode === null || item.exitCode === undefined
      ? (item.end ? "" : "live") : `exit ${item.exitCode}`;
    return el("li", { class: "recording", "data-name": item.name },
      el("button", { type: "button", class: "play", title: `Play ${item.name}`, onclick: () => this.open(item) },
        el("span", { class: "rec-target" }, targetOf(item)),
        el("span", { class: "rec-command" }, what),
        el("span", { class: "rec-meta" },
          [when(item.start), duration(item), exit, size(item.size || 0), item.truncated ? "truncated" : ""]
            .filter(Boolean).join(" · "))));
  }
}

export class ReplayTab extends Tab {
  constructor(item) {
    super("replay", `▶ ${item.pod ? `${item.pod}/${item.container}` : item.name}`);
    this.item = item;
    this.player = null;
    this.status = el("span", { class: "tab-status" });
    this.download = el("a", { class: "download", hidden: true }, "Download .cast");
    this.screen = el("div", { class: "player" });
    this.panel.append(
      el("div", { class: "toolbar" }, this.status, el("span", { class: "spacer" }), this.download),
      el("div", { class: "player-wrap" }, this.screen));
  }

  shown() {
    if (!this.started) {
      this.started = true;
      this.load();
    }
  }

  async load() {
    const item = this.item;
    this.setState("loading", `loading ${item.name}`);
    try {
      const [text, Player] = await Promise.all([
        authFetch(`${LIST}/${encodeURIComponent(item.name)}`, { accept: "application/x-asciicast" }).then((r) => r.text()),
        loadPlayer(),
      ]);
      if (this.disposed) return;
      this.blobUrl = URL.createObjectURL(new Blob([text], { type: "application/x-asciicast" }));
      this.download.href = this.blobUrl;
      this.download.download = `${item.name}.cast`;
      this.download.hidden = false;
      this.player = Player.create({ data: text }, this.screen, {
        autoPlay: true, idleTimeLimit: 2, fit: "both", controls: true, theme: "asciinema",
        terminalFontFamily: "monospace",
      });
      this.player.addEventListener("playing", () => this.setState("playing", `playing ${item.name}`));
      this.player.addEventListener("pause", () => this.setState("paused", `paused ${item.name}`));
      this.player.addEventListener("ended", () => this.setState("ended", `played ${item.name}`));
      this.player.addEventListener("error", () => this.setState("error", `cannot play ${item.name}`));
      this.setState("ready", `${targetOf(item)}, ${when(item.start)}`);
    } catch (err) {
      this.setState("error", `cannot play ${item.name}: ${err.message}`);
    }
  }

  dispose() {
    this.disposed = true;
    this.player?.dispose();
    if (this.blobUrl) URL.revokeObjectURL(this.blobUrl);
  }

  text() {
    return [...this.screen.querySelectorAll(".ap-line")].map((l) => l.textContent.trimEnd()).join("\n");
  }

  info() { return { ...super.info(), name: this.item.name }; }
}
