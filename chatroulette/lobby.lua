-- The shared lobby's every state change, one atomic call each (see
-- chatroulette/redislobby.py and docs/design.md, "The shared lobby").
--
-- KEYS[1]: the key prefix, a hash tag such as "{chatroulette}": every key
-- below starts with it, so all of them live in one Redis Cluster slot.
-- ARGV: command, calling node, now (the node's clock), random seed
-- (1 .. 2^31 - 2), repeat cooldown (seconds), then the command's own.
--
-- Keys (P = KEYS[1]):
--   P:c:<id>         hash: one client (node, name, addr, state, mode,
--                    interests, open, partner, chat, last, reported,
--                    invite, epoch)
--   P:n:<node>       set: the node's clients
--   P:nodes          sorted set: node -> last heartbeat (node's clock)
--   P:q:<mode>:o     sorted set: the pool of waiters open to anyone in <mode>
--   P:q:<mode>:i:<interest>   sorted set: the pool of waiters with <interest>
--                    (every score 0: one command adds or removes a waiter,
--                    and a waiter is reached by its rank in O(log n))
--   P:a:<id>         sorted set: clients kept apart from <id>, scored by
--                    until when (inf: never again)
--   P:i:<code>       string: the inviting client's id
--   P:counts         hash: online, waiting, chatting (the whole service)
-- Channel P:ch:<node>: events for the clients of <node>, as JSON.
--
-- The result is JSON: {e = the caller's epoch, ev = events for the calling
-- node's clients, pairs = chats started, counts = {online, waiting,
-- chatting}, err = an error code, retry = when to match again}.

local P = KEYS[1]
local cmd = ARGV[1]
local node = ARGV[2]
local now = tonumber(ARGV[3])
local seed = tonumber(ARGV[4])
local cooldown = tonumber(ARGV[5])

local FOREVER = 1e300
local PROBES = 8
local SCAN_LIMIT = 1024

local out = {}
local pairs_ = {}
local result = {}

local function rnd()
  -- Park-Miller: exact in Lua's doubles, seeded by the node.
  seed = (seed * 16807) % 2147483647
  return seed / 2147483647
end

local function ck(id) return P .. ':c:' .. id end

local FIELDS = {'node', 'name', 'addr', 'state', 'mode', 'interests', 'open',
                'partner', 'chat', 'last', 'reported', 'invite', 'epoch'}

local function load(id)
  local v = redis.call('HMGET', ck(id), unpack(FIELDS))
  if not v[1] then return nil end
  local c = {id = id}
  for i, f in ipairs(FIELDS) do c[f] = v[i] or '' end
  c.epoch = tonumber(c.epoch) or 0
  return c
end

local function emit(c, ev)
  ev.id = c.id
  if c.node == node then
    table.insert(out, ev)
  else
    redis.call('PUBLISH', P .. ':ch:' .. c.node, cjson.encode(ev))
  end
end

-- Changes to the service-wide counts, written once at the end of the call.
local delta = {online = 0, waiting = 0, chatting = 0}

local function count(state, d)
  if state == 'chatting' then
    delta.chatting = delta.chatting + d
  elseif state ~= 'idle' then
    delta.waiting = delta.waiting + d
  end
end

-- Move c to state (and set other fields at the same time): one write,
-- which also saves whether c is in the open pool.
local function set_state(c, state, ...)
  count(c.state, -1)
  count(state, 1)
  c.state = state
  c.epoch = c.epoch + 1
  redis.call('HSET', ck(c.id), 'state', state, 'epoch', c.epoch, 'open', c.open, ...)
end

-- Pools ----------------------------------------------------------------------

local function open_pool(mode) return P .. ':q:' .. mode .. ':o' end
local function interest_pool(mode, interest) return P .. ':q:' .. mode .. ':i:' .. interest end

local function pool_add(pk, id) redis.call('ZADD', pk, 0, id) end
local function pool_del(pk, id) redis.call('ZREM', pk, id) end

-- Keeping apart -----------------------------------------------------------------

local function keep_apart(a, b, untill)
  for _, pair in ipairs({{a, b}, {b, a}}) do
    local ak = P .. ':a:' .. pair[1]
    -- GT: a longer keeping apart (never again) is never shortened.
    redis.call('ZADD', ak, 'GT', untill, pair[2])
    -- Ended cooldowns go (exactly: '..' would round now to 14 digits).
    redis.call('ZREMRANGEBYSCORE', ak, '-inf', string.format('(%.17g', now))
  end
end

-- Leaving what one does ------------------------------------------------------------

-- Out of the pools; the caller's set_state saves it.
local function unqueue(c)
  if c.open == '1' then
    pool_del(open_pool(c.mode), c.id)
    c.open = '0'
  end
  for _, interest in ipairs(cjson.decode(c.interests)) do
    pool_del(interest_pool(c.mode, interest), c.id)
  end
end

local function end_chat(c)
  local p = load(c.partner)
  local chat = c.chat
  redis.call('HSET', ck(c.id), 'partner', '', 'chat', '', 'last', p.id)
  c.partner, c.chat, c.last = '', '', p.id
  set_state(p, 'idle', 'partner', '', 'chat', '', 'last', c.id)
  if cooldown > 0 then keep_apart(c.id, p.id, now + cooldown) end
  emit(p, {t = 'left', chat = chat, e = p.epoch})
end

-- Leave the queue, the invite or the chat (telling the partner); the
-- caller sets the new state.
local function leave_current(c)
  if c.state == 'waiting' then
    unqueue(c)
  elseif c.state == 'inviting' then
    if c.invite ~= '' then
      if redis.call('GET', P .. ':i:' .. c.invite) == c.id then
        redis.call('DEL', P .. ':i:' .. c.invite)
      end
      redis.call('HSET', ck(c.id), 'invite', '')
      c.invite = ''
    end
  elseif c.state == 'chatting' then
    end_chat(c)
  end
end

local function become_idle(c)
  leave_current(c)
  if c.state ~= 'idle' then set_state(c, 'idle') end
end

-- Pairing ----------------------------------------------------------------------

local function pair(one, other, shared, mode, initiator)
  local chat = string.format('%08x%08x', math.floor(rnd() * 4294967296), math.floor(rnd() * 4294967296))
  for _, ab in ipairs({{one, other}, {other, one}}) do
    local a, b = ab[1], ab[2]
    a.partner, a.chat, a.mode = b.id, chat, mode
    set_state(a, 'chatting', 'partner', b.id, 'chat', chat, 'mode', mode)
  end
  table.insert(pairs_, {chat = chat, one = one.name, other = other.name, shared = shared, mode = mode})
  for _, ab in ipairs({{one, other}, {other, one}}) do
    local a, b = ab[1], ab[2]
    emit(a, {t = 'paired', e = a.epoch, chat = chat, shared = shared, mode = mode,
             init = (a.id == initiator.id), pid = b.id, pnode = b.node, pname = b.name, paddr = b.addr})
  end
end

-- The members id may meet (in their order), and the earliest time one of
-- the others may be met (FOREVER if none): one command for any number.
local function free_of(id, members)
  if #members == 0 then return {}, FOREVER end
  local untils = redis.call('ZMSCORE', P .. ':a:' .. id, unpack(members))
  local free, earliest = {}, FOREVER
  for i, m in ipairs(members) do
    local u = tonumber(untils[i])
    if not u or u <= now then
      table.insert(free, m)
    elseif u < earliest then
      earliest = u
    end
  end
  return free, earliest
end

-- A random waiter from the pools pks whom id may meet, and the earliest
-- time one it may not meet yet may be met.  Small pools (the usual case)
-- are read whole, one command each, and a waiter is chosen uniformly among
-- those id may meet; bigger ones are sampled: PROBES uniform draws, the
-- first that id may meet wins (uniform too), then a full scan up to
-- SCAN_LIMIT waiters (beyond it, a miss waits for the next arrival).
local function pick(id, pks)
  local everyone, small = {}, true
  for _, pk in ipairs(pks) do
    local got = redis.call('ZRANGE', pk, 0, PROBES)
    if #got > PROBES then
      small = false
      break
    end
    for _, m in ipairs(got) do
      if m ~= id then table.insert(everyone, m) end
    end
  end
  if not small then
    local sizes, total = {}, 0
    for i, pk in ipairs(pks) do
      sizes[i] = redis.call('ZCARD', pk)
      total = total + sizes[i]
    end
    local probes = {}
    for _ = 1, PROBES do
      local n = math.floor(rnd() * total)
      for i, pk in ipairs(pks) do
        if n < sizes[i] then
          local m = redis.call('ZRANGE', pk, n, n)[1]
          if m and m ~= id then table.insert(probes, m) end
          break
        end
        n = n - sizes[i]
      end
    end
    local free, blocked = free_of(id, probes)
    if free[1] or total > SCAN_LIMIT then return free[1], blocked end
    everyone = {}
    for _, pk in ipairs(pks) do
      for _, m in ipairs(redis.call('ZRANGE', pk, 0, -1)) do
        if m ~= id then table.insert(everyone, m) end
      end
    end
  end
  local free, earliest = free_of(id, everyone)
  if #free == 0 then return nil, earliest end
  return free[math.floor(rnd() * #free) + 1], FOREVER
end

-- Pair waiting c with a random compatible waiter, if any.  c is in the
-- pools already (queued), or not yet (a find tries before queueing).
local function match(c, queued)
  local found, blocked = nil, FOREVER
  local interests = cjson.decode(c.interests)
  if #interests > 0 then
    local pks = {}
    for _, interest in ipairs(interests) do table.insert(pks, interest_pool(c.mode, interest)) end
    found, blocked = pick(c.id, pks)
  end
  if not found and c.open == '1' then
    local b
    found, b = pick(c.id, {open_pool(c.mode)})
    blocked = math.min(blocked, b)
  end
  if not found then
    if blocked < FOREVER then result.retry = blocked end
    return false
  end
  local p = load(found)
  local shared = {}
  if #interests > 0 then
    local theirs = {}
    for _, interest in ipairs(cjson.decode(p.interests)) do theirs[interest] = true end
    for _, interest in ipairs(interests) do
      if theirs[interest] then table.insert(shared, interest) end
    end
    table.sort(shared)
  end
  -- Both are waiting: out of the pools, and straight to chatting.
  if queued then unqueue(c) end
  unqueue(p)
  pair(c, p, shared, c.mode, p)
  return true
end

-- Nodes --------------------------------------------------------------------------

local function disconnect(c)
  become_idle(c)
  -- Who c was kept apart from goes with it; entries about c elsewhere end
  -- with their cooldowns (ids are never reused).
  redis.call('DEL', P .. ':a:' .. c.id)
  redis.call('SREM', P .. ':n:' .. c.node, c.id)
  redis.call('DEL', ck(c.id))
  delta.online = delta.online - 1
end

local function gone(n)
  -- Every client of node n leaves, telling partners on other nodes.
  local members = redis.call('SMEMBERS', P .. ':n:' .. n)
  for _, id in ipairs(members) do
    local c = load(id)
    if c then disconnect(c) end
  end
  redis.call('DEL', P .. ':n:' .. n)
  redis.call('ZREM', P .. ':nodes', n)
  return #members
end

local function counts()
  for _, field in ipairs({'online', 'waiting', 'chatting'}) do
    if delta[field] ~= 0 then
      redis.call('HINCRBY', P .. ':counts', field, delta[field])
      delta[field] = 0
    end
  end
  local v = redis.call('HMGET', P .. ':counts', 'online', 'waiting', 'chatting')
  return {tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')}
end

-- Commands -----------------------------------------------------------------------

local function with_client(id, f)
  local c = load(id)
  if not c then
    result.err = 'unknown'
    return
  end
  f(c)
  result.e = c.epoch
  result.s = c.state
end

if cmd == 'connect' then
  -- ARGV[6..8]: id, name, address key
  local id = ARGV[6]
  if redis.call('EXISTS', ck(id)) == 0 then
    redis.call('HSET', ck(id), 'node', node, 'name', ARGV[7], 'addr', ARGV[8], 'state', 'idle',
               'mode', 'text', 'interests', '[]', 'open', '0', 'epoch', 0)
    redis.call('SADD', P .. ':n:' .. node, id)
    delta.online = delta.online + 1
  end
  result.e = 0
elseif cmd == 'disconnect' then
  local c = load(ARGV[6])
  if c then disconnect(c) end
elseif cmd == 'find' then
  -- ARGV[6..8]: id, mode, interests (JSON list)
  with_client(ARGV[6], function(c)
    leave_current(c)
    c.mode, c.interests = ARGV[7], ARGV[8]
    local interests = cjson.decode(c.interests)
    c.open = #interests > 0 and '0' or '1'
    set_state(c, 'waiting', 'mode', c.mode, 'interests', c.interests)
    if not match(c, false) then
      if #interests > 0 then
        for _, interest in ipairs(interests) do pool_add(interest_pool(c.mode, interest), c.id) end
      else
        pool_add(open_pool(c.mode), c.id)
      end
      emit(c, {t = 'waiting', e = c.epoch})
    end
  end)
elseif cmd == 'join' then
  -- ARGV[6..7]: id, invite code
  with_client(ARGV[6], function(c)
    local inviter_id = redis.call('GET', P .. ':i:' .. ARGV[7])
    local inviter = inviter_id and load(inviter_id)
    if not inviter or inviter.id == c.id or inviter.state ~= 'inviting' then
      result.err = 'invite_invalid'
      return
    end
    become_idle(c)
    become_idle(inviter)
    pair(inviter, c, {}, inviter.mode, inviter)
  end)
elseif cmd == 'leave' then
  with_client(ARGV[6], become_idle)
elseif cmd == 'open_up' then
  with_client(ARGV[6], function(c)
    if c.state == 'waiting' and c.open ~= '1' then
      pool_add(open_pool(c.mode), c.id)
      c.open = '1'
      if not match(c, true) then redis.call('HSET', ck(c.id), 'open', '1') end
    end
  end)
elseif cmd == 'retry' then
  with_client(ARGV[6], function(c)
    if c.state == 'waiting' then match(c, true) end
  end)
elseif cmd == 'invite' then
  -- ARGV[6..9]: id, mode, code, lifetime (seconds; the key outlives it a
  -- little: expiry is the node's timer, the TTL only collects garbage)
  with_client(ARGV[6], function(c)
    become_idle(c)
    c.mode, c.invite = ARGV[7], ARGV[8]
    redis.call('SET', P .. ':i:' .. c.invite, c.id, 'EX', math.floor(tonumber(ARGV[9])) + 60)
    redis.call('HSET', ck(c.id), 'mode', c.mode, 'invite', c.invite)
    set_state(c, 'inviting')
  end)
elseif cmd == 'expire' then
  -- ARGV[6..7]: id, code
  with_client(ARGV[6], function(c)
    if c.state == 'inviting' and c.invite == ARGV[7] then
      redis.call('DEL', P .. ':i:' .. c.invite)
      redis.call('HSET', ck(c.id), 'invite', '')
      c.invite = ''
      set_state(c, 'idle')
      emit(c, {t = 'expired', e = c.epoch, code = ARGV[7]})
    end
  end)
elseif cmd == 'report' then
  -- ARGV[6..7]: id, the reported client's id
  with_client(ARGV[6], function(c)
    local reported = ARGV[7]
    if c.state == 'chatting' and c.partner == reported then become_idle(c) end
    redis.call('HSET', ck(c.id), 'reported', reported)
    if redis.call('EXISTS', ck(reported)) == 1 then keep_apart(c.id, reported, FOREVER) end
  end)
elseif cmd == 'heartbeat' then
  -- ARGV[6]: declare nodes silent for this many seconds dead, and sweep them
  local known = redis.call('ZSCORE', P .. ':nodes', node)
  result.known = known and true or false
  if known then redis.call('ZADD', P .. ':nodes', now, node) end
  local swept = 0
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now - tonumber(ARGV[6]))) do
    if n ~= node then
      gone(n)
      swept = swept + 1
    end
  end
  result.swept = swept
elseif cmd == 'report_addr' then
  -- ARGV[6..10]: reporter's address key, reported address key, threshold,
  -- window and ban (seconds).  A ban goes to every node's channel.
  local rk = P .. ':r:' .. ARGV[7]
  redis.call('ZADD', rk, now, ARGV[6])
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - tonumber(ARGV[9]))
  redis.call('EXPIRE', rk, math.ceil(tonumber(ARGV[9])) + 60)
  if redis.call('ZCARD', rk) >= tonumber(ARGV[8]) then
    redis.call('DEL', rk)
    local untill = now + tonumber(ARGV[10])
    redis.call('HSET', P .. ':bans', ARGV[7], untill)
    result.ban = untill
    local ev = cjson.encode({t = 'ban', addr = ARGV[7], ['until'] = untill})
    for _, n in ipairs(redis.call('ZRANGE', P .. ':nodes', 0, -1)) do
      redis.call('PUBLISH', P .. ':ch:' .. n, ev)
    end
  end
elseif cmd == 'counts' then
  -- nothing to change: the counts come with every answer
elseif cmd == 'gone' then
  gone(node)
elseif cmd == 'assert' then
  -- ARGV[6]: the node's own view, JSON: [client, ...]; ARGV[7]: the bans it
  -- knows, JSON: {address key: until}.  Whatever Redis held for this node
  -- goes first (partners elsewhere are told), then the node's clients are
  -- written back as the node knows them.
  local view = cjson.decode(ARGV[6])
  -- Epochs only grow: an event about a client published before this call
  -- (and delivered after it) must be recognised as stale.
  local epochs = {}
  for _, v in ipairs(view) do
    local old = tonumber(redis.call('HGET', ck(v.id), 'epoch') or '0') or 0
    v.epoch = math.max(old, tonumber(v.epoch)) + 1
    epochs[v.id] = v.epoch
  end
  gone(node)
  out = {}  -- what gone() said to this node's clients: the node's view replaces it
  result.epochs = epochs
  for _, v in ipairs(view) do
    local id = v.id
    redis.call('HSET', ck(id), 'node', node, 'name', v.name, 'addr', v.addr, 'state', v.state,
               'mode', v.mode, 'interests', v.interests, 'open', v.open and '1' or '0',
               'partner', v.partner, 'chat', v.chat, 'last', '', 'reported', '',
               'invite', v.invite, 'epoch', v.epoch)
    redis.call('SADD', P .. ':n:' .. node, id)
    delta.online = delta.online + 1
    count(v.state, 1)
    if v.state == 'waiting' then
      if v.open then pool_add(open_pool(v.mode), id) end
      for _, interest in ipairs(cjson.decode(v.interests)) do pool_add(interest_pool(v.mode, interest), id) end
    elseif v.state == 'inviting' then
      redis.call('SET', P .. ':i:' .. v.invite, id, 'EX', 660)
    end
  end
  redis.call('ZADD', P .. ':nodes', now, node)
  -- Waiters written back may meet each other, or waiters other nodes wrote
  -- back before: match them now, as their finds would have.
  for _, v in ipairs(view) do
    local c = load(v.id)
    if c and c.state == 'waiting' then match(c, true) end
  end
  -- The bans this node knows (ARGV[7], JSON: address key -> until) are the
  -- service's too: a Redis that restarted empty gets them back.
  for addr, untill in pairs(cjson.decode(ARGV[7] or '{}')) do
    local old = tonumber(redis.call('HGET', P .. ':bans', addr) or '0')
    if untill > now and untill > old then redis.call('HSET', P .. ':bans', addr, untill) end
  end
  -- The bans in force, for the node's own copy.
  local bans = {}
  local entries = redis.call('HGETALL', P .. ':bans')
  for i = 1, #entries, 2 do
    if tonumber(entries[i + 1]) <= now then
      redis.call('HDEL', P .. ':bans', entries[i])
    else
      bans[entries[i]] = tonumber(entries[i + 1])
    end
  end
  result.bans = bans
else
  return redis.error_reply('unknown command ' .. cmd)
end

result.ev = out
result.pairs = pairs_
result.counts = counts()
return cjson.encode(result)
