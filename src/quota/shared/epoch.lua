-- Joins the current epoch, first creating a new one (stamped with Redis's time) when Redis
-- has none (a *fresh* epoch, marked '@f<time of the loss>': Redis lost its data, or this is the
-- first start; an epoch that replaces a fresh one keeps the mark and its time) or
-- when the replica comes back from a fallback: the new epoch makes every replica write its
-- recent calls in again before it decides more. Also sets the alive key: joined, the replica
-- is present again.
-- Expected members (a hash beside the member set, member -> '1' or '0') are replicas that have
-- not joined yet but may matter: '1' (pending) may have made calls this epoch has lost, so
-- their windows admit nothing until they join; '0' may be deciding alone (a fallback), so
-- their share is held back during the epoch's first longest window unless they are alive.
-- KEYS: epoch key, alive key. ARGV: candidate, replica id, new (1 or 0), member-set lifetime
-- ms, alive TTL ms, then the members of the epoch this replica last knew: (member, alive at
-- its last heartbeat 1 or 0)... Returns the epoch joined.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local e = redis.call('GET', KEYS[1])
local carried = {}
local pending = {}
if not e then
  e = ARGV[1] .. '@' .. now .. '@f' .. now
  redis.call('SET', KEYS[1], e)
elseif ARGV[3] == '1' then
  -- The windows are intact: the old members only need their shares held back. What the old
  -- epoch still awaited of lost data, the new one awaits too, from the same loss.
  local old = KEYS[1] .. ':' .. e
  carried = redis.call('SMEMBERS', old)
  local expected = redis.call('HGETALL', old .. ':expected')
  for k = 1, #expected - 1, 2 do
    if expected[k + 1] == '1' and redis.call('SISMEMBER', old, expected[k]) == 0 then
      pending[#pending + 1] = expected[k]
    end
  end
  local lost = string.match(e, '@f(%d+)$')
  e = ARGV[1] .. '@' .. now
  if lost then e = e .. '@f' .. lost end
  redis.call('SET', KEYS[1], e)
end
local members = KEYS[1] .. ':' .. e
local expected = members .. ':expected'
redis.call('SADD', members, ARGV[2])
redis.call('PEXPIRE', members, ARGV[4])
for _, m in ipairs(carried) do
  if m ~= ARGV[2] then redis.call('HSETNX', expected, m, '0') end
end
for _, m in ipairs(pending) do
  if m ~= ARGV[2] then redis.call('HSET', expected, m, '1') end
end
if string.match(e, '@f%d+$') then
  for k = 6, #ARGV - 1, 2 do
    local m, v = ARGV[k], ARGV[k + 1]
    if m ~= ARGV[2] and redis.call('SISMEMBER', members, m) == 0 then
      local old = redis.call('HGET', expected, m)
      if not old or old < v then redis.call('HSET', expected, m, v) end
    end
  end
end
redis.call('HDEL', expected, ARGV[2])
redis.call('PEXPIRE', expected, ARGV[4])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
return e
