// Sends `rounds` rounds of identify, track, page, screen, group and alias through a
// real Node.js Segment SDK into eventd, then prints one JSON line: what was sent
// (every call's arguments, by messageId), every HTTP request the SDK made (which
// messageIds it carried, its sentAt, how the write key went) and every error the
// SDK reported. Exit status 1 when the SDK reported any error, 2 on bad usage.
//
//   node send.mjs <sdk> <eventd URL> <write key> <rounds> [clock skew ms]
//
// sdk: "segment" (@segment/analytics-node), "legacy" (analytics-node 6.x) or
// "rudder" (@rudderstack/rudder-sdk-node). Driven by tests/test_node_sdk.py.
//
// The SDKs are used as an application would: their own batching (flushAt 15, so
// many /v1/batch requests), their own retries, their default HTTP clients. The
// request log comes from hooks the SDKs offer (analytics-node's `http_request`
// and `http_response` events; interceptors on the axios instance of the others),
// not from a replaced transport.
//
// A clock skew (ms, default 0) makes this process's clock wrong by that much, as on
// a host whose clock drifted: eventd must then correct every event's timestamp.
import { randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import { gunzipSync } from 'node:zlib'

const require = createRequire(import.meta.url)
const FLUSH_AT = 15
const SDKS = {
  segment: '@segment/analytics-node',
  legacy: 'analytics-node',
  rudder: '@rudderstack/rudder-sdk-node',
}

const [sdk, host, writeKey, roundsArg, skewArg = '0'] = process.argv.slice(2)
const rounds = Number(roundsArg)
const skewMs = Number(skewArg)
const usable = sdk in SDKS && host && writeKey && Number.isInteger(skewMs)
if (!usable || !Number.isInteger(rounds) || rounds < 1) {
  const names = Object.keys(SDKS).join('|')
  console.error(`usage: node send.mjs <${names}> <host> <writeKey> <rounds> [clock skew ms]`)
  process.exit(2)
}
if (skewMs) {
  // Every clock reading in this process (the SDKs' timestamps and sentAt included) is
  // off by skewMs; dates built from a value are left alone.
  const RealDate = Date
  globalThis.Date = class SkewedDate extends RealDate {
    constructor(...args) {
      if (args.length) super(...args)
      else super(RealDate.now() + skewMs)
    }
    static now() {
      return RealDate.now() + skewMs
    }
  }
}
const pkg = SDKS[sdk]
const version = require(`${pkg}/package.json`).version

const runId = randomUUID().slice(0, 8)
const requests = [] // one per HTTP attempt, in the order the SDK made them
const errors = [] // one per call whose callback got an error
const sdkErrors = [] // errors the SDK reported besides the callbacks: events, errorHandler

// -- the request log --------------------------------------------------------------

const decodeBasic = (value) => {
  const [scheme, token] = String(value || '').split(' ')
  if (scheme !== 'Basic' || !token) return null
  return Buffer.from(token, 'base64').toString('utf8')
}

// The batch as it goes on the wire: which messages, and the sentAt eventd should
// use for each (a message's own sentAt, else the batch's).
const describeBatch = (body) => {
  const items = Array.isArray(body?.batch) ? body.batch : []
  const iso = (v) => (v instanceof Date ? v.toISOString() : v ?? null)
  return {
    sentAt: iso(body?.sentAt),
    ids: items.map((m) => m.messageId),
    sentAts: items.map((m) => iso(m.sentAt) ?? iso(body?.sentAt)),
    bodyWriteKey: body?.writeKey === undefined ? null : body.writeKey === writeKey,
  }
}

const hookAxios = (instance) => {
  instance.interceptors.request.use((config) => {
    let data = config.data
    // axios 1.x: AxiosHeaders (case-insensitive get); 0.27: a plain object
    const headers = config.headers ?? {}
    const encoding =
      typeof headers.get === 'function'
        ? headers.get('Content-Encoding')
        : headers['Content-Encoding']
    const gzip = encoding === 'gzip'
    if (Buffer.isBuffer(data)) data = JSON.parse((gzip ? gunzipSync(data) : data).toString('utf8'))
    else if (typeof data === 'string') data = JSON.parse(data)
    const url = new URL(config.url)
    const auth = config.auth ? `${config.auth.username}:${config.auth.password ?? ''}` : null
    const entry = { path: url.pathname, gzip, basic: auth, ...describeBatch(data), status: null }
    requests.push(entry)
    config.eventdRequest = entry
    return config
  })
  instance.interceptors.response.use(
    (response) => {
      if (response.config?.eventdRequest) response.config.eventdRequest.status = response.status
      return response
    },
    (error) => {
      const entry = error.config?.eventdRequest
      if (entry) entry.status = error.response?.status ?? String(error.code ?? error.message)
      return Promise.reject(error)
    }
  )
}

// axios errors carry the response; analytics-node 3.x's say "[401] Unauthorized".
const errorInfo = (err) => {
  const message = String(err?.message ?? err)
  const status = err?.response?.status ?? Number(/\[(\d{3})\]/.exec(message)?.[1])
  return { status: Number.isFinite(status) ? status : null, message }
}
const onSdkError = (code) => (err) => sdkErrors.push({ code, ...errorInfo(err) })

// -- the SDKs -----------------------------------------------------------------------

const clients = {
  segment() {
    const { Analytics } = require(pkg)
    const client = new Analytics({ writeKey, host, flushAt: FLUSH_AT, maxRetries: 3 })
    client.on('http_request', ({ url, headers, body }) => {
      requests.push({
        path: new URL(url).pathname,
        gzip: headers['Content-Encoding'] === 'gzip',
        basic: decodeBasic(headers.Authorization),
        ...describeBatch(JSON.parse(body)),
        status: null,
      })
    })
    // Responses come back in any order; match them to requests by their body.
    client.on('http_response', ({ status, body }) => {
      const ids = JSON.parse(body).batch.map((m) => m.messageId).join()
      const entry = requests.find((r) => r.status === null && r.ids.join() === ids)
      if (entry) entry.status = status
    })
    client.on('error', (e) => onSdkError(e.code)(e.reason))
    return {
      call: (type, args, done) => client[type](args, (err) => done(err)),
      finish: () => client.closeAndFlush({ timeout: 60000 }),
    }
  },
  legacy() {
    const Analytics = require(pkg)
    const client = new Analytics(writeKey, {
      host,
      flushAt: FLUSH_AT,
      retryCount: 3,
      // Without an errorHandler a failed flush is an unhandled rejection.
      errorHandler: onSdkError('errorHandler'),
    })
    hookAxios(client.axiosInstance)
    return {
      call: (type, args, done) => client[type](args, (err) => done(err)),
      finish: async () => {
        while (client.queue.length) await client.flush()
      },
    }
  },
  rudder() {
    const Analytics = require(pkg)
    // gzip is on by default: kept, as deployed.
    const client = new Analytics(writeKey, {
      dataPlaneUrl: host,
      flushAt: FLUSH_AT,
      retryCount: 3,
      logLevel: 'none',
      errorHandler: onSdkError('errorHandler'),
    })
    hookAxios(client.axiosInstance)
    return {
      call: (type, args, done) => client[type](args, (err) => done(err)),
      finish: async () => {
        while (client.queue.length) await client.flush()
      },
    }
  },
}

// -- what each round sends ------------------------------------------------------------

const hourAgo = Date.now() - 3600 * 1000
const TYPES = ['identify', 'track', 'page', 'screen', 'group', 'alias']

// The arguments of call `k` of round `r`; `n` is the event's unique marker.
const callArgs = (r, k) => {
  const n = r * TYPES.length + k
  const type = TYPES[k]
  const userId = `user-${runId}-${r % 17}`
  const anonymousId = `anon-${runId}-${r}`
  const messageId = `${sdk}-${runId}-${n}`
  // A backlog the app sends now: explicit timestamps, an hour old, 1 ms apart.
  const past = () => new Date(hourAgo + n)
  switch (type) {
    case 'identify':
      return {
        type,
        args: {
          userId,
          ...(r % 2 === 0 ? { anonymousId } : {}),
          messageId,
          timestamp: past(),
          traits: {
            n,
            email: `user${r % 17}@example.com`,
            plan: ['free', 'pro', 'enterprise'][r % 3],
            address: { city: 'Lisbon', country: 'PT' },
          },
          context: {
            ip: `203.0.113.${r % 250}`,
            locale: 'pt-PT',
            app: { name: 'shop', version: '4.2.0' },
          },
        },
      }
    case 'track':
      return {
        type,
        args: {
          userId,
          anonymousId,
          messageId,
          ...(r % 2 === 1 ? { timestamp: past() } : {}),
          event: 'Order Completed',
          properties: {
            n,
            order_id: `o-${runId}-${r}`,
            revenue: 19.5 + r,
            currency: 'EUR',
            products: [{ sku: `sku-${r % 7}`, quantity: 1 + (r % 3), price: 9.75 }],
            coupon: null,
          },
          context: {
            campaign: { name: 'autumn', source: 'newsletter', medium: 'email' },
            traits: { plan: 'pro' },
          },
          integrations: {
            All: true,
            Mixpanel: false,
            Amplitude: { session_id: 1700000000000 + r },
          },
        },
      }
    case 'page':
      return {
        type,
        args: {
          anonymousId,
          messageId,
          name: 'Pricing',
          category: 'Docs',
          properties: {
            n,
            path: '/pricing',
            url: `https://shop.example/pricing?r=${r}`,
            title: 'Pricing',
          },
          context: {
            userAgent: 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)',
            page: { path: '/pricing', referrer: 'https://www.google.com/' },
          },
        },
      }
    case 'screen':
      return {
        type,
        args: {
          userId,
          messageId,
          name: 'Settings',
          properties: { n, variant: r % 2 ? 'dark' : 'light' },
          context: {
            device: { type: 'ios', model: 'iPhone15,2' },
            os: { name: 'iOS', version: '17.5' },
            app: { name: 'shop', build: String(4000 + r) },
          },
        },
      }
    case 'group':
      return {
        type,
        args: {
          userId,
          messageId,
          ...(r % 3 === 0 ? { timestamp: past() } : {}),
          groupId: `acct-${runId}-${r % 5}`,
          traits: { n, name: `Account ${r % 5}`, employees: 50 + r, industry: 'Retail' },
          integrations: { Intercom: true },
        },
      }
    default:
      return {
        type,
        args: {
          previousId: anonymousId,
          userId,
          messageId,
          timestamp: past(),
          context: { ip: '198.51.100.7' },
        },
      }
  }
}

