// Drives the console in headless Chromium for tests/console.rs, one command per stdin line
// (JSON), one answer per stdout line ({"ok": true, ...} or {"ok": false, "error": "..."}).
// The Rust test does everything to the nodes; this only uses the page as a person would.
import { createInterface } from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(process.env.PLAYWRIGHT_CORE_DIR + "/");
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--no-proxy-server"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
const shots = process.env.SCREENSHOTS;
const TIMEOUT_MS = 45000;

const row = (doc, path) => `[data-testid="field-conflict"][data-doc="${doc}"][data-path="${path}"]`;

const commands = {
  async login({ url }) {
    await page.goto(url);
    await page.waitForFunction(() => document.getElementById("me").textContent.length > 0, null, { timeout: TIMEOUT_MS });
    return { me: await page.textContent("#me") };
  },
  async goto({ hash }) {
    await page.click(`#nav a[data-page="${hash}"]`);
    await page.waitForFunction((h) => location.hash === "#" + h, hash);
    return {};
  },
  async wait_state({ device, state }) {
    const sel = `[data-testid="member-row"][data-device="${device}"][data-state="${state}"]`;
    await page.waitForSelector(sel, { timeout: TIMEOUT_MS });
    return {};
  },
  async wait_conflict({ doc, path }) {
    await page.waitForSelector(row(doc, path), { timeout: TIMEOUT_MS });
    const values = await page.$$eval(`${row(doc, path)} [data-testid="conflict-value"]`,
      (els) => els.map((e) => e.textContent));
    return { values };
  },
  async pick({ doc, path, value }) {
    const r = row(doc, path);
    await page.check(`${r} input[type="radio"][data-value='${JSON.stringify(value)}']`);
    await page.click(`${r} [data-testid="resolve"]`);
    await page.waitForSelector('[data-testid="resolved-row"]', { timeout: TIMEOUT_MS });
    await page.waitForSelector(r, { state: "detached", timeout: TIMEOUT_MS });
    return { resolved: await page.textContent('[data-testid="resolved-row"]') };
  },
  async undo() {
    await page.click('[data-testid="undo"]');
    await page.waitForFunction(() => {
      const r = document.querySelector('[data-testid="resolved-row"]');
      return r && r.textContent.includes("undone");
    }, null, { timeout: TIMEOUT_MS });
    return {};
  },
  async invite({ role }) {
    await page.selectOption('[data-testid="invite-role"]', role);
    await page.click('main button.primary');
    await page.waitForSelector('[data-testid="invite-qr"]', { timeout: TIMEOUT_MS });
    const size = await page.$eval('[data-testid="invite-qr"]', (img) => img.naturalWidth);
    return {
      code: await page.textContent('[data-testid="invite-code"]'),
      for: await page.textContent('[data-testid="invite-for"]'),
      line: await page.textContent('[data-testid="invite-line"]'),
      qr_width: size,
    };
  },
  async text({ selector }) {
    await page.waitForSelector(selector, { timeout: TIMEOUT_MS });
    return { text: await page.textContent(selector) };
  },
  async screenshot({ name }) {
    const path = `${shots}/${name}.png`;
    await page.screenshot({ path, fullPage: true });
    return { path };
  },
  async errors() {
    return { errors };
  },
  // Signs out with the page's button; answers the session cookie the browser held before.
  async signout() {
    const held = (await page.context().cookies()).filter((c) => c.name.startsWith("tillmesh_console_"));
    await page.click('[data-testid="signout"]');
    await page.waitForSelector('[data-testid="signin"]', { timeout: TIMEOUT_MS });
    const left = (await page.context().cookies()).filter((c) => c.name.startsWith("tillmesh_console_"));
    return { cookies: held.map((c) => `${c.name}=${c.value}`), left: left.length };
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  try {
    const cmd = JSON.parse(line);
    answer = { ok: true, ...(await commands[cmd.do](cmd)) };
  } catch (e) {
    answer = { ok: false, error: String(e && e.message || e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
await browser.close();
