// The browser tool around the sessions: GET / sends a browser to the page, the pods sidebar
// follows changes made through the API, a logs tab follows a container's output (stop and
// resume included), the recordings section says when recording is off.
// Usage: STREAMSRV_TOKEN=... node tools.mjs BASE_URL POD IMAGE SCREENSHOT_DIR
// POD has a container "ticker" that prints tick-N every 0.5 s; IMAGE is for a pod made here.
import {
  WAIT, check, containerRow, openPage, openTab, run, tabLines, token, waitLine,
} from "./lib.mjs";

const [base, pod, image, shots] = process.argv.slice(2);
const crashy = "crashy";

const ticks = (lines) => lines.filter((l) => /^tick-\d+$/.test(l)).map((l) => Number(l.slice(5)));
const consecutive = (ns) => ns.every((n, i) => i === 0 || n === ns[i - 1] + 1);

await run(shots, async (browser, context, shot) => {
  // GET / answers a redirect to the page, without the token.
  const bare = await context.request.get(`${base}/`, { maxRedirects: 0 });
  check(bare.status() === 302 && bare.headers()["location"] === "/ui/", `GET / is a 302 to /ui/ (${bare.status()})`);
  const landing = await context.newPage();
  await landing.goto(`${base}/`);
  check(new URL(landing.url()).pathname === "/ui/" && await landing.isVisible("#login"),
    "a browser at / lands on the page, which asks for the token");
  await landing.close();

  const page = await openPage(context, base);
  await page.waitForSelector("#watch-state[data-state='live']", WAIT);
  await page.waitForSelector("#recordings[data-state='off']", { ...WAIT, state: "attached" });
  check((await page.textContent("#recordings-note")).includes("--record"), "the recordings section says recording is off");

  // A pod made through the API appears, crashes and restarts, and goes when deleted.
  const api = (method, path, data) => context.request.fetch(`${base}${path}`, {
    method, data, headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
  });
  const manifest = {
    apiVersion: "v1", kind: "Pod", metadata: { name: crashy },
    spec: { terminationGracePeriodSeconds: 1, containers: [
      { name: "main", image, command: ["sleep", "100000"] },
      { name: "flaky", image, command: ["sh", "-c", "echo flaky-out; sleep 1; exit 3"] },
    ] },
  };
  const created = await api("POST", "/api/v1/namespaces/default/pods", manifest);
  check(created.status() === 201, `created pod ${crashy} through the API (${created.status()})`);
  await containerRow(page, crashy, "flaky").waitFor(WAIT);
  check(true, "the new pod appeared in the sidebar");
  await page.waitForSelector(`.pod[data-pod="${crashy}"] .container[data-container="main"][data-state="running"]`, WAIT);
  await page.waitForSelector(`.pod[data-pod="${crashy}"] .container[data-container="flaky"]:not([data-restarts="0"])`, WAIT);
  const flaky = containerRow(page, crashy, "flaky");
  check(true, `the flaky container restarted: ${await flaky.getAttribute("data-restarts")} restart(s), now ` +
    `"${await flaky.locator(".cstate").textContent()}" (pod: ${await page.getAttribute(`.pod[data-pod="${crashy}"]`, "data-status")})`);
  await page.waitForSelector(`.pod[data-pod="${crashy}"] .container[data-container="flaky"]:is([data-state="failed"], [data-state="waiting"])`, WAIT);
  check(true, "the sidebar shows the container's stopped state live");
  await shot(page, "browser-sidebar.png");
  const deleted = await api("DELETE", `/api/v1/namespaces/default/pods/${crashy}`);
  check(deleted.ok(), `deleted pod ${crashy} through the API (${deleted.status()})`);
  await page.waitForSelector(`.pod[data-pod="${crashy}"]`, { state: "detached", timeout: 30000 });
  check(await page.isVisible(`.pod[data-pod="${pod}"]`), "the deleted pod left the sidebar; the other one stays");

  // Logs: the container's output, then lines that come after, stop and resume without loss.
  const logs = await openTab(page, pod, "ticker", "logs");
  await waitLine(page, logs, (l) => l === "tick-2", "tick-2");
  const firstSeen = ticks(await tabLines(page, logs));
  check(firstSeen.length > 0 && firstSeen[0] === 1, `the logs tab shows the output from the start (tick-1..tick-${firstSeen.at(-1)})`);
  const last = firstSeen.at(-1);
  await waitLine(page, logs, (l) => l === `tick-${last + 2}`, `tick-${last + 2}`);
  check(true, "the logs tab follows new lines");
  await page.click(".panel:not([hidden]) .follow-toggle");
  await page.waitForFunction((id) => window.streamsrv.tab(id).state === "stopped", logs, WAIT);
  const stopped = ticks(await tabLines(page, logs)).length;
  await page.waitForTimeout(1500);
  check(ticks(await tabLines(page, logs)).length === stopped, "Stop following: no new line comes");
  await page.click(".panel:not([hidden]) .follow-toggle");
  await page.waitForFunction((id) => window.streamsrv.tab(id).state === "following", logs, WAIT);
  const resumedAt = ticks(await tabLines(page, logs)).at(-1);
  await waitLine(page, logs, (l) => l === `tick-${resumedAt + 2}`, `tick-${resumedAt + 2}`);
  const all = ticks(await tabLines(page, logs));
  check(consecutive(all), `Resume read on from the last line: tick-1..tick-${all.at(-1)}, none missing, none twice`);
  // A hidden logs tab stops reading and catches up when shown again.
  const quoted = await openTab(page, pod, "main", "exec", { command: `sh -c "echo quoted-$((2+3)) 'a  b'; exec sh"` });
  await waitLine(page, quoted, (l) => l === "quoted-5 a  b", "the quoted command's output");
  check(true, "the shell command field splits words as a shell does (quotes, escapes)");
  await page.waitForFunction((id) => window.streamsrv.tab(id).state === "paused", logs, WAIT);
  await page.waitForTimeout(1200);
  await page.click(`#tabbar .tab[data-tab-id="${logs}"]`);
  const before = ticks(await tabLines(page, logs)).at(-1);
  await waitLine(page, logs, (l) => l === `tick-${before + 3}`, `tick-${before + 3}`);
  const after = ticks(await tabLines(page, logs));
  check(consecutive(after), "a logs tab hidden and shown again caught up with no gap and no repeat");
  await shot(page, "browser-logs.png");
});
