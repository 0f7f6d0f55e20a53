#!/usr/bin/env node
/*
 * The web UI end to end in a real browser: Debian's chromium, driven by
 * playwright-core (the library only; no bundled browser, no test runner).
 *
 * The script starts the real test peer (an OAuth server with an MCP
 * endpoint, 20-second tokens) and the real keeper from the build tree
 * ($MCPKEEPER_BUILD_ROOT, as the Python harness does), reads the web UI's
 * address with the key from the keeper's status on the control socket,
 * opens it, and plays the user: login in a new tab (the peer approves at
 * once and redirects to the oauth child's callback), a proactive refresh
 * seen on the page, logout through the confirmation, login again, and a
 * refresh that the provider refuses (invalid_grant). Each step prints
 * "ok N - ..." and saves a screenshot to $MCPKEEPER_ARTIFACTS_DIR (default:
 * BUILD/meson-logs/browser/).
 *
 * Exit status: 0 passed, 1 failed, 77 (meson's skip) when chromium or
 * node_modules/playwright-core is missing and $CI is not set; with $CI set,
 * a missing prerequisite is a failure. Every wait is bounded and every
 * process this script starts is stopped by its PID, whatever happens.
 *
 *   cd tests/browser && npm ci && MCPKEEPER_BUILD_ROOT=../../build node ui-test.mjs
 *
 * Environment: MCPKEEPER_BUILD_ROOT, MCPKEEPER_SOURCE_ROOT,
 * MCPKEEPER_ARTIFACTS_DIR, MCPKEEPER_CHROMIUM (default /usr/bin/chromium),
 * KEEP_TMP=1 (keep the temporary directory), CI.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SOURCE_ROOT = process.env.MCPKEEPER_SOURCE_ROOT || path.resolve(HERE, '..', '..');
const BUILD_ROOT = process.env.MCPKEEPER_BUILD_ROOT || path.join(SOURCE_ROOT, 'build');
const KEEPERD = path.join(BUILD_ROOT, 'daemon', 'mcpkeeperd');
const HTTP_BIN = path.join(BUILD_ROOT, 'daemon', 'http', 'mcpkeeper-http');
const PEER_BIN = path.join(BUILD_ROOT, 'tests', 'peer', 'mcpkeeper-test-peer');
const STDIO_BIN = path.join(BUILD_ROOT, 'tests', 'stdio-mcp', 'mcpkeeper-test-stdio-server');
// A hostile upstream's tool (the "evil" server): markup and escapes that must show as text.
const EVIL_DESC = 'Owns the page <img src=x onerror="window.__owned=1"><script>window.__owned=2</script>\x1b[31m';
const EVIL_TOOL = { name: '<b>evil</b>', description: EVIL_DESC,
                    inputSchema: { type: 'object', properties: { '<i>q</i>': { type: 'string' } }, required: [] } };
const CHROMIUM = process.env.MCPKEEPER_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.MCPKEEPER_ARTIFACTS_DIR || path.join(BUILD_ROOT, 'meson-logs', 'browser');
const SKIP = 77;

const TOKEN_LIFETIME = 20;     // seconds; refreshed at half of it
const THRESHOLD = 0.5;
const OVERALL_S = 240;         // the whole run, whatever hangs
const STEP_MS = 15000;         // one UI reaction
const LIVE_MS = 8000;          // the page follows an event (the UI's own poll is 30 s)

const SANITIZER_MARKERS = ['ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
  'WARNING: ThreadSanitizer', 'ERROR: MemorySanitizer'];

class Failure extends Error {}

function fail(msg) {
  throw new Failure(msg);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/* Polls fn until it returns something truthy; fails after ms. */
async function waitFor(fn, ms, what) {
  const deadline = Date.now() + ms;
  let last = null;
  for (;;) {
    try {
      const v = await fn();
      if (v)
        return v;
      last = null;
    } catch (e) {
      if (e instanceof Failure)
        throw e;
      last = e;
    }
    if (Date.now() >= deadline)
      fail(`timed out after ${(ms / 1000).toFixed(1)} s waiting for ${what}` +
           (last ? ` (last error: ${last.message || last})` : ''));
    await sleep(100);
  }
}

/* A promise that fails after ms instead of waiting forever. */
function bounded(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${(ms / 1000).toFixed(1)} s: ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/* ---- prerequisites ------------------------------------------------------ */

function missingPrerequisites() {
  const missing = [];
  try {
    fs.accessSync(CHROMIUM, fs.constants.X_OK);
  } catch {
    missing.push(`${CHROMIUM} (Debian package chromium)`);
  }
  if (!fs.existsSync(path.join(HERE, 'node_modules', 'playwright-core', 'package.json')))
    missing.push(`${path.join(HERE, 'node_modules', 'playwright-core')} (run: npm ci in tests/browser)`);
  return missing;
}

/* ---- processes ------------------------------------------------------------ */

const live = new Map();     // pid -> ChildProcess, everything started and not reaped

function childEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.toLowerCase().endsWith('_proxy'))
      env[k] = v;
  return env;
}

