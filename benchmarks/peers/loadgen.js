// Load generator for servers speaking docs/protocol.md (find -> paired,
// message relay, partner_left), written for benchmarks/run.py.
//
//   node loadgen.js --url ws://127.0.0.1:PORT/ws --mode MODE [options]
//
// Modes:
//   rate   --pairs P --rate R [--duration D --warmup W --size S]
//          open loop: every connection sends R messages a second, the sends of all
//          connections spread evenly over each second by one scheduler; reports
//          delivered msg/s and delivery latency p50/p99/max (send to receipt).
//   relay  --pairs P --window K [--duration D --warmup W --size S]
//          closed loop: K messages in flight per connection, each answered on receipt.
//   churn  --clients C [--duration D --warmup W]
//          find -> paired -> one message -> find again, over and over: pairings/s.
//   idle   --clients N [--hold H]
//          N paired, silent connections held H seconds (prints READY on stderr
//          once all are paired, so the caller can read the server's memory).
//
// Common: --connect-concurrency N (200) handshakes at once; --sources K spreads the
// connections over K loopback source addresses (127.1.0.1, 127.1.0.2, ...) as K
// users' addresses would be (default 1: all from the default address).
// MEASURE-START and MEASURE-END are printed on stderr around the measured window
// (run.py reads the server's CPU time there); the result is one JSON line on stdout.
// The generator reports its own lateness (gen_lag_*: how late its sends and its
// event loop ran) so that a generator that is the bottleneck shows it.
'use strict';
const WebSocket = require('ws');

const argv = process.argv.slice(2);
const opts = {};
for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, '')] = argv[i + 1];
const num = (name, dflt) => (opts[name] === undefined ? dflt : Number(opts[name]));

const url = opts.url || 'ws://127.0.0.1:8080/ws';
const mode = opts.mode || 'rate';
const sources = num('sources', 1);
const now = () => performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function sourceAddress(i) {
  if (sources <= 1) return undefined;
  const k = (i % sources) + 1;
  return `127.${1 + (k >> 16)}.${(k >> 8) & 255}.${k & 255}`;
}

function connect(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, localAddress: sourceAddress(i) });
    ws.on('error', (e) => { if (ws.readyState !== WebSocket.OPEN) reject(e); });
    ws.once('open', () => resolve(ws));
  });
}

async function openAll(n) {
  const conns = [];
  let next = 0;
  let failed = 0;
  const errors = {};
  const worker = async () => {
    while (next < n) {
      const i = next++;
      try {
        conns.push(await connect(i));
      } catch (e) {
        failed++;
        const key = String(e.code || e.message).slice(0, 60);
        errors[key] = (errors[key] || 0) + 1;
      }
    }
  };
  const t0 = now();
  await Promise.all(Array.from({ length: Math.min(num('connect-concurrency', 200), n) }, worker));
  return { conns, failed, connectErrors: errors, openSeconds: (now() - t0) / 1000 };
}

// Send find on every connection; resolve with the number paired (or at the timeout).
function pairAll(conns, timeoutMs = 60000) {
  return new Promise((resolve) => {
    let paired = 0;
    const timer = setTimeout(() => resolve(paired), timeoutMs);
    for (const ws of conns) {
      ws.chatting = false;
      const onPaired = (data) => {
        const m = JSON.parse(data);
        if (m.type !== 'paired') return;
        ws.off('message', onPaired);
        ws.chatting = true;
        if (++paired === conns.length) { clearTimeout(timer); resolve(paired); }
      };
      ws.on('message', onPaired);
      ws.send('{"type":"find"}');
    }
  });
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return Number(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))].toFixed(3));
}

// Latencies in a growable typed array (hundreds of thousands of samples).
class Samples {
  constructor() { this.a = new Float64Array(1 << 16); this.n = 0; }
  add(v) {
    if (this.n === this.a.length) { const b = new Float64Array(this.a.length * 2); b.set(this.a); this.a = b; }
    this.a[this.n++] = v;
  }
  summary(prefix) {
    const s = this.a.subarray(0, this.n).sort();
    return {
      [`${prefix}p50_ms`]: percentile(s, 0.5),
      [`${prefix}p99_ms`]: percentile(s, 0.99),
      [`${prefix}max_ms`]: this.n ? Number(s[this.n - 1].toFixed(3)) : null,
    };
  }
}

// How late the generator's own event loop runs: a 10 ms timer's overshoot.
function loopLag() {
  const samples = new Samples();
  let last = now();
  const timer = setInterval(() => { const t = now(); samples.add(Math.max(0, t - last - 10)); last = t; }, 10);
  return { samples, stop: () => clearInterval(timer) };
}

function pad(text, size) { return text.length >= size ? text : text + 'x'.repeat(size - text.length); }

function watch(conns, counters) {
  for (const ws of conns) {
    ws.on('close', () => { if (!counters.closing) counters.dropped++; });
    ws.on('error', () => {});
  }
}

async function measured(warmupMs, durationMs, counters) {
  await sleep(warmupMs);
  counters.measuring = true;
  console.error('MEASURE-START');
  const t0 = now();
  await sleep(durationMs);
  counters.measuring = false;
  console.error('MEASURE-END');
  return (now() - t0) / 1000;
}

function finish(conns, counters) {
  counters.closing = true;
  for (const ws of conns) ws.terminate();
}

