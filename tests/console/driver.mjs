// A headless Chromium page that tests/console_driver.py drives one command at a time.
//
// Reads JSON commands, one per line, on stdin; answers each with one JSON line on
// stdout ({ok: true, value} or {ok: false, error}); progress goes to stderr. The
// browser is Debian's chromium (its path is argv[2]) through playwright-core; every
// wait is Playwright's own (a selector, a URL, a condition), with its timeout.
//
// Collected for the whole run and returned by {op: "report"}: console errors and
// warnings, uncaught page errors, requests that failed, requests to any origin but
// the one under test, CSP violations.

import { createInterface } from 'node:readline'
import { chromium } from 'playwright-core'
import { CHROMIUM_ARGS } from '../chromium_args.mjs'

const TIMEOUT = 15_000
const log = (...args) => console.error('[driver]', ...args)

const executablePath = process.argv[2]
const origin = process.argv[3]
const browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS, timeout: 30_000 })
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
context.setDefaultTimeout(TIMEOUT)
const page = await context.newPage()
const seen = { consoleErrors: [], pageErrors: [], failed: [], foreign: [], dialogs: [] }
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') seen.consoleErrors.push(`${m.type()}: ${m.text()}`)
})
page.on('pageerror', (e) => seen.pageErrors.push(String(e)))
page.on('requestfailed', (r) => {
  // A request cut off by leaving the page (a fetch in flight, the live EventSource)
  // is not a failure of the page.
  const why = r.failure()?.errorText || ''
  if (why !== 'net::ERR_ABORTED') seen.failed.push(`${r.url()} ${why}`)
})
page.on('request', (r) => {
  if (!r.url().startsWith(origin + '/') && !r.url().startsWith('data:')) seen.foreign.push(r.url())
})
page.on('dialog', (d) => { seen.dialogs.push(d.message()); d.dismiss() })

const ops = {
  goto: async ({ url }) => { await page.goto(origin + url); return page.url() },
  url: async () => page.url(),
  viewport: async ({ width, height }) => page.setViewportSize({ width, height: height || 900 }),
  fill: async ({ sel, value }) => page.fill(sel, value),
  select: async ({ sel, value }) => page.selectOption(sel, value),
  click: async ({ sel }) => page.click(sel),
  press: async ({ sel, key }) => page.press(sel, key),
  waitUrl: async ({ path }) => { await page.waitForURL(origin + path); return page.url() },
  // a selector present (state: attached|visible|hidden|detached), optionally holding text
  wait: async ({ sel, state = 'visible', text }) => {
    if (text === undefined) return void (await page.waitForSelector(sel, { state }))
    await page.locator(sel, { hasText: text }).first().waitFor({ state })
  },
  // until the number of matches is n
  waitCount: async ({ sel, n }) => page.waitForFunction(
    ([s, k]) => document.querySelectorAll(s).length === k, [sel, n], { timeout: TIMEOUT }),
  texts: async ({ sel }) => page.locator(sel).allTextContents(),
  count: async ({ sel }) => page.locator(sel).count(),
  attr: async ({ sel, name }) => page.locator(sel).first().getAttribute(name),
  // read-only look at the page (e.g. whether an injected script ran)
  evaluate: async ({ expr }) => page.evaluate(expr),
  cookies: async () => context.cookies(),
  screenshot: async ({ path, width, fullPage = true }) => {
    const old = page.viewportSize()
    if (width) await page.setViewportSize({ width, height: old.height })
    // Let charts lay out at the new width before the picture is taken.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))))
    await page.screenshot({ path, fullPage })
    if (width) await page.setViewportSize(old)
  },
  report: async () => seen,
}

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (!line.trim()) continue
  const cmd = JSON.parse(line)
  if (cmd.op === 'quit') break
  let answer
  try {
    const op = ops[cmd.op]
    if (!op) throw new Error(`unknown op ${cmd.op}`)
    answer = { ok: true, value: (await op(cmd)) ?? null }
  } catch (err) {
    log(cmd.op, 'failed:', err.message)
    answer = { ok: false, error: `${cmd.op} ${JSON.stringify(cmd)}: ${err.message}` }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
}
await browser.close()
