-- After a BLPOP handed us a body key: read and delete the body in one round trip.
-- KEYS[1] body key
-- Returns the body, or false when it expired before we got to it.

local body = redis.call('GET', KEYS[1])
if body then
    redis.call('DEL', KEYS[1])
end
return body
