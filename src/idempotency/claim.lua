-- (after marker.lua) KEYS[2] is the key, ARGV[3] our pending value, ARGV[4] the claim's
-- expiry (ms). Returns {answer, the key's value, epoch}: 'taken' (the value says by what),
-- 'gathering' (the epoch is new: the key may yet be written back), or 'mine'.
local value = redis.call('GET', KEYS[2])
if value then
  return {'taken', value, epoch}
end
if now < gathering_until then
  return {'gathering', '', epoch}
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return {'mine', '', epoch}
