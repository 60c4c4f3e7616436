-- The keys' epoch, shared by the claim and the restorer's look: KEYS[1] is the marker,
-- ARGV[1] a name for a new epoch, ARGV[2] how long a new epoch gathers (ms).
-- The marker never expires: when it is missing, Redis lost its data (or the deployment is
-- new), and a new epoch begins that lets no new claim in while every replica writes the keys
-- it knows back.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local marker = redis.call('GET', KEYS[1])
if not marker then
  marker = ARGV[1] .. '|' .. (now + tonumber(ARGV[2]))
  redis.call('SET', KEYS[1], marker)
end
local bar = string.find(marker, '|', 1, true)
local epoch = marker
local gathering_until = 0
if bar then
  epoch = string.sub(marker, 1, bar - 1)
  gathering_until = tonumber(string.sub(marker, bar + 1)) or 0
end
