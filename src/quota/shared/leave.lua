-- Leaves the shared quota on a clean shutdown: drops the alive key and the epoch membership,
-- so the others stop holding this replica's share back at once.
-- KEYS: alive key, epoch key. ARGV: joined epoch (or ""), replica id. Returns 1.
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then
  redis.call('SREM', KEYS[2] .. ':' .. ARGV[1], ARGV[2])
end
return 1
