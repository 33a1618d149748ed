-- Statistics of one channel on one shard.
-- KEYS[1] queue key   KEYS[2] channel messages_count   KEYS[3] channel channel_full_count
-- ARGV[1] expiry
-- Returns {messages_count, channel_full_count, queue length, age of the oldest live message}.

local expiry = tonumber(ARGV[1])
local length = redis.call('LLEN', KEYS[1])
local age = 0
-- The oldest entry may have an expired body (1.4.3 then reported an age past
-- expiry); report the age of the oldest one that can still be delivered.
local head = redis.call('LRANGE', KEYS[1], 0, 99)
for _, body_key in ipairs(head) do
    local ttl = redis.call('PTTL', body_key)
    if ttl >= 0 then
        age = math.max(0, math.min(expiry, math.floor(expiry - ttl / 1000)))
        break
    end
end
local messages = tonumber(redis.call('GET', KEYS[2]) or '0')
local full = tonumber(redis.call('GET', KEYS[3]) or '0')
return {messages, full, length, age}
