-- Decides (or, with dry_run, only predicts) one admission for all replicas, on Redis's clock,
-- and refreshes the calling replica's alive key.
-- KEYS: bucket zsets..., pause key, epoch key.
-- ARGV: known epoch, dry_run, member, replica count, longest window µs, bucket count, alive
-- key prefix, replica id, alive TTL ms, gap µs, member-set lifetime ms, gathering µs, then per
-- bucket: pair count, then (calls, window µs) pairs.
-- Returns {1, 0, then per pair of the first bucket: remaining, recent} when admitted, {0,
-- wait µs, the same pairs} when not (no pairs while paused), {-1} when the epoch differs
-- (Redis lost its data, a replica came back from a fallback, or this replica is new).
-- Membership comes from the replicas that joined (epoch.lua): a replica that has never joined
-- has decided nothing through Redis, and one that never reached Redis admits nothing alone
-- before its windows have passed (fallback.rs), so neither needs a share held back. Held back
-- is the share of each member whose alive key is gone (it may be deciding alone), and, during
-- the epoch's first longest window, of each expected member that is not alive. In a fresh
-- epoch, a window admits nothing during the first ARGV[12] µs after the loss (every present
-- replica joins within that time), nor while a pending member has not joined: the calls Redis
-- lost may still count in it.
local b = tonumber(ARGV[6])
local alive = ARGV[7]
redis.call('SET', alive .. ARGV[8], '1', 'PX', ARGV[9])
local epoch = redis.call('GET', KEYS[b + 2])
if not epoch or epoch ~= ARGV[1] then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = redis.call('PTTL', KEYS[b + 1])
if pause > 0 then return {0, pause * 1000} end
local replicas = tonumber(ARGV[4])
-- Deciding in this epoch means having joined it: stay a member, and keep the set.
local set = KEYS[b + 2] .. ':' .. epoch
redis.call('SADD', set, ARGV[8])
redis.call('PEXPIRE', set, ARGV[11])
local since = tonumber(string.match(epoch, '@(%d+)')) or 0
local first_window = now - since < tonumber(ARGV[5])
local joined = {}
local missing = 0
for _, m in ipairs(redis.call('SMEMBERS', set)) do
  joined[m] = true
  if redis.call('EXISTS', alive .. m) == 0 then missing = missing + 1 end
end
local pending = false
local expected = redis.call('HGETALL', set .. ':expected')
for k = 1, #expected - 1, 2 do
  local m = expected[k]
  if not joined[m] then
    if expected[k + 1] == '1' then pending = true end
    if first_window and redis.call('EXISTS', alive .. m) == 0 then missing = missing + 1 end
  end
end
missing = math.max(0, math.min(missing, replicas - 1))
-- Since when the data Redis lost may still count (a fresh epoch only).
local lost = tonumber(string.match(epoch, '@f(%d+)$'))
local gather = tonumber(ARGV[12])
local gap = tonumber(ARGV[10])
local wait = 0
local idx = 13
local longest = {}
local remaining = {}
local recent = {}
for i = 1, b do
  local p = tonumber(ARGV[idx]); idx = idx + 1
  longest[i] = 0
  for j = 1, p do
    local limit = tonumber(ARGV[idx]); local window = tonumber(ARGV[idx + 1]); idx = idx + 2
    if window > longest[i] then longest[i] = window end
    local allowed = limit - missing * math.max(1, math.floor(limit / replicas))
    local since_w = string.format('(%d', now - window)
    local count = redis.call('ZCOUNT', KEYS[i], since_w, '+inf')
    -- Lost calls may still be in this window: nothing is provably free.
    local hold = 0
    if lost then
      hold = lost + math.min(gather, window) - now
      if pending and lost + window - now > hold then
        -- A pending member joins within a heartbeat: ask again soon.
        hold = math.min(lost + window - now, 100000)
      end
    end
    if hold > 0 then
      if hold > wait then wait = hold end
    elseif allowed < 1 then
      if wait < 200000 then wait = 200000 end
    elseif count >= allowed then
      local e = redis.call('ZRANGEBYSCORE', KEYS[i], since_w, '+inf', 'WITHSCORES', 'LIMIT', count - allowed, 1)
      local free = tonumber(e[2]) + window - now
      if free > wait then wait = free end
    end
    if i == 1 then
      remaining[j] = allowed - count - 1
      -- The calls of the window's latest (window - gap): what a fallback may rely on.
      recent[j] = 0
      if window > gap then
        recent[j] = redis.call('ZCOUNT', KEYS[i], string.format('(%d', now - window + gap), '+inf')
      end
    end
  end
end
local counts = {}
for j = 1, #remaining do
  counts[2 * j - 1] = remaining[j]
  counts[2 * j] = recent[j]
end
if wait > 0 or ARGV[2] == '1' then
  local reply = {0, wait}
  for k = 1, #counts do reply[k + 2] = counts[k] end
  return reply
end
for i = 1, b do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%d', now - longest[i]))
  redis.call('ZADD', KEYS[i], string.format('%d', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[i], math.floor(longest[i] / 1000) + 1000)
end
local reply = {1, 0}
for k = 1, #counts do reply[k + 2] = counts[k] end
return reply
