-- Keeps a replica present: sets its alive key and, when Redis still has the epoch it joined,
-- keeps it a member (an idle replica must not look gone) and hands it what its mirror of the
-- shared log lacks.
-- KEYS: alive key, epoch key, then the API buckets to mirror. ARGV: alive TTL ms, known epoch
-- (or ""), replica id, member-set lifetime ms, alive key prefix, then per bucket the Redis
-- time (µs) to mirror from, inclusive.
-- Returns {'0'} when Redis has no epoch or another one (the replica joins it), else {'1', Redis
-- time µs, member count, (member, alive '1' or '0')..., then per bucket: entry count, (member,
-- time µs)...}.
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
local e = redis.call('GET', KEYS[2])
if not e or e ~= ARGV[2] then return {'0'} end
local set = KEYS[2] .. ':' .. e
redis.call('SADD', set, ARGV[3])
redis.call('PEXPIRE', set, ARGV[4])
local t = redis.call('TIME')
local reply = {'1', string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))}
local members = redis.call('SMEMBERS', set)
reply[#reply + 1] = tostring(#members)
for _, m in ipairs(members) do
  reply[#reply + 1] = m
  reply[#reply + 1] = tostring(redis.call('EXISTS', ARGV[5] .. m))
end
for i = 3, #KEYS do
  local entries = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[i + 3], '+inf', 'WITHSCORES')
  reply[#reply + 1] = tostring(#entries / 2)
  for _, v in ipairs(entries) do reply[#reply + 1] = v end
end
return reply
