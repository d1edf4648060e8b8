// Tabs: a bar of buttons over a stack of panels. Each tab (a session, a log, a replay) is a
// Tab with a state shown on its button (a coloured dot, an exit code) and in its own panel.
import { el } from "./api.js";

let nextId = 1;

export class Tab {
  constructor(kind, title) {
    this.id = nextId++;
    this.kind = kind;
    this.title = title;
    this.state = "idle";
    this.stateText = "";
    this.exitCode = null;
    this.tabs = null;  // set by Tabs.add
    this.badge = el("span", { class: "badge" });
    this.button = el("div", { class: "tab", role: "tab", "data-tab-id": this.id, "data-kind": kind,
      title, tabindex: 0 },
    el("span", { class: "dot" }), el("span", { class: "tab-title" }, title), this.badge,
    el("button", { class: "tab-close", type: "button", title: "Close tab", "aria-label": "Close tab",
      onclick: (e) => { e.stopPropagation(); this.tabs.close(this.id); } }, "×"));
    this.button.addEventListener("click", () => this.tabs.activate(this.id));
    this.button.addEventListener("auxclick", (e) => { if (e.button === 1) this.tabs.close(this.id); });
    this.panel = el("section", { class: `panel ${kind}`, role: "tabpanel", "data-tab-id": this.id,
      "data-kind": kind });
    this.setState("idle", "");
  }

  setState(value, text, exitCode = null) {
    this.state = value;
    this.stateText = text;
    this.exitCode = exitCode;
    for (const node of [this.button, this.panel]) {
      node.dataset.state = value;
      if (exitCode === null) delete node.dataset.exitCode; else node.dataset.exitCode = String(exitCode);
    }
    this.badge.textContent = exitCode === null ? "" : String(exitCode);
    if (this.status) this.status.textContent = text;  // a subclass's status line, once made
    this.tabs?.changed(this);
  }

  get active() { return this.tabs?.active === this; }

  /** The panel became visible (fit a terminal, start a stream). */
  shown() {}
  /** The panel was hidden. */
  hidden() {}
  /** The tab is being closed: end what it holds. */
  dispose() {}
  /** What a test may read: the visible text of the tab. */
  text() { return this.panel.textContent; }

  info() {
    return { id: this.id, kind: this.kind, title: this.title, state: this.state,
      stateText: this.stateText, exitCode: this.exitCode, active: this.active };
  }
}

export class Tabs {
  constructor(bar, panels, empty, onActiveChange) {
    this.bar = bar;
    this.panels = panels;
    this.empty = empty;
    this.list = [];
    this.active = null;
    this.onActiveChange = onActiveChange;
    bar.addEventListener("keydown", (e) => {
      const on = e.target.closest?.(".tab");
      if ((e.key === "Enter" || e.key === " ") && on && e.target === on) {
        e.preventDefault();
        this.activate(Number(on.dataset.tabId));
        return;
      }
      const i = this.list.indexOf(this.active);
      if (e.key === "ArrowRight" && i >= 0) this.activate(this.list[(i + 1) % this.list.length].id);
      else if (e.key === "ArrowLeft" && i >= 0) this.activate(this.list[(i + this.list.length - 1) % this.list.length].id);
      else if (e.key === "Delete" && this.active) this.close(this.active.id);
      else return;
      e.preventDefault();
      this.active?.button.focus();
    });
  }

  add(tab) {
    tab.tabs = this;
    this.list.push(tab);
    this.bar.append(tab.button);
    this.panels.append(tab.panel);
    this.activate(tab.id);
    return tab;
  }

  get(id) { return this.list.find((t) => t.id === id) || null; }

  activate(id) {
    const tab = this.get(id);
    if (!tab) return;
    const before = this.active;
    if (before === tab) return;
    this.active = tab;
    for (const t of this.list) {
      const on = t === tab;
      t.button.classList.toggle("active", on);
      t.button.setAttribute("aria-selected", String(on));
      t.panel.hidden = !on;
    }
    this.empty.hidden = true;
    if (before) before.hidden();
    tab.shown();
    this.onActiveChange(tab);
  }

  close(id) {
    const tab = this.get(id);
    if (!tab) return;
    const i = this.list.indexOf(tab);
    this.list.splice(i, 1);
    tab.dispose();
    tab.button.remove();
    tab.panel.remove();
    if (this.active === tab) {
      this.active = null;
      const next = this.list[Math.min(i, this.list.length - 1)];
      if (next) this.activate(next.id);
      else {
        this.empty.hidden = false;
        this.onActiveChange(null);
      }
    }
  }

  changed(tab) {
    if (tab === this.active) this.onActiveChange(tab);
  }
}
