// Locara's page: status, history and live events from this daemon's own
// API (the session cookie set by /login authenticates; this script never
// sees a token). No libraries: the charts are SVG built here.
'use strict';
(() => {
  const HOUR_MS = 3600 * 1000;
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);
  let status = null;
  let samples = [];
  let events = [];
  const seen = new Set();
  let refreshing = false;
  let again = false;

  function bytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + units[i];
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }

  function showLogin() {
    $('login').hidden = false;
    $('main').hidden = true;
    $('conn').textContent = 'not logged in';
  }

  async function api(path, options) {
    const r = await fetch(path, Object.assign({ credentials: 'same-origin', cache: 'no-store' }, options || {}));
    if (r.status === 401) { showLogin(); throw new Error('not logged in'); }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((body.error && body.error.message) || ('HTTP ' + r.status));
    return body;
  }

  function setLevel(level, simulated) {
    const e = $('level');
    e.textContent = level + (simulated ? ' (simulated)' : '');
    e.className = 'level ' + level;
  }

  function eventKey(e) {
    return [e.at_unix_ms, e.kind, e.model || '', e.detail || ''].join('|');
  }

  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      status = await api('/locara/v1/status');
      const last = samples.length ? samples[samples.length - 1].at_unix_ms : 0;
      // A few seconds of overlap: an event stamped just before the last
      // sample may have been kept after it was read.
      const h = await api('/locara/v1/history?since=' + Math.max(0, last - 5000));
      for (const s of h.samples) if (s.at_unix_ms > last) samples.push(s);
      for (const e of h.events) {
        const k = eventKey(e);
        if (!seen.has(k)) { seen.add(k); events.push(e); }
      }
      const newest = samples.length ? samples[samples.length - 1].at_unix_ms : 0;
      samples = samples.filter((s) => s.at_unix_ms > newest - HOUR_MS);
      if (events.length > 200) events = events.slice(events.length - 200);
      render();
    } catch (err) {
      if (err.message !== 'not logged in') $('conn').textContent = 'daemon unreachable: ' + err.message;
    } finally {
      refreshing = false;
      if (again) { again = false; setTimeout(refresh, 0); }
    }
  }

  function render() {
    setLevel(status.pressure.level, status.pressure.simulated !== null && status.pressure.simulated !== undefined);
    $('budget').textContent = 'held ' + bytes(status.held) + ' of ' + bytes(status.effective_budget) + ' budget';
    renderBar();
    renderModels();
    renderCharts();
    renderEvents();
  }

  function renderBar() {
    const bar = $('membar');
    bar.replaceChildren();
    const sys = status.system;
    if (!sys) { $('memlegend').textContent = 'the OS gives no memory figures'; return; }
    const models = status.models.reduce((a, m) => a + (m.footprint || 0), 0);
    const used = Math.max(0, sys.total - sys.available);
    const rest = Math.max(0, used - models);
    let x = 0;
    for (const [cls, b] of [['models', models], ['used', rest], ['avail', sys.available]]) {
      const w = sys.total ? (b / sys.total) * 1000 : 0;
      bar.appendChild(svg('rect', { x: x, y: 0, width: w, height: 24, class: cls }));
      x += w;
    }
    $('memlegend').textContent = 'models ' + bytes(models) + ' · rest of the system ' + bytes(rest) +
      ' · free ' + bytes(sys.available) + ' of ' + bytes(sys.total) + ' · cached files ' + bytes(sys.cached_files) +
      ' · compressed ' + bytes(sys.compressed) + ' · swap ' + bytes(sys.swap_used);
  }

  async function act(model, path, done) {
    $('action').textContent = model + ': asking the daemon…';
    try {
      await api('/locara/v1/models/' + encodeURIComponent(model) + '/' + path, { method: 'POST' });
      $('action').textContent = model + ' ' + done;
    } catch (err) {
      $('action').textContent = model + ': ' + err.message;
    }
    refresh();
  }

  function button(label, onclick) {
    const b = el('button', label);
    b.type = 'button';
    b.addEventListener('click', onclick);
    return b;
  }

  function renderModels() {
    const body = $('models').tBodies[0];
    body.replaceChildren();
    const last = samples.length ? samples[samples.length - 1] : null;
    for (const m of status.models) {
      const s = last && last.models.find((x) => x.name === m.name);
      const tr = el('tr');
      tr.dataset.model = m.name;
      const cells = [m.name, m.state, bytes(m.footprint), bytes(m.mapped_weights),
        m.pool ? m.pool.used_cells + '/' + m.pool.cells : '–', String(m.sequences_busy),
        s ? s.tokens_per_second.toFixed(1) : '0.0', m.pinned ? 'yes' : ''];
      for (const c of cells) tr.appendChild(el('td', c));
      const td = el('td');
      td.appendChild(button('Unload', () => act(m.name, 'unload?hold=false', 'unloaded')));
      td.appendChild(button('Hold', () => act(m.name, 'unload?hold=true', 'unloaded and held')));
      if (!m.pinned) td.appendChild(button('Pin', () => act(m.name, 'load?keep_alive=-1', 'pinned')));
      tr.appendChild(td);
      body.appendChild(tr);
    }
    for (const name of status.held_unloaded) {
      const tr = el('tr');
      tr.dataset.model = name;
      for (const c of [name, 'held', '–', '–', '–', '0', '0.0', '']) tr.appendChild(el('td', c));
      const td = el('td');
      td.appendChild(button('Load', () => act(name, 'load', 'loaded')));
      tr.appendChild(td);
      body.appendChild(tr);
    }
    if (!body.children.length) {
      const tr = el('tr');
      const td = el('td', 'no model loaded');
      td.colSpan = 9;
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function renderCharts() {
    const chart = $('memory-chart');
    const strip = $('pressure-chart');
    chart.replaceChildren();
    strip.replaceChildren();
    for (const f of [0.25, 0.5, 0.75]) {
      chart.appendChild(svg('line', { x1: 0, x2: 1000, y1: 240 * f, y2: 240 * f, class: 'grid' }));
    }
    const withSys = samples.filter((s) => s.system);
    if (!samples.length) return;
    // One sample's width past the newest, so its strip shows.
    const t1 = samples[samples.length - 1].at_unix_ms + 1000;
    // At least 10 s wide, so the first samples do not fill the chart.
    const t0 = Math.min(samples[0].at_unix_ms, t1 - 10 * 1000);
    const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * 1000;
    const total = withSys.reduce((a, s) => Math.max(a, s.system.total), 1);
    const y = (b) => 240 - (b / total) * 240;
    const series = [
      ['models', (s) => s.footprint_total],
      ['used', (s) => s.system.total - s.system.available],
      ['avail', (s) => s.system.available],
    ];
    for (const [cls, value] of series) {
      const points = withSys.map((s) => x(s.at_unix_ms).toFixed(1) + ',' + y(value(s)).toFixed(1));
      const line = svg('polyline', { points: points.join(' '), class: cls });
      line.dataset.points = String(points.length);
      chart.appendChild(line);
    }
    $('chart-scale').textContent = '· full height ' + bytes(total) + ' · ' +
      Math.round((t1 - t0) / 1000) + ' s shown';
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i];
      const next = i + 1 < samples.length ? samples[i + 1].at_unix_ms : s.at_unix_ms + 1000;
      strip.appendChild(svg('rect', {
        x: x(s.at_unix_ms), y: 0, width: Math.max(1, x(next) - x(s.at_unix_ms)), height: 20, class: s.level,
      }));
    }
  }

  function renderEvents() {
    const list = $('events');
    list.replaceChildren();
    for (const e of events.slice().reverse().slice(0, 50)) {
      let text = new Date(e.at_unix_ms).toLocaleTimeString() + '  ' + e.kind;
      if (e.model) text += '  ' + e.model;
      if (e.level && e.kind !== 'level') text += '  [' + e.level + ']';
      if (e.bytes !== undefined && e.bytes !== null) text += '  ' + bytes(e.bytes);
      if (e.detail) text += '  ' + e.detail;
      const li = el('li', text, 'ev-' + e.kind);
      if (e.kind === 'level') li.classList.add('ev-' + e.level);
      list.appendChild(li);
    }
  }

  function listen() {
    const source = new EventSource('/locara/v1/events');
    source.onopen = () => { $('conn').textContent = 'live'; $('conn').className = 'conn live'; };
    source.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (_) { return; }
      // The level shows at once; the rest follows with the history.
      if (ev.type === 'level') setLevel(ev.level, false);
      refresh();
    };
    source.onerror = () => { $('conn').textContent = 'reconnecting…'; $('conn').className = 'conn'; };
  }

  refresh().then(() => {
    if (!$('main').hidden) {
      listen();
      setInterval(refresh, 1000);
    }
  });
})();