// -- the run ----------------------------------------------------------------------------

const client = clients[sdk]()
const sent = []
const pending = []
const startedAt = new Date().toISOString()
for (let r = 0; r < rounds; r++) {
  for (let k = 0; k < TYPES.length; k++) {
    const { type, args } = callArgs(r, k)
    // What the test compares with: the arguments as JSON, before the SDK sees them.
    sent.push({
      n: r * TYPES.length + k,
      type,
      args: JSON.parse(JSON.stringify(args)),
      explicit: 'timestamp' in args,
    })
    pending.push(
      new Promise((resolve) => {
        client.call(type, args, (err) => {
          if (err) errors.push({ messageId: args.messageId, ...errorInfo(err) })
          resolve()
        })
      })
    )
  }
  // Let the SDK's requests go out between bursts, as an app's event loop would.
  if (r % 10 === 9) await new Promise((resolve) => setImmediate(resolve))
}
await client.finish()
await Promise.all(pending) // every call's callback has run: delivered or failed
const finishedAt = new Date().toISOString()

const ok = errors.length === 0 && sdkErrors.length === 0
const summary = JSON.stringify({
  sdk,
  package: pkg,
  version,
  node: process.version,
  runId,
  rounds,
  skewMs,
  events: sent.length,
  flushAt: FLUSH_AT,
  startedAt,
  finishedAt,
  ok,
  errors,
  sdkErrors,
  requests,
  sent,
})
// Exit once the line is out: a pipe takes it in pieces, and process.exit() does not
// wait for them. Exiting here also ends any timer an SDK left behind.
process.stdout.write(summary + '\n', () => process.exit(ok ? 0 : 1))
