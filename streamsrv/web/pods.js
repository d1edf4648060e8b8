// The pods sidebar: a list, then a watch from its resource version (JSON lines ADDED, MODIFIED,
// DELETED, BOOKMARK, ERROR), as a client-go reflector does. A watch that ends (its timeout)
// watches again from the last version seen; an ERROR 410 (too old a version) lists again; a
// failure (the server gone, a dropped stream) lists again after a back-off that doubles.
import { ApiError, authFetch, el, lines, sleep } from "./api.js";

const BACKOFF_MIN = 500, BACKOFF_MAX = 30000;

class Relist extends Error {}

export class PodWatch {
  /** onChange(pods): after every change; onState(state, text): live, connecting, retrying. */
  constructor(onChange, onState) {
    this.pods = new Map();  // "ns/name" -> v1 Pod
    this.onChange = onChange;
    this.onState = onState;
    this.state = "idle";
    this.rv = "0";
    this.abort = null;
    this.lists = 0;  // how many times the pods were listed (a test reads it)
  }

  setState(state, text) {
    this.state = state;
    this.onState(state, text);
  }

  start() {
    if (this.abort) return;
    this.abort = new AbortController();
    this.run(this.abort.signal);
  }

  stop() {
    this.abort?.abort();
    this.abort = null;
  }

  async run(signal) {
    let failures = 0;
    while (!signal.aborted) {
      try {
        this.setState("connecting", failures ? "listing pods again" : "listing pods");
        const list = await (await authFetch("/api/v1/pods", { signal })).json();
        this.lists++;
        this.pods = new Map(list.items.map((p) => [key(p), p]));
        this.rv = list.metadata.resourceVersion || "0";
        this.onChange(this.pods);
        for (;;) {  // a watch that ends by itself is watched again from where it was
          const q = new URLSearchParams({ watch: "1", resourceVersion: this.rv, allowWatchBookmarks: "true" });
          const resp = await authFetch(`/api/v1/pods?${q}`, { signal });
          failures = 0;
          this.setState("live", "watching pods");
          for await (const line of lines(resp)) {
            if (line.trim()) this.apply(JSON.parse(line));
          }
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof Relist) continue;
        if (err instanceof ApiError && err.status === 401) {
          this.setState("error", "unauthorized");
          return;
        }
        failures++;
        const delay = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (failures - 1)) * (0.8 + 0.4 * Math.random());
        this.setState("retrying", `pods: ${err.message}; again in ${Math.round(delay / 100) / 10} s`);
        await sleep(delay, signal);
      }
    }
  }

  apply(event) {
    const obj = event.object || {};
    if (event.type === "ERROR") {
      if (obj.code === 410) throw new Relist(obj.message);
      throw new Error(obj.message || "watch error");
    }
    const rv = obj.metadata && obj.metadata.resourceVersion;
    if (rv && Number(rv) > Number(this.rv)) this.rv = rv;
    if (event.type === "BOOKMARK") return;
    if (event.type === "DELETED") this.pods.delete(key(obj));
    else if (event.type === "ADDED" || event.type === "MODIFIED") this.pods.set(key(obj), obj);
    else return;
    this.onChange(this.pods);
  }
}

const key = (pod) => `${pod.metadata.namespace}/${pod.metadata.name}`;

/** One container's state in words: "running", "CrashLoopBackOff", "Error (exit 2)". */
export function containerState(status) {
  const state = (status && status.state) || {};
  if (state.running) return { state: "running", text: "running" };
  if (state.waiting) return { state: "waiting", text: state.waiting.reason || "waiting" };
  if (state.terminated) {
    const t = state.terminated;
    return { state: t.exitCode === 0 ? "completed" : "failed", text: `${t.reason || "terminated"} (exit ${t.exitCode})` };
  }
  return { state: "unknown", text: "unknown" };
}

