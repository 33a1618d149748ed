-- KEYS for each run: its queue key (list), its channel statistics hash, the
--   global statistics hash of its hash slot (named to hash to that slot: a
--   run's three keys share one slot; on a cluster a call holds runs of one slot)
-- ARGV[1] now, unix ms by the sender's clock   ARGV[2] queue TTL in ms
--   then for each run: capacity, entry count E, and E pairs of
--   (messages the entry carries, the entry)
-- Returns the number of messages refused because their channel was full.
--
-- Compact layout (docs/compact-layout.md): a queue entry holds its message, so
-- a send writes one list and two counters. An entry reads
-- "1" (layout version) + 13-digit expiry deadline in unix ms + kind + payload;
-- a send_group entry for a process queue carries several messages (one per
-- member channel it names) and counts once against capacity.

local CHANNEL_STATS_TTL = 3600
local GLOBAL_STATS_TTL = 86400
-- Expired entries never count against capacity. Entries expire in send order
-- when every sender uses one expiry, so the dead ones sit at the head: a send
-- that finds no room drops them from there, stopping at the first live one, at
-- most TRIM_LIMIT beyond the room it needs (each is dropped once, paid back by
-- the send that queued it). A refused send thus costs about what an accepted
-- one does, whatever the capacity. Left as it is: with mixed expiry settings on
-- one channel, a live long-lived head entry hides dead short-lived ones behind
-- it until it is received or expires (receivers drop those, never deliver them).
local TRIM_LIMIT = 100

local now = tonumber(ARGV[1])
local queue_ttl = ARGV[2]

local function trim_dead_head(queue, wanted)
    local dropped = 0
    while dropped < wanted + TRIM_LIMIT do
        local head = redis.call('LINDEX', queue, 0)
        local deadline = head and tonumber(string.sub(head, 2, 14))
        if not deadline or deadline > now then
            break  -- live (or not an entry of this layout: left for the receiver to refuse)
        end
        redis.call('LPOP', queue)
        dropped = dropped + 1
    end
    return dropped
end

local function count(key, field, by, ttl)
    redis.call('HINCRBY', key, field, by)
    redis.call('EXPIRE', key, ttl)
end

-- The usual call, one entry on one queue (a send), without the general loop's tables
if #KEYS == 3 and ARGV[4] == '1' then
    local queue, messages = KEYS[1], tonumber(ARGV[5])
    local over = redis.call('RPUSH', queue, ARGV[6]) - tonumber(ARGV[3])
    if over > 0 then
        over = over - trim_dead_head(queue, over)
    end
    if over > 0 then
        redis.call('RPOP', queue)  -- ours: the script runs alone, it is the tail
        count(KEYS[2], 'channel_full_count', messages, CHANNEL_STATS_TTL)
        count(KEYS[3], 'channel_full_count', messages, GLOBAL_STATS_TTL)
        return messages
    end
    redis.call('PEXPIRE', queue, queue_ttl)
    count(KEYS[2], 'messages_count', messages, CHANNEL_STATS_TTL)
    count(KEYS[3], 'messages_count', messages, GLOBAL_STATS_TTL)
    return 0
end

local full_total = 0
local globals, global_order = {}, {}  -- per global hash: {sent, refused}, counted once each
local arg = 3
for k = 1, #KEYS, 3 do
    local queue, stats, global = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    local capacity = tonumber(ARGV[arg])
    local entries = tonumber(ARGV[arg + 1])
    local first = arg + 2
    arg = first + 2 * entries
    local counts, queued, sent = {}, {}, 0
    for j = 1, entries do
        counts[j] = tonumber(ARGV[first + 2 * j - 2])
        queued[j] = ARGV[first + 2 * j - 1]
        sent = sent + counts[j]
    end
    -- push first and undo what does not fit: an accepted send (the usual case)
    -- then costs one list command instead of LLEN + RPUSH
    local over = redis.call('RPUSH', queue, unpack(queued)) - capacity
    if over > 0 then
        over = over - trim_dead_head(queue, over)
    end
    local full = 0
    for j = entries, math.max(1, entries - over + 1), -1 do
        redis.call('RPOP', queue)  -- ours: the script runs alone, they are the tail
        full = full + counts[j]
    end
    sent = sent - full
    if sent > 0 then
        redis.call('PEXPIRE', queue, queue_ttl)
        redis.call('HINCRBY', stats, 'messages_count', sent)
    end
    if full > 0 then
        redis.call('HINCRBY', stats, 'channel_full_count', full)
    end
    redis.call('EXPIRE', stats, CHANNEL_STATS_TTL)
    local totals = globals[global]
    if not totals then
        totals = {0, 0}
        globals[global] = totals
        global_order[#global_order + 1] = global
    end
    totals[1] = totals[1] + sent
    totals[2] = totals[2] + full
    full_total = full_total + full
end

for _, global in ipairs(global_order) do
    local totals = globals[global]
    if totals[1] > 0 then
        redis.call('HINCRBY', global, 'messages_count', totals[1])
    end
    if totals[2] > 0 then
        redis.call('HINCRBY', global, 'channel_full_count', totals[2])
    end
    redis.call('EXPIRE', global, GLOBAL_STATS_TTL)
end
return full_total
