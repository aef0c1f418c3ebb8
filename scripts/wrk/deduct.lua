-- wrk script for the deduct hot path: every request a new buyer and a new Idempotency-Key, so
-- none is an idempotent replay. Each wrk thread gets its own id prefix in setup() (math.random
-- would give every thread, and every run, the same ids).
--   SKU=hot wrk -t2 -c16 -d5s -s scripts/wrk/deduct.lua http://127.0.0.1:3000
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("prefix", string.format("w%d-%d", os.time(), threads))
end

function init(args)
  sent = 0
  sku = os.getenv("SKU") or "hot"
end

function request()
  sent = sent + 1
  local id = prefix .. "-" .. sent
  return wrk.format("POST", "/v1/stock/" .. sku .. "/reservations", {
    ["content-type"] = "application/json",
    ["idempotency-key"] = "k" .. id,
  }, '{"buyer_id":"b' .. id .. '","quantity":1}')
end
