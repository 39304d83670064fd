// End-to-end test of shiphat's web page: real headless Chromium (playwright-core) against a
// real `shiphat serve`, started by tests/web.rs. Run as `node tests/web/e2e.mjs` with:
//   SHIPHAT_URL            the daemon, e.g. http://127.0.0.1:41234
//   SHIPHAT_ADMIN_TOKEN    a token with role admin
//   SHIPHAT_VIEWER_TOKEN   a token with role viewer
//   SHIPHAT_DEPLOYER_TOKEN a token with role deployer (another person than the admin)
//   SHIPHAT_SCREENSHOTS    an existing folder for the PNGs
//   SHIPHAT_PLAYWRIGHT     absolute path of the playwright-core package folder
//   SHIPHAT_AXE            absolute path of the axe-core package folder
//   SHIPHAT_CHROMIUM       the browser (default /usr/bin/chromium)
//   SHIPHAT_INTERRUPTED    the id of a run the daemon was killed during (step 8 resumes it)
// The daemon serves a workflow `deploy` (inputs release 1|2|3|4, environment staging|production,
// note, smoke, batch (a number); steps qa, deploy, verify, decide (an approval when verify is
// inconclusive), on_failure rollback; release 3 breaches the metric, release 4 is inconclusive)
// and nothing is deployed yet; a workflow `slow` has the interrupted run; `gate` is an approval
// that times out after 4 s; `hello` is a one-step workflow that step 11 rewrites (the script
// runs in the daemon's folder, `workflows/` beside it) to widen its grants. Exits 0 and prints `e2e: ok (N screenshots)`, or exits 1 with
// the failing step and a failure.png.
//
// Every page state the scenario visits, on a desktop, a phone and in the dark scheme, is
// audited with axe-core for WCAG 2.1 A and AA; any violation fails the test, listed with its
// rule, impact, elements and (for contrast) the colours and ratio.

import { readFile, writeFile } from 'node:fs/promises';
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
const DEPLOYER = env('SHIPHAT_DEPLOYER_TOKEN');
const SHOTS = env('SHIPHAT_SCREENSHOTS');
const PW = env('SHIPHAT_PLAYWRIGHT');
const CHROMIUM = env('SHIPHAT_CHROMIUM', '/usr/bin/chromium');
const INTERRUPTED = env('SHIPHAT_INTERRUPTED');
const AXE = await readFile(path.join(env('SHIPHAT_AXE'), 'axe.min.js'), 'utf8');

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

// axe-core, injected with `evaluate` (which the page's CSP does not apply to, unlike a script
// tag), runs the WCAG 2.1 A and AA rules on the page as it is now. Violations are collected
// over the whole scenario and fail it at the end, so one run lists all of them.
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];
const violations = [];
let audits = 0;
async function audit(page, label) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE);
  const found = await page.evaluate(async (tags) => {
    const result = await window.axe.run(document, { runOnly: { type: 'tag', values: tags }, resultTypes: ['violations'] });
    return result.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => {
        const d = (n.any.concat(n.all, n.none).find((c) => c.data && c.data.contrastRatio !== undefined) || {}).data;
        const contrast = d ? ` ${d.contrastRatio}:1 (${d.fgColor} on ${d.bgColor}), needs ${d.expectedContrastRatio}` : '';
        return `${n.target.join(' ')}${contrast}`;
      }),
    }));
  }, AXE_TAGS);
  audits += 1;
  for (const v of found) {
    const text = `${label}: ${v.id} (${v.impact}) ${v.help}\n      ${v.nodes.join('\n      ')}`;
    violations.push(text);
    console.log(`e2e:    axe ${text}`);
  }
}

