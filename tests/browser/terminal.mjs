// Drives Debian's Chromium (playwright-core, no downloaded browser) through streamsrv's browser
// terminal. Usage: STREAMSRV_TOKEN=... node terminal.mjs BASE_URL POD SCREENSHOT_DIR
// (the bearer token comes in the environment, not in argv, which every local user can read)
// Exits non-zero with a message on the first check that fails.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, pod, shots] = process.argv.slice(2);
const token = process.env.STREAMSRV_TOKEN;
if (!token) throw new Error("STREAMSRV_TOKEN is not set");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const WAIT = { timeout: 20000 };  // generous: catches a hang, not a slow run
const log = (...a) => console.log("[browser]", ...a);

function check(ok, message) {
  if (!ok) throw new Error(`check failed: ${message}`);
  log("ok:", message);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 700 } });
const stdinFrames = [];  // every frame the pages sent on channel 0 (stdin)

async function openPage() {
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") log("console error:", m.text()); });
  page.on("websocket", (ws) => {
    ws.on("framesent", ({ payload }) => {
      const bytes = typeof payload === "string" ? Buffer.from(payload) : payload;
      if (bytes.length && bytes[0] === 0) stdinFrames.push({ page, url: ws.url(), bytes });
    });
  });
  await page.goto(`${base}/ui/#token=${token}`);
  await page.waitForSelector("#controls:not([hidden])", WAIT);
  return page;
}

const lines = (page) => page.evaluate(() => window.streamsrvTerminal.text().split("\n").map((l) => l.trimEnd()));
async function waitLine(page, predicate, what) {
  const deadline = Date.now() + WAIT.timeout;
  for (;;) {
    const found = (await lines(page)).filter(predicate);
    if (found.length) return found;
    if (Date.now() > deadline) throw new Error(`no line ${what} in:\n${(await lines(page)).join("\n")}`);
    await page.waitForTimeout(100);
  }
}
const waitState = (page, s) => page.waitForFunction((s) => window.streamsrvTerminal.state === s, s, WAIT);
async function typeLine(page, text) {
  await page.locator(".xterm-helper-textarea").focus();
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}
async function open(page, container, { mode = "exec", readOnly = false } = {}) {
  const option = await page.locator("#target option", { hasText: `/${pod}/${container} ` }).getAttribute("value");
  await page.selectOption("#target", option);
  await page.selectOption("#mode", mode);
  await page.fill("#command", "sh");
  await page.setChecked("#readonly", readOnly);
  await page.click("#connect");
  await waitState(page, "open");
}

try {
  mkdirSync(shots, { recursive: true });
  const page = await openPage();
  check(await page.evaluate(() => location.hash === "" && !!sessionStorage.getItem("streamsrv-token")),
    "the token left the address bar for sessionStorage");

  await open(page, "shell");
  await typeLine(page, "echo hello-from-browser");
  await waitLine(page, (l) => l === "hello-from-browser", "hello-from-browser");
  check(true, "typed `echo hello-from-browser`, its output came back");

  const size = async () => {
    const before = (await lines(page)).length;
    await typeLine(page, `stty size; echo size-done-$((${before}+1))`);
    await waitLine(page, (l) => l === `size-done-${before + 1}`, "after stty size");
    const all = await lines(page);
    const i = all.lastIndexOf(`size-done-${before + 1}`);
    const m = all[i - 1].match(/^(\d+) (\d+)$/);
    if (!m) throw new Error(`no stty size line before the marker: ${all.slice(i - 3, i + 1)}`);
    return { rows: +m[1], cols: +m[2] };
  };
  const dims = () => page.evaluate(() => ({ rows: window.streamsrvTerminal.term.rows, cols: window.streamsrvTerminal.term.cols }));
  const first = await size();
  check(JSON.stringify(first) === JSON.stringify(await dims()), `stty size ${first.rows} ${first.cols} matches the terminal`);
  await page.setViewportSize({ width: 760, height: 460 });
  await page.waitForFunction((c) => window.streamsrvTerminal.term.cols !== c, first.cols, WAIT);
  await page.waitForTimeout(300);  // resize message -> server -> TIOCSWINSZ / engine resize
  const second = await size();
  check(second.cols < first.cols && second.rows < first.rows, `after the resize stty size is ${second.rows} ${second.cols}`);
  check(JSON.stringify(second) === JSON.stringify(await dims()), "and matches the fitted terminal");
  await page.setViewportSize({ width: 1100, height: 700 });

  await typeLine(page, "exit 3");
  await page.waitForFunction(() => window.streamsrvTerminal.state === "exited", null, WAIT);
  check(await page.evaluate(() => window.streamsrvTerminal.exitCode) === 3, "exit status 3 reported");
  check(await page.getAttribute("#status", "data-exit-code") === "3", "the status element says 3");
  await waitLine(page, (l) => l.includes("[process exited with status 3]"), "with the exit status");
  await page.screenshot({ path: join(shots, "browser-terminal-exit.png") });

  await page.click("#reconnect");
  await waitState(page, "open");
  await typeLine(page, "echo again-$((1+1))");
  await waitLine(page, (l) => l === "again-2", "again-2");
  check(true, "reconnect opened a working shell");
  await typeLine(page, "exit");
  await waitState(page, "exited");

  // Read-only: attach to the console container without stdin; a second, writable page types.
  const sentBefore = stdinFrames.filter((f) => f.page === page).length;
  await open(page, "console", { mode: "attach", readOnly: true });
  await typeLine(page, "echo should-not-appear");
  const writer = await openPage();
  await open(writer, "console", { mode: "attach" });
  await typeLine(writer, "echo from-the-writer-$((2*3))");
  await waitLine(page, (l) => l.includes("from-the-writer-6"), "from the writer, seen read-only");
  await page.waitForTimeout(500);
  check(stdinFrames.filter((f) => f.page === page).length === sentBefore, "read-only page sent no stdin frame");
  check(stdinFrames.filter((f) => f.page === writer).length > 0, "the writable page did send stdin frames");
  check(!(await lines(page)).some((l) => l.includes("should-not-appear")), "typed text never reached the shell");
  await page.screenshot({ path: join(shots, "browser-terminal.png") });
  log("screenshots in", shots);
} catch (err) {
  console.error(String(err.stack || err));
  process.exitCode = 1;
} finally {
  await browser.close();
}
