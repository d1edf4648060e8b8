// What terminal.mjs, tools.mjs and replay.mjs share: Debian's Chromium through playwright-core
// (no downloaded browser), the page's test hooks (window.streamsrv) and checks that fail with a
// message. The bearer token comes in the environment (STREAMSRV_TOKEN), never in argv, which
// every local user can read.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";

export const token = process.env.STREAMSRV_TOKEN;
if (!token) throw new Error("STREAMSRV_TOKEN is not set");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
export const WAIT = { timeout: 20000 };  // generous: catches a hang, not a slow run
export const log = (...a) => console.log("[browser]", ...a);

export function check(ok, message) {
  if (!ok) throw new Error(`check failed: ${message}`);
  log("ok:", message);
}

/** Runs body(browser, context, shot) and exits non-zero with the error on the first failure. */
export async function run(shots, body) {
  mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 700 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"]);
  const shot = (page, name) => page.screenshot({ path: join(shots, name) });
  try {
    await body(browser, context, shot);
    log("screenshots in", shots);
  } catch (err) {
    console.error(String(err.stack || err));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
  // A failed run may leave a listener behind (tcpProxy): exit now, not at the test's timeout.
  if (process.exitCode) process.exit(process.exitCode);
}

/** A page of the tool at `base`, the token handed over in the fragment, the pods listed. */
export async function openPage(context, base, { onStdin } = {}) {
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") log("console error:", m.text()); });
  page.on("pageerror", (e) => log("page error:", e.message));
  if (onStdin) {
    page.on("websocket", (ws) => {
      ws.on("framesent", ({ payload }) => {
        const bytes = typeof payload === "string" ? Buffer.from(payload) : payload;
        if (bytes.length && bytes[0] === 0) onStdin({ page, url: ws.url(), bytes });
      });
    });
  }
  await page.goto(`${base}/ui/#token=${token}`);
  await page.waitForSelector("#pods .pod", WAIT);
  return page;
}

export const tabs = (page) => page.evaluate(() => window.streamsrv.tabs);
export const activeTab = (page) => page.evaluate(() => window.streamsrv.active?.info() ?? null);
export const tabText = (page, id) => page.evaluate((id) => window.streamsrv.text(id), id);
export const tabLines = async (page, id) => (await tabText(page, id)).split("\n").map((l) => l.trimEnd());

export async function waitLine(page, id, predicate, what) {
  const deadline = Date.now() + WAIT.timeout;
  for (;;) {
    const found = (await tabLines(page, id)).filter(predicate);
    if (found.length) return found;
    if (Date.now() > deadline) throw new Error(`no line ${what} in tab ${id}:\n${(await tabLines(page, id)).join("\n")}`);
    await page.waitForTimeout(100);
  }
}

export const waitTabState = (page, id, state) => page.waitForFunction(
  ([id, state]) => window.streamsrv.tab(id)?.state === state, [id, state], WAIT);

/** Types into the terminal of the tab shown. */
export async function typeLine(page, text) {
  await page.locator(".panel:not([hidden]) .xterm-helper-textarea").focus();
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}

/** The sidebar's entry for a container. */
export const containerRow = (page, pod, container) =>
  page.locator(`#pods .pod[data-pod="${pod}"] .container[data-container="${container}"]`);

/** Opens a tab from the sidebar (kind: exec, attach, logs); resolves to its id once it is open. */
export async function openTab(page, pod, container, kind = "exec", { readOnly = false, command = "sh" } = {}) {
  await page.fill("#command", command);
  await page.setChecked("#readonly", readOnly);
  const before = new Set((await tabs(page)).map((t) => t.id));
  await containerRow(page, pod, container).locator(`.do-${kind}`).click();
  const handle = await page.waitForFunction((before) => {
    const t = window.streamsrv.tabs.find((t) => !before.includes(t.id));
    return t ? t.id : null;
  }, [...before], WAIT);
  const id = await handle.jsonValue();
  await waitTabState(page, id, kind === "logs" ? "following" : "open");
  return id;
}

/** A TCP proxy to 127.0.0.1:port that can cut every connection through it at once (a network
 * that drops: the browser sees its sockets reset, as when a laptop changes networks). */
export function tcpProxy(port) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    sockets.add(client);
    sockets.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({
    port: server.address().port,
    cut() {
      const n = sockets.size;
      for (const s of [...sockets]) s.resetAndDestroy();
      sockets.clear();
      return n;
    },
    close() {
      this.cut();
      server.close();
    },
  })));
}
