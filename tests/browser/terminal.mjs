// Sessions in the browser tool: exec tabs side by side, resize, exit status, closing a tab,
// search, copy and paste, a dropped network with Reconnect, read-only attach.
// Usage: STREAMSRV_TOKEN=... node terminal.mjs BASE_URL POD SCREENSHOT_DIR
// Exits non-zero with a message on the first check that fails.
import {
  WAIT, activeTab, check, containerRow, log, openPage, openTab, run, tabLines, tabs, tcpProxy,
  typeLine, waitLine, waitTabState,
} from "./lib.mjs";

const [base, pod, shots] = process.argv.slice(2);
const stdinFrames = [];  // every frame the pages sent on channel 0 (stdin)
const onStdin = (frame) => stdinFrames.push(frame);

await run(shots, async (browser, context, shot) => {
  const page = await openPage(context, base, { onStdin });
  check(await page.evaluate(() => location.hash === "" && !!sessionStorage.getItem("streamsrv-token")),
    "the token left the address bar for sessionStorage");
  for (const c of ["shell", "console"]) {
    await page.waitForFunction(([pod, c]) => document.querySelector(
      `.pod[data-pod="${pod}"] .container[data-container="${c}"][data-state="running"]`), [pod, c], WAIT);
  }
  check(await containerRow(page, pod, "shell").locator(".cstate").textContent() === "running",
    "the sidebar lists the pod's containers, running");

  // Two exec tabs at once, each with its own output.
  const one = await openTab(page, pod, "shell");
  await typeLine(page, "echo hello-from-browser");
  await waitLine(page, one, (l) => l === "hello-from-browser", "hello-from-browser");
  check(true, "typed `echo hello-from-browser` in tab 1, its output came back");
  await typeLine(page, "for i in 1 2 3 4 5 6; do echo tab1-$i; sleep 0.3; done");
  const two = await openTab(page, pod, "shell");
  check((await activeTab(page)).id === two && (await tabs(page)).length === 2, "a second exec tab opened and is shown");
  await typeLine(page, "echo tab2-$((1+1))");
  await waitLine(page, two, (l) => l === "tab2-2", "tab2-2");
  await waitLine(page, one, (l) => l === "tab1-6", "tab1-6 (written while tab 1 was hidden)");
  check(!(await tabLines(page, one)).some((l) => l === "tab2-2") && !(await tabLines(page, two)).some((l) => l.startsWith("tab1-")),
    "each tab shows only its own session's output");
  await shot(page, "browser-two-tabs.png");

  // Tab 1 again: size, resize.
  await page.click(`#tabbar .tab[data-tab-id="${one}"]`);
  await waitTabState(page, one, "open");
  const size = async () => {
    const before = (await tabLines(page, one)).length;
    await typeLine(page, `stty size; echo size-done-$((${before}+1))`);
    await waitLine(page, one, (l) => l === `size-done-${before + 1}`, "after stty size");
    const all = await tabLines(page, one);
    const i = all.lastIndexOf(`size-done-${before + 1}`);
    const m = all[i - 1].match(/(?:^|\s)(\d+) (\d+)$/);  // a late prompt may stand before it
    if (!m) throw new Error(`no stty size line before the marker: ${all.slice(i - 3, i + 1)}`);
    return { rows: +m[1], cols: +m[2] };
  };
  const dims = async () => { const t = await activeTab(page); return { rows: t.rows, cols: t.cols }; };
  const first = await size();
  check(JSON.stringify(first) === JSON.stringify(await dims()), `stty size ${first.rows} ${first.cols} matches the terminal`);
  await page.setViewportSize({ width: 860, height: 480 });
  await page.waitForFunction((c) => window.streamsrv.active.info().cols !== c, first.cols, WAIT);
  await page.waitForTimeout(300);  // resize message -> server -> TIOCSWINSZ / engine resize
  const second = await size();
  check(second.cols < first.cols && second.rows < first.rows, `after the resize stty size is ${second.rows} ${second.cols}`);
  check(JSON.stringify(second) === JSON.stringify(await dims()), "and matches the fitted terminal");
  await page.setViewportSize({ width: 1100, height: 700 });

  // Search (Ctrl+Shift+F), then copy the match (Ctrl+Shift+C), then paste into tab 2.
  await page.locator(".panel:not([hidden]) .xterm-helper-textarea").focus();
  await page.keyboard.press("Control+Shift+F");
  check(await page.evaluate(() => document.activeElement.classList.contains("search")), "Ctrl+Shift+F focuses the search box");
  await page.keyboard.type("hello-from-browser");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => window.streamsrv.active.term.getSelection() === "hello-from-browser", null, WAIT);
  check(true, "the search found and selected hello-from-browser in the terminal");
  await page.fill(".panel:not([hidden]) .search", "no-such-text-anywhere");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector(".panel:not([hidden]) .search-count").textContent === "no match", null, WAIT);
  check(true, "a search for absent text says no match");
  await page.fill(".panel:not([hidden]) .search", "hello-from-browser");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => window.streamsrv.active.term.getSelection() === "hello-from-browser", null, WAIT);
  await page.keyboard.press("Escape");
  await page.keyboard.press("Control+Shift+C");
  await page.waitForFunction(async () => (await navigator.clipboard.readText()) === "hello-from-browser", null, WAIT);
  check(true, "Ctrl+Shift+C copied the selection to the clipboard");
  await page.click(`#tabbar .tab[data-tab-id="${two}"]`);
  await page.evaluate(() => navigator.clipboard.writeText("echo pasted-$((40+2))"));
  await page.locator(".panel:not([hidden]) .xterm-helper-textarea").focus();
  await page.keyboard.press("Control+Shift+V");
  await waitLine(page, two, (l) => l.endsWith("echo pasted-$((40+2))"), "the pasted command");
  await page.keyboard.press("Enter");
  await waitLine(page, two, (l) => l === "pasted-42", "pasted-42");
  check(true, "Ctrl+Shift+V pasted the clipboard into the shell");
  await page.evaluate(() => navigator.clipboard.writeText("echo button-$((5*5))"));
  await page.click(".panel:not([hidden]) button.paste");
  await waitLine(page, two, (l) => l.endsWith("echo button-$((5*5))"), "the pasted command");
  await page.keyboard.press("Enter");
  await waitLine(page, two, (l) => l === "button-25", "button-25");
  check(true, "the Paste button pasted too");

  // Closing a tab ends its session: its shell is gone, as tab 1 sees.
  await typeLine(page, "echo pid-$$");
  const [pidLine] = await waitLine(page, two, (l) => /^pid-\d+$/.test(l), "pid-N");
  const pid = pidLine.slice(4);
  await page.click(`#tabbar .tab[data-tab-id="${two}"] .tab-close`);
  check((await tabs(page)).length === 1 && (await activeTab(page)).id === one, "closing tab 2 shows tab 1");
  await typeLine(page, `while kill -0 ${pid} 2>/dev/null; do sleep 0.2; done; echo gone-${pid}`);
  await waitLine(page, one, (l) => l === `gone-${pid}`, `gone-${pid}`);
  check(true, `closing the tab ended its shell (pid ${pid})`);

  // Exit status.
  await typeLine(page, "exit 3");
  await waitTabState(page, one, "exited");
  check((await activeTab(page)).exitCode === 3, "exit status 3 reported");
  check(await page.getAttribute(`#tabbar .tab[data-tab-id="${one}"]`, "data-exit-code") === "3", "the tab says 3");
  check(await page.getAttribute("#status", "data-exit-code") === "3", "the status line says 3");
  await waitLine(page, one, (l) => l.includes("[process exited with status 3]"), "with the exit status");
  check(await page.isVisible(".panel:not([hidden]) .banner .reconnect"), "an ended session offers Reconnect");
  await shot(page, "browser-terminal-exit.png");
  await page.click(".panel:not([hidden]) .banner .reconnect");
  await waitTabState(page, one, "open");
  await typeLine(page, "echo again-$((1+1))");
  await waitLine(page, one, (l) => l === "again-2", "again-2");
  check(true, "Reconnect opened a working shell in the same tab");
  await page.click(`#tabbar .tab[data-tab-id="${one}"] .tab-close`);

  // The network drops: a page through a proxy that cuts every connection at once.
  const proxy = await tcpProxy(Number(new URL(base).port));
  const viaProxy = `https://127.0.0.1:${proxy.port}`;
  const cut = await openPage(context, viaProxy);
  const dropped = await openTab(cut, pod, "shell");
  await typeLine(cut, "echo before-the-drop");
  await waitLine(cut, dropped, (l) => l === "before-the-drop", "before-the-drop");
  const lists = await cut.evaluate(() => window.streamsrv.watch.lists);
  const n = proxy.cut();
  log(`cut ${n} sockets`);
  await waitTabState(cut, dropped, "disconnected");
  check(await cut.isVisible(".panel:not([hidden]) .banner .reconnect"), "a dropped socket shows the Reconnect banner");
  await waitLine(cut, dropped, (l) => l.includes("[connection lost"), "connection lost");
  await cut.waitForFunction((n) => window.streamsrv.watch.lists > n && window.streamsrv.watch.state === "live", lists, WAIT);
  check(true, "the pod watch listed again and is live again by itself");
  await shot(cut, "browser-reconnect.png");
  await cut.click(".panel:not([hidden]) .banner .reconnect");
  await waitTabState(cut, dropped, "open");
  await typeLine(cut, "echo after-$((2+5))");
  await waitLine(cut, dropped, (l) => l === "after-7", "after-7");
  check(true, "Reconnect opened a new session after the drop");
  await cut.close();
  proxy.close();

  // Read-only: attach to the console container without stdin; a second, writable page types.
  const sentBefore = stdinFrames.filter((f) => f.page === page).length;
  const watcher = await openTab(page, pod, "console", "attach", { readOnly: true });
  check((await activeTab(page)).readOnly, "the attach tab is read-only");
  await typeLine(page, "echo should-not-appear");
  const writer = await openPage(context, base, { onStdin });
  await openTab(writer, pod, "console", "attach");
  await typeLine(writer, "echo from-the-writer-$((2*3))");
  await waitLine(page, watcher, (l) => l.includes("from-the-writer-6"), "from the writer, seen read-only");
  await page.waitForTimeout(500);
  check(stdinFrames.filter((f) => f.page === page).length === sentBefore, "read-only page sent no stdin frame");
  check(stdinFrames.filter((f) => f.page === writer).length > 0, "the writable page did send stdin frames");
  check(!(await tabLines(page, watcher)).some((l) => l.includes("should-not-appear")), "typed text never reached the shell");
  await shot(page, "browser-terminal.png");
});