async function rate() {
  const pairs = num('pairs', 100), perSecond = num('rate', 1), size = num('size', 64);
  const open = await openAll(2 * pairs);
  const { conns } = open;
  const paired = await pairAll(conns);
  const counters = { measuring: false, closing: false, dropped: 0, errors: 0, delivered: 0, sent: 0 };
  const latency = new Samples(), sendLag = new Samples();
  watch(conns, counters);
  for (const ws of conns) {
    ws.on('message', (data) => {
      const m = JSON.parse(data);
      if (m.type === 'message') {
        if (counters.measuring) { counters.delivered++; latency.add(now() - parseFloat(m.text)); }
      } else if (m.type === 'error') counters.errors++;
    });
  }
  // One scheduler for all sends: send k (k = 0, 1, ...) is due at t0 + k / (n * R)
  // seconds, from connection k mod n, so each connection sends every 1/R s.
  const n = conns.length, interval = 1000 / (n * perSecond), t0 = now() + 20;
  let k = 0;
  const scheduler = setInterval(() => {
    const t = now();
    const due = Math.floor((t - t0) / interval);
    for (; k <= due; k++) {
      const ws = conns[k % n];
      if (ws.readyState !== WebSocket.OPEN) continue;
      const sentAt = now();
      if (counters.measuring) { counters.sent++; sendLag.add(sentAt - (t0 + k * interval)); }
      ws.send(`{"type":"message","text":"${pad(sentAt.toFixed(3) + ';', size)}"}`);
    }
  }, 1);
  const lag = loopLag();
  const elapsed = await measured(num('warmup', 3) * 1000, num('duration', 10) * 1000, counters);
  clearInterval(scheduler);
  lag.stop();
  await sleep(200); // let the last measured messages arrive (they are not counted)
  finish(conns, counters);
  return {
    mode, pairs, rate_per_conn: perSecond, offered_per_s: Math.round(n * perSecond),
    connected: n, failed: open.failed, connect_errors: open.connectErrors, open_s: Number(open.openSeconds.toFixed(2)),
    paired, dropped: counters.dropped, errors: counters.errors,
    msgs_per_s: Math.round(counters.delivered / elapsed), sent_per_s: Math.round(counters.sent / elapsed),
    ...latency.summary(''), ...sendLag.summary('gen_send_lag_'), ...lag.samples.summary('gen_loop_lag_'),
  };
}

async function relay() {
  const pairs = num('pairs', 100), window = num('window', 8), size = num('size', 64);
  const open = await openAll(2 * pairs);
  const { conns } = open;
  const paired = await pairAll(conns);
  const counters = { measuring: false, closing: false, dropped: 0, errors: 0, delivered: 0 };
  const latency = new Samples();
  watch(conns, counters);
  const message = () => `{"type":"message","text":"${pad(now().toFixed(3) + ';', size)}"}`;
  for (const ws of conns) {
    ws.on('message', (data) => {
      const m = JSON.parse(data);
      if (m.type === 'message') {
        if (counters.measuring) {
          counters.delivered++;
          if ((counters.delivered & 7) === 0) latency.add(now() - parseFloat(m.text));
        }
        if (ws.readyState === WebSocket.OPEN && !counters.closing) ws.send(message());
      } else if (m.type === 'error') counters.errors++;
    });
  }
  for (const ws of conns) for (let i = 0; i < window; i++) ws.send(message());
  const elapsed = await measured(num('warmup', 2) * 1000, num('duration', 6) * 1000, counters);
  finish(conns, counters);
  return {
    mode, pairs, window, connected: conns.length, failed: open.failed, paired,
    dropped: counters.dropped, errors: counters.errors,
    msgs_per_s: Math.round(counters.delivered / elapsed), ...latency.summary(''),
  };
}

async function churn() {
  const clients = num('clients', 400);
  const open = await openAll(clients);
  const { conns } = open;
  const counters = { measuring: false, closing: false, dropped: 0, errors: 0, pairings: 0 };
  const wait = new Samples();
  watch(conns, counters);
  const find = (ws) => { ws.chatting = false; ws.since = now(); ws.send('{"type":"find"}'); };
  for (const ws of conns) {
    ws.on('message', (data) => {
      const m = JSON.parse(data);
      if (m.type === 'paired') {
        if (counters.measuring) { counters.pairings++; wait.add(now() - ws.since); }
        ws.chatting = true;
        ws.send('{"type":"message","text":"hi"}');
      } else if (m.type === 'message' || m.type === 'partner_left') {
        if (ws.chatting && !counters.closing) find(ws);
      } else if (m.type === 'error') counters.errors++;
    });
    find(ws);
  }
  const elapsed = await measured(num('warmup', 2) * 1000, num('duration', 6) * 1000, counters);
  finish(conns, counters);
  return {
    mode, clients, connected: conns.length, failed: open.failed, dropped: counters.dropped,
    errors: counters.errors, pairings_per_s: Math.round(counters.pairings / 2 / elapsed),
    ...wait.summary('wait_'),
  };
}

async function idle() {
  const clients = num('clients', 1000);
  const open = await openAll(clients);
  const { conns } = open;
  const paired = await pairAll(conns);
  const counters = { closing: false, dropped: 0 };
  watch(conns, counters);
  console.error('READY');
  await sleep(num('hold', 4) * 1000);
  const alive = conns.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  finish(conns, counters);
  return {
    mode, clients, connected: conns.length, failed: open.failed, paired, alive_after_hold: alive,
    handshakes_per_s: Math.round(conns.length / open.openSeconds),
  };
}

const modes = { rate, relay, churn, idle };
if (!modes[mode]) {
  console.error(`unknown --mode ${mode}: one of ${Object.keys(modes).join(', ')}`);
  process.exit(2);
}
modes[mode]().then(
  (result) => { console.log(JSON.stringify(result)); process.exit(0); },
  (e) => { console.log(JSON.stringify({ mode, error: String(e && e.stack || e) })); process.exit(1); },
);
