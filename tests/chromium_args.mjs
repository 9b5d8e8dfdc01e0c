// The flags TESTING.md prescribes for Debian's chromium in a container, shared by
// every browser driver (tests/browser/*.mjs, tests/console/driver.mjs). No
// --user-data-dir: Playwright's launch() gives every run a fresh temporary one.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Nothing may leave the machine: a request to any other host (a CDN, fonts)
  // fails at once, so a page that needs one fails its test.
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
]
