// eventd console: fills the server-rendered pages with data from the admin API.
// Everything that came from an event, a config or an error is written with
// textContent (never innerHTML), so a hostile payload is shown as text.
'use strict';
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || '';
  const $ = (sel, root = document) => root.querySelector(sel);

  // el('td', {className: 'num'}, 'text', otherNode): properties, then children (strings become text).
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  // The admin API with the session cookie; changes carry the CSRF token.
  async function api(path, { method = 'GET', body } = {}) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') {
      headers['X-CSRF-Token'] = csrf;
      headers['Content-Type'] = 'application/json';
    }
    const resp = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 401) {
      window.location.assign('/console/login');
      throw new ApiError(401, null);
    }
    const data = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  const num = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : n ?? '');
  const pct = (part, whole) => (whole ? `${((100 * part) / whole).toFixed(1)}%` : '–');

  function bytes(n) {
    if (typeof n !== 'number') return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function duration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return m ? `${m}m ${s % 60}s` : `${s}s`;
  }

  function setText(target, text) { target.textContent = text; }

  function showError(target, err) {
    setText(target, err instanceof ApiError ? `${err.status}: ${err.message}` : String(err));
    target.classList.add('error');
  }

  function pretty(value) { return JSON.stringify(value, null, 2); }

  // Each cell names its column (data-label), for the stacked layout on narrow screens.
  function labelRows(table, rows = table.tBodies[0].rows) {
    const heads = Array.from(table.tHead.rows[0].cells, (th) => th.textContent);
    for (const tr of rows) {
      Array.from(tr.cells).forEach((td, i) => { if (td.colSpan === 1 && heads[i]) td.dataset.label = heads[i]; });
    }
  }

  // -- small charts ---------------------------------------------------------------

  const hasCharts = () => typeof window.Chart === 'function';

  function sparkline(canvas, kind, values, label) {
    if (!hasCharts()) return null;
    return new window.Chart(canvas, {
      type: kind,
      data: { labels: values.map((_, i) => i), datasets: [{ data: values, label, borderWidth: 1.5, pointRadius: 0, fill: kind === 'line' }] },
      options: {
        responsive: false, animation: false, events: [],
        plugins: { legend: { display: false }, tooltip: { enabled: false } },
        scales: { x: { display: false }, y: { display: false, beginAtZero: true } },
      },
    });
  }

  function updateChart(chart, values) {
    if (!chart) return;
    chart.data.labels = values.map((_, i) => i);
    chart.data.datasets[0].data = values;
    chart.update('none');
  }

  // A row of cells kept by key, so a refresh updates text and charts in place.
  function keyedRow(tbody, rows, key, cellCount) {
    let row = rows.get(key);
    if (!row) {
      const tr = el('tr');
      const cells = Array.from({ length: cellCount }, () => el('td'));
      tr.append(...cells);
      tbody.append(tr);
      row = { tr, cells, chart: null };
      rows.set(key, row);
    }
    return row;
  }

  // -- overview -------------------------------------------------------------------

  function perMinute(samples, pick) {
    // Counter totals sampled every few seconds -> events in each of the last 60 minutes.
    const now = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
    const buckets = new Array(60).fill(0);
    for (let i = 1; i < samples.length; i += 1) {
      const delta = Math.max(0, pick(samples[i]) - pick(samples[i - 1]));
      const age = Math.floor((now - samples[i].t) / 60);
      if (age >= 0 && age < 60) buckets[59 - age] += delta;
    }
    return buckets;
  }

  function overview() {
    const destRows = new Map();
    const srcRows = new Map();
    const runtimeLine = $('#runtime');

    async function refresh() {
      let rt, dests, sources, hist;
      try {
        [rt, dests, sources, hist] = await Promise.all([
          api('/admin/runtime'), api('/admin/destinations'), api('/admin/sources'), api('/console/api/history'),
        ]);
      } catch (err) {
        showError(runtimeLine, err);
        return;
      }
      runtimeLine.classList.remove('error');
      setText(runtimeLine, `eventd ${rt.version} · up ${duration(rt.uptime_seconds)} · last seq ${num(rt.last_seq)} · dispatcher ${rt.dispatcher_running ? 'running' : 'stopped'} · updated ${new Date().toLocaleTimeString()}`);
      const samples = hist.samples;

      const dtbody = $('#destinations tbody');
      if (!dests.length && !dtbody.children.length) dtbody.append(el('tr', {}, el('td', { colSpan: 10 }, 'No destinations configured.')));
      for (const d of dests) {
        const row = keyedRow(dtbody, destRows, d.name, 10);
        const [name, type, lag, lagS, spark, delivered, skipped, retrying, dead, lastError] = row.cells;
        setText(name, d.name);
        setText(type, d.type);
        for (const [cell, value] of [[lag, d.lag_events], [lagS, d.lag_seconds], [delivered, d.delivered], [skipped, d.skipped], [retrying, d.retrying], [dead, d.dead]]) {
          cell.className = 'num';
          setText(cell, num(value));
        }
        setText(lastError, d.last_error || '');
        lastError.className = 'error';
        row.tr.classList.toggle('bad', d.dead > 0 || d.retrying > 0);
        row.tr.dataset.destination = d.name;
        const lagSeries = samples.map((s) => s.lag_events[d.name] || 0);
        if (!row.chart) {
          const canvas = el('canvas', { className: 'spark', width: 140, height: 32 });
          canvas.setAttribute('role', 'img');
          canvas.setAttribute('aria-label', `lag of ${d.name} over the last hour`);
          spark.append(canvas);
          row.chart = sparkline(canvas, 'line', lagSeries, 'lag') || {};
        } else {
          updateChart(row.chart.update ? row.chart : null, lagSeries);
        }
      }

      const stbody = $('#sources tbody');
      for (const s of sources) {
        const row = keyedRow(stbody, srcRows, s.name, 3);
        const [name, total, spark] = row.cells;
        const minutes = perMinute(samples, (x) => x.ingested[s.name] || 0);
        setText(name, s.name);
        total.className = 'num';
        setText(total, num(minutes.reduce((a, b) => a + b, 0)));
        row.tr.dataset.source = s.name;
        if (!row.chart) {
          const canvas = el('canvas', { className: 'spark', width: 140, height: 32 });
          canvas.setAttribute('role', 'img');
          canvas.setAttribute('aria-label', `events per minute of ${s.name} over the last hour`);
          spark.append(canvas);
          row.chart = sparkline(canvas, 'bar', minutes, 'events/min') || {};
        } else {
          updateChart(row.chart.update ? row.chart : null, minutes);
        }
      }
      labelRows($('#destinations'));
      labelRows($('#sources'));
      const rejected = perMinute(samples, (x) => x.rejected).reduce((a, b) => a + b, 0);
      setText($('#rejects'), `Rejected in the last hour: ${num(rejected)} (every source; reasons on the Live page and in /metrics).`);

      const st = rt.storage;
      const facts = $('#storage');
      facts.replaceChildren(
        el('dt', {}, 'Path'), el('dd', { className: 'mono' }, st.path),
        el('dt', {}, 'Size'), el('dd', {}, bytes(st.file_bytes)),
        el('dt', {}, 'Max size'), el('dd', {}, st.max_size ? bytes(st.max_size) : 'no limit'),
        el('dt', {}, 'Writable'), el('dd', { className: st.writable ? 'accepted' : 'rejected' }, st.writable ? 'yes' : `no: ${st.last_error || ''}`),
      );
    }

    refresh();
    setInterval(refresh, 5000);
  }

  // -- live -----------------------------------------------------------------------

  function eventName(m) {
    if (!m || typeof m !== 'object') return '';
    if (m.type === 'track') return m.event;
    if (m.type === 'page' || m.type === 'screen') return m.name;
    if (m.type === 'group') return m.groupId;
    if (m.type === 'alias') return m.previousId;
    return '';
  }

  function live() {
    const form = $('#live-filters');
    const tbody = $('#live tbody');
    const state = $('#live-state');
    const params = new URLSearchParams(window.location.search);
    const MAX_ROWS = 500;
    let stream = null;
    let paused = false;
    let selected = null;
    let poll = null;

    for (const name of ['type', 'event']) form.elements[name].value = params.get(name) || '';

    const matches = (item) => {
      const m = item.message || {};
      const type = form.elements.type.value;
      const event = form.elements.event.value.trim();
      if (type && m.type !== type) return false;
      return !(event && m.event !== event);
    };

    function refilter() {
      for (const tr of tbody.children) tr.hidden = !matches(tr.item);
      const q = new URLSearchParams();
      for (const name of ['source', 'type', 'event']) if (form.elements[name].value) q.set(name, form.elements[name].value);
      window.history.replaceState(null, '', `/console/live${q.toString() ? `?${q}` : ''}`);
    }

    function connect() {
      if (stream) stream.close();
      const source = form.elements.source.value;
      stream = new EventSource(`/admin/live${source ? `?source=${encodeURIComponent(source)}` : ''}`);
      stream.onopen = () => setText(state, 'Live: waiting for events');
      stream.onerror = () => setText(state, 'Disconnected: retrying…');
      stream.onmessage = (e) => {
        if (paused) return;
        let item;
        try { item = JSON.parse(e.data); } catch { return; }
        add(item);
        setText(state, `Live: last event ${new Date().toLocaleTimeString()}`);
      };
    }

    function add(item) {
      const m = item.message && typeof item.message === 'object' ? item.message : {};
      const tr = el('tr', {},
        el('td', {}, new Date().toLocaleTimeString()),
        el('td', {}, item.source),
        el('td', {}, m.type || ''),
        el('td', {}, eventName(m)),
        el('td', {}, m.userId || m.anonymousId || ''),
        item.rejected
          ? el('td', { className: 'rejected' }, `rejected: ${item.code} (${item.reason})`)
          : el('td', { className: 'accepted' }, 'accepted'));
      tr.item = item;
      tr.dataset.messageId = m.messageId || '';
      tr.hidden = !matches(item);
      tr.addEventListener('click', () => select(tr));
      tbody.prepend(tr);
      labelRows($('#live'), [tr]);
      while (tbody.children.length > MAX_ROWS) tbody.lastElementChild.remove();
    }

    async function outcomes(item) {
      const outBody = $('#outcomes tbody');
      if (item.rejected) {
        outBody.replaceChildren(el('tr', {}, el('td', { colSpan: 3, className: 'rejected' }, `Rejected (${item.code}): ${item.reason}. Not stored, sent nowhere.`)));
        return;
      }
      const q = new URLSearchParams({ source: item.source, message_id: item.message.messageId });
      let data;
      try {
        data = await api(`/admin/outcomes?${q}`);
      } catch (err) {
        outBody.replaceChildren(el('tr', {}, el('td', { colSpan: 3, className: 'error' }, String(err.message))));
        return;
      }
      if (selected !== item) return;
      outBody.replaceChildren(...data.destinations.map((d) => {
        const tr = el('tr', {}, el('td', {}, d.destination), el('td', {}, d.outcome.replace('_', ' ')), el('td', {}, d.reason || ''));
        tr.dataset.destination = d.destination;
        tr.dataset.outcome = d.outcome;
        if (d.outcome === 'dead_lettered') tr.className = 'bad';
        return tr;
      }));
      if (!data.destinations.length) outBody.append(el('tr', {}, el('td', { colSpan: 3 }, 'No destinations running.')));
      const waiting = data.seq === null || data.destinations.some((d) => d.outcome === 'pending');
      if (waiting) poll = setTimeout(() => outcomes(item), 1000);
    }

    function select(tr) {
      for (const other of tbody.querySelectorAll('tr.selected')) other.classList.remove('selected');
      tr.classList.add('selected');
      selected = tr.item;
      clearTimeout(poll);
      $('#detail').hidden = false;
      setText($('#event-json'), pretty(tr.item.message));
      $('#outcomes tbody').replaceChildren();
      outcomes(tr.item);
    }

    $('#live-pause').addEventListener('click', (e) => {
      paused = !paused;
      setText(e.target, paused ? 'Resume' : 'Pause');
    });
    form.elements.type.addEventListener('change', refilter);
    form.elements.event.addEventListener('input', refilter);
    form.elements.source.addEventListener('change', () => { refilter(); connect(); });
    form.addEventListener('submit', (e) => e.preventDefault());

    api('/admin/sources').then((sources) => {
      for (const s of sources) form.elements.source.append(el('option', { value: s.name }, s.name));
      form.elements.source.value = params.get('source') || '';
      connect();
    }).catch((err) => showError(state, err));
  }

  // -- dead letters ---------------------------------------------------------------

  function confirmDialog(text) {
    const dialog = $('#confirm');
    setText($('#confirm-text'), text);
    dialog.returnValue = '';
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    });
  }

  function deadLetters() {
    const params = new URLSearchParams(window.location.search);
    const form = $('#dl-filters');
    const tbody = $('#dead-letters tbody');
    const state = $('#dl-state');
    let listed = [];
    let timer = null;
    form.elements.since.value = params.get('since') || '';
    form.elements.limit.value = params.get('limit') || '100';

    function query() {
      const q = new URLSearchParams();
      for (const name of ['destination', 'since', 'limit']) {
        const v = (params.get(name) || '').trim();
        if (v) q.set(name, v);
      }
      return q;
    }

    async function load() {
      clearTimeout(timer);
      try {
        listed = await api(`/admin/dead-letters?${query()}`);
      } catch (err) {
        showError(state, err);
        return;
      }
      tbody.replaceChildren(...listed.map((d) => {
        const redrive = el('button', { type: 'button', className: 'redrive' }, 'Redrive');
        redrive.disabled = d.state !== 'dead';
        redrive.addEventListener('click', (e) => { e.stopPropagation(); redriveIds([d.id], `Redrive dead letter ${d.id} to ${d.destination}?`); });
        const tr = el('tr', {},
          el('td', { className: 'num' }, d.id), el('td', {}, d.destination), el('td', {}, d.source),
          el('td', { className: 'mono' }, d.message_id), el('td', { className: 'num' }, d.attempts),
          el('td', {}, d.failed_at), el('td', {}, d.state), el('td', { className: 'error' }, d.error),
          el('td', {}, redrive));
        tr.dataset.id = d.id;
        tr.dataset.messageId = d.message_id;
        tr.addEventListener('click', () => show(d.id, tr));
        return tr;
      }));
      if (!listed.length) tbody.append(el('tr', {}, el('td', { colSpan: 9 }, 'No dead letters match.')));
      labelRows($('#dead-letters'));
      $('#redrive-all').disabled = !listed.some((d) => d.state === 'dead');
      // A redrive in progress: look again until the worker has taken them.
      if (listed.some((d) => d.state === 'redrive')) timer = setTimeout(load, 1000);
    }

    async function show(id, tr) {
      for (const other of tbody.querySelectorAll('tr.selected')) other.classList.remove('selected');
      tr.classList.add('selected');
      try {
        const d = await api(`/admin/dead-letters/${id}`);
        $('#detail').hidden = false;
        setText($('#dl-id'), `${d.id} (${d.destination}, ${d.attempts} attempts)`);
        setText($('#dl-error'), d.error);
        setText($('#event-json'), pretty(d.event));
      } catch (err) {
        showError(state, err);
      }
    }

    async function redriveIds(ids, text) {
      if (!(await confirmDialog(text))) return;
      try {
        const r = await api('/admin/dead-letters/redrive', { method: 'POST', body: { ids } });
        setText(state, `Redriven: ${r.redriven}`);
      } catch (err) {
        showError(state, err);
      }
      load();
    }

    $('#redrive-all').addEventListener('click', () => {
      const ids = listed.filter((d) => d.state === 'dead').map((d) => d.id);
      redriveIds(ids, `Redrive the ${ids.length} dead letters listed?`);
    });
    $('#purge-all').addEventListener('click', async () => {
      const destination = params.get('destination') || null;
      const before = new Date().toISOString();
      const whose = destination ? `of destination ${destination}` : 'of every destination';
      if (!(await confirmDialog(`Delete every dead letter ${whose} that failed before now? This cannot be undone.`))) return;
      try {
        const r = await api('/admin/dead-letters/purge', { method: 'POST', body: { destination, before } });
        setText(state, `Purged: ${r.purged}`);
      } catch (err) {
        showError(state, err);
      }
      load();
    });

    api('/admin/destinations').then((dests) => {
      for (const d of dests) form.elements.destination.append(el('option', { value: d.name }, d.name));
      form.elements.destination.value = params.get('destination') || '';
    }).catch((err) => showError(state, err));
    load();
  }

  // -- profiles -------------------------------------------------------------------

  function profile() {
    const id = $('#profile-title').dataset.profileId;
    const state = $('#profile-state');
    const kind = new URLSearchParams(window.location.search).get('kind');
    const q = kind ? `?kind=${encodeURIComponent(kind)}` : '';
    const base = `/admin/profiles/${encodeURIComponent(id)}`;
    Promise.all([api(base + q), api(`${base}/events${q}${q ? '&' : '?'}limit=100`)]).then(([p, events]) => {
      state.hidden = true;
      $('#profile').hidden = false;
      const facts = [
        ['Profile id', p.profile_id], ['First seen', p.first_seen], ['Last seen', p.last_seen],
        ['Events', num(p.event_count)], ['Revenue', num(p.revenue)],
        ['Events by type', Object.entries(p.events_by_type || {}).map(([k, v]) => `${k}: ${v}`).join(', ')],
        ['Groups', (p.groups || []).join(', ')],
      ];
      $('#profile-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v ?? '')]));
      $('#traits tbody').replaceChildren(...Object.entries(p.traits || {}).map(([k, v]) =>
        el('tr', {}, el('td', {}, k), el('td', {}, typeof v === 'string' ? v : JSON.stringify(v)))));
      $('#ids tbody').replaceChildren(
        ...(p.user_ids || []).map((u) => el('tr', {}, el('td', {}, 'userId'), el('td', { className: 'mono' }, u))),
        ...(p.anonymous_ids || []).map((a) => el('tr', {}, el('td', {}, 'anonymousId'), el('td', { className: 'mono' }, a))));
      const list = Array.isArray(events) ? events : events.events || [];
      const pre = $('#event-json');
      $('#timeline tbody').replaceChildren(...list.map((stored) => {
        // "each event as stored": the message itself, or wrapped beside its seq/source
        const m = [stored.message, stored.body, stored.event].find((v) => v && typeof v === 'object') || stored;
        const tr = el('tr', {}, el('td', {}, m.timestamp || m.receivedAt || ''), el('td', {}, m.type || ''),
          el('td', {}, eventName(m)), el('td', {}, stored.source || ''));
        tr.addEventListener('click', () => { pre.hidden = false; setText(pre, pretty(stored)); });
        return tr;
      }));
    }).catch((err) => showError(state, err));
  }

  // -- reports --------------------------------------------------------------------

  function heat(cell, share) {
    // CSSOM, not a style attribute: allowed by the page's CSP.
    cell.style.backgroundColor = `rgba(36, 88, 214, ${(0.08 + 0.6 * share).toFixed(3)})`;
  }

  function chart(kind, labels, datasets, yTitle) {
    if (!hasCharts()) return;
    const canvas = $('#report-chart');
    const old = window.Chart.getChart(canvas);
    if (old) old.destroy();
    new window.Chart(canvas, {
      type: kind,
      data: { labels, datasets },
      options: {
        maintainAspectRatio: false, animation: false,
        scales: { y: { beginAtZero: true, title: { display: Boolean(yTitle), text: yTitle || '' } } },
      },
    });
  }

  function table(head, rows) {
    const t = $('#report-table');
    t.tHead.replaceChildren(el('tr', {}, ...head.map((h) => el('th', { scope: 'col' }, h))));
    t.tBodies[0].replaceChildren(...rows.map((cells) => el('tr', {}, ...cells.map((c) => (c instanceof Node ? c : el('td', { className: typeof c === 'number' ? 'num' : '' }, typeof c === 'number' ? num(c) : c))))));
    // a column of numbers has its heading over them (right-aligned)
    Array.from(t.tHead.rows[0].cells).forEach((th, i) => {
      const cells = Array.from(t.tBodies[0].rows, (tr) => tr.cells[i]).filter(Boolean);
      th.classList.toggle('num', cells.length > 0 && cells.every((td) => td.classList.contains('num') || td.classList.contains('heat')));
    });
  }

  function funnel(data) {
    const steps = data.steps || [];
    const total = data.total || [];
    const by = Object.entries(data.by || {});
    const conv = total.map((n) => (total[0] ? Math.round((1000 * n) / total[0]) / 10 : 0));
    const series = [{ label: 'all users', data: total }, ...by.map(([value, counts]) => ({ label: value, data: counts }))];
    chart('bar', steps.map((s, i) => `${i + 1}. ${s} (${conv[i]}%)`), series, 'users');
    table(
      ['Step', 'Users', 'Of step 1', 'Of previous step', ...by.map(([v]) => `by: ${v}`)],
      steps.map((s, i) => [`${i + 1}. ${s}`, total[i], pct(total[i], total[0]), i ? pct(total[i], total[i - 1]) : '–', ...by.map(([, counts]) => counts[i])]),
    );
  }

  function retention(data) {
    const cohorts = data.cohorts || [];
    const periods = Math.max(0, ...cohorts.map((c) => (c.returned || []).length));
    const head = ['Cohort', 'Users', ...Array.from({ length: periods }, (_, k) => `${data.period || 'period'} ${k + 1}`)];
    table(head, cohorts.map((c) => [c.start, c.size, ...Array.from({ length: periods }, (_, k) => {
      const n = (c.returned || [])[k];
      if (n === undefined) return '';
      const cell = el('td', { className: 'heat' }, `${num(n)} (${pct(n, c.size)})`);
      heat(cell, c.size ? n / c.size : 0);
      return cell;
    })]));
    const avg = Array.from({ length: periods }, (_, k) => {
      const withK = cohorts.filter((c) => (c.returned || [])[k] !== undefined);
      const size = withK.reduce((a, c) => a + c.size, 0);
      return size ? Math.round((1000 * withK.reduce((a, c) => a + c.returned[k], 0)) / size) / 10 : 0;
    });
    chart('line', avg.map((_, k) => `${data.period || 'period'} ${k + 1}`), [{ label: 'returned, % of cohort', data: avg }], '%');
  }

  // engagement, churn, revenue: the first list of rows in the answer, as a table and lines.
  function rowsOf(data) {
    if (Array.isArray(data)) return data;
    for (const value of Object.values(data || {})) if (Array.isArray(value) && value.length && typeof value[0] === 'object') return value;
    return [];
  }

  function generic(data) {
    const rows = rowsOf(data);
    const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
    const labelKey = keys.find((k) => rows.some((r) => typeof r[k] === 'string')) || keys[0];
    const numeric = keys.filter((k) => k !== labelKey && rows.every((r) => r[k] === undefined || r[k] === null || typeof r[k] === 'number'));
    table(keys, rows.map((r) => keys.map((k) => (typeof r[k] === 'object' && r[k] !== null ? JSON.stringify(r[k]) : r[k] ?? ''))));
    chart('line', rows.map((r) => r[labelKey]), numeric.map((k) => ({ label: k, data: rows.map((r) => r[k]) })));
    const extra = Object.entries(data || {}).filter(([, v]) => !Array.isArray(v) && typeof v !== 'object');
    if (extra.length) setText($('#report-state'), extra.map(([k, v]) => `${k}: ${v}`).join(' · '));
  }

  function report() {
    const name = $('#report-title').dataset.report;
    const state = $('#report-state');
    const form = $('#report-params');
    const clean = (pairs) => {
      const q = new URLSearchParams();
      for (const [k, v] of pairs) if (String(v).trim()) q.set(k, String(v).trim());
      return q.toString() ? `?${q}` : '';
    };
    // Empty fields stay out of the URL (a shared link carries only what was set).
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      window.location.assign(`/console/reports/${name}${clean(new FormData(form))}`);
    });
    const search = clean(new URLSearchParams(window.location.search));
    if (name === 'funnel' && !new URLSearchParams(search).get('steps')) {
      setText(state, 'Give the steps (event names, comma-separated) and press Show.');
      return;
    }
    if (name === 'retention' && !new URLSearchParams(search).get('start')) {
      setText(state, 'Give the start event and press Show.');
      return;
    }
    setText(state, 'Loading…');
    api(`/admin/reports/${name}${search}`).then((data) => {
      setText(state, '');
      ({ funnel, retention }[name] || generic)(data);
    }).catch((err) => showError(state, err));
  }

  // -- every page -----------------------------------------------------------------

  const finder = $('#find-profile');
  if (finder) {
    finder.addEventListener('submit', (e) => {
      e.preventDefault();
      const id = finder.elements.id.value.trim();
      if (id) window.location.assign(`/console/profiles/${encodeURIComponent(id)}`);
    });
  }
  const pages = { overview, live, dead_letters: deadLetters, profile, report };
  const init = pages[document.body.dataset.page];
  if (init) init();
})();