function start(argv, logPath, stdio = 'ignore') {
  const log = fs.openSync(logPath, 'a');
  const p = spawn(argv[0], argv.slice(1), { stdio: ['ignore', stdio === 'pipe' ? 'pipe' : log, log],
    env: childEnv() });
  fs.closeSync(log);
  if (p.pid === undefined)
    fail(`cannot start ${argv[0]}`);
  live.set(p.pid, p);
  p.exited = new Promise((resolve) => p.on('exit', (code, sig) => {
    live.delete(p.pid);
    resolve({ code, sig });
  }));
  p.on('error', () => {});
  return p;
}

/* SIGTERM, up to ms, then SIGKILL. Resolves to {code, sig}. */
async function stop(p, ms = 20000) {
  if (!p || p.exitCode !== null || p.signalCode !== null)
    return p ? { code: p.exitCode, sig: p.signalCode } : null;
  try {
    process.kill(p.pid, 'SIGTERM');
  } catch { /* gone */ }
  let timer;
  const r = await Promise.race([p.exited, new Promise((resolve) => { timer = setTimeout(resolve, ms, null); })]);
  clearTimeout(timer);
  if (r)
    return r;
  try {
    process.kill(p.pid, 'SIGKILL');
  } catch { /* gone */ }
  return bounded(p.exited, 10000, `pid ${p.pid} to die after SIGKILL`);
}

function killAllNow() {
  for (const pid of live.keys()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch { /* gone */ }
  }
}
process.on('exit', killAllNow);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAllNow();
    process.exit(1);
  });
}

async function startPeer(dir) {
  const p = start([PEER_BIN, '--port', '0', '--token-lifetime', String(TOKEN_LIFETIME), '--grace', '0'],
    path.join(dir, 'peer.log'), 'pipe');
  let buf = '';
  const port = await bounded(new Promise((resolve, reject) => {
    p.stdout.on('data', (d) => {
      buf += d.toString();
      const m = /^PORT (\d+)$/m.exec(buf);
      if (m)
        resolve(Number(m[1]));
    });
    p.exited.then(({ code, sig }) => reject(new Failure(`the test peer exited (${code ?? sig}) before listening`)));
  }), 20000, 'the test peer to print its PORT line');
  p.stdout.on('data', () => {});     // keep draining
  return { proc: p, port, url: `http://127.0.0.1:${port}` };
}

/* ---- the control socket: JSON-RPC, one object per line ------------------- */

class Control {
  constructor(sockPath) {
    this.sockPath = sockPath;
  }

  /* One request on a fresh connection. */
  rpc(method, params, ms = 10000) {
    return bounded(new Promise((resolve, reject) => {
      const s = net.createConnection(this.sockPath);
      let buf = '';
      s.on('connect', () => {
        const req = { jsonrpc: '2.0', id: 1, method };
        if (params !== undefined)
          req.params = params;
        s.write(JSON.stringify(req) + '\n');
      });
      s.on('data', (d) => {
        buf += d.toString();
        const nl = buf.indexOf('\n');
        if (nl < 0)
          return;
        s.destroy();
        const msg = JSON.parse(buf.slice(0, nl));
        if (msg.error)
          reject(new Error(`${method}: ${msg.error.message}`));
        else
          resolve(msg.result);
      });
      s.on('error', reject);
      s.on('close', () => reject(new Error(`${method}: connection closed without an answer`)));
    }), ms, `the keeper's answer to ${method}`);
  }

  /* events.subscribe: every event params {type, data, timestamp} lands in .events. */
  async subscribe() {
    this.events = [];
    this.sub = net.createConnection(this.sockPath);
    let buf = '';
    await bounded(new Promise((resolve, reject) => {
      this.sub.on('connect', () => this.sub.write('{"jsonrpc":"2.0","id":1,"method":"events.subscribe"}\n'));
      this.sub.on('data', (d) => {
        buf += d.toString();
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const msg = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          if (msg.id === 1)
            resolve();
          else if (msg.method === 'event')
            this.events.push(msg.params);
        }
      });
      this.sub.on('error', reject);
    }), 10000, 'events.subscribe');
  }

  /* The first event of type after index `from` whose data satisfies pred. */
  waitEvent(type, pred, from, ms, what) {
    return waitFor(() => this.events.slice(from).find((e) => e.type === type && (!pred || pred(e.data))),
      ms, what || `a ${type} event on the control socket`);
  }

  close() {
    if (this.sub)
      this.sub.destroy();
  }

  async server(name) {
    const st = await this.rpc('status');
    const s = st.servers.find((x) => x.name === name);
    if (!s)
      fail(`no server ${name} in status`);
    return s;
  }
}

