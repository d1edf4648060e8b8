// Recordings in the browser tool (a server run with --record DIR): a session run in the page is
// recorded, the recordings list shows it, and asciinema-player plays it back with its output.
// Usage: STREAMSRV_TOKEN=... node replay.mjs BASE_URL POD SCREENSHOT_DIR
import { WAIT, check, log, openPage, openTab, run, typeLine, waitLine, waitTabState } from "./lib.mjs";

const [base, pod, shots] = process.argv.slice(2);

await run(shots, async (browser, context, shot) => {
  const page = await openPage(context, base);
  await page.waitForSelector("#recordings:is([data-state='empty'], [data-state='listed'])", { ...WAIT, state: "attached" });
  check(true, "the recordings section says recording is on");

  const id = await openTab(page, pod, "shell");
  await typeLine(page, "echo replay-$((6*7))");
  await waitLine(page, id, (l) => l === "replay-42", "replay-42");
  await typeLine(page, "exit 4");
  await waitTabState(page, id, "exited");

  // The page lists the recordings again when a session ends; ↻ does it by hand.
  const deadline = Date.now() + WAIT.timeout;
  let item = null;
  while (!item) {
    item = await page.evaluate((pod) => window.streamsrv.recordings.find(
      (r) => r.pod === pod && r.container === "shell" && r.kind === "exec" && r.exitCode === 4), pod);
    if (item) break;
    if (Date.now() > deadline) {
      throw new Error(`no recording of the session: ${JSON.stringify(await page.evaluate(() => window.streamsrv.recordings))}`);
    }
    await page.waitForTimeout(1000);
    await page.click("#refresh-recordings");
  }
  log("recording:", JSON.stringify(item));
  check(Array.isArray(item.command) && item.command[0] === "sh" && item.tty === true && item.end,
    `the list shows the session: ${item.name}, ${item.command.join(" ")}, exit ${item.exitCode}`);
  const row = page.locator(`#recordings .recording[data-name="${item.name}"]`);
  check((await row.textContent()).includes(`${pod}/shell`) && (await row.textContent()).includes("exit 4"),
    "its row names the pod, container and exit status");

  await row.locator(".play").click();
  const replay = await page.evaluate(() => window.streamsrv.active.id);
  check((await page.evaluate(() => window.streamsrv.active.kind)) === "replay", "a replay tab opened");
  await waitLine(page, replay, (l) => l.includes("replay-42"), "replay-42 in the player");
  check(true, "asciinema-player played the recording and shows the session's output");
  await page.waitForFunction((id) => window.streamsrv.tab(id).state === "ended", replay, WAIT);
  check(true, "the replay ran to its end");
  const href = await page.getAttribute(".panel:not([hidden]) a.download", "href");
  check(href && href.startsWith("blob:"), "the .cast is offered for download from memory, not from a URL with the token");
  await shot(page, "browser-replay.png");
});
