-- Writes admissions made `age` µs ago under their members (idempotent: a member is written
-- once however often it is replayed).
-- KEYS: bucket zsets... ARGV: bucket count, longest window µs per bucket, then (age µs,
-- member)... Returns 1.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local b = tonumber(ARGV[1])
for k = b + 2, #ARGV, 2 do
  local at = now - tonumber(ARGV[k])
  for i = 1, b do
    redis.call('ZADD', KEYS[i], string.format('%d', at), ARGV[k + 1])
    redis.call('PEXPIRE', KEYS[i], math.floor(tonumber(ARGV[i + 1]) / 1000) + 1000)
  end
end
return 1