/* ---- the page ------------------------------------------------------------- */

/* "4m 10s", "19s", "1h 2m" -> seconds; null when there is no duration. */
function parseDuration(text) {
  const m = /in ((?:\d+\s*[dhms]\s*)+)/.exec(text || '');
  if (!m)
    return null;
  const unit = { d: 86400, h: 3600, m: 60, s: 1 };
  let total = 0;
  for (const [, n, u] of m[1].matchAll(/(\d+)\s*([dhms])/g))
    total += Number(n) * unit[u];
  return total;
}

/* ---- main ------------------------------------------------------------------- */

async function main() {
  const missing = missingPrerequisites();
  if (missing.length) {
    const why = `missing: ${missing.join('; ')}`;
    if (process.env.CI) {
      console.log(`not ok 1 - prerequisites (CI is set, so this is a failure): ${why}`);
      return 1;
    }
    console.log(`SKIP: ${why} (bash scripts/install-deps installs chromium, nodejs and npm; ` +
                'scripts/test runs npm ci)');
    return SKIP;
  }
  for (const bin of [KEEPERD, HTTP_BIN, PEER_BIN, STDIO_BIN]) {
    if (!fs.existsSync(bin)) {
      console.log(`not ok 1 - ${bin} is not built (MCPKEEPER_BUILD_ROOT=${BUILD_ROOT})`);
      return 1;
    }
  }
  const { chromium } = await import('playwright-core');

  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of fs.readdirSync(ARTIFACTS))
    if (/\.(png|log|txt)$/.test(f))
      fs.rmSync(path.join(ARTIFACTS, f), { force: true });

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mcpkeeper-ui-'));
  const dataDir = path.join(tmp, 'data');
  const runtimeDir = path.join(tmp, 'run');
  fs.mkdirSync(dataDir, { mode: 0o700 });
  const keeperLog = path.join(tmp, 'keeper.log');
  const peerLog = path.join(tmp, 'peer.log');
  const consoleLines = [];
  const pageErrors = [];
  let n = 0;
  let peer = null;
  let keeper = null;
  let browser = null;
  let control = null;
  let page = null;
  let keeperRc = null;
  let shot = 0;
  let failed = null;
  let apiKey = null;

  const ok = (what) => console.log(`ok ${++n} - ${what}`);
  const screenshot = async (p, name) => {
    const file = path.join(ARTIFACTS, `${String(++shot).padStart(2, '0')}-${name}.png`);
    await bounded(p.screenshot({ path: file, fullPage: true }), 15000, `screenshot ${name}`);
    return file;
  };

  try {
    peer = await startPeer(tmp);
    const config = {
      data_dir: dataDir,
      runtime_dir: runtimeDir,
      listen: '127.0.0.1:0',
      refresh: { threshold: THRESHOLD },
      // "off": a disabled server: badge "Disabled", no Login (the keeper
      // would refuse it). "down": nothing listens at its URL, so its Login
      // is a REST error. "evil": a stdio server whose tool is hostile text.
      mcpServers: {
        demo: { url: `${peer.url}/mcp` },
        off: { url: `${peer.url}/mcp`, enabled: false },
        down: { url: 'http://127.0.0.1:1/mcp' },
        evil: { command: STDIO_BIN, args: ['--extra-tool', JSON.stringify(EVIL_TOOL)] },
      },
    };
    const configPath = path.join(tmp, 'config.json');
    fs.writeFileSync(configPath, JSON.stringify(config, null, 2));
    keeper = start([KEEPERD, '--config', configPath], keeperLog);
    control = new Control(path.join(runtimeDir, 'control.sock'));
    await waitFor(async () => {
      if (keeper.exitCode !== null)
        fail(`mcpkeeperd exited with status ${keeper.exitCode} during start`);
      return fs.existsSync(control.sockPath) && await control.rpc('status', undefined, 5000);
    }, 30000, 'the control socket to answer status');
    const st = await waitFor(async () => {
      const s = await control.rpc('status');
      return s.web_ui ? s : null;
    }, 30000, 'status to show web_ui (the http child listening)');
    const webUi = st.web_ui;
    const m = /^http:\/\/127\.0\.0\.1:(\d+)\/#key=([A-Za-z0-9_-]+)$/.exec(webUi);
    if (!m)
      fail(`web_ui ${JSON.stringify(webUi)} is not http://127.0.0.1:PORT/#key=KEY`);
    apiKey = m[2];
    await control.subscribe();
    ok(`keeper and test peer started; web UI at http://127.0.0.1:${m[1]}/`);

    browser = await bounded(chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-background-networking'],
      headless: true,
    }), 60000, 'chromium to start');
    const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    context.setDefaultTimeout(STEP_MS);
    page = await context.newPage();
    page.on('console', (msg) => consoleLines.push(`[${msg.type()}] ${msg.text()}`));
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const card = page.locator('section.card[data-server="demo"]');
    const badge = card.locator('[data-role="badge"]');
    const loginBtn = card.locator('[data-action="login"]');
    const logoutBtn = card.locator('[data-action="logout"]');
    const expires = card.locator('[data-role="expires"]');
    const liveTag = page.locator('[data-role="live"]');

    const badgeIs = (text, ms = STEP_MS) => waitFor(async () => {
      const t = (await badge.textContent({ timeout: 2000 }) || '').trim();
      return t === text;
    }, ms, `the badge to say "${text}"`).catch(async (e) => {
      const now = await badge.textContent({ timeout: 1000 }).catch(() => '?');
      fail(`${e.message}; it says ${JSON.stringify(now)}`);
    });
    const visible = (loc) => loc.count().then((c) => c > 0 && loc.first().isVisible());
    const noSecrets = () => {
      if (pageErrors.length)
        fail(`uncaught errors in the page: ${pageErrors.join(' | ')}`);
      const csp = consoleLines.filter((l) => /Content Security Policy/i.test(l));
      if (csp.length)
        fail(`the page broke its own Content-Security-Policy: ${csp.join(' | ')}`);
    };

    /* 1. The page, the card, the live indicator. */
    const resp = await page.goto(webUi, { waitUntil: 'load', timeout: 30000 });
    if (!resp || resp.status() !== 200)
      fail(`GET / answered ${resp ? resp.status() : 'nothing'}`);
    if (!resp.headers()['content-security-policy'])
      fail('the page came without a Content-Security-Policy header');
    await card.waitFor({ state: 'visible' });
    await badgeIs('Not logged in');
    if (!await visible(loginBtn))
      fail('no Login button on the card of a server that is not logged in');
    if (await logoutBtn.count())
      fail('a Logout button on the card of a server that is not logged in');
    await waitFor(async () => (await liveTag.textContent() || '').trim() === 'live', STEP_MS,
      'the live indicator to say "live" (the event stream is open)');
    if (page.url().includes(apiKey))
      fail(`the key is still in the address bar: ${page.url()}`);
    noSecrets();
    await screenshot(page, 'not-logged-in');
    ok('card "demo": badge "Not logged in", a Login button, the event stream live, the key gone from the URL');

    /* 1b. Tools before the login: the card says what to run. */
    const toolsBtn = card.locator('[data-action="tools"]');
    const toolList = card.locator('[data-role="tool-list"]');
    {
      await toolsBtn.click();
      const err = card.locator('[data-role="tools-error"]');
      await err.waitFor({ state: 'visible', timeout: STEP_MS });
      const text = ((await err.textContent()) || '').trim();
      if (!text.includes('mcpctl auth login --server demo'))
        fail(`Tools before the login does not name the login command: ${JSON.stringify(text)}`);
      if (await toolList.count())
        fail('a tool list on a server that is not logged in');
      if (await page.locator('section.card[data-server="off"] [data-role="tools"]').count())
        fail('the disabled server\'s card offers Tools');
      ok(`Tools before the login: ${JSON.stringify(text)}`);
    }

    /* A disabled server says so, and offers no Login the keeper would refuse. */
    {
      const off = page.locator('section.card[data-server="off"]');
      await off.waitFor({ state: 'visible' });
      const offBadge = ((await off.locator('[data-role="badge"]').textContent()) || '').trim();
      if (offBadge !== 'Disabled')
        fail(`the badge of a disabled server says ${JSON.stringify(offBadge)}, not "Disabled"`);
      if (await off.locator('[data-action="login"]').count())
        fail('a Login button on the card of a disabled server');
      if (await off.locator('[data-action="logout"]').count())
        fail('a Logout button on a disabled server that stores no token');
      if (await visible(off.locator('[data-role="worker"]')))
        fail('a worker state ("idle") on the card of a disabled server');
      ok('card "off" (disabled): badge "Disabled", neither Login nor Logout, no worker state');
    }

    /* 2. Login: a new tab with the authorization URL; the peer approves, the
     * oauth child's callback says so; the page turns Authenticated. */
    const login = async (label) => {
      const from = control.events.length;
      const [tab] = await Promise.all([
        context.waitForEvent('page', { timeout: STEP_MS }),
        loginBtn.click(),
      ]);
      await bounded(tab.waitForLoadState('load'), 30000, 'the login tab to load');
      await waitFor(() => /^http:\/\/127\.0\.0\.1:\d+\/oauth\/callback\?/.test(tab.url()), STEP_MS,
        `the login tab to reach the oauth child's callback (it is at ${tab.url()})`);
      const text = await tab.textContent('body');
      if (!/demo/.test(text) || /fail|error/i.test(text))
        fail(`the callback page does not report a successful login for demo: ${JSON.stringify(text.slice(0, 300))}`);
      await screenshot(tab, `${label}-callback-page`);
      await tab.close();
      await control.waitEvent('servers.changed', (d) => d.server === 'demo' && d.reason === 'oauth_login', from,
        30000, 'servers.changed oauth_login on the control socket');
      await badgeIs('Authenticated', LIVE_MS);
      if (!await visible(logoutBtn))
        fail('no Logout button once authenticated');
      if (await loginBtn.count() && await loginBtn.isVisible())
        fail('the Login button is still shown once authenticated');
      const e = (await expires.textContent() || '').trim();
      if (!/^expires in /.test(e))
        fail(`the expiry says ${JSON.stringify(e)}, not "expires in ..."`);
      return tab;
    };
    await login('login');
    noSecrets();
    await screenshot(page, 'authenticated');
    ok('Login opened the authorization URL in a new tab, the callback page reported success, badge "Authenticated" with Logout');

    /* 2b. What the upstream offers: the count and the list on click, and a
     * hostile upstream's markup shown as text. */
    {
      await toolsBtn.click();
      await toolList.waitFor({ state: 'visible', timeout: STEP_MS });
      const count = ((await card.locator('[data-role="tool-count"]').textContent()) || '').trim();
      if (count !== '3 tools')
        fail(`the tool count says ${JSON.stringify(count)}, not "3 tools"`);
      const names = await toolList.locator('li[data-tool]').evaluateAll((ls) => ls.map((l) => l.getAttribute('data-tool')));
      if (JSON.stringify(names) !== JSON.stringify(['echo', 'add', 'slow']))
        fail(`the tool list holds ${JSON.stringify(names)}`);
      const args = ((await toolList.locator('li[data-tool="add"] .tool-args').textContent()) || '').trim();
      if (args !== 'a: number, b: number')
        fail(`the arguments of add read ${JSON.stringify(args)}`);
      if (await card.locator('[data-role="tools-error"]').count())
        fail('the earlier tools error is still shown');
      await screenshot(page, 'tools');
      await toolsBtn.click();
      await toolList.waitFor({ state: 'detached', timeout: STEP_MS });
      if (((await card.locator('[data-role="tool-count"]').textContent()) || '').trim() !== '3 tools')
        fail('hiding the list dropped the count');

      const evil = page.locator('section.card[data-server="evil"]');
      await evil.locator('[data-action="tools"]').click();
      const item = evil.locator('[data-role="tool-list"] li[data-tool="<b>evil</b>"]');
      await item.waitFor({ state: 'visible', timeout: STEP_MS });
      const desc = await item.locator('.tool-desc').textContent();
      if (desc !== EVIL_DESC)
        fail(`the hostile description is not shown as text: ${JSON.stringify(desc)}`);
      if (((await item.locator('.tool-name').textContent()) || '') !== '<b>evil</b>')
        fail('the hostile tool name is not shown as text');
      if (((await item.locator('.tool-args').textContent()) || '') !== '<i>q</i>?: string')
        fail('the hostile argument name is not shown as text');
      const injected = await evil.locator('img, script, b, i').count();
      const owned = await page.evaluate(() => window.__owned);
      if (injected || owned !== undefined)
        fail(`the upstream's markup became elements (${injected}) or ran (${owned})`);
      noSecrets();
      await screenshot(page, 'tools-hostile');
      ok('Tools: "3 tools" and the list on click, hidden on the second; a hostile upstream\'s markup shown as text');
    }

    /* 3. A proactive refresh moves the expiry: the page follows the event. */
    {
      const before = await control.server('demo');
      const nextRefresh = (await card.locator('[data-role="next-refresh"]').textContent().catch(() => '')) || '';
      if (!/refresh/.test(nextRefresh))
        fail(`the next refresh is not shown: ${JSON.stringify(nextRefresh)}`);
      const from = control.events.length;
      // What the page shows shortly before the refresh is due (the last sample before the event).
      let shownBefore = null;
      const ev = await waitFor(async () => {
        const e = control.events.slice(from).find((x) => x.type === 'oauth.token_refreshed' &&
                                                      x.data.server_name === 'demo');
        if (!e)
          shownBefore = parseDuration(await expires.textContent());
        return e;
      }, (TOKEN_LIFETIME + 10) * 1000, 'oauth.token_refreshed on the control socket');
      if (shownBefore === null || shownBefore > TOKEN_LIFETIME * (1 - THRESHOLD) + 2)
        fail(`before the refresh the page showed ${shownBefore} s left, not about ${TOKEN_LIFETIME * (1 - THRESHOLD)} s`);
      // Times are RFC 3339 UTC with milliseconds, with the seconds under *_unix.
      const rfc3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
      for (const [what, text, unix] of [['event expires_at', ev.data.expires_at, ev.data.expires_at_unix],
                                        ['status token_expires_at', before.token_expires_at,
                                         before.token_expires_at_unix]]) {
        if (!rfc3339.test(text) || Math.floor(Date.parse(text) / 1000) !== unix)
          fail(`${what} is ${JSON.stringify(text)} (_unix ${unix}), not RFC 3339 UTC with milliseconds`);
      }
      const newExpiry = Date.parse(ev.data.expires_at) / 1000;
      if (!(newExpiry > Date.parse(before.token_expires_at) / 1000))
        fail(`the refresh did not move expires_at (${before.token_expires_at} -> ${ev.data.expires_at})`);
      await waitFor(async () => {
        const shown = parseDuration(await expires.textContent());
        const want = newExpiry - Date.now() / 1000;
        return shown !== null && Math.abs(shown - want) <= 3;
      }, LIVE_MS, `the page to show the new expiry (expires_at ${newExpiry})`).catch(async (e) => {
        fail(`${e.message}; it shows ${JSON.stringify(await expires.textContent())}, before the refresh ` +
             `${shownBefore} s`);
      });
      const shownAfter = parseDuration(await expires.textContent());
      if (!(shownAfter >= shownBefore + TOKEN_LIFETIME * THRESHOLD / 2))
        fail(`the expiry on the page did not move forward: ${shownBefore} s left before, ${shownAfter} s after`);
      await badgeIs('Authenticated', 2000);
      noSecrets();
      await screenshot(page, 'refreshed');
      ok(`a proactive refresh moved the expiry on the page (${shownBefore} s left before, ${shownAfter} s after)`);
    }

    /* 4. Logout: the in-page confirmation, Cancel keeps the login, Log out ends it. */
    {
      const dialog = page.locator('[data-role="confirm"]');
      await logoutBtn.click();
      await dialog.waitFor({ state: 'visible' });
      const text = await page.locator('[data-role="confirm-text"]').textContent();
      if (!/demo/.test(text || ''))
        fail(`the confirmation does not name the server: ${JSON.stringify(text)}`);
      await screenshot(page, 'logout-confirmation');
      await dialog.locator('[data-action="cancel"]').click();
      await dialog.waitFor({ state: 'hidden' });
      await sleep(500);
      if ((await control.server('demo')).oauth_status !== 'authenticated')
        fail('Cancel in the confirmation logged out anyway');
      await badgeIs('Authenticated', 2000);
      ok('Logout asks first; Cancel keeps the login');

      const from = control.events.length;
      await logoutBtn.click();
      await dialog.waitFor({ state: 'visible' });
      await dialog.locator('[data-action="confirm-logout"]').click();
      await control.waitEvent('servers.changed', (d) => d.server === 'demo' && d.reason === 'oauth_logout', from,
        30000, 'servers.changed oauth_logout on the control socket');
      await badgeIs('Not logged in', LIVE_MS);
      await loginBtn.waitFor({ state: 'visible', timeout: LIVE_MS });
      if (await logoutBtn.count())
        fail('the Logout button is still there after logging out');
      if ((await control.server('demo')).oauth_status !== 'none')
        fail('the keeper still has a token after the logout');
      noSecrets();
      await screenshot(page, 'logged-out');
      ok('Log out in the confirmation: badge "Not logged in", Login back, the keeper holds no token');
    }

    /* 5. Login again, then the provider refuses the refresh token. */
    {
      await login('login-again');
      await screenshot(page, 'authenticated-again');
      ok('logged in again');
      const r = await fetch(`${peer.url}/test/fail`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ mode: 'invalid_grant', count: 5 }),
      });
      if (r.status !== 200)
        fail(`the peer's /test/fail answered ${r.status}`);
      const from = control.events.length;
      await control.waitEvent('oauth.refresh_failed', (d) => d.server_name === 'demo', from,
        (TOKEN_LIFETIME + 10) * 1000, 'oauth.refresh_failed on the control socket');
      await badgeIs('Token Expired', LIVE_MS);
      await loginBtn.waitFor({ state: 'visible', timeout: LIVE_MS });
      // The expired token is still stored: it can be logged out.
      if (!await visible(logoutBtn))
        fail('no Logout button on an expired token that is still stored');
      const err = (await card.locator('[data-role="error"]').textContent().catch(() => null)) || '';
      if (!/invalid_grant/.test(err))
        fail(`the card does not show the refresh error: ${JSON.stringify(err)}`);
      noSecrets();
      await screenshot(page, 'token-expired');
      ok(`invalid_grant at the refresh: badge "Token Expired", Login and Logout shown, error ${JSON.stringify(err.trim())}`);

      // Logout of the expired token: the keeper deletes it.
      const dialog = page.locator('[data-role="confirm"]');
      const fromLogout = control.events.length;
      await logoutBtn.click();
      await dialog.locator('[data-action="confirm-logout"]').click();
      await control.waitEvent('servers.changed', (d) => d.server === 'demo' && d.reason === 'oauth_logout', fromLogout,
        30000, 'servers.changed oauth_logout of the expired token');
      await badgeIs('Not logged in', LIVE_MS);
      if ((await control.rpc('status')).servers.find((x) => x.name === 'demo').oauth_status !== 'none')
        fail('the keeper still has the expired token after its logout');
      ok('Logout of an expired token: the keeper deleted it, badge "Not logged in"');

      // A REST error ({"success": false, "error": MESSAGE, "kind": KIND}): the
      // card shows the keeper's message, error.error, as the quickstart's UI does.
      const down = page.locator('section.card[data-server="down"]');
      await down.locator('[data-action="login"]').click();
      const downErr = down.locator('[data-role="error"]');
      await downErr.waitFor({ state: 'visible', timeout: LIVE_MS });
      const downText = ((await downErr.textContent()) || '').trim();
      const rest = await fetch(new URL('/api/v1/servers/down/login', webUi), {
        method: 'POST', headers: { 'X-API-Key': apiKey },
      });
      const restBody = await rest.json();
      if (rest.status < 400 || typeof restBody.error !== 'string' || !restBody.error ||
          downText !== `Login failed: ${restBody.error}`)
        fail(`the card does not show the API's error message: ${JSON.stringify(downText)} ` +
             `(the API: ${rest.status} ${JSON.stringify(restBody)})`);
      ok(`a refused login shows the API's error.error: ${JSON.stringify(downText)}`);
    }

    /* 6. Managing servers (issue 16 B): the "Add server" form, the enable
     * toggle, Remove with its confirmation; each checked in the keeper's
     * status and in the config file the keeper rewrote. */
    {
      const fileServers = () => JSON.parse(fs.readFileSync(configPath, 'utf8')).mcpServers;
      await page.locator('[data-role="add-server"] summary').click();
      const form = page.locator('[data-role="add-form"]');
      await form.locator('[data-role="add-name"]').fill('demo');
      await form.locator('[data-role="add-url"]').fill(`${peer.url}/mcp`);
      await form.locator('[data-action="add-server"]').click();
      const addErr = form.locator('[data-role="add-error"]');
      await addErr.waitFor({ state: 'visible', timeout: LIVE_MS });
      const addText = ((await addErr.textContent()) || '').trim();
      if (addText !== 'Adding failed: a server named "demo" exists already')
        fail(`a duplicate name does not show the API's error: ${JSON.stringify(addText)}`);
      ok(`"Add server" with a taken name: ${JSON.stringify(addText)}`);

      const from = control.events.length;
      await form.locator('[data-role="add-name"]').fill('added');
      await form.locator('[data-role="add-scopes"]').fill('mcp extra');
      await form.locator('[data-action="add-server"]').click();
      await control.waitEvent('servers.changed', (d) => d.server === 'added' && d.reason === 'server_added', from,
        STEP_MS, 'servers.changed server_added on the control socket');
      const added = page.locator('section.card[data-server="added"]');
      await added.waitFor({ state: 'visible', timeout: LIVE_MS });
      const entry = fileServers().added;
      if (!entry || entry.url !== `${peer.url}/mcp` || JSON.stringify(entry.oauth) !== '{"scopes":["mcp","extra"]}')
        fail(`the config file holds ${JSON.stringify(entry)} for the added server`);
      if (!await added.locator('[data-role="enabled"]').isChecked())
        fail('the enable toggle of a new server is not checked');
      await screenshot(page, 'server-added');
      ok('"Add server": a card for "added", the entry in the config file, servers.changed server_added');

      await added.locator('[data-role="enabled"]').uncheck();
      await waitFor(async () => (await control.server('added')).enabled === false, STEP_MS,
        'the keeper to show "added" disabled');
      await waitFor(() => added.evaluate((e) => e.classList.contains('is-disabled')), LIVE_MS,
        'the card to show "added" disabled');
      if (fileServers().added.enabled !== false)
        fail('the config file does not say "enabled": false');
      await added.locator('[data-role="enabled"]').check();
      await waitFor(async () => (await control.server('added')).enabled === true, STEP_MS,
        'the keeper to show "added" enabled again');
      ok('the enable toggle disables and enables the server in the keeper and the file');

      const dialog = page.locator('[data-role="confirm-remove"]');
      await added.locator('[data-action="remove"]').click();
      await dialog.waitFor({ state: 'visible' });
      const text = (await page.locator('[data-role="remove-text"]').textContent()) || '';
      if (!/added/.test(text))
        fail(`the remove confirmation does not name the server: ${JSON.stringify(text)}`);
      await screenshot(page, 'remove-confirmation');
      await dialog.locator('[data-action="cancel-remove"]').click();
      await dialog.waitFor({ state: 'hidden' });
      await sleep(500);
      if (!fileServers().added)
        fail('Cancel in the remove confirmation removed the server anyway');
      await added.locator('[data-action="remove"]').click();
      await dialog.waitFor({ state: 'visible' });
      await dialog.locator('[data-action="confirm-remove"]').click();
      await added.waitFor({ state: 'detached', timeout: LIVE_MS });
      if (fileServers().added)
        fail('the removed server is still in the config file');
      if ((await control.rpc('status')).servers.some((x) => x.name === 'added'))
        fail('the keeper still lists the removed server');
      noSecrets();
      await screenshot(page, 'server-removed');
      ok('Remove asks first; Cancel keeps the server, Remove takes it out of the keeper and the file');

      // "demo" holds no token since the logout of the expired one: log in
      // again, then removing it leaves the token orphaned, and the page
      // says so.
      // (the refusals queued for the invalid_grant step go first)
      const reset = await fetch(`${peer.url}/test/reset`, { method: 'POST' });
      if (reset.status !== 200)
        fail(`the peer's /test/reset answered ${reset.status}`);
      await login('login-before-remove');
      await card.locator('[data-action="remove"]').click();
      await dialog.waitFor({ state: 'visible' });
      await dialog.locator('[data-action="confirm-remove"]').click();
      await card.waitFor({ state: 'detached', timeout: LIVE_MS });
      const banner = page.locator('[data-role="banner-text"]');
      await banner.waitFor({ state: 'visible', timeout: LIVE_MS });
      const btext = ((await banner.textContent()) || '').trim();
      if (!/^demo: its token is kept as orphaned/.test(btext))
        fail(`no word of the orphaned token after removing "demo": ${JSON.stringify(btext)}`);
      if (!(await control.rpc('status')).orphaned_tokens.some((o) => o.name === 'demo'))
        fail('the keeper does not list the token of the removed "demo" as orphaned');
      await screenshot(page, 'orphaned-token');
      ok(`removing a server with a token: ${JSON.stringify(btext)}`);
    }
  } catch (e) {
    failed = e;
    if (page) {
      try {
        await screenshot(page, 'failure');
      } catch { /* the browser may be gone */ }
    }
  } finally {
    if (browser)
      await bounded(browser.close(), 20000, 'chromium to close').catch(() => {});
    if (control)
      control.close();
    if (keeper)
      keeperRc = await stop(keeper).catch((e) => ({ code: null, sig: String(e) }));
    if (peer)
      await stop(peer.proc).catch(() => {});
    killAllNow();
    const keeperText = fs.existsSync(keeperLog) ? fs.readFileSync(keeperLog, 'utf8') : '';
    const peerText = fs.existsSync(peerLog) ? fs.readFileSync(peerLog, 'utf8') : '';
    fs.writeFileSync(path.join(ARTIFACTS, 'keeper.log'), keeperText);
    fs.writeFileSync(path.join(ARTIFACTS, 'peer.log'), peerText);
    fs.writeFileSync(path.join(ARTIFACTS, 'console.txt'), consoleLines.concat(pageErrors).join('\n') + '\n');
    if (!failed) {
      const report = SANITIZER_MARKERS.map((mk) => keeperText.indexOf(mk)).filter((i) => i >= 0);
      if (report.length)
        failed = new Failure(`sanitizer report in the keeper's log:\n` +
                             keeperText.slice(Math.min(...report)).split('\n').slice(0, 40).join('\n'));
      else if (apiKey && keeperText.includes(apiKey))
        failed = new Failure('the API key is in the keeper\'s log');
      else if (keeperRc && (keeperRc.code !== 0 || keeperRc.sig))
        failed = new Failure(`mcpkeeperd exited with ${keeperRc.code ?? keeperRc.sig} on SIGTERM`);
      else
        ok('everything stopped; no sanitizer report, no API key in the log');
    }
    if (failed) {
      console.log(`not ok ${n + 1} - ${failed.message}`);
      if (!(failed instanceof Failure) && failed.stack)
        console.log(failed.stack.split('\n').map((l) => `# ${l}`).join('\n'));
      console.log(`# screenshots and logs: ${ARTIFACTS}`);
      console.log('# ---- keeper log (tail) ----');
      console.log(keeperText.split('\n').slice(-40).map((l) => `# ${l}`).join('\n'));
    }
    if (process.env.KEEP_TMP)
      console.log(`# KEEP_TMP: kept ${tmp}`);
    else
      fs.rmSync(tmp, { recursive: true, force: true });
  }
  return failed ? 1 : 0;
}

const watchdog = setTimeout(() => {
  console.log(`not ok - the whole run took more than ${OVERALL_S} s; stopping everything`);
  killAllNow();
  process.exit(1);
}, OVERALL_S * 1000);
watchdog.unref();

main().then((code) => {
  process.exitCode = code;
  killAllNow();
  // playwright may keep handles open for a moment; do not wait for them.
  setTimeout(() => process.exit(code), 200).unref();
}, (e) => {
  console.log(`not ok - ${e && e.stack ? e.stack : e}`);
  killAllNow();
  process.exit(1);
});
