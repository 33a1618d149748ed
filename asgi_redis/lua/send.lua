-- Queue messages on one or more channels in one round trip: send queues one
-- message on one channel, send_group one per member held on this shard.
-- Layout of asgi_redis 1.4.3: each body in its own key (TTL expiry), its key
-- RPUSHed on the queue list (TTL expiry + 1), statistics counters beside
-- (channel counters TTL 3600 s, global ones 86400 s).
-- Members are passed in runs that share one queue (all daphne.response.X!*
-- sockets of one daphne process share "daphne.response.X!"), so a run costs
-- one capacity check, one RPUSH and one counter update however long it is.
--
-- KEYS: for each run, its queue key followed by one new body key per message
-- ARGV[1] expiry   ARGV[2] statistics prefix   ARGV[3] length of the key prefix
-- ARGV[4] number of distinct bodies B, ARGV[5 .. 4+B] the bodies
-- then for each run: capacity, message count M, and M body indexes (1-based)
-- Returns the number of messages refused because their channel was full.

local CHANNEL_STATS_TTL = 3600
local GLOBAL_STATS_TTL = 86400

local expiry = tonumber(ARGV[1])
local stats_prefix = ARGV[2]
local prefix_length = tonumber(ARGV[3])
local body_count = tonumber(ARGV[4])

-- A queue entry whose body has expired can never be delivered; 1.4.3 let such
-- entries count against capacity, so a channel could stay "full" of nothing.
-- Bodies expire in the order they were sent (every sender SETs them with the
-- same expiry, on this server's clock, just before RPUSH), so the dead entries
-- of a queue are its oldest: drop them from the head and stop at the first live
-- one. A channel that is really full then costs LINDEX + EXISTS, whatever its
-- capacity (the old rescan, LRANGE plus EXISTS per entry, cost ~1 ms at
-- capacity 2,000 on every refused send, so a backlog made Redis slowest when a
-- site needed it most). At most TRIM_LIMIT dead entries go per call beyond the
-- room this send needs; each is dropped once, so the work is paid back by the
-- sends that queued them.
-- Left as it was: when senders use different expiry settings on one channel, a
-- live long-lived entry at the head hides dead short-lived ones behind it; they
-- count against capacity until the head entry is received or expires (and a
-- receive drops them without delivering them).
local TRIM_LIMIT = 100

local function trim_dead_head(queue, wanted)
    local dropped = 0
    while dropped < wanted + TRIM_LIMIT do
        local body_key = redis.call('LINDEX', queue, 0)
        if not body_key or redis.call('EXISTS', body_key) == 1 then
            break
        end
        redis.call('LPOP', queue)
        dropped = dropped + 1
    end
    return dropped
end

local function count(key, by, ttl)
    redis.call('INCRBY', key, by)
    redis.call('EXPIRE', key, ttl)
end

local sent, full = 0, 0
local key_at, arg_at = 1, 5 + body_count
while key_at <= #KEYS do
    local queue = KEYS[key_at]
    local capacity = tonumber(ARGV[arg_at])
    local messages = tonumber(ARGV[arg_at + 1])
    local room = capacity - redis.call('LLEN', queue)
    if room < messages then
        room = room + trim_dead_head(queue, messages - room)
    end
    local queued = {}
    for j = 1, math.min(messages, room) do
        local body_key = KEYS[key_at + j]
        redis.call('SET', body_key, ARGV[4 + tonumber(ARGV[arg_at + 1 + j])], 'EX', expiry)
        queued[j] = body_key
    end
    local channel_stats = stats_prefix .. string.sub(queue, prefix_length + 1) .. ':'
    if #queued > 0 then
        redis.call('RPUSH', queue, unpack(queued))
        redis.call('EXPIRE', queue, expiry + 1)
        count(channel_stats .. 'messages_count', #queued, CHANNEL_STATS_TTL)
        sent = sent + #queued
    end
    if #queued < messages then
        count(channel_stats .. 'channel_full_count', messages - #queued, CHANNEL_STATS_TTL)
        full = full + messages - #queued
    end
    key_at = key_at + 1 + messages
    arg_at = arg_at + 2 + messages
end

if sent > 0 then
    count(stats_prefix .. '#global#:messages_count', sent, GLOBAL_STATS_TTL)
end
if full > 0 then
    count(stats_prefix .. '#global#:channel_full_count', full, GLOBAL_STATS_TTL)
end
return full
