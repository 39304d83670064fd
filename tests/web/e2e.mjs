// End-to-end test of shiphat's web page: real headless Chromium (playwright-core) against a
// real `shiphat serve`, started by tests/web.rs. Run as `node tests/web/e2e.mjs` with:
//   SHIPHAT_URL            the daemon, e.g. http://127.0.0.1:41234
//   SHIPHAT_ADMIN_TOKEN    a token with role admin
//   SHIPHAT_VIEWER_TOKEN   a token with role viewer
//   SHIPHAT_SCREENSHOTS    an existing folder for the PNGs
//   SHIPHAT_PLAYWRIGHT     absolute path of the playwright-core package folder
//   SHIPHAT_CHROMIUM       the browser (default /usr/bin/chromium)
//   SHIPHAT_INTERRUPTED    the id of a run the daemon was killed during (step 8 resumes it)
// The daemon serves one workflow `deploy` (inputs release 1|2|3, environment staging|production,
// note, smoke; steps qa, deploy, verify, on_failure rollback; release 3 breaches the metric)
// and nothing is deployed yet; a workflow `slow` has the interrupted run. Exits 0 and prints `e2e: ok (N screenshots)`, or exits 1 with
// the failing step and a failure.png.

import path from 'node:path';
import { pathToFileURL } from 'node:url';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') { console.error(`e2e: ${name} is not set`); process.exit(2); }
  return v;
};
const BASE = env('SHIPHAT_URL').replace(/\/$/, '');
const ADMIN = env('SHIPHAT_ADMIN_TOKEN');
const VIEWER = env('SHIPHAT_VIEWER_TOKEN');
const SHOTS = env('SHIPHAT_SCREENSHOTS');
const PW = env('SHIPHAT_PLAYWRIGHT');
const CHROMIUM = env('SHIPHAT_CHROMIUM', '/usr/bin/chromium');
const INTERRUPTED = env('SHIPHAT_INTERRUPTED');

const WAIT = 30_000;      // any single wait: the runs take about a second each
const LONG = 60_000;      // waiting for a whole run to finish

const pw = await import(pathToFileURL(path.join(PW, 'index.mjs')).href);
const chromium = pw.chromium ?? pw.default.chromium;

let shots = 0;
let current = 'start';
function step(n, text) {
  current = `${n}. ${text}`;
  console.log(`e2e: ${current}`);
}
function check(cond, message) {
  if (!cond) throw new Error(message);
}
async function shot(page, name, fullPage = false) {
  // A value rendered by mistake (a missing field, an object turned into text) reads like this.
  const junk = await page.evaluate(() => {
    const text = document.body.innerText;
    return (text.match(/\[object \w+\]|\bundefined\b|\bNaN\b|^null$/m) || [null])[0];
  });
  check(junk === null, `${name}: the page shows \`${junk}\``);
  await page.screenshot({ path: path.join(SHOTS, name), fullPage });
  shots += 1;
  console.log(`e2e:    screenshot ${name}`);
}
const tid = (id) => `[data-testid="${id}"]`;

