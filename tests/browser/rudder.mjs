// RudderStack's browser SDK (@rudderstack/analytics-js 3.x) in headless Chromium,
// sending to eventd, which is both its data plane and its config URL.
//
// Driven by tests/test_browser_rudderstack.py: `node rudder.mjs '<json plan>'` prints
// one JSON object on stdout (per scenario: what the SDK sent, as the browser saw it on
// the wire, and the answers). The plan:
//   {chromium, pagePort, eventd, writeKey, scenarios: [{name, mode}]}
// with mode "standard" (one XHR per call to /v1/<type>), "batching" (XHR batches to
// /v1/batch) or "beacon" (navigator.sendBeacon to /beacon/v1/batch?writeKey=).
//
// The page is served from its own port, so every call to eventd is cross-origin and
// preflighted (the SDK sends AnonymousId and SentAt headers). Waits are on requests
// and responses, never on timers: a scenario ends when eventd has answered 200 for
// as many events as the page made.

import { createServer } from 'node:http'
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { CHROMIUM_ARGS } from '../chromium_args.mjs'

const HERE = dirname(fileURLToPath(import.meta.url))
const BUNDLE = join(
  HERE, 'node_modules', '@rudderstack', 'analytics-js', 'dist', 'npm', 'modern', 'bundled',
  'umd', 'index.js',
)
const CALLS = 5 // page, track, identify, group, alias
const plan = JSON.parse(process.argv[2])
const pageOrigin = `http://127.0.0.1:${plan.pagePort}`
const log = (...args) => console.error('[rudder.mjs]', ...args)
setTimeout(() => { log('gave up after 100 s'); process.exit(3) }, 100_000).unref()

async function serve(req, res) {
  const path = new URL(req.url, pageOrigin).pathname
  const files = { '/rudder.html': [join(HERE, 'rudder.html'), 'text/html'],
    '/rudderstack/index.js': [BUNDLE, 'application/javascript'] }
  if (!files[path]) return res.writeHead(404).end()
  const [file, type] = files[path]
  res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' }).end(await readFile(file))
}

// In the page: load the SDK in the scenario's mode and make the five calls.
async function inPage({ sc, eventd, writeKey }) {
  const options = {
    configUrl: eventd,
    logLevel: 'ERROR',
    polyfillIfRequired: false,
    // far beyond the test: a batch goes out because it is full (or the page is left)
    queueOptions: sc.mode === 'batching'
      ? { batch: { enabled: true, maxItems: 5, flushInterval: 600000 } } : {},
    useBeacon: sc.mode === 'beacon',
    // The beacon queue sends on a timer (or when the page is left, when no answer can
    // be observed): a short one, so the page is still there to see eventd's answer.
    beaconQueueOptions: { maxItems: 5, flushQueueInterval: 500 },
  }
  const ra = new window.rudderanalytics.RudderAnalytics()
  await new Promise((resolve) => {
    ra.load(writeKey, eventd, { ...options, onLoaded: () => resolve() })
  })
  const user = `user-${sc.name}`
  ra.page('Docs', 'Rudder test', { scenario: sc.name })
  ra.track('Rudder Test Ran', { scenario: sc.name, n: 1, big: Number.MAX_SAFE_INTEGER })
  ra.identify(user, { email: `${sc.name}@example.com`, scenario: sc.name })
  ra.group(`acct-${sc.name}`, { name: `Account ${sc.name}` })
  ra.alias(`alias-${sc.name}`)
  return { anonymousId: ra.getAnonymousId(), userId: ra.getUserId() }
}

async function runScenario(browser, sc) {
  log(`scenario ${sc.name}: ${sc.mode} -> ${plan.eventd}`)
  const context = await browser.newContext()
  const page = await context.newPage()
  page.setDefaultTimeout(30_000)
  const seen = { requests: [], failed: [], consoleErrors: [], pageErrors: [], preflights: [] }
  const sent = [] // {path, status, events: [...]} for each delivery request
  let delivered = 0
  let done
  const allDelivered = new Promise((resolve) => { done = resolve })
  context.on('request', (r) => seen.requests.push(`${r.method()} ${r.url()}`))
  context.on('requestfailed', (r) =>
    seen.failed.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`))
  page.on('console', (m) => m.type() === 'error' && seen.consoleErrors.push(m.text()))
  page.on('pageerror', (e) => seen.pageErrors.push(String(e)))
  context.on('requestfinished', async (r) => {
    const url = new URL(r.url())
    if (!r.url().startsWith(plan.eventd)) return
    const response = await r.response()
    const status = response ? response.status() : null
    if (r.method() === 'OPTIONS') {
      seen.preflights.push({ path: url.pathname, status,
        asked: (await r.allHeaders())['access-control-request-headers'] ?? null })
      return
    }
    if (r.method() !== 'POST') return
    let body = null
    let raw = r.postDataBuffer()?.toString('utf8') ?? null
    if (raw === null && url.pathname.startsWith('/beacon/')) {
      // Playwright shows no body for a beacon's Blob: the page kept a copy (below).
      raw = await page.evaluate((i) => window.__beacons[i], beacons++)
    }
    try { body = JSON.parse(raw ?? 'null') } catch { body = raw }
    const events = Array.isArray(body?.batch) ? body.batch : [body]
    const headers = await r.allHeaders()
    sent.push({ path: url.pathname + url.search, status, type: headers['content-type'],
      headers: Object.keys(headers).sort(), events })
    if (status === 200) delivered += events.length
    if (delivered >= CALLS) done()
  })
  const result = { name: sc.name, mode: sc.mode }
  let beacons = 0
  // What each navigator.sendBeacon() call sent (a promise of its text), in order.
  await page.addInitScript(() => {
    window.__beacons = []
    const send = navigator.sendBeacon.bind(navigator)
    navigator.sendBeacon = (url, data) => {
      window.__beacons.push(Promise.resolve(data instanceof Blob ? data.text() : String(data)))
      return send(url, data)
    }
  })
  try {
    await page.goto(`${pageOrigin}/rudder.html`)
    Object.assign(result, await page.evaluate(inPage, { sc, eventd: plan.eventd, writeKey: plan.writeKey }))
    // A bound, not a wait: a scenario that never completes reports what it saw.
    let timer
    await Promise.race([
      allDelivered,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`only ${delivered} events answered 200`)), 25_000)
      }),
    ]).finally(() => clearTimeout(timer))
    result.userAgent = await page.evaluate(() => navigator.userAgent).catch(() => null)
  } catch (err) {
    result.error = String(err?.stack ?? err)
  }
  result.sent = sent
  result.seen = seen
  await context.close()
  return result
}

const server = createServer(serve)
await new Promise((resolve) => server.listen(plan.pagePort, '127.0.0.1', resolve))
const browser = await chromium.launch({ executablePath: plan.chromium, args: CHROMIUM_ARGS })
const out = { pageOrigin, scenarios: [] }
try {
  for (const sc of plan.scenarios) out.scenarios.push(await runScenario(browser, sc))
} finally {
  await browser.close()
  server.close()
}
process.stdout.write(JSON.stringify(out))
