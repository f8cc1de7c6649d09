// Drives headless Debian Chromium for tests/test_browser.py: one JSON command per stdin line,
// one JSON answer per stdout line ({id, result} or {id, error}). Page console output goes to stderr.
//   {op: "open", url}                       -> page number
//   {op: "fill"|"click", page, selector, value?}
//   {op: "eval", page, expr}                -> the expression's (JSON) value
//   {op: "wait", page, expr, timeoutMs?}      -> waits until expr is truthy, returns its value
//   {op: "screenshot", page, path}
//   {op: "close"}
import { createInterface } from "node:readline";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = await mkdtemp(join(tmpdir(), "docchat-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const pages = [];

async function run(cmd) {
  const page = pages[cmd.page];
  switch (cmd.op) {
    case "open": {
      const p = await context.newPage();
      const n = pages.push(p) - 1;
      p.on("console", (m) => console.error(`[page ${n} ${m.type()}] ${m.text()}`));
      p.on("pageerror", (e) => console.error(`[page ${n} error] ${e.message}`));
      await p.goto(cmd.url);
      return n;
    }
    case "fill": return page.fill(cmd.selector, cmd.value);
    case "click": return page.click(cmd.selector);
    case "eval": return page.evaluate(cmd.expr);
    case "screenshot": return void await page.screenshot({ path: cmd.path, fullPage: true });
    case "wait":
      return (await page.waitForFunction(cmd.expr, null, { timeout: cmd.timeoutMs ?? 15000, polling: 20 })).jsonValue();
    case "close":
      await context.close();
      await rm(profile, { recursive: true, force: true });
      return null;
    default: throw new Error(`unknown op ${cmd.op}`);
  }
}

console.log(JSON.stringify({ ready: true, version: context.browser()?.version() ?? "" }));
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  try {
    const result = await run(cmd);
    console.log(JSON.stringify({ id: cmd.id, result: result ?? null }));
  } catch (err) {
    console.log(JSON.stringify({ id: cmd.id, error: String(err?.message ?? err) }));
  }
  if (cmd.op === "close") process.exit(0);
}
await context.close();
await rm(profile, { recursive: true, force: true });