/** A pod's status as kubectl's STATUS column words it (mostly). */
export function podStatus(pod) {
  if (pod.metadata.deletionTimestamp) return "Terminating";
  const statuses = (pod.status && pod.status.containerStatuses) || [];
  for (const s of statuses) {
    const st = s.state || {};
    if (st.waiting && st.waiting.reason && st.waiting.reason !== "ContainerCreating") return st.waiting.reason;
    if (st.terminated && st.terminated.reason && st.terminated.reason !== "Completed" && pod.status.phase !== "Succeeded") return st.terminated.reason;
  }
  return (pod.status && pod.status.phase) || "Unknown";
}

/** What the sidebar shows of a pod: a plain object, compared to know whether to draw it again. */
function podView(pod) {
  const { namespace, name } = pod.metadata;
  const statuses = new Map(((pod.status && pod.status.containerStatuses) || []).map((s) => [s.name, s]));
  const containers = (pod.spec.containers || []).map((c) => {
    const status = statuses.get(c.name);
    return { name: c.name, image: c.image || "", stdin: !!c.stdin, ...containerState(status),
      restarts: status ? status.restartCount || 0 : 0, ready: !!(status && status.ready) };
  });
  return { namespace, name, status: podStatus(pod), containers };
}

function podNode(view, actions) {
  const { namespace, name, containers } = view;
  const ready = containers.filter((c) => c.ready).length;
  return el("li", { class: "pod", "data-pod": name, "data-namespace": namespace, "data-status": view.status },
    el("div", { class: "pod-head", title: `${namespace}/${name}` },
      el("span", { class: "pod-name" }, name),
      namespace === "default" ? null : el("span", { class: "pod-ns" }, namespace),
      el("span", { class: "pod-status" }, view.status),
      el("span", { class: "pod-ready", title: "ready containers" }, `${ready}/${containers.length}`)),
    el("ul", { class: "containers" }, ...containers.map((c) => {
      const target = { namespace, pod: name, container: c.name };
      const act = (kind) => (e) => { e.stopPropagation(); actions(kind, target); };
      return el("li", { class: "container", "data-container": c.name, "data-state": c.state,
        "data-restarts": c.restarts, title: c.image },
      el("span", { class: "dot" }),
      el("span", { class: "cname" }, c.name),
      el("span", { class: "cstate" }, c.text),
      el("span", { class: "restarts", title: "restarts" }, `↻${c.restarts}`),
      el("span", { class: "actions" },
        el("button", { type: "button", class: "do-exec", title: "Open a shell (exec the command above)", onclick: act("exec") }, "Shell"),
        el("button", { type: "button", class: "do-attach", title: c.stdin ? "Attach to the container's console" : "Attach to the container's output", onclick: act("attach") }, "Attach"),
        el("button", { type: "button", class: "do-logs", title: "Follow the container's log", onclick: act("logs") }, "Logs")));
    })));
}

const drawn = new WeakMap();  // list -> Map("ns/name" -> {sig, node})

/** The sidebar's pod list. actions(kind, target) opens a tab (kind: exec, attach, logs). Only
 * a pod whose view changed is drawn again, in place: a button under the pointer or with the
 * keyboard's focus stays where it is while other pods change. */
export function renderPods(list, pods, actions) {
  const cache = drawn.get(list) || new Map();
  drawn.set(list, cache);
  const sorted = [...pods.values()].sort((a, b) => key(a).localeCompare(key(b)));
  const nodes = sorted.map((pod) => {
    const view = podView(pod);
    const sig = JSON.stringify(view);
    const hit = cache.get(key(pod));
    if (hit && hit.sig === sig) return hit.node;
    const node = podNode(view, actions);
    cache.set(key(pod), { sig, node });
    return node;
  });
  const keep = new Set(sorted.map(key));
  for (const k of [...cache.keys()]) if (!keep.has(k)) cache.delete(k);
  if (!nodes.length) nodes.push(el("li", { class: "none" }, "No pods."));
  nodes.forEach((node, i) => {
    if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
  });
  while (list.children.length > nodes.length) list.lastElementChild.remove();
}
