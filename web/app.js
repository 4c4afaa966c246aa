// The contributor page: checks WebGPU, starts the client in a dedicated Web Worker, shows what
// it reports (adapter, lease, download, work done) and the run's loss from /api/status.
'use strict';
const $ = (id) => document.getElementById(id);
const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
document.querySelectorAll('.ws-url').forEach((e) => { e.textContent = wsUrl; });

const state = { worker: null, running: false, key: null, losses: [] };
// For tests and the curious: the reports so far, and a way to check recovery from a lost GPU.
window.tessera = {
  state,
  reports: [],
  loseDevice: () => state.worker && state.worker.postMessage({ cmd: 'lose-device' }),
};

function log(text) {
  const li = document.createElement('li');
  li.textContent = new Date().toLocaleTimeString() + '  ' + text;
  $('log').prepend(li);
  while ($('log').children.length > 50) $('log').lastChild.remove();
}

function fmtBytes(b) {
  if (!b) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + ' ' + u[i];
}

function noWebGpu(why) {
  $('webgpu').textContent = 'not available';
  $('no-webgpu').hidden = false;
  if (why) $('no-webgpu-why').textContent = why;
  $('start').disabled = true;
  window.tessera.noWebGpu = true;
}

async function checkWebGpu() {
  if (!window.isSecureContext) {
    return noWebGpu('This page is not a secure context (open it over https:// or on localhost), so the browser hides WebGPU.');
  }
  if (!navigator.gpu) return noWebGpu();
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return noWebGpu('The browser offers WebGPU but found no usable GPU adapter (it may be blocked, or hardware acceleration is off).');
    $('webgpu').textContent = 'available';
    $('binding').textContent = fmtBytes(adapter.limits.maxStorageBufferBindingSize);
    $('buffer').textContent = fmtBytes(adapter.limits.maxBufferSize);
    $('start').disabled = false;
    window.tessera.webGpu = true;
  } catch (err) {
    noWebGpu('Asking for a GPU adapter failed: ' + err);
  }
}

// The kernel tuning a visit measured, kept for the next ones (per origin).
function keptTuning() {
  try {
    return localStorage.getItem('tessera-tuning');
  } catch (e) {
    return null;
  }
}

function keepTuning(value) {
  try {
    localStorage.setItem('tessera-tuning', value);
  } catch (e) {
    log('could not keep the kernel tuning: ' + e.message);
  }
}

function onReport(r) {
  window.tessera.reports.push(r);
  switch (r.type) {
    case 'adapter':
      $('adapter').textContent = (r.name || '(name hidden by the browser)') + ' · ' + r.backend;
      $('binding').textContent = fmtBytes(r.max_binding_bytes);
      $('buffer').textContent = fmtBytes(r.max_buffer_bytes);
      break;
    case 'no_gpu':
      noWebGpu(r.message);
      break;
    case 'identity':
      state.key = r.key;
      $('key').textContent = r.key;
      break;
    case 'connection':
      $('connection').textContent = r.state;
      $('connection').className = 'pill ' + r.state;
      log(r.state + ': ' + r.detail);
      break;
    case 'admission':
      window.tessera.admission = r;
      log('admission: solved the coordinator\'s ' + r.bits + '-bit puzzle (' + r.hashes + ' hashes) in ' + (r.ms / 1000).toFixed(2) + ' s');
      break;
    case 'lease':
      $('run').textContent = r.run;
      $('shards').textContent = r.shards.join(', ');
      log('lease: ' + r.shards.join(', '));
      break;
    case 'stats':
      $('download').max = Math.max(1, r.frames_total);
      $('download').value = r.frames_received;
      $('units').textContent = r.units;
      $('tokens').textContent = r.tokens;
      $('accepted').textContent = r.accepted;
      $('gflops').textContent = r.gflops ? r.gflops.toFixed(2) : '–';
      $('busy').textContent = Math.round(100 * r.busy) + '%';
      $('submit').textContent = r.longest_submit_ms.toFixed(1) + ' ms (' + r.dispatches_per_submit + ' dispatches per submission)';
      break;
    case 'tuning':
      if (r.candidate === 1) log('tuning the GPU\'s matmul kernels (once in this browser): ' + r.of + ' candidates');
      $('connection').textContent = 'tuning ' + r.candidate + '/' + r.of;
      break;
    case 'tuned':
      keepTuning(r.keep);
      log('kernels tuned: ' + r.tiles + ', ' + r.gflops.toFixed(2) + ' GFLOP/s');
      break;
    case 'note':
      log(r.text);
      break;
    case 'fatal':
      log('stopped: ' + r.text);
      $('connection').textContent = 'stopped';
      break;
  }
}

function start() {
  if (!state.worker) {
    state.worker = new Worker('worker.js');
    state.worker.onmessage = (e) => onReport(JSON.parse(e.data));
    state.worker.onerror = (e) => log('worker error: ' + e.message);
  }
  state.worker.postMessage({
    cmd: 'start',
    url: wsUrl,
    budget: Number($('budget').value) * 1024 * 1024,
    share: Number($('share').value) / 100,
    tuned: keptTuning(),
  });
  state.running = true;
  $('start').disabled = true;
  $('pause').disabled = false;
  $('budget').disabled = true;
}

function pause() {
  if (state.worker) state.worker.postMessage({ cmd: 'pause' });
  state.running = false;
  $('start').disabled = false;
  $('pause').disabled = true;
}

function drawLoss(losses) {
  const c = $('loss');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  if (losses.length < 1) return;
  const lo = Math.min(...losses), hi = Math.max(...losses);
  const pad = 24, w = c.width - 2 * pad, h = c.height - 2 * pad;
  g.strokeStyle = '#d9dee7';
  g.strokeRect(pad, pad, w, h);
  g.fillStyle = '#5b6473';
  g.font = '12px system-ui';
  g.fillText(hi.toFixed(2), 2, pad + 4);
  g.fillText(lo.toFixed(2), 2, pad + h);
  g.strokeStyle = '#2f6fed';
  g.lineWidth = 2;
  g.beginPath();
  losses.forEach((l, i) => {
    const x = pad + (losses.length === 1 ? 0 : (i / (losses.length - 1)) * w);
    const y = pad + (hi === lo ? h / 2 : ((hi - l) / (hi - lo)) * h);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

async function poll() {
  try {
    const s = await (await fetch('/api/status')).json();
    $('run').textContent = s.run;
    $('round').textContent = 'step ' + s.round + ' of ' + s.rounds + (s.phase === 'finished' ? ' (finished)' : '');
    state.losses = s.loss_history;
    drawLoss(s.loss_history);
    const me = state.key && s.contributors.find((c) => c.key === state.key);
    if (me && me.credits !== undefined) {
      $('credits').textContent = me.credits.toFixed(2);
    }
  } catch (err) {
    // The coordinator may be restarting; the worker reconnects on its own.
  }
}

document.addEventListener('visibilitychange', () => {
  $('visibility').hidden = !document.hidden && !state.running;
  $('visibility').textContent = document.hidden
    ? 'This tab is hidden: the GPU keeps working in the background worker.'
    : '';
});
$('start').onclick = start;
$('pause').onclick = pause;
$('share').oninput = () => {
  $('share-out').textContent = $('share').value;
  if (state.worker) state.worker.postMessage({ cmd: 'share', value: Number($('share').value) / 100 });
};
checkWebGpu();
poll();
setInterval(poll, 2000);
