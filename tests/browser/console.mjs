// Ferry's web console in a real browser (Debian's Chromium through playwright-core), driven
// by crates/cli/tests/cli/console.rs, which starts `ferry up` with live traffic and passes:
//   CONSOLE_URL   the login link `ferry up` printed (the token in its fragment)
//   FERRY         the ferry binary; FERRY_STATE_DIR its state directory (for `ferry apply`)
//   CANARY_FILE   a manifest that starts a canary of iris (one step, paused until promoted)
//   BROKEN_FILE   a manifest of a service whose model cannot load
//   SHOTS         where to save the screenshots (docs/ in the repository); PREFIX: how their names
//                 start (default `console-`)
//   NAMESPACE     the services' namespace (default `default`)
//   APPLY         a JSON array: the command that applies a file named after it (default
//                 `[FERRY, "apply", "-f"]`; for a cluster, the test bed's kubectl)
//   CLUSTER       "1" against a cluster (`ferry console --kubeconfig`): no history there
// Every step waits on what the page shows; a step that does not happen fails the run.
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("CONSOLE_URL");
const shots = env("SHOTS");
const cluster = process.env.CLUSTER === "1";
const namespace = process.env.NAMESPACE || "default";
const prefix = process.env.PREFIX || "console-";
const apply = process.env.APPLY ? JSON.parse(process.env.APPLY) : [env("FERRY"), "apply", "-f"];
const STEP_MS = 90_000;

function applyFile(file) {
  const [program, ...args] = apply;
  const out = execFileSync(program, [...args, file], { env: process.env, encoding: "utf8" });
  console.log(`${[program, ...args, file].join(" ")}: ${out.trim()}`);
}

function log(step) {
  console.log(`${new Date().toISOString()} ${step}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  // Without the token: the sign-in form, no data.
  const origin = new URL(url).origin;
  const anonymous = await browser.newPage();
  await anonymous.goto(`${origin}/console/`);
  await anonymous.locator("#login").waitFor({ state: "visible", timeout: STEP_MS });
  if (await anonymous.locator("#app").isVisible()) throw new Error("the console showed data without the token");
  await anonymous.close();
  log("without the token: sign-in form");

  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (error) => {
    console.error(`page error: ${error.message}`);
    process.exitCode = 1;
  });
  await page.goto(url);
  await page.locator(`#namespace option[value="${namespace}"]`).waitFor({ state: "attached", timeout: STEP_MS });
  await page.selectOption("#namespace", namespace);
  const row = (name) => page.locator(`#services tbody tr[data-namespace="${namespace}"][data-name="${name}"]`);
  await row("iris").locator("td", { hasText: "True" }).waitFor({ timeout: STEP_MS });
  log("iris is listed Ready");
  await row("iris").click();
  await page.locator("#detail-ready", { hasText: "Ready: True" }).waitFor({ timeout: STEP_MS });
  await page.locator("#revisions tbody tr", { hasText: "100%" }).waitFor({ timeout: STEP_MS });

  const latest = async (plot) => JSON.parse((await page.locator(`#${plot}`).getAttribute("data-latest")) || "{}");
  const until = async (what, check) => {
    const deadline = Date.now() + STEP_MS;
    let last;
    while (Date.now() < deadline) {
      last = await check();
      if (last) return last;
      await page.waitForTimeout(250);
    }
    throw new Error(`${what}: not seen in ${STEP_MS / 1000} s`);
  };
  await until("requests/s plotted", async () => Object.values(await latest("plot-rps")).some((v) => v > 1));
  await page.waitForTimeout(4000); // a few seconds of history on the plots
  await page.screenshot({ path: `${shots}/${prefix}service.png` });
  log("requests plotted");

  // A canary: its weight appears in the split plot and the rollout card waits for promotion.
  applyFile(env("CANARY_FILE"));
  await page.locator("#rollout-phase", { hasText: "WaitingForPromotion" }).waitFor({ timeout: STEP_MS });
  const canary = (await page.locator("#rollout-revisions").textContent()).split(" → ")[1];
  const split = await until("the canary's share in the split plot", async () => {
    const values = await latest("plot-split");
    return values[canary] > 10 && values[canary] < 60 ? values : null;
  });
  log(`canary ${canary} at ${split[canary].toFixed(0)}% of answers`);
  await page.waitForTimeout(4000);
  await page.screenshot({ path: `${shots}/${prefix}canary.png` });

  await page.locator('#rollout button[data-control="promote"]').click();
  await page.locator("#rollout-phase", { hasText: "Succeeded" }).waitFor({ timeout: STEP_MS });
  await until("all answers from the canary", async () => (await latest("plot-split"))[canary] > 99);
  await page.locator("#revisions tbody tr", { hasText: canary }).filter({ hasText: "100%" }).waitFor({ timeout: STEP_MS });
  log("promoted: Succeeded, the canary takes all answers");
  if (!cluster) {
    await page.locator("#history-list details", { hasText: "configured" }).first().waitFor({ timeout: STEP_MS });
    log("history lists the change");
  }
  await page.screenshot({ path: `${shots}/${prefix}promoted.png` });

  // A revision that cannot become ready says why.
  applyFile(env("BROKEN_FILE"));
  await row("broken").waitFor({ timeout: STEP_MS });
  await row("broken").click();
  const reason = page.locator("#detail-reason");
  await reason.filter({ hasText: /ModelNotReady|CrashLoopBackOff|ProgressDeadlineExceeded/ }).waitFor({ timeout: STEP_MS });
  log(`broken: ${await reason.textContent()}`);
  await page.screenshot({ path: `${shots}/${prefix}failing.png` });
} finally {
  await browser.close();
}
