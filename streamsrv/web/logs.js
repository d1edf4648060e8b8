// A logs tab: GET .../pods/NAME/log?container=C&follow=true read as a stream (fetch() with the
// bearer token), shown in a <pre>. Lines are asked for with timestamps, so that resuming (after
// Stop, or after the tab was hidden) reads on from the last line shown instead of again from
// the tail. A hidden tab stops reading: a browser keeps at most six connections to a server
// over HTTP/1.1, and a follow holds one for as long as it runs.
import { authFetch, el, lines, podPath } from "./api.js";
import { Tab } from "./tabs.js";

const MAX_LINES = 10000;
const STAMP = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d) (.*)$/s;

export class LogsTab extends Tab {
  constructor(target, { tailLines = 500 } = {}) {
    super("logs", `${target.pod}/${target.container}: logs`);
    this.target = target;
    this.tailLines = tailLines;
    this.follow = true;  // what the user asked for; a hidden tab pauses it
    this.reader = null;  // the AbortController of the read in progress
    this.lastStamp = null;
    this.entries = [];  // [stamp, text] of the lines shown, at most MAX_LINES

    this.status = el("span", { class: "tab-status" });
    this.toggle = el("button", { class: "follow-toggle", type: "button", onclick: () => this.setFollow(!this.follow) });
    this.stampsBox = el("input", { type: "checkbox", class: "timestamps", onchange: () => this.render() });
    this.wrapBox = el("input", { type: "checkbox", class: "wrap", checked: true,
      onchange: () => this.pre.classList.toggle("nowrap", !this.wrapBox.checked) });
    this.pre = el("pre", { class: "log", tabindex: 0 });
    this.scroller = el("div", { class: "log-scroll" }, this.pre);
    this.stick = true;  // keep the newest line in view (until the user scrolls up)
    this.scroller.addEventListener("scroll", () => { if (!this.panel.hidden) this.stick = this.atBottom(); });
    this.panel.append(
      el("div", { class: "toolbar" },
        this.status, el("span", { class: "spacer" }),
        el("label", {}, this.stampsBox, " timestamps"),
        el("label", {}, this.wrapBox, " wrap"),
        el("button", { class: "clear", type: "button", onclick: () => { this.entries = []; this.render(); } }, "Clear"),
        this.toggle),
      this.scroller);
    this.updateToggle();
  }

  url() {
    const q = new URLSearchParams({ container: this.target.container, follow: "true", timestamps: "true" });
    const m = this.lastStamp && this.lastStamp.match(/^(.{19})(\.\d+)?(.*)$/);
    if (m) q.set("sinceTime", m[1] + m[3]);  // whole seconds: lines up to lastStamp are skipped
    else q.set("tailLines", String(this.tailLines));
    return `/api/v1/${podPath(this.target.namespace, this.target.pod)}/log?${q}`;
  }

  setFollow(on) {
    this.follow = on;
    if (on && this.active) this.start();
    if (!on) {
      this.stop();
      this.setState("stopped", "not following (Resume reads on from the last line)");
    }
    this.updateToggle();
  }

  updateToggle() {
    this.toggle.textContent = this.follow ? "Stop following" : "Resume following";
  }

  atBottom() {
    return this.scroller.scrollTop + this.scroller.clientHeight >= this.scroller.scrollHeight - 4;
  }

  toBottom() {
    if (this.stick && !this.panel.hidden) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  shown() {
    this.toBottom();  // a hidden element loses its scroll position
    if (this.follow && !this.reader && this.state !== "ended") this.start();
  }

  hidden() {
    if (this.reader) {
      this.stop();
      this.setState("paused", "paused while hidden");
    }
  }

  stop() {
    const reader = this.reader;
    this.reader = null;
    reader?.abort();
  }

  async start() {
    this.stop();
    const reader = new AbortController();
    this.reader = reader;
    this.setState("connecting", "connecting");
    this.updateToggle();
    try {
      const resp = await authFetch(this.url(), { signal: reader.signal });
      if (this.reader !== reader) return;
      this.setState("following", `following ${this.target.namespace}/${this.target.pod}/${this.target.container}`);
      for await (const line of lines(resp)) {
        if (this.reader !== reader) return;
        this.add(line);
      }
      if (this.reader !== reader) return;
      this.reader = null;
      this.follow = false;
      this.setState("ended", "the container ended (Resume reads on from the last line)");
    } catch (err) {
      if (this.reader !== reader) return;  // stopped, hidden or closed: not an error
      this.reader = null;
      this.follow = false;
      this.setState("error", `cannot read the log: ${err.message}`);
    }
    this.updateToggle();
  }

  add(line) {
    const m = line.match(STAMP);
    let stamp = null;
    let text = line;
    if (m) {
      stamp = m[1] + (m[2] || "") + m[3];
      text = m[4];
      if (this.lastStamp && stamp <= this.lastStamp) return;  // already shown before a resume
      this.lastStamp = stamp;
    }
    this.entries.push([stamp, text]);
    if (this.entries.length > MAX_LINES) {
      this.entries.splice(0, this.entries.length - MAX_LINES);
      this.render();
    } else {
      this.pre.append(this.format(stamp, text));
    }
    this.toBottom();
  }

  format(stamp, text) {
    return `${this.stampsBox.checked && stamp ? `${stamp} ` : ""}${text}\n`;
  }

  render() {
    this.pre.textContent = this.entries.map(([s, t]) => this.format(s, t)).join("");
    this.toBottom();
  }

  dispose() { this.stop(); }

  text() { return this.entries.map(([, t]) => t).join("\n"); }

  info() { return { ...super.info(), follow: this.follow, lines: this.entries.length, target: this.target }; }
}
