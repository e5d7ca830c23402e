// The mkfleet console: one page, routed by the URL's hash, drawn from the controller's
// /api/ and refreshed whenever /api/watch says something changed. No framework, no build.
'use strict';

const main = document.getElementById('main');
const live = document.getElementById('live');

// ---------------------------------------------------------------- helpers

// h('a', {href: '#/'}, 'text', child...): an element; strings become text (never HTML).
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'style') e.style.cssText = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path) {
  const r = await fetch('/api/' + path, {cache: 'no-store'});
  const text = await r.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch (e) {
    body = text;
  }
  if (!r.ok) throw new Error((body && body.error) || ('HTTP ' + r.status));
  return body;
}

async function apiText(path) {
  const r = await fetch('/api/' + path, {cache: 'no-store'});
  const text = await r.text();
  if (!r.ok) {
    let message = 'HTTP ' + r.status;
    try {
      message = JSON.parse(text).error || message;
    } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return text;
}

const link = (kind, name) => h('a', {href: '#/' + kind + '/' + encodeURIComponent(name)}, name);
const get = (o, path, dflt) => path.split('.').reduce((x, k) => (x == null ? undefined : x[k]), o) ?? dflt;

// "0-3,8" from [0,1,2,3,8].
function ranges(list) {
  const xs = [...(list || [])].sort((a, b) => a - b);
  const out = [];
  for (let i = 0; i < xs.length; i++) {
    let j = i;
    while (j + 1 < xs.length && xs[j + 1] === xs[j] + 1) j++;
    out.push(j > i ? xs[i] + '-' + xs[j] : String(xs[i]));
    i = j;
  }
  return out.join(',') || '-';
}

function bytes(n) {
  if (typeof n === 'string') return n;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  n = Number(n || 0);
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return (Math.round(n * 10) / 10) + ' ' + units[u];
}

const sum = (list) => (list || []).reduce((a, x) => a + Number(x.bytes || 0), 0);

function bar(used, total, text) {
  const pct = total > 0 ? Math.round((100 * used) / total) : 0;
  return h('div', {class: 'usage', title: text},
    h('div', {class: 'bar'}, h('span', {style: 'width:' + pct + '%', class: pct > 90 ? 'hot' : ''})),
    h('small', {}, text));
}

function badge(text, kind) {
  return h('span', {class: 'badge ' + (kind || String(text).toLowerCase())}, text);
}

function phaseBadge(phase) {
  const p = phase || 'Pending';
  const kind = {Running: 'ok', Failed: 'bad', Pending: 'wait', Scheduling: 'wait', Terminating: 'wait'}[p] || 'info';
  return h('span', {class: 'badge ' + kind, 'data-phase': p}, p);
}

function table(header, rows, attrs) {
  return h('table', attrs || {},
    h('thead', {}, h('tr', {}, header.map((x) => h('th', {}, x)))),
    h('tbody', {}, rows));
}

function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => k + '=' + v).join(', ');
}

function conditionsTable(conditions) {
  if (!conditions || conditions.length === 0) return h('p', {class: 'muted'}, 'No conditions reported.');
  return table(['TYPE', 'STATUS', 'REASON', 'MESSAGE'], conditions.map((c) =>
    h('tr', {class: 'condition', 'data-type': c.type},
      h('td', {}, c.type), h('td', {}, badge(c.status || 'Unknown', c.status === 'True' ? 'ok' : 'warn')),
      h('td', {}, c.reason || ''), h('td', {}, c.message || ''))));
}

function time(ms) {
  if (!ms) return '-';
  return new Date(Number(ms)).toLocaleTimeString();
}

function eventsTable(items) {
  if (!items || items.length === 0) return h('p', {class: 'muted'}, 'No events.');
  return table(['TIME', 'TYPE', 'REASON', 'OBJECT', 'COUNT', 'MESSAGE'], items.slice().reverse().map((e) =>
    h('tr', {class: 'event', 'data-reason': e.reason || ''},
      h('td', {}, time(e.timeUnixMs)), h('td', {}, badge(e.type || 'Normal', e.type === 'Warning' ? 'warn' : 'info')),
      h('td', {}, e.reason || ''), h('td', {}, (e.kind || '') + '/' + (e.name || '')),
      h('td', {}, e.count || 1), h('td', {}, e.message || ''))), {class: 'events'});
}

function section(title, ...content) {
  return h('section', {}, h('h2', {}, title), ...content);
}

