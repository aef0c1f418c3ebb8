#!lua name=flashcart
-- flashcart's Redis function library. Every function touches ONE partition (one hash tag),
-- so it runs unchanged on a Redis Cluster. Every decision that changes state appends its
-- event to the partition's stream in the same atomic call (the outbox).
--
-- Replies are flat arrays (Spin's redis `execute` flattens nested replies):
--   { code, replayed (0|1), fields... }
-- Codes that reject bad input change nothing.
--
-- Placeholders filled in by flashcart_core::library::source():
--   VERSION     the library version hosts compare before calling
--   TRANSITIONS the order state machine, rendered from the Rust core

local VERSION = '__VERSION__'
local TRANSITIONS = __TRANSITIONS__

local function now_ms(arg)
  local n = tonumber(arg)
  if n and n > 0 then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(v)
  return tonumber(v) or 0
end

-- The SKU's terms and this partition's segments, from the SKU hash of this partition.
local function sku_terms(key)
  local v = redis.call('HMGET', key, 'stock', 'segs', 'price', 'cur', 'start', 'end',
    'limit', 'ttl', 'paywin', 'here', 'parts')
  if not v[1] then return nil end
  local here = {}
  for s in string.gmatch(v[10] or '', '[^,]+') do here[#here + 1] = s end
  return {
    stock = tonumber(v[1]), segs = tonumber(v[2]), price = tonumber(v[3]), cur = v[4],
    start = tonumber(v[5]), finish = tonumber(v[6]), limit = tonumber(v[7]),
    ttl = tonumber(v[8]), paywin = tonumber(v[9]), here = here, parts = tonumber(v[11]),
  }
end

-- Takes qty units from the first local segment that has them, starting at the buyer's
-- affinity so retries land in the same place. Returns the segment, or nil and why not.
local function take(key, terms, qty, affinity)
  local n = #terms.here
  local best = 0
  for k = 0, n - 1 do
    local seg = terms.here[((affinity + k) % n) + 1]
    local avail = num(redis.call('HGET', key, 'a' .. seg))
    if avail >= qty then
      redis.call('HINCRBY', key, 'a' .. seg, -qty)
      redis.call('HINCRBY', key, 'r' .. seg, qty)
      return seg, nil
    end
    if avail > best then best = avail end
  end
  if best > 0 then return nil, 'insufficient' end
  return nil, 'sold_out'
end

local function write_reservation(rsv_key, events_key, expiries_key, rid, sku, seg, qty, buyer,
                                 now, ttl)
  local expires = now + ttl
  redis.call('HSET', rsv_key, 'id', rid, 'sku', sku, 'seg', seg, 'qty', qty, 'buyer', buyer,
    'state', 'active', 'expires', expires, 'created', now)
  redis.call('ZADD', expiries_key, expires, rid)
  redis.call('XADD', events_key, '*', 'type', 'reservation.created', 'at', now, 'sku', sku,
    'rsv', rid, 'seg', seg, 'qty', qty, 'buyer', buyer, 'expires', expires)
  return expires
end

-- Stores a reserve decision in the idempotency record and returns it as a reply.
local function decide(idem_key, ttl, reply)
  redis.call('HSET', idem_key, 'state', 'done', 'reply', cjson.encode(reply))
  redis.call('PEXPIRE', idem_key, ttl)
  return reply
end

local function replay(rec_reply)
  local reply = cjson.decode(rec_reply)
  reply[2] = 1
  return reply
end

-- fc_reserve: the deduct, started in the BUYER's home partition H.
-- KEYS: sku(H) idem(H) purchases(H) rsv(H) events(H) expiries(H)
-- ARGV: sku buyer fingerprint qty now rid idem_ttl lease_ms affinity
-- Replies: ok(rid seg expires) | sold_out | insufficient | limit_reached(remaining) |
--   fallback(segs)  -> H is short: try the SKU's other partitions with fc_reserve_at,
--                      then fc_reserve_finish; the buyer's limit is held meanwhile
--   resume(segs)    -> an earlier attempt with this key stopped mid-fallback: continue it
--   unknown_sku | not_on_sale(start) | sale_ended | idem_mismatch | in_flight  (no writes)
local function fc_reserve(keys, args)
  local sku, buyer, fp = args[1], args[2], args[3]
  local qty, now = tonumber(args[4]), now_ms(args[5])
  local rid = args[6]
  local idem_ttl, lease, affinity = tonumber(args[7]), tonumber(args[8]), tonumber(args[9])

  local rec = redis.call('HMGET', keys[2], 'fp', 'state', 'reply', 'lease')
  if rec[1] then
    if rec[1] ~= fp then return { 'idem_mismatch', 0 } end
    if rec[2] == 'done' then return replay(rec[3]) end
    if num(rec[4]) > now then return { 'in_flight', 0 } end
    redis.call('HSET', keys[2], 'lease', now + lease)
    local terms = sku_terms(keys[1])
    return { 'resume', 0, terms and terms.segs or 0 }
  end

  -- The token names this reservation already (its key was used before and its record
  -- expired): answer with it rather than take stock twice.
  local existing = redis.call('HMGET', keys[4], 'seg', 'expires', 'buyer')
  if existing[1] then return { 'ok', 1, rid, existing[1], tonumber(existing[2]) } end

  local terms = sku_terms(keys[1])
  if not terms then return { 'unknown_sku', 0 } end
  if now < terms.start then return { 'not_on_sale', 0, terms.start } end
  if now >= terms.finish then return { 'sale_ended', 0 } end

  local bought = 0
  if terms.limit > 0 then
    bought = num(redis.call('GET', keys[3]))
    if bought + qty > terms.limit then
      redis.call('HSET', keys[2], 'fp', fp)
      return decide(keys[2], idem_ttl, { 'limit_reached', 0, math.max(terms.limit - bought, 0) })
    end
  end

  redis.call('HSET', keys[2], 'fp', fp)
  local seg, short = nil, 'sold_out'
  if #terms.here > 0 then seg, short = take(keys[1], terms, qty, affinity) end
  if seg then
    if terms.limit > 0 then redis.call('INCRBY', keys[3], qty) end
    local expires = write_reservation(keys[4], keys[5], keys[6], rid, sku, seg, qty, buyer,
      now, terms.ttl)
    return decide(keys[2], idem_ttl, { 'ok', 0, rid, seg, expires })
  end
  if terms.segs > #terms.here then
    -- Other partitions may have stock: hold the buyer's limit while the caller looks there.
    local hold = 0
    if terms.limit > 0 then
      redis.call('INCRBY', keys[3], qty)
      hold = qty
    end
    redis.call('HSET', keys[2], 'state', 'inflight', 'lease', now + lease, 'hold', hold,
      'short', short)
    redis.call('PEXPIRE', keys[2], idem_ttl)
    return { 'fallback', 0, terms.segs }
  end
  return decide(keys[2], idem_ttl, { short, 0 })
end

-- fc_reserve_at: one fallback step, in a partition B that holds some of the SKU's segments.
-- Each token's outcome here is final: a reservation, or a skip marker, so a resumed or
-- concurrent attempt with the same token can never take stock here twice.
-- KEYS: sku(B) rsv(B) skip(B) events(B) expiries(B)
-- ARGV: sku buyer qty now rid skip_ttl affinity
-- Replies: ok(rid seg expires) | sold_out | insufficient | unknown_sku
local function fc_reserve_at(keys, args)
  local sku, buyer, qty, now = args[1], args[2], tonumber(args[3]), now_ms(args[4])
  local rid, skip_ttl, affinity = args[5], tonumber(args[6]), tonumber(args[7])
  local existing = redis.call('HMGET', keys[2], 'seg', 'expires', 'buyer')
  if existing[1] then
    if existing[3] ~= buyer then return redis.error_reply('token collision on ' .. rid) end
    return { 'ok', 1, rid, existing[1], existing[2] }
  end
  local skipped = redis.call('GET', keys[3])
  if skipped then return { skipped, 1 } end
  local terms = sku_terms(keys[1])
  if not terms then return { 'unknown_sku', 0 } end
  local seg, short = nil, 'sold_out'
  if #terms.here > 0 then seg, short = take(keys[1], terms, qty, affinity) end
  if not seg then
    redis.call('SET', keys[3], short, 'PX', skip_ttl)
    return { short, 0 }
  end
  local expires = write_reservation(keys[2], keys[4], keys[5], rid, sku, seg, qty, buyer,
    now, terms.ttl)
  return { 'ok', 0, rid, seg, expires }
end

-- fc_reserve_finish: closes a fallback in the buyer's home partition H. A failed search
-- gives the held limit back. Idempotent: only the first finish of a token decides.
-- KEYS: idem(H) purchases(H)
-- ARGV: code rid seg expires idem_ttl
local function fc_reserve_finish(keys, args)
  local rec = redis.call('HMGET', keys[1], 'state', 'reply', 'hold', 'short')
  if not rec[1] then return { 'unknown', 0 } end
  if rec[1] == 'done' then return replay(rec[2]) end
  local code = args[1]
  local reply
  if code == 'ok' then
    reply = { 'ok', 0, args[2], args[3], tonumber(args[4]) }
  else
    if num(rec[3]) > 0 then redis.call('DECRBY', keys[2], num(rec[3])) end
    -- Some units somewhere, but fewer than asked, is 'insufficient'; none anywhere 'sold_out'.
    if code ~= 'insufficient' and rec[4] ~= 'insufficient' then code = 'sold_out' else
      code = 'insufficient' end
    reply = { code, 0 }
  end
  redis.call('HDEL', keys[1], 'lease', 'hold', 'short')
  return decide(keys[1], tonumber(args[5]), reply)
end

-- fc_release: gives a reservation's stock back (expired, or cancelled by the buyer).
-- KEYS: sku(B) rsv(B) events(B) expiries(B)
-- ARGV: rid reason now keep_ms
-- Replies: released(qty) | not_due(expires) | not_active(state) | unknown_reservation
local function fc_release(keys, args)
  local rid, reason, now, keep = args[1], args[2], now_ms(args[3]), tonumber(args[4])
  local r = redis.call('HMGET', keys[2], 'state', 'seg', 'qty', 'expires', 'sku', 'id', 'buyer')
  if not r[1] then return { 'unknown_reservation', 0 } end
  if r[1] ~= 'active' then return { 'not_active', 0, r[1] } end
  if reason == 'expired' and num(r[4]) > now then return { 'not_due', 0, num(r[4]) } end
  local seg, qty = r[2], tonumber(r[3])
  redis.call('HINCRBY', keys[1], 'a' .. seg, qty)
  redis.call('HINCRBY', keys[1], 'r' .. seg, -qty)
  redis.call('HSET', keys[2], 'state', reason)
  redis.call('PEXPIRE', keys[2], keep)
  redis.call('ZREM', keys[4], rid)
  redis.call('XADD', keys[3], '*', 'type', 'reservation.released', 'at', now, 'sku', r[5],
    'rsv', r[6], 'seg', seg, 'qty', qty, 'buyer', r[7], 'reason', reason)
  return { 'released', 0, qty }
end

local function order_reply(ord_key, replayed)
  local o = redis.call('HMGET', ord_key, 'id', 'state', 'sku', 'qty', 'amount', 'cur',
    'deadline', 'rsv', 'buyer')
  return { 'ok', replayed, o[1], o[2], o[3], tonumber(o[4]), tonumber(o[5]), o[6],
    tonumber(o[7]), o[8], o[9] }
end

-- fc_order_create: turns an active reservation into an order awaiting payment.
-- KEYS: sku(B) rsv(B) ord(B) idem(B) events(B) expiries(B) deadlines(B)
-- ARGV: rid oid buyer fingerprint now idem_ttl
-- Replies: ok(order...) | unknown_reservation | reservation_gone | already_ordered(oid)
--   | idem_mismatch
local function fc_order_create(keys, args)
  local rid, oid, buyer, fp = args[1], args[2], args[3], args[4]
  local now, idem_ttl = now_ms(args[5]), tonumber(args[6])
  local rec = redis.call('HGET', keys[4], 'fp')
  if rec then
    if rec ~= fp then return { 'idem_mismatch', 0 } end
    return order_reply(keys[3], 1)
  end
  local r = redis.call('HMGET', keys[2], 'state', 'seg', 'qty', 'expires', 'sku', 'id', 'buyer')
  if not r[1] or r[7] ~= buyer then return { 'unknown_reservation', 0 } end
  if r[1] == 'ordered' then return { 'already_ordered', 0, oid } end
  if r[1] ~= 'active' or num(r[4]) <= now then return { 'reservation_gone', 0 } end
  local terms = sku_terms(keys[1])
  local seg, qty = r[2], tonumber(r[3])
  local amount = terms.price * qty
  local deadline = now + terms.paywin
  redis.call('HINCRBY', keys[1], 'r' .. seg, -qty)
  redis.call('HINCRBY', keys[1], 'o' .. seg, qty)
  redis.call('HSET', keys[2], 'state', 'ordered')
  redis.call('ZREM', keys[6], rid)
  redis.call('HSET', keys[3], 'id', oid, 'rsv', r[6], 'sku', r[5], 'seg', seg, 'qty', qty,
    'buyer', buyer, 'amount', amount, 'cur', terms.cur, 'state', 'pending_payment',
    'deadline', deadline, 'created', now)
  redis.call('ZADD', keys[7], deadline, oid)
  redis.call('HSET', keys[4], 'fp', fp, 'oid', oid)
  redis.call('PEXPIRE', keys[4], idem_ttl)
  redis.call('XADD', keys[5], '*', 'type', 'order.created', 'at', now, 'sku', r[5], 'ord', oid,
    'rsv', r[6], 'seg', seg, 'qty', qty, 'buyer', buyer, 'amount', amount, 'currency', terms.cur,
    'deadline', deadline)
  return order_reply(keys[3], 0)
end

-- fc_order_get: an order's current record.
-- KEYS: ord(B)
local function fc_order_get(keys, _args)
  if redis.call('EXISTS', keys[1]) == 0 then return { 'unknown_order', 0 } end
  return order_reply(keys[1], 0)
end

-- fc_payment: applies a payment provider's event to an order.
-- KEYS: sku(B) ord(B) psp(B) events(B) deadlines(B)
-- ARGV: oid event_id amount currency now psp_ttl
-- Replies (all but unknown_order are recorded, so a replayed PSP event answers the same):
--   paid | paid_after_cancel | amount_mismatch | duplicate_payment(state) | unknown_order
local function fc_payment(keys, args)
  local oid, event_id, amount, cur = args[1], args[2], tonumber(args[3]), args[4]
  local now, psp_ttl = now_ms(args[5]), tonumber(args[6])
  local seen = redis.call('GET', keys[3])
  if seen then return replay(seen) end
  local o = redis.call('HMGET', keys[2], 'state', 'seg', 'qty', 'amount', 'cur', 'sku', 'id')
  if not o[1] then return { 'unknown_order', 0 } end
  local reply
  if num(o[4]) ~= amount or o[5] ~= cur then
    reply = { 'amount_mismatch', 0, o[1] }
    redis.call('XADD', keys[4], '*', 'type', 'payment.rejected', 'at', now, 'sku', o[6],
      'ord', o[7], 'psp_event', event_id, 'reason', 'amount_mismatch', 'amount', amount,
      'currency', cur)
  else
    local next_state = TRANSITIONS[o[1]]['payment']
    if next_state == 'paid' then
      redis.call('HINCRBY', keys[1], 'o' .. o[2], -tonumber(o[3]))
      redis.call('HINCRBY', keys[1], 's' .. o[2], tonumber(o[3]))
      redis.call('ZREM', keys[5], oid)
      redis.call('HSET', keys[2], 'state', 'paid', 'psp', event_id, 'paid_at', now)
      redis.call('XADD', keys[4], '*', 'type', 'order.paid', 'at', now, 'sku', o[6], 'ord', o[7],
        'seg', o[2], 'qty', o[3], 'psp_event', event_id, 'amount', amount, 'currency', cur)
      reply = { 'paid', 0, 'paid' }
    elseif next_state == 'paid_after_cancel' then
      redis.call('HSET', keys[2], 'state', 'paid_after_cancel', 'psp', event_id, 'paid_at', now)
      redis.call('XADD', keys[4], '*', 'type', 'order.paid_after_cancel', 'at', now, 'sku', o[6],
        'ord', o[7], 'qty', o[3], 'psp_event', event_id, 'amount', amount, 'currency', cur)
      reply = { 'paid_after_cancel', 0, 'paid_after_cancel' }
    else
      redis.call('XADD', keys[4], '*', 'type', 'payment.rejected', 'at', now, 'sku', o[6],
        'ord', o[7], 'psp_event', event_id, 'reason', 'duplicate_payment', 'amount', amount,
        'currency', cur)
      reply = { 'duplicate_payment', 0, o[1] }
    end
  end
  redis.call('SET', keys[3], cjson.encode(reply), 'PX', psp_ttl)
  return reply
end

-- fc_order_cancel: cancels an unpaid order (deadline passed, or the buyer asked) and gives
-- its stock back.
-- KEYS: sku(B) ord(B) events(B) deadlines(B)
-- ARGV: oid reason now
-- Replies: cancelled | not_due(deadline) | illegal(state) | unknown_order
local function fc_order_cancel(keys, args)
  local oid, reason, now = args[1], args[2], now_ms(args[3])
  local o = redis.call('HMGET', keys[2], 'state', 'seg', 'qty', 'deadline', 'sku', 'id')
  if not o[1] then return { 'unknown_order', 0 } end
  if TRANSITIONS[o[1]]['cancel'] ~= 'cancelled' then return { 'illegal', 0, o[1] } end
  if reason == 'deadline' and num(o[4]) > now then return { 'not_due', 0, num(o[4]) } end
  local qty = tonumber(o[3])
  redis.call('HINCRBY', keys[1], 'o' .. o[2], -qty)
  redis.call('HINCRBY', keys[1], 'a' .. o[2], qty)
  redis.call('HSET', keys[2], 'state', 'cancelled', 'cancelled_at', now)
  redis.call('ZREM', keys[4], oid)
  redis.call('XADD', keys[3], '*', 'type', 'order.cancelled', 'at', now, 'sku', o[5], 'ord', o[6],
    'seg', o[2], 'qty', qty, 'reason', reason)
  return { 'cancelled', 0, 'cancelled' }
end

-- fc_refund: refund_request (paid | paid_after_cancel -> refund_pending) or refund_complete
-- (refund_pending -> refunded). Sold units stay sold: refunded goods are not restocked.
-- KEYS: ord(B) events(B)
-- ARGV: event now
-- Replies: ok(state) | illegal(state) | unknown_order
local function fc_refund(keys, args)
  local event, now = args[1], now_ms(args[2])
  local o = redis.call('HMGET', keys[1], 'state', 'sku', 'id')
  if not o[1] then return { 'unknown_order', 0 } end
  local next_state = TRANSITIONS[o[1]][event]
  if not next_state then return { 'illegal', 0, o[1] } end
  redis.call('HSET', keys[1], 'state', next_state)
  local kind = 'order.refund_requested'
  if next_state == 'refunded' then kind = 'order.refunded' end
  redis.call('XADD', keys[2], '*', 'type', kind, 'at', now, 'sku', o[2], 'ord', o[3])
  return { 'ok', 0, next_state }
end

-- fc_stock: the SKU's terms and the levels of its segments in this partition.
-- KEYS: sku(P)
-- Reply: ok stock segs price cur start end limit ttl paywin parts n
--        then n times: seg initial available reserved ordered sold
local function fc_stock(keys, _args)
  local terms = sku_terms(keys[1])
  if not terms then return { 'unknown_sku', 0 } end
  local out = { 'ok', 0, terms.stock, terms.segs, terms.price, terms.cur, terms.start,
    terms.finish, terms.limit, terms.ttl, terms.paywin, terms.parts, #terms.here }
  for _, seg in ipairs(terms.here) do
    local v = redis.call('HMGET', keys[1], 'i' .. seg, 'a' .. seg, 'r' .. seg, 'o' .. seg,
      's' .. seg)
    out[#out + 1] = tonumber(seg)
    for i = 1, 5 do out[#out + 1] = num(v[i]) end
  end
  return out
end

-- fc_load: preheats one partition with the SKU's terms and its segments here.
-- KEYS: sku(P) events(P)
-- ARGV: sku fingerprint stock segs price cur start end limit ttl paywin parts shares now
--   shares = "seg:initial,seg:initial" (may be empty: this partition only keeps the terms)
-- Replies: loaded | unchanged (same terms already here) | conflict (other terms)
local function fc_load(keys, args)
  local existing = redis.call('HGET', keys[1], 'fp')
  if existing then
    if existing == args[2] then return { 'unchanged', 1 } end
    return { 'conflict', 0 }
  end
  local now = now_ms(args[14])
  local here = {}
  local fields = { 'fp', args[2], 'stock', args[3], 'segs', args[4], 'price', args[5],
    'cur', args[6], 'start', args[7], 'end', args[8], 'limit', args[9], 'ttl', args[10],
    'paywin', args[11], 'parts', args[12] }
  for seg, initial in string.gmatch(args[13], '(%d+):(%d+)') do
    here[#here + 1] = seg
    for _, f in ipairs({ 'i' .. seg, initial, 'a' .. seg, initial, 'r' .. seg, 0, 'o' .. seg, 0,
      's' .. seg, 0 }) do
      fields[#fields + 1] = f
    end
  end
  fields[#fields + 1] = 'here'
  fields[#fields + 1] = table.concat(here, ',')
  redis.call('HSET', keys[1], unpack(fields))
  redis.call('XADD', keys[2], '*', 'type', 'sku.loaded', 'at', now, 'sku', args[1],
    'stock', args[3], 'segs', args[4], 'segments', args[13], 'price', args[5],
    'currency', args[6], 'start', args[7], 'end', args[8], 'limit', args[9], 'ttl', args[10],
    'paywin', args[11])
  return { 'loaded', 0 }
end

-- fc_due: ids of reservations (or orders) whose expiry (or deadline) has passed.
-- KEYS: expiries(P) or deadlines(P)
-- ARGV: now limit
local function fc_due(keys, args)
  local now = now_ms(args[1])
  local out = { 'ok', 0 }
  local due = redis.call('ZRANGE', keys[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(args[2]))
  for _, t in ipairs(due) do out[#out + 1] = t end
  return out
end

-- fc_rate: a token bucket. Refills continuously; a request costs `cost` tokens.
-- KEYS: bucket
-- ARGV: capacity refill_per_second cost now
-- Reply: allowed(0|1) remaining retry_after_ms
local function fc_rate(keys, args)
  local capacity, rate, cost = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local now = now_ms(args[4])
  local b = redis.call('HMGET', keys[1], 'tokens', 'ts')
  local tokens, ts = tonumber(b[1]) or capacity, tonumber(b[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate / 1000)
  local allowed, retry = 0, 0
  if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
  else
    retry = math.ceil((cost - tokens) * 1000 / rate)
  end
  redis.call('HSET', keys[1], 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', keys[1], math.ceil(capacity * 1000 / rate) + 1000)
  return { 'ok', 0, allowed, math.floor(tokens), retry }
end

local function fc_version(_keys, _args)
  return VERSION
end

local ro = { 'no-writes' }
redis.register_function('fc_reserve', fc_reserve)
redis.register_function('fc_reserve_at', fc_reserve_at)
redis.register_function('fc_reserve_finish', fc_reserve_finish)
redis.register_function('fc_release', fc_release)
redis.register_function('fc_order_create', fc_order_create)
redis.register_function { function_name = 'fc_order_get', callback = fc_order_get, flags = ro }
redis.register_function('fc_payment', fc_payment)
redis.register_function('fc_order_cancel', fc_order_cancel)
redis.register_function('fc_refund', fc_refund)
redis.register_function { function_name = 'fc_stock', callback = fc_stock, flags = ro }
redis.register_function('fc_load', fc_load)
redis.register_function { function_name = 'fc_due', callback = fc_due, flags = ro }
redis.register_function('fc_rate', fc_rate)
redis.register_function { function_name = 'fc_version', callback = fc_version, flags = ro }