// Problems the page itself reports: a script error, or anything the CSP refused (an inline
// style or script would be refused silently otherwise).
const pageProblems = [];
function watch(page, label) {
  page.on('pageerror', (e) => pageProblems.push(`${label}: page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) pageProblems.push(`${label}: ${m.text()}`);
  });
}

async function signIn(page, token) {
  await page.fill('#token', token);
  await page.click(tid('signin-submit'));
  await page.waitForFunction(() => location.hash.startsWith('#/runs') && !!document.querySelector('[data-testid="principal"]')?.textContent, null, { timeout: WAIT });
}

// Opens the deploy form of `deploy`, fills it and confirms; returns the confirm question.
async function deployFromForm(page, release, environment) {
  await page.click(tid('nav-deploy'));
  await page.waitForSelector(tid('workflow-deploy'), { timeout: WAIT });
  await page.click(tid('workflow-deploy'));
  await page.waitForSelector(tid('deploy-form'), { timeout: WAIT });
  await page.selectOption(tid('input-release'), release);
  await page.selectOption(tid('input-environment'), environment);
  await page.click(tid('deploy-submit'));
  await page.waitForSelector(`${tid('confirm-panel')}:visible`, { timeout: WAIT });
  const question = (await page.textContent(tid('confirm-panel'))) || '';
  check(question.includes(`release ${release}`) && question.includes(environment), `confirm panel does not summarise the inputs: ${question}`);
  await page.click(tid('confirm-deploy'));
  return question;
}

async function waitRunPage(page) {
  await page.waitForFunction(() => /^#\/runs\/[^/?]+/.test(location.hash), null, { timeout: WAIT });
  await page.waitForSelector(tid('run-status'), { timeout: WAIT });
  return page.evaluate(() => decodeURIComponent(location.hash.split('/')[2]));
}

// Waits for the run to end, then says how it ended: a wrong ending fails at once with the
// steps' statuses and errors, not after a timeout.
async function runEnds(page, expected) {
  await page.waitForSelector(['succeeded', 'failed', 'cancelled'].map((s) => `${tid('run-status')}[data-status="${s}"]`).join(', '), { timeout: LONG });
  const status = await page.getAttribute(tid('run-status'), 'data-status');
  if (status !== expected) {
    const steps = await page.$$eval('[data-testid^="step-"][data-status]', (els) => els.map((e) => `${e.dataset.stepId}=${e.dataset.status}${e.querySelector('.glance-summary') ? ` (${e.querySelector('.glance-summary').textContent})` : ''}`));
    throw new Error(`the run ended ${status}, not ${expected}; steps: ${steps.join('; ')}`);
  }
}

// Opens a step's details (logs, outputs, charts) unless it is open already.
async function expand(page, id) {
  const summary = page.locator(`${tid(`step-${id}`)} details:not([open]) > summary`);
  if (await summary.count()) await summary.click();
  await page.waitForSelector(`${tid(`step-${id}`)} details[open]`);
}

async function stepStatus(page, id) {
  return page.getAttribute(tid(`step-${id}`), 'data-status');
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  timeout: LONG,
});
let page = null;
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  const admin = page;
  page.setDefaultTimeout(WAIT);
  page.setDefaultNavigationTimeout(WAIT);
  watch(page, 'admin');

  // 1. Sign-in.
  step(1, 'sign-in page, a wrong token, then the admin token');
  await page.goto(`${BASE}/`);
  await page.waitForSelector(tid('signin-form'));
  check(await page.evaluate(() => location.hash === '#/signin'), 'not redirected to #/signin');
  await shot(page, 'signin.png');
  await page.fill('#token', 'not-a-real-token');
  await page.click(tid('signin-submit'));
  await page.waitForSelector(`${tid('signin-error')}:visible`);
  check(((await page.textContent(tid('signin-error'))) || '').trim().length > 0, 'the wrong token shows no message');
  await signIn(page, ADMIN);
  await page.waitForSelector(`${tid('runs-table')}, ${tid('runs-empty')}`);
  check(await page.isVisible(tid('nav-deploy')), 'admin sees no Deploy link');

  // 2. A good deploy, watched live.
  step(2, 'deploy release 2 to staging from the form and watch it go green');
  // Record every status the page shows, from before the click: a MutationObserver survives
  // the hash navigation (same document), so a step that is `running` for a moment is seen.
  await page.evaluate(() => {
    window.__seen = new Set();
    const note = () => {
      for (const el of document.querySelectorAll('[data-testid^="step-"][data-status], [data-testid="run-status"]')) {
        window.__seen.add(`${el.dataset.testid}=${el.dataset.status}`);
      }
    };
    new MutationObserver(note).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'] });
  });
  await deployFromForm(page, '2', 'staging');
  const goodRun = await waitRunPage(page);
  console.log(`e2e:    run ${goodRun}`);
  await runEnds(page, 'succeeded');
  for (const id of ['qa', 'deploy', 'verify']) {
    await page.waitForSelector(`${tid(`step-${id}`)}[data-status="succeeded"]`);
  }
  const seen = await page.evaluate(() => [...window.__seen]);
  check(seen.some((x) => x.endsWith('=running')), `never saw a step or the run running; saw ${seen.join(', ')}`);
  console.log(`e2e:    seen live: ${seen.filter((x) => x.endsWith('=running')).join(', ')}`);
  check(await stepStatus(page, 'rollback') !== 'succeeded', 'rollback ran on a good deploy');
  await expand(page, 'verify');
  await page.waitForSelector(`${tid('chart-error_ratio')}:visible`);
  await shot(page, 'run.png', true);

  // 3. A bad release: verify fails, the rollback runs.
  step(3, 'deploy release 3: verify fails, the chart shows the breach, rollback succeeds');
  await deployFromForm(page, '3', 'staging');
  const badRun = await waitRunPage(page);
  console.log(`e2e:    run ${badRun}`);
  check(badRun !== goodRun, 'the second deploy opened the first run');
  await runEnds(page, 'failed');
  await page.waitForSelector(`${tid('step-verify')}[data-status="failed"]`);
  await page.waitForSelector(`${tid('step-rollback')}[data-status="succeeded"]`);
  check((await page.locator(`${tid('section-on_failure')} h2`).textContent()).includes('On failure'), 'no "On failure" heading');
  check(((await page.textContent(tid('rolled-back'))) || '').includes('rolled back'), 'the run header does not say "rolled back"');
  await expand(page, 'verify');
  await expand(page, 'rollback');
  const chart = page.locator(tid('chart-error_ratio'));
  await chart.waitFor({ state: 'visible' });
  check(await chart.locator('.failing').count() >= 1, 'the error_ratio chart marks no failing point');
  check(await chart.locator('.threshold').count() >= 1, 'the error_ratio chart has no threshold line');
  check(await chart.locator('.point').count() >= 2, 'the error_ratio chart has fewer than 2 points');
  await shot(page, 'run-failed.png', true);

  // 4. Environments, lock, a refused deploy, unlock.
  step(4, 'environments: staging runs release 2, release 3 rolled back; lock, refused deploy, unlock');
  await page.click(tid('nav-environments'));
  const staging = page.locator(tid('env-deploy-staging'));
  await staging.waitFor();
  await page.waitForFunction(() => document.querySelector('[data-testid="env-deploy-staging"] [data-testid="env-current-release"]')?.textContent.trim() === '2', null, { timeout: WAIT });
  const bad = staging.locator(`${tid('deploy-row')}[data-release="3"]`);
  check(await bad.count() >= 1, 'the release-3 deploy is not listed');
  check(await bad.first().getAttribute('data-rolled-back') === 'true', 'the release-3 deploy is not marked rolled back');
  check(((await bad.first().textContent()) || '').includes('rolled back'), 'the release-3 deploy shows no rolled-back marker');
  await staging.locator(tid('lock-reason-input')).fill('db migration');
  await staging.locator(tid('lock-submit')).click();
  await page.waitForFunction(() => {
    const info = document.querySelector('[data-testid="env-deploy-staging"] [data-testid="lock-info"]');
    return info && info.textContent.includes('db migration') && document.querySelector('[data-testid="env-deploy-staging"] [data-testid="lock-owner"]')?.textContent.trim() !== '';
  }, null, { timeout: WAIT });
  await shot(page, 'environments.png', true);

  await deployFromForm(page, '1', 'staging');
  await page.waitForSelector(`${tid('deploy-error')}:visible`);
  const refusal = ((await page.textContent(tid('deploy-error'))) || '');
  check(/locked by/i.test(refusal) && refusal.includes('db migration'), `the refusal does not name the lock: ${refusal}`);
  await page.waitForTimeout(500); // a run page, if one were wrongly opened, would show by now
  check(await page.evaluate(() => location.hash.startsWith('#/deploy')), 'a refused deploy left the form');
  await shot(page, 'deploy-refused.png');

  await page.click(tid('nav-environments'));
  await staging.waitFor();
  await page.click(tid('unlock-deploy-staging'));
  await page.waitForSelector(`${tid('env-deploy-staging')} ${tid('lock-form-deploy-staging')}`);
  check(await staging.locator(tid('lock-info')).count() === 0, 'the lock is still shown after unlocking');

  // 5. Filter the runs list.
  step(5, 'runs list: a run started elsewhere appears and ends live; the failed filter');
  await page.click(tid('nav-runs'));
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="run-row"]').length >= 2, null, { timeout: WAIT });
  await shot(page, 'runs.png');
  // The list follows runs started elsewhere without a reload: one started over the API
  // appears, then turns succeeded.
  const started = await fetch(`${BASE}/api/v1/runs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ workflow: 'slow' }),
  });
  check(started.status === 202, `starting a run over the API answered ${started.status}`);
  const apiRun = (await started.json()).id;
  await page.waitForSelector(`${tid('run-row')}[data-run-id="${apiRun}"]`, { timeout: WAIT });
  await page.waitForSelector(`${tid('run-row')}[data-run-id="${apiRun}"][data-status="succeeded"]`, { timeout: WAIT });
  await page.selectOption(tid('filter-status'), 'failed');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('[data-testid="run-row"]')];
    return location.hash.includes('status=failed') && rows.length >= 1 && rows.every((r) => r.dataset.status === 'failed');
  }, null, { timeout: WAIT });
  const failedIds = await page.$$eval(tid('run-row'), (rows) => rows.map((r) => r.dataset.runId));
  check(failedIds.length === 1 && failedIds[0] === badRun, `the failed filter shows ${failedIds.join(', ')} instead of ${badRun}`);

  // 6. A phone.
  step(6, 'phone viewport 390×844: no horizontal scroll, long names and log lines included');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${BASE}/#/runs`);
  await page.waitForSelector(tid('run-row'));
  const listWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  check(listWidth <= 390, `the runs list is ${listWidth}px wide at 390px`);
  await page.goto(`${BASE}/#/runs/${encodeURIComponent(badRun)}`);
  await page.waitForSelector(`${tid('run-status')}[data-status="failed"]`);
  await expand(page, 'verify');
  await page.waitForSelector(`${tid('chart-error_ratio')}:visible`);
  const runWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  check(runWidth <= 390, `the run page is ${runWidth}px wide at 390px`);
  await shot(page, 'phone-run.png', true);
  // A long step name and a log line without a space wrap rather than widen the page.
  await page.goto(`${BASE}/#/runs/${encodeURIComponent(apiRun)}`);
  await page.waitForSelector(`${tid('run-status')}[data-status="succeeded"]`);
  await expand(page, 'wait');
  const longWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  check(longWidth <= 390, `a run with a long step name and log line is ${longWidth}px wide at 390px`);
  await shot(page, 'phone-long-names.png', true);

  // 7. A viewer.
  step(7, 'viewer, signed in with the keyboard alone: no Deploy, no lock controls');
  const vctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const vpage = await vctx.newPage();
  vpage.setDefaultTimeout(WAIT);
  watch(vpage, 'viewer');
  page = vpage;
  await vpage.goto(`${BASE}/`);
  await vpage.waitForSelector(tid('signin-form'));
  // Keyboard only: Tab to the token field (a bounded number of presses), type, Enter.
  let tabs = 0;
  while (!(await vpage.evaluate(() => document.activeElement?.id === 'token'))) {
    check(++tabs <= 15, 'Tab never reaches the token field');
    await vpage.keyboard.press('Tab');
  }
  await vpage.keyboard.type(VIEWER);
  await vpage.keyboard.press('Enter');
  await vpage.waitForFunction(() => location.hash.startsWith('#/runs') && !!document.querySelector('[data-testid="principal"]')?.textContent, null, { timeout: WAIT });
  await vpage.waitForSelector(tid('run-row'));
  check(!(await vpage.isVisible(tid('nav-deploy'))), 'a viewer sees the Deploy link');
  check(await vpage.locator(tid('deploy-button')).count() === 0, 'a viewer sees a Deploy button');
  check(((await vpage.textContent(tid('role'))) || '').includes('viewer'), 'the top bar does not say viewer');
  await vpage.click(tid('nav-environments'));
  await vpage.waitForSelector(tid('env-deploy-staging'));
  check(await vpage.locator('form[data-testid^="lock-form"]').count() === 0, 'a viewer sees a lock form');
  check(await vpage.locator('[data-testid^="unlock-"]').count() === 0, 'a viewer sees an Unlock button');
  await vpage.goto(`${BASE}/#/runs/${encodeURIComponent(badRun)}`);
  await vpage.waitForSelector(tid('run-status'));
  check(await vpage.locator(tid('cancel-run')).count() === 0, 'a viewer sees a Cancel button');

  await vpage.goto(`${BASE}/#/runs/${encodeURIComponent(INTERRUPTED)}`);
  await vpage.waitForSelector(`${tid('run-status')}[data-status="interrupted"]`);
  check(await vpage.locator(tid('resume-run')).count() === 0, 'a viewer sees a Resume button');

  step(8, 'a run the daemon was killed during: the admin resumes it from its page');
  page = admin;
  await admin.goto(`${BASE}/#/runs/${encodeURIComponent(INTERRUPTED)}`);
  await admin.waitForSelector(`${tid('run-status')}[data-status="interrupted"]`);
  await admin.click(tid('resume-run'));
  await runEnds(admin, 'succeeded');

  check(pageProblems.length === 0, `the page reported problems:\n  ${pageProblems.join('\n  ')}`);
  console.log(`e2e: ok (${shots} screenshots)`);
} catch (e) {
  failed = true;
  console.error(`e2e: FAILED at step ${current}: ${e && e.message ? e.message : e}`);
  if (pageProblems.length) console.error(`e2e: the page reported:\n  ${pageProblems.join('\n  ')}`);
  if (page) {
    try {
      await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true, timeout: 10_000 });
      console.error(`e2e: saved ${path.join(SHOTS, 'failure.png')} (page ${page.url()})`);
    } catch (err) { console.error(`e2e: no failure screenshot: ${err.message}`); }
  }
} finally {
  await browser.close().catch(() => {});
}
process.exit(failed ? 1 : 0);
