#!lua name=flashcart
-- flashcart's Redis function library. Every function touches ONE partition (one hash tag),
-- so it runs unchanged on a Redis Cluster. Every decision that changes state appends its
-- event to the partition's stream in the same atomic call (the outbox). Each event names the
-- HTTP request that decided it (`request`, its x-request-id: the functions the edge calls take
-- it as their last argument) or carries '' when a timer or settlement decided it.
--
-- Replies are flat arrays (Spin's redis `execute` flattens nested replies):
--   { code, replayed (0|1), fields... }
-- Codes that reject bad input change nothing.
--
-- The reserve path (fc_reserve, fc_reserve_at) is the hot path: it counts its redis.call()s
-- and formats each number it writes once. A Lua number handed to redis.call is formatted
-- with sprintf, which costs about as much as a cheap command, and so does tonumber().
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

-- now_ms, and the same instant as the text commands take (formatted once).
local function clock(arg)
  if arg ~= '0' then return tonumber(arg), arg end
  local t = redis.call('TIME')
  -- seconds .. the microseconds' first three digits (zero-padded): string work, no sprintf.
  local now_s = t[1] .. string.sub(string.rep('0', 6 - #t[2]) .. t[2], 1, 3)
  return tonumber(now_s), now_s
end

local function num(v)
  return tonumber(v) or 0
end

-- Fencing after a restart (docs/architecture.md, Settlement → Recovery).
-- A partition whose guard key `{fc:pNN}:ledger` exists is settled into a SQL ledger; after a
-- restart (or a failover, or a lost AOF tail) Redis may hold less than the ledger knows, and
-- deciding then could sell units twice. `checked` is PROCESS-LOCAL: a table the functions
-- capture, kept between the calls of one redis-server process, empty in a new process (a
-- restart, a promoted replica) and after FUNCTION LOAD. Every function that writes takes its
-- partition's guard as its LAST key and answers 'fenced' (writing nothing) while the guard
-- exists and this process has not been checked against the ledger (fc_verify); a partition
-- without a guard is remembered as checked on its first call (one EXISTS per process), so a
-- checked partition costs a table lookup and no command.
local checked = {}

local function fenced(guard)
  if checked[guard] then return false end
  if redis.call('EXISTS', guard) == 1 then return true end
  checked[guard] = true
  return false
end

-- A stream id 'ms-seq' as two numbers.
local function stream_id(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- Whether stream id a is below stream id b.
local function id_below(a, b)
  local am, as = stream_id(a)
  local bm, bs = stream_id(b)
  return am < bm or (am == bm and as < bs)
end

-- The stream's last generated id, or nil when the stream does not exist.
local function last_id(key)
  if redis.call('EXISTS', key) == 0 then return nil end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
  return nil
end

-- The SKU a reservation id names: rsv_<partition>_<token>_<sku>.
local function sku_of(rid)
  return string.match(rid, '^rsv_%d+_%x+_(.+)$')
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
-- affinity (`args[affinity]`, read only when there is a choice) so retries land in the same
-- place. `here` is the SKU hash's list of local segments; `levels`, optional, the available
-- and reserved units of the only one, read already. Returns the segment (nil when none has
-- qty units: then also 'insufficient' or 'sold_out'), the units left in this partition
-- afterwards, and the local segment count.
local function take(key, here, qty, args, affinity, levels)
  if here == '' then return nil, 0, 0, 'sold_out' end
  if not string.find(here, ',', 1, true) then
    -- One local segment (the default layout): one read (or none: `levels` holds its levels
    -- when the caller guessed the segment right), one write.
    local a, r = 'a' .. here, 'r' .. here
    local v = levels or redis.call('HMGET', key, a, r)
    local avail = num(v[1])
    if avail < qty then
      if avail > 0 then return nil, avail, 1, 'insufficient' end
      return nil, 0, 1, 'sold_out'
    end
    redis.call('HSET', key, a, string.format('%d', avail - qty),
      r, string.format('%d', num(v[2]) + qty))
    return here, avail - qty, 1
  end
  local segs, fields = {}, {}
  for s in string.gmatch(here, '[^,]+') do
    segs[#segs + 1] = s
    fields[#fields + 1] = 'a' .. s
  end
  local avail = redis.call('HMGET', key, unpack(fields))
  local n, left = #segs, 0
  for i = 1, n do
    avail[i] = tonumber(avail[i]) or 0
    left = left + avail[i]
  end
  local first = tonumber(args[affinity])
  for k = 0, n - 1 do
    local i = ((first + k) % n) + 1
    if avail[i] >= qty then
      redis.call('HINCRBY', key, fields[i], -qty)
      redis.call('HINCRBY', key, 'r' .. segs[i], qty)
      return segs[i], left - qty, n
    end
  end
  if left > 0 then return nil, left, n, 'insufficient' end
  return nil, 0, n, 'sold_out'
end

-- Writes a reservation record, its expiry timer and its event. Every argument is text already
-- (see the note at the top). `fp`: the request's fingerprint, for a reservation that is also
-- its request's record (taken in the buyer's home partition), else nil.
local function write_reservation(rsv_key, events_key, expiries_key, rid, sku, seg, qty, buyer,
                                 now, expires, fp, request)
  -- No id or SKU (the id names both, and every caller has it) and no creation time (the
  -- event has it).
  if fp then
    redis.call('HSET', rsv_key, 'state', 'active', 'seg', seg, 'qty', qty, 'expires', expires,
      'buyer', buyer, 'fp', fp)
  else
    redis.call('HSET', rsv_key, 'state', 'active', 'seg', seg, 'qty', qty, 'expires', expires,
      'buyer', buyer)
  end
  redis.call('ZADD', expiries_key, expires, rid)
  redis.call('XADD', events_key, '*', 'type', 'reservation.created', 'at', now, 'sku', sku,
    'request', request, 'rsv', rid, 'seg', seg, 'qty', qty, 'buyer', buyer, 'expires', expires)
end

-- Stores a reserve decision other than a reservation at home in the request's record, and
-- returns it as a reply. The reply is kept as its fields joined by tabs (codes, ids and
-- numbers hold none): cheaper than JSON.
local function decide(rec_key, fp, ttl, reply)
  redis.call('HSET', rec_key, 'fp', fp, 'decided', table.concat(reply, '\t'))
  redis.call('PEXPIRE', rec_key, ttl)
  return reply
end

-- A stored reply, marked as replayed. Replies stored as JSON (payment outcomes) work too.
local function replay(stored)
  local reply
  if string.byte(stored, 1) == 91 then -- '['
    reply = cjson.decode(stored)
  else
    reply = {}
    for f in string.gmatch(stored, '[^\t]+') do reply[#reply + 1] = f end
  end
  reply[2] = 1
  return reply
end

-- The buyer's token bucket, kept as GCRA: one number, the time (µs) at which the bucket will
-- be full again; the key expires then (PXAT, the same digits in ms), as a full bucket needs no
-- key. `step`: the µs a token takes to come back (at least 1 000); `capacity`: the burst.
-- One SET ... GET when the bucket was full (a buyer's first deduct, or one after a pause); a
-- second SET when it was not: the right value, or the old one back when the request is
-- refused, so a refusal leaves the key as it was. Returns whether a token was taken and, for
-- a refusal, the ms until the next token.
local function take_token(key, step_s, capacity_s, now)
  local now_us, step = now * 1000, tonumber(step_s)
  local guess = string.format('%d', now_us + step)
  local old = redis.call('SET', key, guess, 'PXAT', string.sub(guess, 1, -4), 'GET')
  local tat = tonumber(old)
  if not tat or tat <= now_us then return true end
  local full_at = tat + step
  local free_at = full_at - tonumber(capacity_s) * step
  if now_us < free_at then
    redis.call('SET', key, old, 'PXAT', string.sub(old, 1, -4))
    return false, math.ceil((free_at - now_us) / 1000)
  end
  local value = string.format('%d', full_at)
  redis.call('SET', key, value, 'PXAT', string.sub(value, 1, -4))
  return true
end

-- fc_reserve: the deduct, started in the BUYER's home partition H.
-- The request's record is the hash of its reservation id in H, rec(H): a reservation taken
-- in H carries the request's fingerprint (`fp`) beside its own fields; any other decision
-- (`decided`: the reply) or a search of other partitions under way (`lease`, `hold`,
-- `short`, `skip`) is a record without reservation fields that lives for idem_ttl. One key
-- serves as idempotency record and reservation, so a reserve at home reads one record and
-- writes one.
-- KEYS: sku(H) purchases(H) rec(H) events(H) expiries(H) bucket(H) guard(H)
-- ARGV: sku buyer fingerprint qty now rid idem_ttl lease_ms affinity
--       rate_capacity rate_step_us skip guess request
--   rate_step_us (µs per token) 0 turns the buyer's token bucket off. skip: the SKU's partitions the
--   caller believes empty (comma-separated partition numbers; '*' for every one but H),
--   kept in the record so a resumed search skips the same ones. guess: the segment H holds
--   if it holds one (KeySchema::first_segment_in), read with the terms to save a read.
-- Replies: ok(rid seg expires left segs) | sold_out(left) | insufficient(left)
--   | limit_reached(remaining) | rate_limited(remaining retry_after_ms)  (no writes)
--   | fenced  (no writes: H is waiting for settlement's check after a restart)
--   (`left`: the units left in H; a replay answers the stored decision without it)
--   fallback(segs left) -> H is short (`left` units here): try the SKU's other partitions but
--                          `skip` with fc_reserve_at, then fc_reserve_finish; the buyer's
--                          limit is held meanwhile. With lease_ms 0 a retry resumes at once,
--                          so a search that found units may skip the finish: the
--                          reservation it found is what the resumed search finds.
--   resume(segs skip)   -> an earlier attempt with this key is past its lease: continue it
--   unknown_sku | not_on_sale(start) | sale_ended | idem_mismatch | in_flight  (no writes)
-- A replay, a mismatch, a resume and a refusal before the decision take no token.
local function fc_reserve(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local now, now_s = clock(args[5])
  local fp, rid = args[3], args[6]

  if redis.call('EXISTS', keys[3]) == 1 then
    local rec = redis.call('HMGET', keys[3], 'fp', 'seg', 'expires', 'decided', 'lease', 'skip')
    -- A reservation without `fp` was made before records carried one: the same token.
    if rec[1] and rec[1] ~= fp then return { 'idem_mismatch', 0 } end
    if rec[2] then return { 'ok', 1, rid, rec[2], tonumber(rec[3]) } end
    if rec[4] then return replay(rec[4]) end
    if num(rec[5]) > now then return { 'in_flight', 0 } end
    if args[8] ~= '0' then
      redis.call('HSET', keys[3], 'lease', string.format('%d', now + tonumber(args[8])))
    end
    return { 'resume', 0, num(redis.call('HGET', keys[1], 'segs')), rec[6] or '' }
  end

  -- The terms, and the levels of the segment the caller expects here (args[13]).
  local guess = args[13]
  local t = redis.call('HMGET', keys[1], 'here', 'start', 'end', 'limit', 'ttl', 'segs',
    'a' .. guess, 'r' .. guess)
  if not t[1] then return { 'unknown_sku', 0 } end
  local start = tonumber(t[2])
  if now < start then return { 'not_on_sale', 0, start } end
  if now >= tonumber(t[3]) then return { 'sale_ended', 0 } end

  -- Every answer from here on is a decision, and costs the buyer a token.
  if args[11] ~= '0' then
    local taken, retry = take_token(keys[6], args[11], args[10], now)
    -- A refusal found less than one token: none left.
    if not taken then return { 'rate_limited', 0, 0, retry } end
  end

  local qty_s = args[4]
  local qty, limit = tonumber(qty_s), 0
  if t[4] ~= '0' then limit = tonumber(t[4]) end
  if limit > 0 then
    local bought = num(redis.call('GET', keys[2]))
    if bought + qty > limit then
      return decide(keys[3], fp, args[7], { 'limit_reached', 0, math.max(limit - bought, 0) })
    end
  end

  local levels
  if t[1] == guess then levels = { t[7], t[8] } end
  local seg, left, local_segs, short = take(keys[1], t[1], qty, args, 9, levels)
  if seg then
    if limit > 0 then redis.call('INCRBY', keys[2], qty_s) end
    local expires = now + tonumber(t[5])
    write_reservation(keys[3], keys[4], keys[5], rid, args[1], seg, qty_s, args[2], now_s,
      string.format('%d', expires), fp, args[14] or '')
    return { 'ok', 0, rid, seg, expires, left, t[6] }
  end
  if args[12] ~= '*' and tonumber(t[6]) > local_segs then
    -- Other partitions may have stock: hold the buyer's limit while the caller looks there.
    local hold = '0'
    if limit > 0 then
      redis.call('INCRBY', keys[2], qty_s)
      hold = qty_s
    end
    redis.call('HSET', keys[3], 'fp', fp, 'lease', string.format('%d', now + tonumber(args[8])),
      'hold', hold, 'short', short, 'skip', args[12])
    redis.call('PEXPIRE', keys[3], args[7])
    return { 'fallback', 0, t[6], left }
  end
  local reply = decide(keys[3], fp, args[7], { short, 0 })
  reply[3] = left -- for this answer only: a replay tells nothing of the units left now
  return reply
end

-- fc_reserve_at: one fallback step, in a partition B that holds some of the SKU's segments.
-- Each token's outcome here is final: a reservation, or a skip marker, so a resumed or
-- concurrent attempt with the same token can never take stock here twice.
-- KEYS: sku(B) rsv(B) skip(B) events(B) expiries(B) guard(B)
-- ARGV: sku buyer qty now rid skip_ttl affinity guess request (as in fc_reserve)
-- Replies: ok(rid seg expires [left]) | sold_out([left]) | insufficient([left]) | unknown_sku
--   | fenced
--   (`left`: the units left in B afterwards; absent when the outcome was decided before)
local function fc_reserve_at(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local rid = args[5]
  local existing = redis.call('HMGET', keys[2], 'seg', 'expires', 'buyer')
  if existing[1] then
    if existing[3] ~= args[2] then return redis.error_reply('token collision on ' .. rid) end
    return { 'ok', 1, rid, existing[1], tonumber(existing[2]) }
  end
  local skipped = redis.call('GET', keys[3])
  if skipped then return { skipped, 1 } end
  local guess = args[8]
  local t = redis.call('HMGET', keys[1], 'ttl', 'here', 'a' .. guess, 'r' .. guess)
  if not t[1] then return { 'unknown_sku', 0 } end
  local qty_s = args[3]
  local levels
  if t[2] == guess then levels = { t[3], t[4] } end
  local seg, left, _, short = take(keys[1], t[2], tonumber(qty_s), args, 7, levels)
  if not seg then
    redis.call('SET', keys[3], short, 'PX', args[6])
    return { short, 0, left }
  end
  local now, now_s = clock(args[4])
  local expires = now + tonumber(t[1])
  write_reservation(keys[2], keys[4], keys[5], rid, args[1], seg, qty_s, args[2], now_s,
    string.format('%d', expires), nil, args[9] or '')
  return { 'ok', 0, rid, seg, expires, left }
end

-- fc_reserve_finish: closes a fallback in the request's record rec(H). A failed search gives
-- the held limit back. Idempotent: only the first finish of a token decides.
-- KEYS: rec(H) purchases(H) guard(H)
-- ARGV: code rid seg expires idem_ttl
local function fc_reserve_finish(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local rec = redis.call('HMGET', keys[1], 'fp', 'decided', 'hold', 'short')
  if not rec[1] then return { 'unknown', 0 } end
  if rec[2] then return replay(rec[2]) end
  local code = args[1]
  local reply
  if code == 'ok' then
    reply = { 'ok', 0, args[2], args[3], args[4] }
  else
    if num(rec[3]) > 0 then redis.call('DECRBY', keys[2], rec[3]) end
    -- Some units somewhere, but fewer than asked, is 'insufficient'; none anywhere 'sold_out'.
    if code ~= 'insufficient' and rec[4] ~= 'insufficient' then code = 'sold_out' else
      code = 'insufficient' end
    reply = { code, 0 }
  end
  redis.call('HDEL', keys[1], 'lease', 'hold', 'short', 'skip')
  return decide(keys[1], rec[1], args[5], reply)
end

-- fc_release: gives a reservation's stock back (expired, or cancelled by the buyer).
-- KEYS: sku(B) rsv(B) events(B) expiries(B) guard(B)
-- ARGV: rid reason now keep_ms
-- Replies: released(qty) | not_due(expires) | not_active(state) | unknown_reservation | fenced
local function fc_release(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local rid, reason, now, keep = args[1], args[2], now_ms(args[3]), tonumber(args[4])
  local r = redis.call('HMGET', keys[2], 'state', 'seg', 'qty', 'expires', 'buyer')
  if not r[1] then return { 'unknown_reservation', 0 } end
  if r[1] ~= 'active' then return { 'not_active', 0, r[1] } end
  if reason == 'expired' and num(r[4]) > now then return { 'not_due', 0, num(r[4]) } end
  local seg, qty = r[2], tonumber(r[3])
  redis.call('HINCRBY', keys[1], 'a' .. seg, qty)
  redis.call('HINCRBY', keys[1], 'r' .. seg, -qty)
  redis.call('HSET', keys[2], 'state', reason)
  redis.call('PEXPIRE', keys[2], keep)
  redis.call('ZREM', keys[4], rid)
  redis.call('XADD', keys[3], '*', 'type', 'reservation.released', 'at', now,
    'sku', sku_of(rid), 'request', '', 'rsv', rid, 'seg', seg, 'qty', qty, 'buyer', r[5],
    'reason', reason)
  return { 'released', 0, qty }
end

local function order_reply(ord_key, replayed)
  local o = redis.call('HMGET', ord_key, 'id', 'state', 'sku', 'qty', 'amount', 'cur',
    'deadline', 'rsv', 'buyer')
  return { 'ok', replayed, o[1], o[2], o[3], tonumber(o[4]), tonumber(o[5]), o[6],
    tonumber(o[7]), o[8], o[9] }
end

-- fc_order_create: turns an active reservation into an order awaiting payment.
-- KEYS: sku(B) rsv(B) ord(B) idem(B) events(B) expiries(B) deadlines(B) guard(B)
-- ARGV: rid oid buyer fingerprint now idem_ttl request
-- Replies: ok(order...) | unknown_reservation | reservation_gone | already_ordered(oid)
--   | idem_mismatch | fenced
local function fc_order_create(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local rid, oid, buyer, fp = args[1], args[2], args[3], args[4]
  local now, idem_ttl = now_ms(args[5]), tonumber(args[6])
  local rec = redis.call('HGET', keys[4], 'fp')
  if rec then
    if rec ~= fp then return { 'idem_mismatch', 0 } end
    return order_reply(keys[3], 1)
  end
  local r = redis.call('HMGET', keys[2], 'state', 'seg', 'qty', 'expires', 'buyer')
  if not r[1] or r[5] ~= buyer then return { 'unknown_reservation', 0 } end
  if r[1] == 'ordered' then return { 'already_ordered', 0, oid } end
  if r[1] ~= 'active' or num(r[4]) <= now then return { 'reservation_gone', 0 } end
  local terms = sku_terms(keys[1])
  local seg, qty, sku = r[2], tonumber(r[3]), sku_of(rid)
  local amount = terms.price * qty
  local deadline = now + terms.paywin
  redis.call('HINCRBY', keys[1], 'r' .. seg, -qty)
  redis.call('HINCRBY', keys[1], 'o' .. seg, qty)
  redis.call('HSET', keys[2], 'state', 'ordered')
  redis.call('ZREM', keys[6], rid)
  redis.call('HSET', keys[3], 'id', oid, 'rsv', rid, 'sku', sku, 'seg', seg, 'qty', qty,
    'buyer', buyer, 'amount', amount, 'cur', terms.cur, 'state', 'pending_payment',
    'deadline', deadline, 'created', now)
  redis.call('ZADD', keys[7], deadline, oid)
  redis.call('HSET', keys[4], 'fp', fp, 'oid', oid)
  redis.call('PEXPIRE', keys[4], idem_ttl)
  redis.call('XADD', keys[5], '*', 'type', 'order.created', 'at', now, 'sku', sku,
    'request', args[7] or '', 'ord', oid, 'rsv', rid, 'seg', seg, 'qty', qty, 'buyer', buyer,
    'amount', amount, 'currency', terms.cur, 'deadline', deadline)
  return order_reply(keys[3], 0)
end

-- fc_idem_claim: binds an idempotency key to the first request that used it, in the key's
-- own partition (the buyer's home for an order, the event id's for a payment), when the effect
-- lives in another partition. The effect's own call then decides and records; this record
-- makes a second request with the same key and another fingerprint a mismatch, whatever
-- partition its target lives in.
-- KEYS: idem(K) guard(K)   ARGV: fingerprint ttl_ms
-- Replies: claimed | same | idem_mismatch | fenced
local function fc_idem_claim(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local rec = redis.call('HGET', keys[1], 'fp')
  if rec then
    if rec ~= args[1] then return { 'idem_mismatch', 0 } end
    return { 'same', 0 }
  end
  redis.call('HSET', keys[1], 'fp', args[1])
  redis.call('PEXPIRE', keys[1], tonumber(args[2]))
  return { 'claimed', 0 }
end

-- fc_idem_release: gives a claim back when the effect's call refused the request before
-- deciding anything (unknown reservation or order, reservation gone), so the buyer can fix the
-- request and retry with the same key, as in one partition. Only this fingerprint's claim is
-- released, and never a record an effect wrote (it has an 'oid').
-- KEYS: idem(K) guard(K)   ARGV: fingerprint
-- Replies: released | kept | fenced
local function fc_idem_release(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local rec = redis.call('HMGET', keys[1], 'fp', 'oid')
  if rec[1] ~= args[1] or rec[2] then return { 'kept', 0 } end
  redis.call('DEL', keys[1])
  return { 'released', 0 }
end

-- fc_order_get: an order's current record.
-- KEYS: ord(B)
local function fc_order_get(keys, _args)
  if redis.call('EXISTS', keys[1]) == 0 then return { 'unknown_order', 0 } end
  return order_reply(keys[1], 0)
end

-- fc_payment: applies a payment provider's event to an order.
-- KEYS: sku(B) ord(B) psp(B) events(B) deadlines(B) guard(B)
-- ARGV: oid event_id amount currency now psp_ttl request
-- Replies (all but unknown_order are recorded, so a replayed PSP event answers the same):
--   paid | paid_after_cancel | amount_mismatch | duplicate_payment(state) | unknown_order
--   (and fenced, not recorded)
local function fc_payment(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local oid, event_id, amount, cur = args[1], args[2], tonumber(args[3]), args[4]
  local now, psp_ttl, request = now_ms(args[5]), tonumber(args[6]), args[7] or ''
  local seen = redis.call('GET', keys[3])
  if seen then return replay(seen) end
  local o = redis.call('HMGET', keys[2], 'state', 'seg', 'qty', 'amount', 'cur', 'sku', 'id')
  if not o[1] then return { 'unknown_order', 0 } end
  local reply
  if num(o[4]) ~= amount or o[5] ~= cur then
    reply = { 'amount_mismatch', 0, o[1] }
    redis.call('XADD', keys[4], '*', 'type', 'payment.rejected', 'at', now, 'sku', o[6],
      'request', request, 'ord', o[7], 'psp_event', event_id, 'reason', 'amount_mismatch',
      'amount', amount, 'currency', cur)
  else
    local next_state = TRANSITIONS[o[1]]['payment']
    if next_state == 'paid' then
      redis.call('HINCRBY', keys[1], 'o' .. o[2], -tonumber(o[3]))
      redis.call('HINCRBY', keys[1], 's' .. o[2], tonumber(o[3]))
      redis.call('ZREM', keys[5], oid)
      redis.call('HSET', keys[2], 'state', 'paid', 'psp', event_id, 'paid_at', now)
      redis.call('XADD', keys[4], '*', 'type', 'order.paid', 'at', now, 'sku', o[6],
        'request', request, 'ord', o[7], 'seg', o[2], 'qty', o[3], 'psp_event', event_id,
        'amount', amount, 'currency', cur)
      reply = { 'paid', 0, 'paid' }
    elseif next_state == 'paid_after_cancel' then
      redis.call('HSET', keys[2], 'state', 'paid_after_cancel', 'psp', event_id, 'paid_at', now)
      redis.call('XADD', keys[4], '*', 'type', 'order.paid_after_cancel', 'at', now,
        'sku', o[6], 'request', request, 'ord', o[7], 'qty', o[3], 'psp_event', event_id,
        'amount', amount, 'currency', cur)
      reply = { 'paid_after_cancel', 0, 'paid_after_cancel' }
    else
      redis.call('XADD', keys[4], '*', 'type', 'payment.rejected', 'at', now, 'sku', o[6],
        'request', request, 'ord', o[7], 'psp_event', event_id, 'reason', 'duplicate_payment',
        'amount', amount, 'currency', cur)
      reply = { 'duplicate_payment', 0, o[1] }
    end
  end
  redis.call('SET', keys[3], cjson.encode(reply), 'PX', psp_ttl)
  return reply
end

-- fc_order_cancel: cancels an unpaid order (deadline passed, or the buyer asked) and gives
-- its stock back.
-- KEYS: sku(B) ord(B) events(B) deadlines(B) guard(B)
-- ARGV: oid reason now request
-- Replies: cancelled | not_due(deadline) | illegal(state) | unknown_order | fenced
local function fc_order_cancel(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local oid, reason, now, request = args[1], args[2], now_ms(args[3]), args[4] or ''
  local o = redis.call('HMGET', keys[2], 'state', 'seg', 'qty', 'deadline', 'sku', 'id')
  if not o[1] then return { 'unknown_order', 0 } end
  if TRANSITIONS[o[1]]['cancel'] ~= 'cancelled' then return { 'illegal', 0, o[1] } end
  if reason == 'deadline' and num(o[4]) > now then return { 'not_due', 0, num(o[4]) } end
  local qty = tonumber(o[3])
  redis.call('HINCRBY', keys[1], 'o' .. o[2], -qty)
  redis.call('HINCRBY', keys[1], 'a' .. o[2], qty)
  redis.call('HSET', keys[2], 'state', 'cancelled', 'cancelled_at', now)
  redis.call('ZREM', keys[4], oid)
  redis.call('XADD', keys[3], '*', 'type', 'order.cancelled', 'at', now, 'sku', o[5],
    'request', request, 'ord', o[6], 'seg', o[2], 'qty', qty, 'reason', reason)
  return { 'cancelled', 0, 'cancelled' }
end

-- fc_refund: refund_request (paid | paid_after_cancel -> refund_pending) or refund_complete
-- (refund_pending -> refunded). Sold units stay sold: refunded goods are not restocked.
-- KEYS: ord(B) events(B) guard(B)
-- ARGV: event now
-- Replies: ok(state) | illegal(state) | unknown_order | fenced
local function fc_refund(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local event, now = args[1], now_ms(args[2])
  local o = redis.call('HMGET', keys[1], 'state', 'sku', 'id')
  if not o[1] then return { 'unknown_order', 0 } end
  local next_state = TRANSITIONS[o[1]][event]
  if not next_state then return { 'illegal', 0, o[1] } end
  redis.call('HSET', keys[1], 'state', next_state)
  local kind = 'order.refund_requested'
  if next_state == 'refunded' then kind = 'order.refunded' end
  redis.call('XADD', keys[2], '*', 'type', kind, 'at', now, 'sku', o[2], 'request', '',
    'ord', o[3])
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

-- Writes one partition's SKU hash: the terms (`args` as fc_load takes them) and the segments
-- living here, each { seg, initial, available, reserved, ordered, sold }.
local function write_sku(key, args, segments)
  local here, levels = {}, {}
  for _, v in ipairs(segments) do
    local seg = v[1]
    here[#here + 1] = seg
    for _, f in ipairs({ 'a' .. seg, v[3], 'r' .. seg, v[4], 'o' .. seg, v[5], 's' .. seg, v[6],
      'i' .. seg, v[2] }) do
      levels[#levels + 1] = f
    end
  end
  -- A small hash is a list searched from its head: what every reserve reads comes first.
  local fields = { 'here', table.concat(here, ','), 'start', args[7], 'end', args[8],
    'limit', args[9], 'ttl', args[10], 'segs', args[4] }
  for _, f in ipairs(levels) do fields[#fields + 1] = f end
  for _, f in ipairs({ 'fp', args[2], 'stock', args[3], 'price', args[5], 'cur', args[6],
    'paywin', args[11], 'parts', args[12] }) do
    fields[#fields + 1] = f
  end
  redis.call('HSET', key, unpack(fields))
end

-- fc_load: preheats one partition with the SKU's terms and its segments here.
-- KEYS: sku(P) events(P) guard(P)
-- ARGV: sku fingerprint stock segs price cur start end limit ttl paywin parts shares now
--   request
--   shares = "seg:initial,seg:initial" (may be empty: this partition only keeps the terms)
-- Replies: loaded | unchanged (same terms already here) | conflict (other terms) | fenced
local function fc_load(keys, args)
  if fenced(keys[#keys]) then return { 'fenced', 0 } end
  local existing = redis.call('HGET', keys[1], 'fp')
  if existing then
    if existing == args[2] then return { 'unchanged', 1 } end
    return { 'conflict', 0 }
  end
  local now = now_ms(args[14])
  local segments = {}
  for seg, initial in string.gmatch(args[13], '(%d+):(%d+)') do
    segments[#segments + 1] = { seg, initial, initial, 0, 0, 0 }
  end
  write_sku(keys[1], args, segments)
  redis.call('XADD', keys[2], '*', 'type', 'sku.loaded', 'at', now, 'sku', args[1],
    'request', args[15] or '', 'stock', args[3], 'segs', args[4], 'segments', args[13],
    'price', args[5], 'currency', args[6], 'start', args[7], 'end', args[8], 'limit', args[9], 'ttl', args[10],
    'paywin', args[11], 'fp', args[2])
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

-- Recovery: settlement's side of the fence (see `checked` above). Only settlement calls these.

-- fc_guard: marks a partition as settled into a ledger (its guard key, kept for good).
-- KEYS: guard(P)
-- ARGV: lost ('1' when the ledger already holds events of this partition: a guard missing
--       then means Redis lost it, so the partition is fenced now; '0' for a partition the
--       ledger has never seen, which this process keeps deciding for)
-- Replies: guarded(existed 0|1)
local function fc_guard(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then return { 'guarded', 1 } end
  redis.call('SET', keys[1], '1')
  if args[1] == '1' then checked[keys[1]] = nil else checked[keys[1]] = true end
  return { 'guarded', 0 }
end

-- fc_verify: lifts the fence of a partition whose stream did not go back in time: its last
-- generated id is at or above `highest`, the ledger's highest applied id for it ('' when the
-- ledger holds none). Atomic, and nothing writes to a fenced partition's stream, so no new
-- id can hide a loss.
-- KEYS: guard(P) events(P)
-- ARGV: highest
-- Replies: verified(was 0|1) | behind(last id, '' when the stream is gone)
local function fc_verify(keys, args)
  if checked[keys[1]] then return { 'verified', 1 } end
  if args[1] ~= '' then
    local last = last_id(keys[2])
    if not last or id_below(last, args[1]) then return { 'behind', 0, last or '' } end
  end
  checked[keys[1]] = true
  return { 'verified', 0 }
end

-- fc_fence_state: whether writes to the partition are fenced now (read-only).
-- KEYS: guard(P)
-- Reply: ok(0|1)
local function fc_fence_state(keys, _args)
  if checked[keys[1]] then return { 'ok', 0, 0 } end
  return { 'ok', 0, redis.call('EXISTS', keys[1]) }
end

-- The restore functions write what the ledger knows into a FENCED partition (and answer
-- not_fenced, writing nothing, anywhere else): each is idempotent, so a restore that stopped
-- halfway is simply run again. No events: the ledger has them already.

-- fc_restore_sku: one partition's SKU hash, terms and levels, as the ledger has them.
-- KEYS: sku(P) guard(P)
-- ARGV: as fc_load's, but `shares` = "seg:initial:available:reserved:ordered:sold,..."
local function fc_restore_sku(keys, args)
  if not fenced(keys[#keys]) then return { 'not_fenced', 0 } end
  local segments = {}
  for seg, i, a, r, o, s in string.gmatch(args[13],
    '(%d+):(%d+):(%d+):(%d+):(%d+):(%d+)') do
    segments[#segments + 1] = { seg, i, a, r, o, s }
  end
  redis.call('DEL', keys[1])
  write_sku(keys[1], args, segments)
  return { 'restored', 0 }
end

-- fc_restore_reservation: a reservation's record (a request fingerprint already there is
-- kept) and its expiry timer while active.
-- KEYS: rsv(P) expiries(P) guard(P)
-- ARGV: rid state seg qty expires buyer keep_ms ('' to keep for good; else how long a
--       released record still lives)
local function fc_restore_reservation(keys, args)
  if not fenced(keys[#keys]) then return { 'not_fenced', 0 } end
  redis.call('HDEL', keys[1], 'lease', 'hold', 'short', 'skip', 'decided')
  redis.call('HSET', keys[1], 'state', args[2], 'seg', args[3], 'qty', args[4],
    'expires', args[5], 'buyer', args[6])
  if args[2] == 'active' then
    redis.call('ZADD', keys[2], args[5], args[1])
  else
    redis.call('ZREM', keys[2], args[1])
  end
  if args[7] == '' then
    redis.call('PERSIST', keys[1])
  else
    redis.call('PEXPIRE', keys[1], args[7])
  end
  return { 'restored', 0 }
end

-- fc_restore_decision: the request's record in the buyer's home partition H for a reservation
-- a fallback search found in another partition: its decision, replayed to a retry with the
-- same key. A record that holds a decision already is left as it is; a search still marked
-- in flight is closed with this one (the held limit stays held: it is the reservation's).
-- KEYS: rec(H) guard(H)
-- ARGV: rid seg expires ttl_ms
local function fc_restore_decision(keys, args)
  if not fenced(keys[#keys]) then return { 'not_fenced', 0 } end
  local rec = redis.call('HMGET', keys[1], 'seg', 'decided')
  if rec[1] or rec[2] then return { 'restored', 1 } end
  redis.call('HDEL', keys[1], 'lease', 'hold', 'short', 'skip')
  redis.call('HSET', keys[1], 'decided', table.concat({ 'ok', '0', args[1], args[2], args[3] },
    '\t'))
  redis.call('PEXPIRE', keys[1], args[4])
  return { 'restored', 0 }
end

-- fc_restore_order: an order's record and its payment deadline timer while unpaid.
-- KEYS: ord(P) deadlines(P) guard(P)
-- ARGV: oid rsv sku seg qty buyer amount cur state deadline created psp paid_at cancelled_at
--       (the last three '' when the order has none)
local function fc_restore_order(keys, args)
  if not fenced(keys[#keys]) then return { 'not_fenced', 0 } end
  redis.call('DEL', keys[1])
  redis.call('HSET', keys[1], 'id', args[1], 'rsv', args[2], 'sku', args[3], 'seg', args[4],
    'qty', args[5], 'buyer', args[6], 'amount', args[7], 'cur', args[8], 'state', args[9],
    'deadline', args[10], 'created', args[11])
  if args[12] ~= '' then redis.call('HSET', keys[1], 'psp', args[12], 'paid_at', args[13]) end
  if args[14] ~= '' then redis.call('HSET', keys[1], 'cancelled_at', args[14]) end
  if args[9] == 'pending_payment' then
    redis.call('ZADD', keys[2], args[10], args[1])
  else
    redis.call('ZREM', keys[2], args[1])
  end
  return { 'restored', 0 }
end

-- fc_restore_payment: a payment provider event's recorded outcome, so its replays stay no-ops.
-- KEYS: psp(P) guard(P)
-- ARGV: code state ttl_ms
local function fc_restore_payment(keys, args)
  if not fenced(keys[#keys]) then return { 'not_fenced', 0 } end
  redis.call('SET', keys[1], cjson.encode({ args[1], 0, args[2] }), 'PX', args[3])
  return { 'restored', 0 }
end

-- fc_restore_count: a buyer's purchase counter, raised to at least what the ledger counts
-- (never lowered: a limit held by a search under way is not in the ledger).
-- KEYS: purchases(H) guard(H)
-- ARGV: units
local function fc_restore_count(keys, args)
  if not fenced(keys[#keys]) then return { 'not_fenced', 0 } end
  if num(redis.call('GET', keys[1])) < tonumber(args[1]) then
    redis.call('SET', keys[1], args[1])
  end
  return { 'restored', 0 }
end

-- fc_restore_stream: moves the stream's last id up to the ledger's highest applied id, so new
-- events never take the identities of applied ones. Creates the stream when it is gone.
-- KEYS: events(P) guard(P)
-- ARGV: highest
local function fc_restore_stream(keys, args)
  if not fenced(keys[#keys]) then return { 'not_fenced', 0 } end
  local last = last_id(keys[1])
  if not last then
    -- XADD then trim to nothing: an empty stream whose last id is `highest`.
    redis.call('XADD', keys[1], 'MAXLEN', '0', args[1], 'type', 'restored')
  elseif id_below(last, args[1]) then
    redis.call('XSETID', keys[1], args[1])
  end
  return { 'restored', 0 }
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
redis.register_function('fc_idem_claim', fc_idem_claim)
redis.register_function('fc_idem_release', fc_idem_release)
redis.register_function { function_name = 'fc_order_get', callback = fc_order_get, flags = ro }
redis.register_function('fc_payment', fc_payment)
redis.register_function('fc_order_cancel', fc_order_cancel)
redis.register_function('fc_refund', fc_refund)
redis.register_function { function_name = 'fc_stock', callback = fc_stock, flags = ro }
redis.register_function('fc_load', fc_load)
redis.register_function { function_name = 'fc_due', callback = fc_due, flags = ro }
redis.register_function('fc_guard', fc_guard)
redis.register_function('fc_verify', fc_verify)
redis.register_function { function_name = 'fc_fence_state', callback = fc_fence_state, flags = ro }
redis.register_function('fc_restore_sku', fc_restore_sku)
redis.register_function('fc_restore_reservation', fc_restore_reservation)
redis.register_function('fc_restore_decision', fc_restore_decision)
redis.register_function('fc_restore_order', fc_restore_order)
redis.register_function('fc_restore_payment', fc_restore_payment)
redis.register_function('fc_restore_count', fc_restore_count)
redis.register_function('fc_restore_stream', fc_restore_stream)
redis.register_function { function_name = 'fc_version', callback = fc_version, flags = ro }
