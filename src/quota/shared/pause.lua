-- Extends an API's pause (after an upstream 429) to at least ARGV[1] milliseconds from now,
-- for every replica; never shortens it.
-- KEYS: pause key. ARGV: ms. Returns 1.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
