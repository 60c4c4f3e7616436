-- Keeps a replica present: sets its alive key and, when Redis still has the epoch it joined,
-- keeps it a member (an idle replica must not look gone).
-- KEYS: alive key, epoch key. ARGV: alive TTL ms, known epoch (or ""), replica id,
-- member-set lifetime ms. Returns 1.
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
local e = redis.call('GET', KEYS[2])
if e and e == ARGV[2] then
  local set = KEYS[2] .. ':' .. e
  redis.call('SADD', set, ARGV[3])
  redis.call('PEXPIRE', set, ARGV[4])
end
return 1
