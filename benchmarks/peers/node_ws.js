// Reference peer: a chat roulette server on Node's `ws` (with its native
// bufferutil / utf-8-validate helpers) speaking the subset of docs/protocol.md
// that the load generator uses: welcome, find -> waiting / paired, message and
// typing relay, leave, partner_left, error (not_chatting, bad_request).
// Random pairing from an O(1) waiting pool; no interests, cooldowns or limits.
// Like chatroulette, it pings every client every --ping-interval seconds
// (default 25, one timer per connection) and drops those that do not answer
// within --ping-timeout (10).
//
// usage: node node_ws.js PORT [--ping-interval S] [--ping-timeout S]
'use strict';
const { WebSocketServer } = require('ws');

const argv = process.argv.slice(2);
const port = Number(argv[0]);
const option = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
};
const pingInterval = option('ping-interval', 25) * 1000;
const pingTimeout = option('ping-timeout', 10) * 1000;

const waiting = []; // connections waiting for a partner; each knows its index
let chats = 0;
const send = (ws, event) => ws.send(JSON.stringify(event));

function stopWaiting(ws) {
  const i = ws.slot;
  if (i < 0) return;
  const last = waiting.pop();
  if (last !== ws) { waiting[i] = last; last.slot = i; }
  ws.slot = -1;
}

function endChat(ws) {
  const partner = ws.partner;
  if (!partner) return;
  ws.partner = null;
  partner.partner = null;
  send(partner, { type: 'partner_left', chat: ws.chat });
}

function find(ws) {
  endChat(ws);
  if (ws.slot >= 0) return;
  if (waiting.length === 0) {
    ws.slot = waiting.length;
    waiting.push(ws);
    send(ws, { type: 'waiting' });
    return;
  }
  const other = waiting[Math.floor(Math.random() * waiting.length)];
  stopWaiting(other);
  const chat = (++chats).toString(16);
  ws.partner = other; other.partner = ws;
  ws.chat = other.chat = chat;
  const paired = { type: 'paired', chat, interests: [], mode: 'text' };
  send(other, paired);
  send(ws, paired);
}

function refuse(ws, code, message) {
  send(ws, { type: 'error', code, message });
}

function keepAlive(ws) {
  let answered = true;
  ws.on('pong', () => { answered = true; });
  const ping = () => {
    answered = false;
    ws.ping();
    ws.deadline = setTimeout(() => { if (!answered) ws.terminate(); }, pingTimeout);
    ws.pinger = setTimeout(ping, pingInterval);
  };
  if (pingInterval > 0) ws.pinger = setTimeout(ping, pingInterval);
}

const wss = new WebSocketServer({
  host: '127.0.0.1', port, path: '/ws', perMessageDeflate: false, maxPayload: 65536, backlog: 4096,
});
wss.on('connection', (ws) => {
  ws.partner = null;
  ws.slot = -1;
  ws.chat = '';
  keepAlive(ws);
  send(ws, { type: 'welcome', online: wss.clients.size });
  ws.on('message', (data, isBinary) => {
    let m;
    try { m = JSON.parse(data); } catch (e) { return refuse(ws, 'bad_request', 'not JSON'); }
    if (isBinary || m === null || typeof m !== 'object') return refuse(ws, 'bad_request', 'not an object');
    switch (m.type) {
      case 'find': return find(ws);
      case 'message':
        if (typeof m.text !== 'string' || !m.text.trim()) return refuse(ws, 'bad_request', 'bad text');
        if (!ws.partner) return refuse(ws, 'not_chatting', 'no partner');
        return send(ws.partner, { type: 'message', text: m.text });
      case 'typing':
        if (ws.partner) send(ws.partner, { type: 'typing', active: !!m.active });
        return undefined;
      case 'leave': endChat(ws); return stopWaiting(ws);
      default: return refuse(ws, 'bad_request', 'unknown type');
    }
  });
  ws.on('close', () => {
    clearTimeout(ws.pinger);
    clearTimeout(ws.deadline);
    stopWaiting(ws);
    endChat(ws);
  });
  ws.on('error', () => {});
});
wss.on('listening', () => console.error(`node-ws peer listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
