// A session tab: exec or attach on one container, an xterm.js terminal over the Kubernetes
// WebSocket channel protocol (v5.channel.k8s.io). The socket authenticates with a one-time URL
// only (browsers cannot set headers on it); the page asks the API for one per connection.
import { Terminal } from "./vendor/xterm.mjs";
import { FitAddon } from "./vendor/addon-fit.mjs";
import { SearchAddon } from "./vendor/addon-search.mjs";
import { api, el, podPath } from "./api.js";
import { Tab } from "./tabs.js";

const STDIN = 0, STDOUT = 1, STDERR = 2, STATUS = 3, RESIZE = 4;
const PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const encoder = new TextEncoder();
const SEARCH_DECORATIONS = {
  matchBackground: "#5a4a00", matchOverviewRuler: "#b89500",
  activeMatchBackground: "#b36b00", activeMatchColorOverviewRuler: "#ff9900",
};

function exitCodeOf(status) {
  if (status.status === "Success") return 0;
  const cause = ((status.details || {}).causes || []).find((c) => c.reason === "ExitCode");
  return cause ? parseInt(cause.message, 10) : null;
}

function button(cls, text, title, onclick) {
  return el("button", { class: cls, type: "button", title, onclick }, text);
}

export class SessionTab extends Tab {
  /** target: {namespace, pod, container}; options: {mode, command, readOnly, onEnd}. */
  constructor(target, { mode = "exec", command = ["sh"], readOnly = false, onEnd = () => {} } = {}) {
    const what = mode === "exec" ? (command.join(" ") || "sh") : "attach";
    super(mode, `${target.pod}/${target.container}: ${what}${readOnly ? " (read-only)" : ""}`);
    this.target = target;
    this.mode = mode;
    this.command = command;
    this.readOnly = readOnly;
    this.onEnd = onEnd;
    this.socket = null;
    this.ended = false;
    this.connects = 0;

    this.term = new Terminal({ cursorBlink: true, scrollback: 5000, allowProposedApi: true });
    this.fitAddon = new FitAddon();
    this.search = new SearchAddon();
    this.term.loadAddon(this.fitAddon);
    this.term.loadAddon(this.search);

    this.status = el("span", { class: "tab-status" });
    this.searchBox = el("input", { class: "search", type: "search", placeholder: "Search (Ctrl+Shift+F)",
      "aria-label": "Search the terminal", size: 18 });
    this.searchCount = el("span", { class: "search-count" });
    this.pasteButton = button("paste", "Paste", "Paste the clipboard (Ctrl+Shift+V)", () => this.pasteClipboard());
    this.bannerText = el("span", { class: "banner-text" });
    this.reconnectButton = button("reconnect", "Reconnect", "Open a new session on this container", () => this.connect());
    this.banner = el("div", { class: "banner", hidden: true }, this.bannerText, this.reconnectButton,
      button("close-tab", "Close tab", "Close this tab", () => this.tabs.close(this.id)));
    this.termBox = el("div", { class: "term" });
    this.panel.append(
      el("div", { class: "toolbar" },
        this.status,
        readOnly ? el("span", { class: "pill" }, "read-only") : null,
        el("span", { class: "spacer" }),
        this.searchBox, this.searchCount,
        button("search-prev", "↑", "Previous match (Shift+Enter)", () => this.find(false)),
        button("search-next", "↓", "Next match (Enter)", () => this.find(true)),
        button("copy", "Copy", "Copy the selection (Ctrl+Shift+C)", () => this.copySelection()),
        this.pasteButton),
      el("div", { class: "term-wrap" }, this.termBox, this.banner));
    this.pasteButton.disabled = readOnly;

    this.searchBox.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); this.find(!e.shiftKey); }
      if (e.key === "Escape") { e.preventDefault(); this.search.clearDecorations(); this.term.focus(); }
    });
    this.searchBox.addEventListener("input", () => this.find(true, true));
    this.search.onDidChangeResults(({ resultIndex, resultCount }) => {
      this.searchCount.textContent = this.searchBox.value
        ? (resultCount ? `${resultIndex + 1}/${resultCount}` : "no match") : "";
    });

    this.term.onData((text) => {
      if (this.readOnly) return;  // read-only: no keystroke (nor paste) ever leaves the page
      this.send(STDIN, encoder.encode(text));
    });
    this.term.onBinary((text) => {
      if (this.readOnly) return;
      this.send(STDIN, Uint8Array.from(text, (c) => c.charCodeAt(0)));
    });
    this.term.onResize(() => this.sendSize());
    this.term.attachCustomKeyEventHandler((e) => this.key(e));
    this.resizeObserver = new ResizeObserver(() => this.fit());
  }

  /** Keys the page takes before xterm.js: copy, paste and search. */
  key(e) {
    if (e.type !== "keydown" || !e.ctrlKey || !e.shiftKey || e.altKey || e.metaKey) return true;
    const k = e.key.toLowerCase();
    if (k === "c") {
      e.preventDefault();
      this.copySelection();
      return false;
    }
    if (k === "v") {
      // Not sent as ^V: the browser's own paste (Ctrl+Shift+V pastes as plain text) reaches
      // xterm.js's textarea, which hands the text to onData, with no clipboard permission.
      return false;
    }
    if (k === "f") {
      e.preventDefault();
      this.searchBox.focus();
      this.searchBox.select();
      return false;
    }
    return true;
  }

  async copySelection() {
    const text = this.term.getSelection();
    if (!text) return false;
    try {
      await navigator.clipboard.writeText(text);
      this.flash("copied");
      return true;
    } catch (err) {
      this.flash(`cannot copy: ${err.message}`);
      return false;
    }
  }

  async pasteClipboard() {
    if (this.readOnly) return;
    this.term.focus();  // before the wait: a key pressed meanwhile goes to the terminal, not the button
    try {
      const text = await navigator.clipboard.readText();
      if (text) this.term.paste(text);
    } catch (err) {
      this.flash(`cannot read the clipboard: ${err.message}; use Ctrl+Shift+V`);
    }
  }

  flash(text) {
    this.searchCount.textContent = text;
    clearTimeout(this.flashTimer);
    this.flashTimer = setTimeout(() => { if (this.searchCount.textContent === text) this.searchCount.textContent = ""; }, 3000);
  }

  find(forward, incremental = false) {
    const query = this.searchBox.value;
    if (!query) {
      this.search.clearDecorations();
      this.searchCount.textContent = "";
      return false;
    }
    const options = { decorations: SEARCH_DECORATIONS, incremental };
    const found = forward ? this.search.findNext(query, options) : this.search.findPrevious(query, options);
    if (!found) this.searchCount.textContent = "no match";
    return found;
  }

  send(channel, payload) {
    const ws = this.socket;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const frame = new Uint8Array(payload.length + 1);
    frame[0] = channel;
    frame.set(payload, 1);
    ws.send(frame);
  }

  sendSize() {
    this.send(RESIZE, encoder.encode(JSON.stringify({ Width: this.term.cols, Height: this.term.rows })));
  }

  fit() {
    if (!this.opened || this.panel.hidden || !this.termBox.clientWidth || !this.termBox.clientHeight) return;
    this.fitAddon.fit();
  }

  shown() {
    if (!this.opened) {
      this.opened = true;
      this.term.open(this.termBox);
      this.resizeObserver.observe(this.termBox);
    }
    this.fit();
    this.term.focus();
  }

  showBanner(text) {
    this.bannerText.textContent = text;
    this.banner.hidden = text === null;
  }

  async connect() {
    this.dropSocket();
    this.ended = false;
    this.showBanner(null);
    const { namespace, pod, container } = this.target;
    if (this.connects++) this.term.write("\r\n\x1b[36m[reconnecting: a new session]\x1b[0m\r\n");
    this.setState("connecting", `connecting to ${namespace}/${pod}/${container}`);
    let session;
    try {
      session = await api("POST", `/api/streamsrv/v1/${podPath(namespace, pod)}/sessions`,
        { container, mode: this.mode, command: this.command, tty: true, stdin: !this.readOnly });
    } catch (err) {
      this.setState("error", `cannot open a session: ${err.message}`);
      this.term.write(`\r\n\x1b[31m[cannot open a session: ${err.message}]\x1b[0m\r\n`);
      this.showBanner(`Cannot open a session: ${err.message}`);
      return;
    }
    if (this.disposed) return;
    this.term.options.convertEol = session.tty === false;  // bare \n from a session without a tty
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${session.url}`, PROTOCOLS);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    const label = `${this.mode} ${namespace}/${pod}/${container}${this.readOnly ? " (read-only)" : ""}`;
    ws.onopen = () => {
      if (this.socket !== ws) return;
      this.setState("open", label);
      this.fit();
      this.sendSize();
      if (this.active) this.term.focus();
    };
    ws.onmessage = (event) => {
      if (this.socket !== ws) return;
      const data = new Uint8Array(event.data);
      if (data.length === 0) return;
      const channel = data[0];
      const payload = data.subarray(1);
      if (channel === STDOUT || channel === STDERR) {
        this.term.write(payload);
      } else if (channel === STATUS && payload.length) {
        let status;
        try { status = JSON.parse(new TextDecoder().decode(payload)); } catch { status = {}; }
        this.finish(status);
      }
    };
    ws.onclose = (event) => {
      if (this.socket !== ws) return;
      this.socket = null;
      if (this.ended) return;
      if (this.mode === "attach" && event.wasClean && event.code === 1000) {
        this.ended = true;
        this.setState("exited", "the container ended", 0);
        this.term.write("\r\n\x1b[33m[the container ended]\x1b[0m\r\n");
        this.showBanner("The container ended.");
      } else {
        this.setState("disconnected", `connection lost (${event.code})`);
        this.term.write(`\r\n\x1b[31m[connection lost (${event.code})]\x1b[0m\r\n`);
        this.showBanner(`Connection lost (code ${event.code}): the session is gone.`);
      }
      this.onEnd(this);
    };
  }

  finish(status) {
    const code = exitCodeOf(status);
    this.ended = true;
    if (code === null) {
      this.setState("exited", `ended: ${status.message || "unknown error"}`);
      this.term.write(`\r\n\x1b[31m[${status.message || "session ended"}]\x1b[0m\r\n`);
      this.showBanner(`Ended: ${status.message || "unknown error"}`);
    } else {
      this.setState("exited", `exited with status ${code}`, code);
      this.term.write(`\r\n\x1b[33m[process exited with status ${code}]\x1b[0m\r\n`);
      this.showBanner(`The process exited with status ${code}.`);
    }
    this.onEnd(this);
  }

  dropSocket() {
    const old = this.socket;
    this.socket = null;
    if (old && old.readyState <= WebSocket.OPEN) old.close(1000);  // the server ends its process
  }

  dispose() {
    this.disposed = true;
    const live = this.socket !== null && !this.ended;
    this.dropSocket();
    this.resizeObserver.disconnect();
    this.term.dispose();
    if (live) this.onEnd(this);
  }

  text() {
    const buffer = this.term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return lines.join("\n");
  }

  info() {
    return { ...super.info(), mode: this.mode, readOnly: this.readOnly, target: this.target,
      rows: this.term.rows, cols: this.term.cols };
  }
}