// Problems the page itself reports: a script error, or anything the CSP refused (an inline
// style or script would be refused silently otherwise).
const pageProblems = [];
function watch(page, label) {
  page.on('pageerror', (e) => pageProblems.push(`${label}: page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) pageProblems.push(`${label}: ${m.text()}`);
  });
}

// Where the keyboard focus is: the focused element's tag, id and test id, for messages.
async function focused(page) {
  return page.evaluate(() => {
    const a = document.activeElement;
    return a ? `${a.tagName.toLowerCase()}${a.id ? `#${a.id}` : ''}${a.dataset?.testid ? `[${a.dataset.testid}]` : ''}` : 'nothing';
  });
}

// The contrast ratio (WCAG 2.1) of a computed `rgb()` colour against another.
function contrast(a, b) {
  const lum = (rgb) => {
    const [r, g, bl] = rgb.match(/[\d.]+/g).slice(0, 3).map((v) => {
      const c = Number(v) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * bl;
  };
  const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}

async function signIn(page, token) {
  await page.fill('#token', token);
  await page.click(tid('signin-submit'));
  await page.waitForFunction(() => location.hash.startsWith('#/runs') && !!document.querySelector('[data-testid="principal"]')?.textContent, null, { timeout: WAIT });
}

// Opens the deploy form of `deploy`, fills it and confirms; returns the confirm question.
// With `label`, each state on the way is audited.
async function deployFromForm(page, release, environment, label) {
  await page.click(tid('nav-deploy'));
  await page.waitForSelector(tid('workflow-deploy'), { timeout: WAIT });
  if (label) await audit(page, `${label}: workflows`);
  await page.click(tid('workflow-deploy'));
  await page.waitForSelector(tid('deploy-form'), { timeout: WAIT });
  if (label) await audit(page, `${label}: deploy form`);
  await page.selectOption(tid('input-release'), release);
  await page.selectOption(tid('input-environment'), environment);
  await page.click(tid('deploy-submit'));
  await page.waitForSelector(`${tid('confirm-panel')}:visible`, { timeout: WAIT });
  if (label) await audit(page, `${label}: confirm`);
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
  await audit(page, 'sign-in');
  await page.fill('#token', 'not-a-real-token');
  await page.click(tid('signin-submit'));
  await page.waitForSelector(`${tid('signin-error')}:visible`);
  check(((await page.textContent(tid('signin-error'))) || '').trim().length > 0, 'the wrong token shows no message');
  await audit(page, 'sign-in, wrong token');
  await signIn(page, ADMIN);
  await page.waitForSelector(`${tid('runs-table')}, ${tid('runs-empty')}`);
  await audit(page, 'runs, none yet');
  // The sign-in button went with the sign-in page; the focus lands on the new page's heading.
  check(await page.evaluate(() => document.activeElement?.matches('#main h1')), `after sign-in the focus is on ${await focused(page)}, not the heading`);

  step('1b', 'deploy form: a bad number is refused in words, the key reads as it will be, the dialog keeps the focus');
  await page.click(tid('nav-deploy'));
  await page.click(tid('workflow-deploy'));
  await page.waitForSelector(tid('deploy-form'));
  const key = async () => (await page.textContent(tid('concurrency-key'))) || '';
  check(await key() === 'deploy-staging', `the concurrency key reads \`${await key()}\`, not deploy-staging`);
  await page.selectOption(tid('input-environment'), 'production');
  check(await key() === 'deploy-production', `after choosing production the key reads \`${await key()}\``);
  check(!(await page.evaluate(() => document.body.innerText.includes('${{'))), 'the form shows a raw ${{ expression');
  await page.selectOption(tid('input-environment'), 'staging');
  await page.selectOption(tid('input-release'), '1');
  await page.fill(tid('input-batch'), '1e');
  await page.click(tid('deploy-submit'));
  await page.waitForSelector(`${tid('error-batch')}:visible`);
  const batch = page.locator(tid('input-batch'));
  check(await batch.getAttribute('aria-invalid') === 'true', 'the bad number is not marked aria-invalid');
  check((await batch.getAttribute('aria-describedby') || '').split(' ').includes(await page.getAttribute(tid('error-batch'), 'id')), 'the bad number is not described by its error');
  check(((await page.textContent(tid('error-batch'))) || '').includes('1e'), 'the error does not name what was typed');
  check(await batch.inputValue() === '1e', `the field now holds \`${await batch.inputValue()}\`, not what was typed`);
  check(!(await page.isVisible(tid('confirm-panel'))), 'a form with a bad number went on to confirm');
  check(await page.evaluate(() => document.activeElement?.dataset.testid === 'input-batch'), `the focus is on ${await focused(page)}, not the bad field`);
  await audit(page, 'deploy form, a bad number');
  await page.fill(tid('input-batch'), '50');
  await page.click(tid('deploy-submit'));
  await page.waitForSelector(`${tid('confirm-panel')}:visible`);
  const inDialog = () => page.evaluate(() => !!document.activeElement?.closest('dialog[open]'));
  check(await inDialog(), `the dialog opened with the focus on ${await focused(page)}`);
  for (let i = 0; i < 5; i += 1) {
    await page.keyboard.press('Tab');
    check(await inDialog(), `Tab ${i + 1} left the dialog for ${await focused(page)}`);
  }
  for (let i = 0; i < 3; i += 1) {
    await page.keyboard.press('Shift+Tab');
    check(await inDialog(), `Shift+Tab ${i + 1} left the dialog for ${await focused(page)}`);
  }
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => !document.querySelector('[data-testid="confirm-panel"]').open);
  check(await page.evaluate(() => document.activeElement?.dataset.testid === 'deploy-submit'), `Escape left the focus on ${await focused(page)}, not the button that opened the dialog`);
  check(await page.evaluate(() => location.hash === '#/deploy/deploy'), 'Escape in the dialog left the form');
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
  await deployFromForm(page, '2', 'staging', 'desktop');
  const goodRun = await waitRunPage(page);
  console.log(`e2e:    run ${goodRun}`);
  check(await page.evaluate(() => document.activeElement?.id === 'run-title'), `after Deploy the focus is on ${await focused(page)}, not the run's heading`);
  await runEnds(page, 'succeeded');
  await page.waitForFunction((id) => document.querySelector('[data-testid="announcer"]').textContent.includes(`run ${id} succeeded`), goodRun, { timeout: WAIT });
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
  await audit(page, 'run succeeded, verify open');

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
  // The "Why" panel tells the story, with the failing step's evidence, its names as code.
  await page.waitForFunction(() => /It failed at verify/.test(document.querySelector('[data-testid="why-panel"]')?.textContent || ''), null, { timeout: WAIT });
  const why = await page.$$eval(`${tid('why-panel')} li`, (lis) => lis.map((li) => li.textContent));
  console.log(`e2e:    why: ${why.join(' | ')}`);
  check(why[0].includes(`started deploy (run ${badRun}) from the web page`), `the why panel's first line is \`${why[0]}\``);
  const verifyLine = why.find((l) => l.startsWith('✗ verify failed')) || '';
  check(/error_ratio 0\.08 .*failure condition/.test(verifyLine), `the why panel's verify line gives no evidence: \`${verifyLine}\``);
  check(why.some((l) => l.startsWith('✓ rollback (on failure) succeeded')), `the why panel does not say the rollback ran: ${why.join(' | ')}`);
  check(why.some((l) => l.includes('The rollback ran and succeeded')), `the why panel does not say how it ended: ${why.join(' | ')}`);
  const codes = await page.$$eval(`${tid('why-panel')} code`, (els) => els.map((e) => e.textContent));
  check(codes.includes('verify') && codes.includes(badRun), `the why panel's code spans are ${codes.join(', ')}`);
  check(!(await page.evaluate(() => document.querySelector('[data-testid="why-panel"]').textContent.includes('`'))), 'the why panel shows raw backticks');
  check(((await page.textContent(tid('run-source'))) || '') === 'the web page', 'the run header does not say it was started from the web page');
  await shot(page, 'run-failed.png', true);
  await audit(page, 'run failed and rolled back');

  // 4. Environments, lock, a refused deploy, unlock.
  step(4, 'environments: staging runs release 2, release 3 rolled back; lock, refused deploy, unlock');
  await page.click(tid('nav-environments'));
  const staging = page.locator(tid('env-deploy-staging'));
  await staging.waitFor();
  await page.waitForFunction(() => document.querySelector('[data-testid="env-deploy-staging"] [data-testid="env-current-release"]')?.textContent.trim() === '2', null, { timeout: WAIT });
  const windowState = ((await staging.locator(tid('window-state')).textContent()) || '').trim();
  check(windowState === 'open', `the staging deploy window reads \`${windowState}\``);
  const windowRules = ((await staging.locator(tid('window-rules')).textContent()) || '');
  check(windowRules.includes('every day 00:00–24:00 Europe/Paris'), `the staging deploy window lists \`${windowRules}\``);
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
  await audit(page, 'environments, staging locked');

  await deployFromForm(page, '1', 'staging');
  await page.waitForSelector(`${tid('deploy-error')}:visible`);
  const refusal = ((await page.textContent(tid('deploy-error'))) || '');
  check(/locked by/i.test(refusal) && refusal.includes('db migration'), `the refusal does not name the lock: ${refusal}`);
  await page.waitForTimeout(500); // a run page, if one were wrongly opened, would show by now
  check(await page.evaluate(() => location.hash.startsWith('#/deploy')), 'a refused deploy left the form');
  await shot(page, 'deploy-refused.png');
  await audit(page, 'deploy refused by the lock');

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
  await audit(page, 'runs');
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
  // The change is said once, in words, by the one status region; the table is not live.
  await page.waitForFunction((id) => { const t = document.querySelector('[data-testid="announcer"]').textContent; return t.includes(id) && t.includes('succeeded'); }, apiRun, { timeout: WAIT });
  check(await page.evaluate(() => document.querySelectorAll('[aria-live]').length === 1), 'something besides the status region is aria-live');
  // Arrowing through a filter changes the choice, not the page (WCAG 3.2.2); the button applies it.
  const listed = await page.evaluate(() => location.hash);
  await page.focus(tid('filter-status'));
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('ArrowDown');
  check(await page.inputValue(tid('filter-status')) !== '', 'ArrowDown did not move the status filter');
  check(await page.evaluate(() => location.hash) === listed, `ArrowDown on the filter went to ${await page.evaluate(() => location.hash)}`);
  check(await page.evaluate(() => document.activeElement?.dataset.testid === 'filter-status'), `ArrowDown on the filter moved the focus to ${await focused(page)}`);
  await page.selectOption(tid('filter-status'), 'failed');
  await page.click(tid('filter-apply'));
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('[data-testid="run-row"]')];
    return location.hash.includes('status=failed') && rows.length >= 1 && rows.every((r) => r.dataset.status === 'failed');
  }, null, { timeout: WAIT });
  const failedIds = await page.$$eval(tid('run-row'), (rows) => rows.map((r) => r.dataset.runId));
  check(failedIds.length === 1 && failedIds[0] === badRun, `the failed filter shows ${failedIds.join(', ')} instead of ${badRun}`);
  await audit(page, 'runs, failed only');

  // 6. A phone.
  step(6, 'phone viewport 390×844: no horizontal scroll, long names and log lines included');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${BASE}/#/runs`);
  await page.waitForSelector(tid('run-row'));
  const listWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  check(listWidth <= 390, `the runs list is ${listWidth}px wide at 390px`);
  await audit(page, 'phone: runs');
  await page.goto(`${BASE}/#/runs/${encodeURIComponent(badRun)}`);
  await page.waitForSelector(`${tid('run-status')}[data-status="failed"]`);
  await expand(page, 'verify');
  await page.waitForSelector(`${tid('chart-error_ratio')}:visible`);
  const runWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  check(runWidth <= 390, `the run page is ${runWidth}px wide at 390px`);
  // The run id is one line, not cut; table keys keep their words whole.
  const idLines = await page.evaluate(() => { const el = document.querySelector('[data-testid="run-id"]'); const r = document.createRange(); r.selectNodeContents(el); return [r.getClientRects().length, el.scrollWidth <= el.clientWidth]; });
  check(idLines[0] === 1 && idLines[1], `the run id on a phone: ${idLines[0]} lines, ${idLines[1] ? 'whole' : 'cut'}`);
  const brokenKeys = await page.evaluate(() => [...document.querySelectorAll('.kv th')].filter((th) => {
    const r = document.createRange(); r.selectNodeContents(th);
    return !/\s/.test(th.textContent.trim()) && new Set([...r.getClientRects()].map((q) => Math.round(q.top))).size > 1;
  }).map((th) => th.textContent));
  check(brokenKeys.length === 0, `table keys broken over lines on a phone: ${brokenKeys.join(', ')}`);
  await shot(page, 'phone-run.png', true);
  await audit(page, 'phone: run failed, verify open');
  // A long step name and a log line without a space wrap rather than widen the page.
  await page.goto(`${BASE}/#/runs/${encodeURIComponent(apiRun)}`);
  await page.waitForSelector(`${tid('run-status')}[data-status="succeeded"]`);
  await expand(page, 'wait');
  const longWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  check(longWidth <= 390, `a run with a long step name and log line is ${longWidth}px wide at 390px`);
  await shot(page, 'phone-long-names.png', true);
  await audit(page, 'phone: long names');

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
  // The focus ring and the field's border stand out 3:1 from the card (WCAG 1.4.11).
  const ring = await vpage.evaluate(() => {
    const el = document.activeElement, css = getComputedStyle(el);
    return { outline: css.outlineColor, style: css.outlineStyle, border: css.borderTopColor, card: getComputedStyle(el.closest('.card')).backgroundColor };
  });
  check(ring.style !== 'none' && contrast(ring.outline, ring.card) >= 3, `the focus ring ${ring.outline} on ${ring.card} is ${contrast(ring.outline, ring.card).toFixed(2)}:1`);
  check(contrast(ring.border, ring.card) >= 3, `the field border ${ring.border} on ${ring.card} is ${contrast(ring.border, ring.card).toFixed(2)}:1`);
  await vpage.keyboard.type(VIEWER);
  await vpage.keyboard.press('Enter');
  await vpage.waitForFunction(() => location.hash.startsWith('#/runs') && !!document.querySelector('[data-testid="principal"]')?.textContent, null, { timeout: WAIT });
  await vpage.waitForSelector(tid('run-row'));
  await audit(vpage, 'viewer: runs');
  check(!(await vpage.isVisible(tid('nav-deploy'))), 'a viewer sees the Deploy link');
  check(await vpage.locator(tid('deploy-button')).count() === 0, 'a viewer sees a Deploy button');
  check(((await vpage.textContent(tid('role'))) || '').includes('viewer'), 'the top bar does not say viewer');
  await vpage.click(tid('nav-environments'));
  await vpage.waitForSelector(tid('env-deploy-staging'));
  check(await vpage.locator('form[data-testid^="lock-form"]').count() === 0, 'a viewer sees a lock form');
  check(await vpage.locator('[data-testid^="unlock-"]').count() === 0, 'a viewer sees an Unlock button');
  await audit(vpage, 'viewer: environments');
  await vpage.goto(`${BASE}/#/runs/${encodeURIComponent(badRun)}`);
  await vpage.waitForSelector(tid('run-status'));
  check(await vpage.locator(tid('cancel-run')).count() === 0, 'a viewer sees a Cancel button');

  await vpage.goto(`${BASE}/#/runs/${encodeURIComponent(INTERRUPTED)}`);
  await vpage.waitForSelector(`${tid('run-status')}[data-status="interrupted"]`);
  check(await vpage.locator(tid('resume-run')).count() === 0, 'a viewer sees a Resume button');
  await audit(vpage, 'viewer: interrupted run');

  step(8, 'a run the daemon was killed during: the admin resumes it from its page');
  page = admin;
  await admin.goto(`${BASE}/#/runs/${encodeURIComponent(INTERRUPTED)}`);
  await admin.waitForSelector(`${tid('run-status')}[data-status="interrupted"]`);
  await admin.click(tid('resume-run'));
  await runEnds(admin, 'succeeded');
  await audit(admin, 'resumed run succeeded');

  step(9, 'the dark scheme, on a desktop and a phone');
  await admin.emulateMedia({ colorScheme: 'dark' });
  await admin.setViewportSize({ width: 1280, height: 900 });
  await admin.goto(`${BASE}/#/runs`);
  await admin.waitForSelector(tid('run-row'));
  await audit(admin, 'dark: runs');
  await admin.goto(`${BASE}/#/runs/${encodeURIComponent(badRun)}`);
  await admin.waitForSelector(`${tid('run-status')}[data-status="failed"]`);
  await expand(admin, 'verify');
  await expand(admin, 'rollback');
  await admin.waitForSelector(`${tid('chart-error_ratio')}:visible`);
  await shot(admin, 'dark-run-failed.png', true);
  await audit(admin, 'dark: run failed and rolled back');
  await admin.goto(`${BASE}/#/runs/${encodeURIComponent(INTERRUPTED)}`);
  await admin.waitForSelector(`${tid('run-status')}[data-status="succeeded"]`);
  await audit(admin, 'dark: resumed run');
  await admin.click(tid('nav-environments'));
  await admin.waitForSelector(tid('env-deploy-staging'));
  await audit(admin, 'dark: environments');
  await admin.click(tid('nav-deploy'));
  await admin.waitForSelector(tid('workflow-deploy'));
  await audit(admin, 'dark: workflows');
  await admin.click(tid('workflow-deploy'));
  await admin.waitForSelector(tid('deploy-form'));
  await admin.selectOption(tid('input-release'), '1');
  await admin.click(tid('deploy-submit'));
  await admin.waitForSelector(`${tid('confirm-panel')}:visible`);
  await audit(admin, 'dark: confirm');
  await admin.keyboard.press('Escape');
  await admin.setViewportSize({ width: 390, height: 844 });
  await admin.goto(`${BASE}/#/runs/${encodeURIComponent(badRun)}`);
  await admin.waitForSelector(`${tid('run-status')}[data-status="failed"]`);
  await expand(admin, 'verify');
  await shot(admin, 'dark-phone-run.png', true);
  await audit(admin, 'dark phone: run failed');
  await admin.goto(`${BASE}/#/environments`);
  await admin.waitForSelector(tid('env-deploy-staging'));
  await audit(admin, 'dark phone: environments');

  step(10, 'approvals: the starter may only reject; another deployer approves one, rejects one; one times out');
  await admin.emulateMedia({ colorScheme: 'light' });
  await admin.setViewportSize({ width: 1280, height: 900 });
  page = admin;
  await deployFromForm(admin, '4', 'production');
  const keptRun = await waitRunPage(admin);
  console.log(`e2e:    run ${keptRun} (approved)`);
  await admin.waitForSelector(`${tid('run-status')}[data-status="waiting"]`, { timeout: LONG });
  await admin.waitForSelector(tid('approval-panel'));
  const question = (await admin.textContent(tid('approval-text'))) || '';
  check(question.includes('Release 4 in production has an error ratio of 0.03'), `the approval asks \`${question}\``);
  await admin.waitForSelector(`${tid('approval-evidence')} ${tid('chart-error_ratio')}`);
  check(await admin.locator(tid('approval-approve')).count() === 0, 'the one who started the run may approve it');
  check(await admin.locator(tid('approval-reject')).count() === 1, 'the one who started the run may not reject it');
  check(((await admin.textContent(tid('approval-why-not'))) || '').includes('another person must approve it'), 'the starter is not told why they cannot approve');
  await shot(admin, 'approval-starter.png', true);
  await audit(admin, 'approval: the starter');

  // Another deployer, in a browser of their own, finds it under "Waiting for you".
  const dctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const dana = await dctx.newPage();
  dana.setDefaultTimeout(WAIT);
  watch(dana, 'deployer');
  page = dana;
  await dana.goto(`${BASE}/`);
  await dana.waitForSelector(tid('signin-form'));
  await signIn(dana, DEPLOYER);
  await dana.check(tid('filter-for-me'));
  await dana.click(tid('filter-apply'));
  await dana.waitForFunction((id) => {
    const rows = [...document.querySelectorAll('[data-testid="run-row"]')];
    return location.hash.includes('for_me=1') && rows.length === 1 && rows[0].dataset.runId === id && rows[0].dataset.status === 'waiting';
  }, keptRun, { timeout: WAIT });
  await audit(dana, 'runs waiting for you');
  await dana.click(`${tid('run-row')}[data-run-id="${keptRun}"] a`);
  await dana.waitForSelector(tid('approval-approve'));
  await shot(dana, 'approval.png', true);
  await audit(dana, 'approval: an approver');
  // The keyboard alone: the comment, then Tab to Approve and Enter.
  await dana.focus(tid('approval-comment'));
  await dana.keyboard.type('0.03 is the cache warming up');
  await dana.keyboard.press('Tab');
  check(await dana.evaluate(() => document.activeElement?.dataset.testid === 'approval-approve'), `Tab from the comment went to ${await focused(dana)}`);
  await dana.keyboard.press('Enter');
  await runEnds(dana, 'succeeded');
  await dana.waitForSelector(`${tid('step-decide')}[data-status="succeeded"]`);
  const approvedBy = (await dana.textContent(`${tid('step-decide')} .glance-summary`)) || '';
  check(approvedBy.includes('approved by dana') && approvedBy.includes('cache warming up'), `the approval step says \`${approvedBy}\``);
  check(await dana.locator(tid('approval-panel')).count() === 0, 'the approval panel stays after the decision');
  await runEnds(admin, 'succeeded');
  await audit(dana, 'approved run succeeded');

  // Rejected: the step fails with the reason, and the rollback runs.
  page = admin;
  await deployFromForm(admin, '4', 'staging');
  const rejectedRun = await waitRunPage(admin);
  console.log(`e2e:    run ${rejectedRun} (rejected)`);
  page = dana;
  await dana.goto(`${BASE}/#/runs/${encodeURIComponent(rejectedRun)}`);
  await dana.waitForSelector(tid('approval-reject'), { timeout: LONG });
  await dana.emulateMedia({ colorScheme: 'dark' });
  await audit(dana, 'dark: approval');
  await dana.setViewportSize({ width: 390, height: 844 });
  const approvalWidth = await dana.evaluate(() => document.documentElement.scrollWidth);
  check(approvalWidth <= 390, `the approval panel is ${approvalWidth}px wide at 390px`);
  await shot(dana, 'dark-phone-approval.png', true);
  await audit(dana, 'dark phone: approval');
  await dana.emulateMedia({ colorScheme: 'light' });
  await dana.setViewportSize({ width: 1280, height: 900 });
  await dana.fill(tid('approval-comment'), 'not before the weekend');
  await dana.click(tid('approval-reject'));
  await runEnds(dana, 'failed');
  await dana.waitForSelector(`${tid('step-rollback')}[data-status="succeeded"]`);
  const rejectedWhy = (await dana.textContent(tid('step-error-decide'))) || '';
  check(rejectedWhy.includes('rejected by dana') && rejectedWhy.includes('not before the weekend'), `the rejected step says \`${rejectedWhy}\``);
  await audit(dana, 'rejected run rolled back');

  // Nobody answers: the wait ends at its deadline as a rejection.
  const gated = await fetch(`${BASE}/api/v1/runs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ workflow: 'gate' }),
  });
  check(gated.status === 202, `starting the gate answered ${gated.status}`);
  const gateRun = (await gated.json()).id;
  await dana.goto(`${BASE}/#/runs/${encodeURIComponent(gateRun)}`);
  await dana.waitForSelector(tid('approval-panel'), { timeout: WAIT });
  check(((await dana.textContent(tid('approval-text'))) || '').includes('Nobody will answer'), 'the gate asks something else');
  await runEnds(dana, 'failed');
  const timedOut = (await dana.textContent(tid('step-error-decide'))) || '';
  check(timedOut.includes('timeout') && timedOut.includes('no decision within 4s'), `the timed-out step says \`${timedOut}\``);
  check(await dana.locator(tid('approval-panel')).count() === 0, 'the approval panel stays after the timeout');
  await audit(dana, 'approval timed out');
  page = admin;

  step(11, 'the handbook: linked from a run and a workflow card, the daemon\'s principals, a widened grant in its history, plugin text shown as text');
  // The run page links its workflow's handbook; the link goes with the old view, so the focus
  // lands on the new view's heading.
  await admin.goto(`${BASE}/#/runs/${encodeURIComponent(badRun)}`);
  await admin.waitForSelector(tid('run-handbook'));
  await admin.focus(tid('run-handbook'));
  await admin.keyboard.press('Enter');
  await admin.waitForSelector(tid('handbook'));
  check(await admin.evaluate(() => location.hash === '#/workflows/deploy'), 'the run\'s handbook link went elsewhere');
  check(await admin.evaluate(() => document.activeElement?.matches('#main h1')), `after the handbook link the focus is on ${await focused(admin)}, not the heading`);
  const book = (await admin.textContent(tid('handbook'))) || '';
  check(book.includes('Who may run it, by this daemon\'s principals: alice (admin).'), `the handbook does not name who may run it: ${book.slice(-600)}`);
  check(await admin.locator(`${tid('handbook')} table th`).count() === 4, 'the inputs table has no header of four columns');
  check(await admin.locator(`${tid('handbook')} ol > li strong code`).count() >= 4, 'the steps are not a list with their ids as code');
  // Outside code spans (which may hold `**`, as in a glob), no Markdown mark is left as text.
  const raw = await admin.evaluate(() => {
    const walk = document.createTreeWalker(document.querySelector('[data-testid="handbook"]'), NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      if (!n.parentElement.closest('code') && /\*\*|`/.test(n.textContent)) return n.textContent;
    }
    return null;
  });
  check(raw === null, `the handbook shows raw Markdown marks: \`${raw}\``);
  check(((await admin.textContent(tid('grant-history'))) || '').includes('No reload has changed'), 'deploy has a grant history it never had');
  await shot(admin, 'handbook.png', true);
  await audit(admin, 'handbook');

  // A reload widens what `hello` may reach, with a description that would run a script were
  // it ever taken for HTML.
  const hostile = '<img src=x onerror="window.__pwned = 1">';
  await writeFile('workflows/hello.yaml', [
    'name: hello',
    `description: 'Says hello ${hostile}'`,
    'inputs:',
    `  environment: { type: choice, choices: [dev], default: dev, description: 'Where ${hostile} | goes' }`,
    'concurrency: hello-${{ inputs.environment }}',
    'steps:',
    '  - id: greet',
    '    uses: echo',
    '    with: { message: hello }',
    '    allow: { http: [hooks.example.com] }',
    '',
  ].join('\n'));
  const ready = Date.now() + WAIT;
  for (;;) {
    const asked = await fetch(`${BASE}/api/v1/workflows/hello/grants`, { headers: { authorization: `Bearer ${ADMIN}` } });
    const history = asked.ok ? await asked.json() : { changes: [] };
    const book = await fetch(`${BASE}/api/v1/workflows/hello/handbook`, { headers: { authorization: `Bearer ${ADMIN}` } });
    if (history.changes.length && book.ok && (await book.text()).includes('Says hello')) break;
    check(Date.now() < ready, 'the daemon never reloaded `hello` with its wider grant');
    await admin.waitForTimeout(200);
  }
  await admin.click(tid('nav-deploy'));
  await admin.waitForSelector(tid('handbook-hello'));
  await admin.click(tid('handbook-hello'));
  await admin.waitForSelector(tid('grant-change'));
  const change = (await admin.textContent(tid('grant-change'))) || '';
  check(change.includes('widened') && change.includes('step greet: + http hooks.example.com'), `the grant history says \`${change}\``);
  const hello = (await admin.textContent(tid('handbook'))) || '';
  check(hello.includes(`Says hello ${hostile}`), `the hostile description is not shown as text: ${hello.slice(0, 300)}`);
  check(hello.includes(`Where ${hostile} | goes`), 'the hostile input description is not shown as text in its table cell');
  check(await admin.locator('#main img').count() === 0, 'text from a workflow became an <img>');
  check(await admin.evaluate(() => window.__pwned === undefined), 'text from a workflow ran a script');
  await shot(admin, 'handbook-grants.png', true);
  await audit(admin, 'handbook with a grant history');
  await admin.emulateMedia({ colorScheme: 'dark' });
  await audit(admin, 'dark: handbook with a grant history');
  await admin.emulateMedia({ colorScheme: 'light' });
  // On a phone the long lines wrap and a wide table scrolls in its own box, not the page.
  await admin.setViewportSize({ width: 390, height: 844 });
  await admin.goto(`${BASE}/#/workflows/deploy`);
  await admin.waitForSelector(tid('handbook'));
  const bookWidth = await admin.evaluate(() => document.documentElement.scrollWidth);
  check(bookWidth <= 390, `the handbook is ${bookWidth}px wide at 390px`);
  await audit(admin, 'phone: handbook');
  await admin.setViewportSize({ width: 1280, height: 900 });

  console.log(`e2e: ${audits} page states audited with axe-core, ${violations.length} violations`);
  check(violations.length === 0, `axe-core found WCAG 2.1 A/AA violations:\n  ${violations.join('\n  ')}`);
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
