-- Several entries, maybe on several queues (send_group, or a batch of sends).
-- KEYS for each run: its queue key (list), its channel statistics hash, the
--   global statistics hash of its hash slot (named to hash to that slot: a
--   run's three keys share one slot; on a cluster a call holds runs of one slot)
-- ARGV[1] now, unix ms by the sender's clock   ARGV[2] queue TTL in ms
--   then for each run: capacity, "1" to set its TTLs again or "0" (see
--   compact_send.lua), entry count E, and E pairs of (messages the entry
--   carries, the entry)
-- Returns the number of messages refused because their channel was full.
--
-- Compact layout (docs/compact-layout.md): a queue entry holds its message, so
-- a send writes one list and two counters. An entry reads
-- "1" (layout version) + 13-digit expiry deadline in unix ms + kind + payload;
-- a send_group entry for a process queue carries several messages (one per
-- member channel it names) and counts once against capacity. One message on
-- one queue goes through compact_send.lua instead (fewer commands).

local REFRESH = 60  -- asgi_redis/layouts/compact.py REFRESH_SECONDS
local CHANNEL_STATS_TTL = 3600 + REFRESH
local GLOBAL_STATS_TTL = 86400 + REFRESH
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

-- HINCRBY answering ``by`` means the field, maybe the hash, was just created:
-- a new hash has no TTL yet, so it gets one whatever the sender asked
local function created(key, field, by)
    return redis.call('HINCRBY', key, field, by) == by
end

local full_total = 0
local globals, global_order = {}, {}  -- per global hash: {sent, refused, refresh}, counted once each
local arg = 3
for k = 1, #KEYS, 3 do
    local queue, stats, global = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    local capacity = tonumber(ARGV[arg])
    local refresh = ARGV[arg + 1] == '1'
    local entries = tonumber(ARGV[arg + 2])
    local first = arg + 3
    arg = first + 2 * entries
    local counts, queued, sent = {}, {}, 0
    for j = 1, entries do
        counts[j] = tonumber(ARGV[first + 2 * j - 2])
        queued[j] = ARGV[first + 2 * j - 1]
        sent = sent + counts[j]
    end
    -- push first and undo what does not fit: an accepted send (the usual case)
    -- then costs one list command instead of LLEN + RPUSH
    local length = redis.call('RPUSH', queue, unpack(queued))
    local over = length - capacity
    if over > 0 then
        over = over - trim_dead_head(queue, over)
    end
    local full = 0
    for j = entries, math.max(1, entries - over + 1), -1 do
        redis.call('RPOP', queue)  -- ours: the script runs alone, they are the tail
        full = full + counts[j]
    end
    sent = sent - full
    local kept = entries - math.max(0, math.min(entries, over))
    if kept > 0 and (refresh or length == entries) then
        redis.call('PEXPIRE', queue, queue_ttl)  -- refreshed, or created by this push
    end
    local new = false
    if sent > 0 then
        new = created(stats, 'messages_count', sent)
    end
    if full > 0 then
        new = created(stats, 'channel_full_count', full) or new
    end
    if refresh or new then
        redis.call('EXPIRE', stats, CHANNEL_STATS_TTL)
    end
    local totals = globals[global]
    if not totals then
        totals = {0, 0, false}
        globals[global] = totals
        global_order[#global_order + 1] = global
    end
    totals[1] = totals[1] + sent
    totals[2] = totals[2] + full
    totals[3] = totals[3] or refresh
    full_total = full_total + full
end

for _, global in ipairs(global_order) do
    local totals = globals[global]
    local new = false
    if totals[1] > 0 then
        new = created(global, 'messages_count', totals[1])
    end
    if totals[2] > 0 then
        new = created(global, 'channel_full_count', totals[2]) or new
    end
    if totals[3] or new then
        redis.call('EXPIRE', global, GLOBAL_STATS_TTL)
    end
end
return full_total
