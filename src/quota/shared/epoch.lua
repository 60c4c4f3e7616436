-- Joins the current epoch, first creating a new one (stamped with Redis's time) when Redis
-- has none or when the replica comes back from a fallback: the new epoch makes every replica
-- write its recent calls in again before it decides more. Also sets the alive key: joined,
-- the replica is present again.
-- KEYS: epoch key, alive key. ARGV: candidate, replica id, new (1 or 0), member-set lifetime
-- ms, alive TTL ms. Returns the epoch joined.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = redis.call('GET', KEYS[1])
if not e or ARGV[3] == '1' then
  e = ARGV[1] .. '@' .. string.format('%d', now)
  redis.call('SET', KEYS[1], e)
end
local members = KEYS[1] .. ':' .. e
redis.call('SADD', members, ARGV[2])
redis.call('PEXPIRE', members, ARGV[4])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
return e
