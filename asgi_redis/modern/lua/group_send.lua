-- The whole group_send in one round trip, when the group and all its channels share
-- one server and the body is plain msgpack or JSON (Redis cannot encrypt).
-- The body of each channel key must carry __asgi_channel__ = the list of member
-- channels stored under that key, which only this script knows; the client sends the
-- encoded message with that field cut off at the value, and we append the list.
-- KEYS[1]: the group sorted set
-- ARGV[1]: group cutoff (int s)    ARGV[2]: now (float s)    ARGV[3]: message cutoff (int s)
-- ARGV[4]: expiry (s)              ARGV[5]: capacity          ARGV[6]: key prefix
-- ARGV[7]: 'msgpack' or 'json'     ARGV[8]: random prefix     ARGV[9]: head   ARGV[10]: tail
-- Returns: {number of member channels, number of channel keys that were full}
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local prefix, encode = ARGV[6], cjson.encode
if ARGV[7] == 'msgpack' then encode = cmsgpack.pack end

-- member channels by key, in the order channels_redis would visit them
local keys, channels_of = {}, {}
for _, channel in ipairs(members) do
    local bang = string.find(channel, '!', 1, true)
    local key = prefix .. (bang and string.sub(channel, 1, bang) or channel)
    if channels_of[key] == nil then
        channels_of[key] = {}
        keys[#keys + 1] = key
    end
    table.insert(channels_of[key], channel)
end

local full = 0
local capacity = tonumber(ARGV[5])
for _, key in ipairs(keys) do
    redis.call('ZREMRANGEBYSCORE', key, 0, ARGV[3])
    if redis.call('ZCARD', key) < capacity then
        local body = ARGV[8] .. ARGV[9] .. encode(channels_of[key]) .. ARGV[10]
        redis.call('ZADD', key, ARGV[2], body)
        redis.call('EXPIRE', key, ARGV[4])
    else
        full = full + 1
    end
end
return {#members, full}
