// analytics.js (@segment/analytics-next) in headless Chromium, sending to eventd.
//
// Driven by tests/test_browser.py: `node run.mjs '<json plan>'` prints one JSON
// object (what each scenario did, as the browser saw it) on stdout; progress
// goes to stderr. The plan:
//   {chromium, pagePort, scenarios: [{name, flavour: "npm"|"snippet",
//     eventd, writeKey, delivery?: "standard"|"batching", expect?: "refused",
//     ajsAid?: an anonymousId for the snippet page's ?ajs_aid=}]}
//
// The test pages are served from http://127.0.0.1:{pagePort}, a different
// origin from eventd's, so every call to eventd is cross-origin (CORS), as on
// a real website. Waits are on promises and page events, never on timers:
// analytics-next's calls resolve once their request is answered, and a batch
// is waited for by its /v1/b response.

import { createServer } from 'node:http'
import { readFile } from 'node:fs/promises'
import { dirname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { CHROMIUM_ARGS } from '../chromium_args.mjs'

const HERE = dirname(fileURLToPath(import.meta.url))
const UMD = join(HERE, 'node_modules', '@segment', 'analytics-next', 'dist', 'umd')
const BATCH_SIZE = 5 // the five calls below: the batch goes out with the fifth

const plan = JSON.parse(process.argv[2])
const pageOrigin = `http://127.0.0.1:${plan.pagePort}`
const log = (...args) => console.error('[run.mjs]', ...args)

// A hung browser must not hang CI: the pytest side also has a timeout.
setTimeout(() => {
  log('gave up after 100 s')
  process.exit(3)
}, 100_000).unref()

// -- the website ---------------------------------------------------------------

async function serve(req, res) {
  const url = new URL(req.url, pageOrigin)
  try {
    if (url.pathname === '/npm.html') {
      return send(res, 'text/html', await readFile(join(HERE, 'npm.html')))
    }
    if (url.pathname === '/snippet.html') {
      const html = (await readFile(join(HERE, 'snippet.html'), 'utf8'))
        .replaceAll('{{EVENTD_URL}}', url.searchParams.get('eventd'))
        .replaceAll('{{WRITE_KEY}}', url.searchParams.get('key'))
      return send(res, 'text/html', html)
    }
    if (url.pathname.startsWith('/analytics-next/dist/umd/')) {
      const name = normalize(url.pathname.slice('/analytics-next/dist/umd/'.length))
      if (!name.includes('..')) {
        return send(res, 'application/javascript', await readFile(join(UMD, name)))
      }
    }
  } catch (err) {
    log('page server:', err.message)
  }
  res.writeHead(404).end()
}

function send(res, type, body) {
  res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' }).end(body)
}

// -- what runs in the page -----------------------------------------------------

// The five calls, each awaited: in standard mode each resolves when eventd has
// answered; in batching mode the first four resolve when buffered and the fifth
// when the batch has been answered. alias() comes before identify(), as at a
// sign-up: analytics-next 1.84 overwrites an alias's userId with the identified
// user's id, so an alias after identify() would say userId == previousId.
async function fiveCalls(analytics, scenario) {
  const ids = {}
  const user = `user-${scenario}`
  ids.page = (await analytics.page('Docs', 'Browser test', { scenario })).event.messageId
  ids.alias = (await analytics.alias(user)).event.messageId
  ids.identify = (
    await analytics.identify(user, { email: `${scenario}@example.com`, scenario })
  ).event.messageId
  ids.track = (await analytics.track('Browser Test Ran', { scenario, n: 1 })).event.messageId
  ids.group = (
    await analytics.group(`acct-${scenario}`, { name: `Account ${scenario}`, scenario })
  ).event.messageId
  return { ids, anonymousId: analytics.user().anonymousId(), userId: analytics.user().id() }
}

async function inPageNpm({ sc, batchSize, fiveCallsSource }) {
  const integrations =
    sc.delivery === 'batching'
      ? {
          'Segment.io': {
            // A timeout far beyond the test's: the batch must go out because it is full.
            deliveryStrategy: { strategy: 'batching', config: { size: batchSize, timeout: 600000 } },
          },
        }
      : {}
  const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load(
    { writeKey: sc.writeKey, cdnURL: sc.eventd },
    { integrations },
  )
  if (sc.expect === 'refused') {
    const ctx = await analytics.track('Refused Origin', { scenario: sc.name })
    const failed = ctx.failedDelivery()
    return { failedDelivery: failed ? String(failed.reason?.message ?? failed.reason) : null }
  }
  const run = new Function(`return (${fiveCallsSource})`)()
  return run(analytics, sc.name)
}

async function inPageSnippet({ sc, fiveCallsSource }) {
  const analytics = window.analytics // the snippet's buffer, replaced by the real instance
  const run = new Function(`return (${fiveCallsSource})`)()
  const result = await run(analytics, sc.name)
  return { ...result, library: analytics.VERSION }
}

// -- scenarios -----------------------------------------------------------------

// Resolves with what became of the first request to `url`: its status, or the
// network error (a refused CORS preflight shows up as a failed request).
function outcome(page, url) {
  return new Promise((resolve) => {
    const onResponse = (r) => {
      if (r.url() !== url) return
      cleanup()
      resolve({ status: r.status(), body: r.request().postDataJSON() })
    }
    const onFailed = (r) => {
      if (r.url() !== url) return
      cleanup()
      resolve({ failure: r.failure()?.errorText ?? 'failed' })
    }
    const cleanup = () => {
      page.off('response', onResponse)
      page.off('requestfailed', onFailed)
    }
    page.on('response', onResponse)
    page.on('requestfailed', onFailed)
  })
}

async function runScenario(browser, sc) {
  log(`scenario ${sc.name}: ${sc.flavour}${sc.delivery ? ' ' + sc.delivery : ''} -> ${sc.eventd}`)
  const context = await browser.newContext() // own storage: own anonymousId
  const page = await context.newPage()
  page.setDefaultTimeout(30_000)
  const seen = { requests: [], failed: [], consoleErrors: [], pageErrors: [] }
  page.on('request', (r) => seen.requests.push(`${r.method()} ${r.url()}`))
  page.on('requestfailed', (r) =>
    seen.failed.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`),
  )
  page.on('console', (m) => m.type() === 'error' && seen.consoleErrors.push(m.text()))
  page.on('pageerror', (e) => seen.pageErrors.push(String(e)))
  const fiveCallsSource = fiveCalls.toString()
  const result = { name: sc.name, pageOrigin, ...sc }

  try {
    if (sc.flavour === 'npm') {
      await page.goto(`${pageOrigin}/npm.html`)
      const sent = sc.expect === 'refused' ? outcome(page, `${sc.eventd}/v1/t`) : null
      const batch = sc.delivery === 'batching' ? outcome(page, `${sc.eventd}/v1/b`) : null
      Object.assign(
        result,
        await page.evaluate(inPageNpm, { sc, batchSize: BATCH_SIZE, fiveCallsSource }),
      )
      if (sent) result.request = await sent
      if (batch) {
        const b = await batch
        result.batch = { status: b.status, failure: b.failure, size: b.body?.batch?.length }
      }
    } else {
      const script = outcome(page, `${sc.eventd}/analytics.js/v1/${sc.writeKey}/analytics.min.js`)
      const snippetPage = outcome(page, `${sc.eventd}/v1/p`)
      const q = new URLSearchParams({ eventd: sc.eventd, key: sc.writeKey })
      // ?ajs_aid= makes the library fetch its queryString chunk (from eventd's
      // /analytics-next/bundles/) and take that anonymousId.
      if (sc.ajsAid) q.set('ajs_aid', sc.ajsAid)
      await page.goto(`${pageOrigin}/snippet.html?${q}`)
      await page.waitForFunction(() => window.analytics && window.analytics.initialized === true)
      const s = await script
      result.script = { status: s.status, failure: s.failure }
      // The snippet's own analytics.page(), buffered before the script loaded.
      const p = await snippetPage
      result.snippetPage = { status: p.status, failure: p.failure, messageId: p.body?.messageId }
      Object.assign(result, await page.evaluate(inPageSnippet, { sc, fiveCallsSource }))
    }
    result.userAgent = await page.evaluate(() => navigator.userAgent)
  } catch (err) {
    result.error = String(err?.stack ?? err)
  }
  result.seen = seen
  await context.close()
  return result
}

// -- main ------------------------------------------------------------------------

const server = createServer((req, res) => {
  serve(req, res)
})
await new Promise((resolve, reject) => {
  server.once('error', reject)
  server.listen(plan.pagePort, '127.0.0.1', resolve)
})
const browser = await chromium.launch({
  executablePath: plan.chromium,
  headless: true,
  args: CHROMIUM_ARGS,
})
const version = browser.version()
log(`chromium ${version}; pages on ${pageOrigin}`)
const results = []
try {
  for (const sc of plan.scenarios) {
    results.push(await runScenario(browser, sc))
  }
} finally {
  await browser.close()
  server.close()
}
process.stdout.write(JSON.stringify({ chromium: version, scenarios: results }) + '\n')