function facts(pairs) {
  return h('dl', {class: 'facts'}, pairs.filter((p) => p).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// ---------------------------------------------------------------- pages

function hostUsage(host) {
  const pool = get(host, 'status.pool', {});
  const cpus = (pool.cpus || []).length;
  const cpusFree = (pool.cpusFree || []).length;
  const mem = sum(pool.memory);
  const memFree = sum(pool.memoryFree);
  const devs = (pool.devices || []).length;
  const devsFree = (pool.devicesFree || []).length;
  return {cpus, cpusFree, mem, memFree, devs, devsFree};
}

async function fleetPage(params) {
  const selector = params.get('label') || '';
  const query = selector.split(',').map((s) => s.trim()).filter((s) => s)
    .map((s) => 'label=' + encodeURIComponent(s)).join('&');
  // One small answer with the counts (not every instance as an object).
  const fleet = await api('fleet' + (query ? '?' + query : ''));
  const filter = h('input', {id: 'label-filter', type: 'search', value: selector,
    placeholder: 'label selector, e.g. zone=a,tier=web', size: 36});
  filter.addEventListener('change', () => {
    location.hash = '#/' + (filter.value.trim() ? '?label=' + encodeURIComponent(filter.value.trim()) : '');
  });
  const rows = fleet.hosts.map((x) => h('tr', {class: 'host', 'data-host': x.name},
    h('td', {}, link('hosts', x.name)),
    h('td', {}, x.reachable ? badge('yes', 'ok') : badge('no', 'bad'), x.cordoned ? [' ', badge(x.draining ? 'draining' : 'cordoned', 'warn')] : null),
    h('td', {}, bar(x.cpus - x.cpusFree, x.cpus, (x.cpus - x.cpusFree) + '/' + x.cpus + ' CPUs')),
    h('td', {}, bar(x.memory - x.memoryFree, x.memory, bytes(x.memory - x.memoryFree) + '/' + bytes(x.memory))),
    h('td', {}, bar(x.devices - x.devicesFree, x.devices, (x.devices - x.devicesFree) + '/' + x.devices + ' devices')),
    h('td', {class: 'num'}, x.instances),
    h('td', {}, labelsText(x.labels)),
    h('td', {}, x.problems.length === 0 ? badge('OK', 'ok')
      : x.problems.map((c) => h('div', {}, badge(c.type, 'warn'), ' ', c.message || c.reason || '')))));
  const setRows = fleet.sets.map((s) => h('tr', {},
    h('td', {}, link('sets', s.name)), h('td', {class: 'num'}, s.replicas), h('td', {class: 'num'}, s.ready),
    h('td', {class: 'num'}, s.updated), h('td', {}, s.rollout || '-')));
  const phases = Object.entries(fleet.phases);
  return [
    h('h1', {}, 'Fleet'),
    h('p', {class: 'summary'}, fleet.hosts.length + ' hosts (' + fleet.reachable + ' reachable), ' +
      fleet.instances + ' instances' + (phases.length ? ' (' + phases.map(([p, n]) => n + ' ' + p).join(', ') + ')' : '')),
    h('div', {class: 'toolbar'}, h('label', {}, 'Filter by label ', filter)),
    table(['HOST', 'REACHABLE', 'CPUS', 'MEMORY', 'DEVICES', 'INSTANCES', 'LABELS', 'CONDITIONS'], rows,
      {id: 'hosts'}),
    setRows.length ? section('Instance sets',
      table(['SET', 'REPLICAS', 'READY', 'UPDATED', 'ROLLOUT'], setRows, {id: 'sets'})) : null,
  ];
}

async function hostPage(name) {
  const [host, instances, events] = await Promise.all([
    api('hosts/' + encodeURIComponent(name)), api('instances?host=' + encodeURIComponent(name)),
    api('events?kind=Host&name=' + encodeURIComponent(name))]);
  let picture;
  try {
    picture = h('div', {class: 'picture', id: 'topology'});
    picture.innerHTML = await apiText('hosts/' + encodeURIComponent(name) + '/topology.svg');
    picture.addEventListener('click', (ev) => {
      const owner = ev.target.getAttribute && ev.target.getAttribute('data-owner');
      if (owner && owner !== '(host)') location.hash = '#/instances/' + encodeURIComponent(owner);
    });
  } catch (e) {
    picture = h('p', {class: 'muted', id: 'topology'}, 'No topology: ' + e.message);
  }
  const st = host.status || {};
  const u = hostUsage(host);
  const mine = instances.items.filter((i) => get(i, 'status.placement.host') === name);
  return [
    h('h1', {}, 'Host ', name, ' ', get(st, 'reachable', false) ? badge('reachable', 'ok') : badge('unreachable', 'bad')),
    facts([
      ['Agent', host.spec.agent + (st.agentVersion ? ' (mkagent ' + st.agentVersion + ')' : '')],
      ['Dialect', st.dialect || '-'],
      ['Labels', labelsText(host.metadata.labels) || '-'],
      ['CPUs', bar(u.cpus - u.cpusFree, u.cpus, (u.cpus - u.cpusFree) + ' of ' + u.cpus + ' pool CPUs in use')],
      ['Memory', bar(u.mem - u.memFree, u.mem, bytes(u.mem - u.memFree) + ' of ' + bytes(u.mem))],
      ['Devices', bar(u.devs - u.devsFree, u.devs, (u.devs - u.devsFree) + ' of ' + u.devs)],
    ]),
    section('Topology', picture),
    section('Instances (' + mine.length + ')', table(['NAME', 'PHASE', 'CPUS', 'MEMORY', 'ROLE'],
      mine.map((i) => h('tr', {},
        h('td', {}, link('instances', i.metadata.name)), h('td', {}, phaseBadge(get(i, 'status.phase'))),
        h('td', {}, ranges(get(i, 'status.placement.cpus', []))),
        h('td', {}, bytes(sum(get(i, 'status.placement.memory', [])))),
        h('td', {}, get(i, 'status.role', '-')))))),
    section('Conditions', conditionsTable(st.conditions)),
    (st.drift || []).length ? section('Drift', table(['OBJECT', 'FIELD', 'WANTED', 'FOUND', 'POLICY'],
      st.drift.map((d) => h('tr', {}, [d.object, d.field, d.wanted, d.found, d.policy].map((x) => h('td', {}, x)))))) : null,
    section('Events', eventsTable(events.items)),
  ];
}

async function instancePage(name) {
  const [ki, events] = await Promise.all([
    api('instances/' + encodeURIComponent(name)),
    api('events?kind=KernelInstance&name=' + encodeURIComponent(name))]);
  const st = ki.status || {};
  const p = st.placement || {};
  const owner = st.owner || '';
  const morph = st.morph;
  return [
    h('h1', {}, 'Instance ', name, ' ', phaseBadge(st.phase)),
    facts([
      ['Host', p.host ? link('hosts', p.host) : (ki.spec.host || '-')],
      ['Serving kernel', h('span', {id: 'serving-kernel'}, st.kernel || '-')],
      ['Role', st.role || '-'],
      owner ? ['Owner', owner.startsWith('InstanceSet/') ? link('sets', owner.slice(12)) : owner] : null,
      ['Kernel image', get(ki, 'spec.kernel.image', '-')],
      ['Revision', (st.revision || '-') + (st.previousRevision ? ' (previous ' + st.previousRevision + ')' : '')],
      ['Generation', String(ki.metadata.generation || 0) + ' (observed ' + (st.observedGeneration || 0) + ')'],
      ['Restarts', String(st.restartCount || 0)],
      morph ? ['Live update', (morph.phase || '') + ' ' + (morph.oldKernel || '') + ' → ' + (morph.newKernel || '')] : null,
    ]),
    section('Placement', p.cpus ? facts([
      ['CPUs', ranges(p.cpus) + ' (boot CPU ' + (p.bootCpu || 0) + ')'],
      ['Memory', (p.memory || []).map((m) => bytes(m.bytes) + ' on node ' + (m.node || 0)).join(', ') || '-'],
      ['Devices', (p.devices || []).map((d) => (d.name ? d.name + ' ' : '') + d.pci).join(', ') || '-'],
    ]) : h('p', {class: 'muted'}, 'Not placed.')),
    section('Conditions', conditionsTable(st.conditions)),
    section('Events', eventsTable(events.items)),
  ];
}

async function setPage(name) {
  const [set, instances, events] = await Promise.all([
    api('sets/' + encodeURIComponent(name)), api('instances?owner=' + encodeURIComponent('InstanceSet/' + name)),
    api('events?kind=InstanceSet&name=' + encodeURIComponent(name))]);
  const st = set.status || {};
  const ro = st.rollout || {};
  const members = instances.items.filter((i) => get(i, 'status.owner') === 'InstanceSet/' + name);
  return [
    h('h1', {}, 'Instance set ', name, ' ', ro.phase ? badge(ro.phase, ro.phase === 'Complete' ? 'ok' : 'info') : null),
    facts([
      ['Count', set.spec.perHost !== undefined ? 'perHost ' + set.spec.perHost : 'replicas ' + (set.spec.replicas || 0)],
      ['Replicas', (st.replicas || 0) + ' (' + (st.readyReplicas || 0) + ' ready, ' + (st.updatedReplicas || 0) + ' updated)'],
      ['Revision', (st.currentRevision || '-') + (st.updateRevision && st.updateRevision !== st.currentRevision
        ? ' → ' + st.updateRevision : '')],
      ['Rollout', ro.message || '-'],
    ]),
    section('Rollout progress', (ro.waves || []).length === 0 ? h('p', {class: 'muted'}, 'No rollout.')
      : h('div', {id: 'waves'}, ro.waves.map((w) => h('div', {class: 'wave'},
        h('span', {class: 'wave-name'}, w.value || 'members'),
        bar(w.updated || 0, w.total || 0, (w.updated || 0) + '/' + (w.total || 0) + ' updated, ' +
          (w.ready || 0) + ' ready' + (w.failed ? ', ' + w.failed + ' failed' : '')))))),
    section('Members (' + members.length + ')', table(['NAME', 'PHASE', 'HOST', 'REVISION'], members.map((i) =>
      h('tr', {}, h('td', {}, link('instances', i.metadata.name)), h('td', {}, phaseBadge(get(i, 'status.phase'))),
        h('td', {}, get(i, 'status.placement.host', '-')), h('td', {}, get(i, 'status.rolloutRevision', '-')))))),
    section('Conditions', conditionsTable(st.conditions)),
    section('Events', eventsTable(events.items)),
  ];
}

async function instancesPage() {
  const instances = await api('instances');
  return [h('h1', {}, 'Instances'), table(['NAME', 'PHASE', 'HOST', 'CPUS', 'MEMORY', 'ROLE', 'RESTARTS'],
    instances.items.map((i) => h('tr', {},
      h('td', {}, link('instances', i.metadata.name)), h('td', {}, phaseBadge(get(i, 'status.phase'))),
      h('td', {}, get(i, 'status.placement.host') ? link('hosts', get(i, 'status.placement.host')) : '-'),
      h('td', {class: 'num'}, get(i, 'status.placement.cpus', []).length),
      h('td', {}, bytes(sum(get(i, 'status.placement.memory', [])))),
      h('td', {}, get(i, 'status.role', '-')), h('td', {class: 'num'}, get(i, 'status.restartCount', 0)))),
    {id: 'instances'})];
}

async function setsPage() {
  const sets = await api('sets');
  return [h('h1', {}, 'Instance sets'), table(['SET', 'REPLICAS', 'READY', 'UPDATED', 'ROLLOUT', 'MESSAGE'],
    sets.items.map((s) => h('tr', {}, h('td', {}, link('sets', s.metadata.name)),
      h('td', {class: 'num'}, get(s, 'status.replicas', 0)), h('td', {class: 'num'}, get(s, 'status.readyReplicas', 0)),
      h('td', {class: 'num'}, get(s, 'status.updatedReplicas', 0)), h('td', {}, get(s, 'status.rollout.phase', '-')),
      h('td', {}, get(s, 'status.rollout.message', '')))))];
}

async function eventsPage() {
  const events = await api('events?limit=200');
  return [h('h1', {}, 'Events'), eventsTable(events.items)];
}

// ---------------------------------------------------------------- routing and live updates

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter((x) => x).map(decodeURIComponent);
  if (parts.length === 0) return () => fleetPage(params);
  if (parts[0] === 'hosts' && parts[1]) return () => hostPage(parts[1]);
  if (parts[0] === 'instances' && parts[1]) return () => instancePage(parts[1]);
  if (parts[0] === 'sets' && parts[1]) return () => setPage(parts[1]);
  if (parts[0] === 'instances') return instancesPage;
  if (parts[0] === 'sets') return setsPage;
  if (parts[0] === 'events') return eventsPage;
  return async () => [h('h1', {}, 'Not found'), h('p', {}, 'No page at ', hash, '.')];
}

let rendering = false;
let again = false;
let renders = 0;

async function render() {
  if (rendering) {
    again = true;
    return;
  }
  rendering = true;
  lastStart = Date.now();
  const page = route();
  const hash = location.hash;
  try {
    const content = await page();
    if (hash === location.hash) {
      const y = window.scrollY;
      const focused = document.activeElement && document.activeElement.id;
      main.replaceChildren(...content.flat().filter((x) => x));
      if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
      window.scrollTo(0, y);
    }
  } catch (e) {
    main.replaceChildren(h('div', {class: 'error'}, 'Could not load this page: ' + e.message));
  }
  renders++;
  lastTook = Date.now() - lastStart;
  document.body.setAttribute('data-renders', String(renders));
  rendering = false;
  if (again) {
    again = false;
    render();
  }
}

// A page redraws 100 ms after a change, but not sooner than 250 ms after its last redraw
// began nor than four times what that redraw took: a busy fleet's stream of changes never
// has an open page load the controller more than a fifth of the time.
let pending = null;
let lastStart = 0;
let lastTook = 0;
function refreshSoon() {
  if (pending) return;
  const wait = Math.max(100, lastStart + Math.max(250, 4 * lastTook) - Date.now());
  pending = setTimeout(() => {
    pending = null;
    render();
  }, wait);
}

function connect() {
  const source = new EventSource('/api/watch');
  source.addEventListener('hello', () => {
    live.textContent = 'live';
    live.className = 'live on';
  });
  source.addEventListener('change', refreshSoon);
  source.addEventListener('resync', refreshSoon);
  source.onerror = () => {
    live.textContent = 'reconnecting…';
    live.className = 'live off';
  };
}

window.addEventListener('hashchange', () => render());
render();
connect();
