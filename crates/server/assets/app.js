// coalmine dashboard: plain JavaScript, no dependencies, served by the binary.
//
// The token: `coalmine up` prints the dashboard's address with `#token=...`. The fragment
// never reaches the server; this script moves it into sessionStorage (this tab only) and
// removes it from the address bar. Without it, the page asks for the token.
'use strict';
(() => {
  const TOKEN_KEY = 'coalmine.token';
  const ACTOR_KEY = 'coalmine.actor';
  const WINDOW_S = 300;
  const $ = (id) => document.getElementById(id);

  // ---------- token ----------
  function tokenFromHash() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, '', location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }
  let token = tokenFromHash();

  class Unauthorized extends Error {}

  function showLogin(message) {
    $('main').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('login-token').focus();
  }

  // ---------- DOM helpers (text only: nothing from the API becomes HTML) ----------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const svgNS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, text) {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }
  // "alarm:failure-ratio" → "the failure-ratio alarm"; its reason then drops the repeated
  // "alarm failure-ratio: " prefix.
  function who(actor) { return String(actor || '').startsWith('alarm:') ? `the ${actor.slice(6)} alarm` : actor; }
  function why(actor, reason) {
    const a = String(actor || '');
    const prefix = a.startsWith('alarm:') ? `alarm ${a.slice(6)}: ` : null;
    return prefix && String(reason).startsWith(prefix) ? reason.slice(prefix.length) : reason;
  }
  function badge(text, key) { return h('span', { class: 'badge b-' + String(key || text).replace(/[^A-Za-z]/g, '') , text }); }
  function short(rev) { return rev ? String(rev).slice(0, 12) : '–'; }
  function clock(ms) { return ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : ''; }
  function when(ms) {
    if (!ms) return '';
    const d = new Date(ms);
    const today = new Date();
    return d.toDateString() === today.toDateString() ? clock(ms) : d.toLocaleString([], { hour12: false });
  }
  function dur(ms) {
    if (ms === null || ms === undefined || ms < 0) return '';
    const sec = Math.round(ms / 1000);
    if (sec < 60) return sec + 's';
    const m = Math.floor(sec / 60), r = sec % 60;
    if (m < 60) return m + 'm ' + r + 's';
    const hh = Math.floor(m / 60);
    return hh + 'h ' + (m % 60) + 'm';
  }
  function firstLine(t) { return String(t || '').split('\n')[0]; }

  // ---------- API ----------
  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + token };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch('/api/v1' + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
    if (r.status === 401) {
      showLogin('The server refused this token: copy it again from .coalmine/token (it changes when the state folder is recreated).');
      throw new Unauthorized('401');
    }
    const ct = r.headers.get('content-type') || '';
    const data = ct.includes('json') ? await r.json() : await r.text();
    if (!r.ok) throw new Error((data && data.error) || (r.status + ' ' + r.statusText));
    return data;
  }

  // Server-sent events over fetch (EventSource cannot send the Authorization header).
  async function sse(path, onEvent, signal) {
    const r = await fetch('/api/v1' + path, { headers: { Authorization: 'Bearer ' + token, Accept: 'text/event-stream' }, signal, cache: 'no-store' });
    if (r.status === 401) {
      showLogin('The server refused this token.');
      throw new Unauthorized('401');
    }
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n/g, '\n');
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line === '' || line.startsWith(':')) continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          let v = c < 0 ? '' : line.slice(c + 1);
          if (v.startsWith(' ')) v = v.slice(1);
          if (field === 'event') event = v;
          else if (field === 'data') data.push(v);
        }
        onEvent(event, data.join('\n'));
      }
    }
  }

  // ---------- state ----------
  let status = null;
  let rollbackMarks = [];
  let samples = [];
  let selected = null; // execution id shown in the logs (null: the current one)
  let lastExecKey = '';
  let logTab = 'build';
  let logAbort = null;
  let logKey = '';

  function banner(text, kind) {
    const b = $('banner');
    b.hidden = !text;
    b.className = 'banner' + (kind ? ' ' + kind : '');
    b.textContent = text || '';
  }

  // ---------- pipeline ----------
  function stageKind(st) {
    try { return JSON.parse(st.kind).type || ''; } catch (_) { return ''; }
  }
  function renderPipeline(ex) {
    const head = $('execution-head');
    const stages = $('stages');
    head.replaceChildren();
    stages.replaceChildren();
    $('approval').hidden = true;
    if (!ex) {
      head.append(h('span', { class: 'muted', text: 'No execution yet: commit to the branch, or press "Check for commits".' }));
      return;
    }
    const e = ex;
    head.append(...[
      h('span', { text: 'Execution #' + e.id }),
      h('code', { title: e.commit_id, text: short(e.revision) }),
      h('span', { class: 'message', title: e.message, text: firstLine(e.message) }),
      badge(e.status),
      e.bootstrap ? badge('first release', 'pending') : null,
      e.reason && e.status !== 'InProgress' ? h('span', { class: 'muted', text: e.reason }) : null,
    ].filter(Boolean));
    const now = Date.now();
    const ended = !['InProgress', 'Queued'].includes(e.status);
    (e.stages || []).forEach((st, i) => {
      if (i > 0) stages.append(h('span', { class: 'arrow', 'aria-hidden': 'true', text: '→' }));
      const took = st.started_ms ? (st.finished_ms || now) - st.started_ms : null;
      // A stage still Pending when its execution is over never ran, and never will.
      const shown = ended && st.status === 'Pending' ? 'Not run' : st.status;
      stages.append(h('div', { class: 'stage s-' + shown.replace(/ /g, ''), 'data-stage': st.name, 'data-status': shown },
        h('div', { class: 'name', text: st.name }),
        h('div', { class: 'state', text: shown }),
        h('div', { class: 'dur', text: took !== null ? dur(took) + (st.finished_ms ? '' : ' so far') : (shown === 'Pending' ? 'not started' : '') }),
        st.detail ? h('div', { class: 'detail', title: st.detail, text: st.detail }) : null,
      ));
    });
    const waiting = e.status === 'InProgress' && (e.stages || []).find((st) => st.status === 'InProgress' && ['approval', 'analysis'].includes(stageKind(st)));
    if (waiting) {
      const box = $('approval');
      if (box.dataset.execution && box.dataset.execution !== String(e.id)) {
        // Another revision is under review now: say so, and make a click already on its way fail.
        box.dataset.changedAt = String(Date.now());
        $('approval-error').textContent = `The revision under review changed to ${short(e.revision)} (execution #${e.id}).`;
      }
      box.hidden = false;
      box.dataset.execution = e.id;
      box.dataset.revision = e.revision;
      $('approval-revision').textContent = short(e.revision);
      $('approval-message').textContent = firstLine(e.message);
    }
  }

  async function decide(approve) {
    const box = $('approval');
    const id = box.dataset.execution;
    if (Date.now() - Number(box.dataset.changedAt || 0) < 2000) {
      $('approval-error').textContent = 'The revision under review just changed: look at it again before deciding.';
      return;
    }
    const actor = $('actor').value.trim() || 'dashboard';
    localStorage.setItem(ACTOR_KEY, actor);
    $('approval-error').textContent = '';
    $('approve-btn').disabled = $('reject-btn').disabled = true;
    try {
      await api('POST', `/executions/${id}/${approve ? 'approve' : 'reject'}`, {
        actor, comment: $('approval-comment').value, revision: box.dataset.revision,
      });
      $('approval-comment').value = '';
      await refreshStatus();
    } catch (e) {
      if (!(e instanceof Unauthorized)) $('approval-error').textContent = e.message;
    } finally {
      $('approve-btn').disabled = $('reject-btn').disabled = false;
    }
  }

  // ---------- services ----------
  // The canary's share of the messages received over the last minute, beside its share of the
  // tasks: a canary that receives far less than its tasks' share is judged on little. Only while
  // the two services run different revisions (the samples count by revision).
  function canaryShare(list) {
    const by = Object.fromEntries((list || []).map((sv) => [sv.name, sv.status]));
    const c = by.canary, p = by.primary;
    if (!c || !p || c.revision === p.revision || !samples.length) return null;
    const tEnd = samples[samples.length - 1].t_ms;
    let mine = 0, all = 0;
    for (const x of samples) {
      if (x.t_ms < tEnd - 60000) continue;
      for (const [rev, r] of Object.entries(x.revisions || {})) {
        all += r.received || 0;
        if (rev === c.revision) mine += r.received || 0;
      }
    }
    const tasks = c.running + p.running;
    if (!all || !tasks) return null;
    const pct = (v) => Math.round(v * 100) + ' %';
    return `receives ${pct(mine / all)} of messages (last minute) · ${c.running} of ${tasks} tasks: ${pct(c.running / tasks)}`;
  }
  function renderServices(list) {
    const root = $('services');
    root.replaceChildren();
    const share = canaryShare(list);
    for (const sv of list || []) {
      const st = sv.status;
      const tasks = st ? st.tasks : [];
      const dep = st && st.deployments && st.deployments.length ? st.deployments[st.deployments.length - 1] : null;
      root.append(h('div', { class: 'service', 'data-service': sv.name },
        h('div', { class: 'head' },
          h('span', { class: 'name', text: sv.name }),
          st ? badge(st.steady ? 'steady' : 'deploying', st.steady ? 'running' : 'pending') : badge('not running', 'Stopped')),
        h('div', {}, 'revision ', h('code', { text: short(st ? st.revision : sv.desired_revision) }),
          st ? ` · ${st.running}/${st.desired} running` + (st.pending ? `, ${st.pending} starting` : '') : ''),
        sv.name === 'canary' && share ? h('div', { class: 'share', text: share }) : null,
        dep && dep.state === 'FAILED' ? h('div', { class: 'error', text: 'deployment failed: ' + dep.reason }) : null,
        dep && dep.rolled_back_to ? h('div', { class: 'muted', text: 'rolled back to ' + short(dep.rolled_back_to) }) : null,
        tasks.length ? h('table', {},
          h('thead', {}, h('tr', {}, h('th', { text: 'Task' }), h('th', { text: 'Revision' }), h('th', { text: 'State' }), h('th', { class: 'num', text: 'Restarts' }), h('th', { text: 'Up' }))),
          h('tbody', {}, tasks.map((t) => h('tr', { class: 'task', 'data-task': t.id, title: 'show this task\'s log', onclick: () => { logTab = 'task:' + t.id; openLog(); $('log').scrollIntoView({ block: 'nearest' }); } },
            h('td', { class: 'mono', text: t.id }),
            h('td', {}, h('code', { text: short(t.revision) })),
            h('td', {}, badge(t.state), t.last_exit ? h('span', { class: 'muted', text: ' last ' + t.last_exit }) : null),
            h('td', { class: 'num', text: t.restarts }),
            h('td', { class: 'muted', text: t.started_at_ms ? dur(Date.now() - t.started_at_ms) : '' }),
          )))) : h('p', { class: 'muted', text: 'no tasks' }),
      ));
    }
  }

  // ---------- verdicts, rollbacks ----------
  function numbers(obj) {
    if (!obj || typeof obj !== 'object') return obj === undefined || obj === null ? null : h('div', { class: 'numbers', text: String(obj) });
    const out = h('div', { class: 'numbers' });
    for (const [k, v] of Object.entries(obj)) {
      const val = typeof v === 'number' ? (Number.isInteger(v) ? v : v.toFixed(3)) : (typeof v === 'object' ? JSON.stringify(v) : v);
      out.append(h('span', {}, k.replace(/_/g, ' ') + ' ', h('b', { text: val })));
    }
    return out;
  }
  function renderVerdicts(ex) {
    const root = $('verdicts');
    root.replaceChildren();
    const vs = ex ? ex.verdicts || [] : [];
    if (!vs.length) { root.append(h('p', { class: 'muted', text: 'No verdicts yet for this execution.' })); return; }
    root.append(h('table', {}, h('thead', {}, h('tr', {}, h('th', { text: 'Alarm' }), h('th', { text: 'Outcome' }), h('th', { text: 'Why' }), h('th', { text: 'At' }))),
      h('tbody', {}, vs.map((v) => h('tr', {},
        h('td', { text: v.alarm }),
        h('td', {}, badge(v.outcome)),
        h('td', {}, v.reason, numbers(v.numbers)),
        h('td', { class: 'muted', text: clock(v.at_ms) }))))));
  }
  function renderRollbacks(list) {
    const root = $('rollbacks');
    root.replaceChildren();
    if (!list.length) { root.append(h('p', { class: 'muted', text: 'No rollbacks.' })); return; }
    for (const r of list.slice().reverse().slice(0, 8)) {
      root.append(h('div', { class: 'rollback' },
        h('div', {}, badge('rolled back', 'RolledBack'), ' ', h('code', { text: short(r.revision) }), ' → ', h('code', { text: short(r.to_revision) }),
          ` · #${r.execution_id} · ${when(r.at_ms)} · by ${who(r.actor)}`),
        h('div', { text: r.reason }),
        numbers({ received: r.received, failed: r.failed, handed_back: r.returned, expired: r.expired, held_when_stopped: r.released, dead_lettered: r.dead_lettered, redriven: r.redriven, lost: r.lost,
          canary_back: r.canary_back_ms === null || r.canary_back_ms === undefined ? 'pending' : r.canary_back_ms + ' ms' })));
    }
  }

  // ---------- history, events ----------
  function ended(e) {
    const a = (e.approvals || []).slice(-1)[0];
    if (a) {
      const who = `${a.decision} by ${a.actor}` + (a.comment ? `: “${a.comment}”` : '');
      if (e.status === 'InProgress' || e.status === 'Succeeded') return who;
      return who + (e.reason ? ' — ' + e.reason : '');
    }
    if (e.status === 'InProgress') return 'in progress';
    const rb = (e.rollbacks || []).slice(-1)[0];
    if (rb) return `rolled back by ${who(rb.actor)}: ${why(rb.actor, rb.reason)}`;
    if (e.status === 'Stopped') return 'stopped: ' + (e.reason || '');
    if (e.status === 'Superseded') return e.reason || 'superseded by a newer commit';
    return e.reason || '';
  }
  function renderHistory(list) {
    const body = $('history');
    body.replaceChildren();
    for (const e of list) {
      const took = e.finished_ms ? e.finished_ms - e.created_ms : Date.now() - e.created_ms;
      body.append(h('tr', { class: selected === e.id ? 'selected' : '', 'data-execution': e.id, onclick: () => { selected = e.id; logTab = 'build'; openLog(); renderHistory(list); } },
        h('td', { text: e.id }),
        h('td', {}, h('code', { title: e.commit_id, text: short(e.revision) })),
        h('td', { title: e.message, text: firstLine(e.message) }),
        h('td', {}, badge(e.status)),
        h('td', { text: ended(e) }),
        h('td', { class: 'muted', text: when(e.created_ms) }),
        h('td', { class: 'muted', text: dur(took) })));
    }
    if (!list.length) body.append(h('tr', {}, h('td', { colspan: 7, class: 'muted', text: 'No executions yet.' })));
  }
  function renderEvents(ex) {
    const root = $('events');
    root.replaceChildren();
    const evs = ex ? (ex.events || []).slice().sort((a, b) => b.id - a.id) : [];
    for (const ev of evs.slice(0, 100)) {
      root.append(h('li', {}, h('span', { class: 't', text: clock(ev.at_ms) }), h('span', { class: 'k', text: ev.kind }), ev.reason,
        ev.actor && !['engine', 'coalmine'].includes(ev.actor) ? h('span', { class: 'muted', text: ' (' + who(ev.actor) + ')' }) : null));
    }
    if (!evs.length) root.append(h('li', { class: 'muted', text: 'No events yet.' }));
  }

  // ---------- charts ----------
  const palette = ['--series-0', '--series-1', '--series-2', '--series-3', '--series-4'];
  const colourOf = {};
  function colour(key) {
    if (!(key in colourOf)) colourOf[key] = palette[Object.keys(colourOf).length % palette.length];
    return getComputedStyle(document.documentElement).getPropertyValue(colourOf[key]).trim() || '#888';
  }
  function drawChart(svg, series, tEnd) {
    const W = svg.clientWidth || 400, H = svg.clientHeight || 180;
    const L = 36, R = 8, T = 8, B = 20;
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.replaceChildren();
    const tStart = tEnd - WINDOW_S * 1000;
    let max = 0;
    for (const sr of series) for (const [, v] of sr.points) max = Math.max(max, v);
    // a round step (1, 2 or 5 times a power of ten) giving at most 4 grid lines
    let step = 1;
    if (max > 4) {
      const p = Math.pow(10, Math.floor(Math.log10(max / 4)));
      step = [1, 2, 5, 10].map((m) => m * p).find((x) => x * 4 >= max);
    }
    const nice = step * 4;
    const x = (t) => L + (W - L - R) * (t - tStart) / (tEnd - tStart);
    const y = (v) => H - B - (H - T - B) * v / nice;
    for (let i = 0; i <= 4; i++) {
      const v = nice * i / 4;
      svg.append(s('line', { class: i ? 'grid-line' : 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.append(s('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end' }, v >= 10000 ? (v / 1000) + 'k' : v));
    }
    for (let m = 0; m <= WINDOW_S / 60; m++) {
      const t = tEnd - m * 60000;
      svg.append(s('text', { x: x(t), y: H - 5, 'text-anchor': m === 0 ? 'end' : 'middle' }, m === 0 ? 'now' : `-${m}m`));
    }
    // Rollbacks as red markers, so a drop is seen with its cause.
    for (const r of rollbackMarks) {
      if (r.at_ms < tStart || r.at_ms > tEnd) continue;
      const line = s('line', { class: 'rollback-mark', x1: x(r.at_ms), x2: x(r.at_ms), y1: T, y2: H - B });
      line.append(s('title', {}, `rollback of ${short(r.revision)}: ${r.reason}`));
      svg.append(line);
    }
    for (const sr of series) {
      const pts = sr.points.filter(([t]) => t >= tStart);
      if (!pts.length) continue;
      const d = pts.map(([t, v], i) => (i ? 'L' : 'M') + x(t).toFixed(1) + ' ' + y(v).toFixed(1)).join(' ');
      svg.append(s('path', { class: 'series', d, stroke: sr.colour, 'stroke-dasharray': sr.dash || '' }));
    }
    let legend = svg.nextElementSibling;
    if (!legend || !legend.classList.contains('legend')) {
      legend = h('div', { class: 'legend' });
      svg.after(legend);
    }
    legend.replaceChildren(...series.map((sr) => {
      const last = sr.points.length ? sr.points[sr.points.length - 1][1] : 0;
      const i = h('i');
      i.style.background = sr.colour;
      return h('span', {}, i, `${sr.label} `, h('b', { text: last }));
    }));
    if (!series.length) legend.append(h('span', { class: 'muted', text: 'no data yet' }));
  }
  function revLabel(rev, services) {
    return short(rev) + (services && services.length ? ' (' + services.join(', ') + ')' : '');
  }
  function renderCharts() {
    const tEnd = samples.length ? samples[samples.length - 1].t_ms : Date.now();
    const recent = samples.filter((x) => x.t_ms >= tEnd - WINDOW_S * 1000);
    const revs = {};
    for (const x of recent) for (const [rev, r] of Object.entries(x.revisions || {})) {
      revs[rev] = revs[rev] || new Set();
      for (const sv of r.services || []) revs[rev].add(sv);
    }
    const per = (field) => Object.keys(revs).map((rev) => ({
      label: revLabel(rev, [...revs[rev]]),
      colour: colour(rev),
      points: recent.map((x) => [x.t_ms, field(x.revisions[rev] || {})]),
    }));
    drawChart($('chart-processed'), per((r) => r.processed || 0), tEnd);
    drawChart($('chart-failed'), per((r) => (r.failed || 0) + (r.dead_lettered || 0)), tEnd);
    const q = (f) => recent.filter((x) => x.queue).map((x) => [x.t_ms, f(x.queue)]);
    drawChart($('chart-queue'), [
      { label: 'visible', colour: colour('q:visible'), points: q((d) => d.visible) },
      { label: 'in flight', colour: colour('q:inflight'), points: q((d) => d.in_flight) },
      { label: 'DLQ', colour: getComputedStyle(document.documentElement).getPropertyValue('--bad').trim(), points: q((d) => d.dlq_visible), dash: '4 3' },
    ], tEnd);
  }
  function addSample(x) {
    if (!x) return;
    if (samples.length && samples[samples.length - 1].t_ms >= x.t_ms) return;
    samples.push(x);
    const cut = x.t_ms - (WINDOW_S + 60) * 1000;
    while (samples.length && samples[0].t_ms < cut) samples.shift();
  }

  // ---------- logs ----------
  function openLog() {
    const ex = status && status.execution;
    const execId = selected || (ex && ex.id);
    const key = logTab + ':' + (logTab === 'build' ? execId : '');
    if (key === logKey) return;
    logKey = key;
    for (const b of document.querySelectorAll('.tabs button')) b.setAttribute('aria-selected', String(b.dataset.log === logTab));
    if (logAbort) logAbort.abort();
    logAbort = new AbortController();
    const pre = $('log');
    pre.textContent = '';
    let path;
    if (logTab === 'build') {
      if (!execId) { $('log-title').textContent = 'No execution yet.'; return; }
      $('log-title').textContent = `Build log of execution #${execId}`;
      path = `/executions/${execId}/build-log/stream?lines=500`;
    } else if (logTab.startsWith('task:')) {
      const task = logTab.slice(5);
      $('log-title').textContent = `Log of task ${task}`;
      path = `/tasks/${encodeURIComponent(task)}/logs/stream?lines=200`;
    } else {
      $('log-title').textContent = `Logs of the ${logTab} service's tasks`;
      path = `/services/${logTab}/logs/stream?lines=100`;
    }
    const signal = logAbort.signal;
    const follow = () => sse(path, (ev, data) => {
      if (ev === 'line') {
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(data + '\n');
        if (pre.textContent.length > 400000) pre.textContent = pre.textContent.slice(-300000);
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      } else if (ev === 'end') {
        pre.append(h('span', { class: 'muted', text: '— end of log —\n' }));
      }
    }, signal).catch((e) => {
      if (signal.aborted || e instanceof Unauthorized) return;
      if (!pre.textContent) pre.textContent = e.message;
      if (logTab !== 'build') setTimeout(() => { if (!signal.aborted) { logKey = ''; openLog(); } }, 3000);
    });
    follow();
  }

  // ---------- everything ----------
  async function refreshLists() {
    try {
      const [hist, rbs] = await Promise.all([api('GET', '/executions?limit=20'), api('GET', '/rollbacks')]);
      renderHistory(hist);
      renderRollbacks(rbs);
      rollbackMarks = rbs;
      renderCharts();
    } catch (e) {
      if (!(e instanceof Unauthorized)) banner('Cannot load the history: ' + e.message);
    }
  }
  function render(st) {
    if (!st || st.error) { banner(st ? st.error : 'no status'); return; }
    status = st;
    banner(st.queue_error ? 'Queue: ' + st.queue_error : '', 'info');
    $('app-name').textContent = st.app;
    document.title = 'coalmine · ' + st.app;
    $('primary-revision').textContent = short(st.primary_revision);
    const q = st.queue;
    $('queue-summary').textContent = q ? `queue ${q.visible} visible · ${q.in_flight} in flight · DLQ ${q.dlq_visible}` : '';
    const ex = st.execution;
    renderPipeline(ex);
    renderServices(st.services);
    renderVerdicts(ex);
    renderEvents(ex);
    const key = ex ? `${ex.id}:${ex.status}:${ex.stage}:${(ex.approvals || []).length}:${(ex.rollbacks || []).length}` : '';
    if (key !== lastExecKey) {
      lastExecKey = key;
      refreshLists();
      openLog();
    }
  }
  async function refreshStatus() {
    render(await api('GET', '/status'));
  }

  let liveAbort = null;
  async function live() {
    const el = $('live');
    for (;;) {
      liveAbort = new AbortController();
      try {
        await sse('/events/stream', (ev, data) => {
          if (ev !== 'snapshot') return;
          const snap = JSON.parse(data);
          el.className = 'live on';
          el.textContent = 'live';
          if (snap && snap.status) render(snap.status);
          if (snap && snap.sample) { addSample(snap.sample); renderCharts(); }
        }, liveAbort.signal);
      } catch (e) {
        if (e instanceof Unauthorized) return;
      }
      el.className = 'live off';
      el.textContent = 'reconnecting…';
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  async function start() {
    $('login').hidden = true;
    $('main').hidden = false;
    try {
      await refreshStatus();
      const ser = await api('GET', `/series?seconds=${WINDOW_S}`);
      for (const x of ser.samples) addSample(x);
      renderCharts();
    } catch (e) {
      if (e instanceof Unauthorized) return;
      banner('Cannot reach the API: ' + e.message);
    }
    live();
  }

  function wire() {
    $('actor').value = localStorage.getItem(ACTOR_KEY) || '';
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      token = $('login-token').value.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      $('login-token').value = '';
      start();
    });
    $('approve-btn').addEventListener('click', () => decide(true));
    $('reject-btn').addEventListener('click', () => decide(false));
    $('trigger-btn').addEventListener('click', async () => {
      try { await api('POST', '/trigger'); banner(''); } catch (e) { if (!(e instanceof Unauthorized)) banner(e.message); }
    });
    const dlg = $('rollback-dialog');
    $('rollback-open').addEventListener('click', () => dlg.showModal());
    $('rollback-cancel').addEventListener('click', () => dlg.close());
    $('rollback-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const actor = $('actor').value.trim() || 'dashboard';
      try {
        await api('POST', '/rollback', { actor, reason: $('rollback-reason').value });
        dlg.close();
        $('rollback-reason').value = '';
        await refreshStatus();
      } catch (e) {
        dlg.close();
        if (!(e instanceof Unauthorized)) banner('Rollback refused: ' + e.message);
      }
    });
    for (const b of document.querySelectorAll('.tabs button')) {
      b.addEventListener('click', () => { logTab = b.dataset.log; if (logTab === 'build') selected = selected || null; openLog(); });
    }
    window.addEventListener('resize', renderCharts);
    setInterval(() => { if (status) renderPipeline(status.execution); }, 1000);
  }

  document.addEventListener('DOMContentLoaded', () => {
    wire();
    if (!token) showLogin();
    else start();
  });
})();
