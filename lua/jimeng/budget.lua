--- A client-wide request budget: the rate every request of a client (every coroutine, polls and creates)
-- leaves for the network at, so that many waiting tasks stay under the API's rate limit. The bucket itself is
-- the engine's (engine:pace): a token is taken when a request gets its connection, not when it is asked
-- for, so a queue that fills while the server is slow cannot empty in a burst. This file decides the rate.
-- With `max_rps` set, the client never sends faster; without it, the rate is unlimited until the API
-- answers 429, and then adapts: it drops below the rate that was refused, and grows back slowly while
-- answers are good (additive increase, multiplicative decrease), never above max_rps.
local core = require "jimeng.core"

local M = {}
M.__index = M

local now = core.now

--- M.new(max_rps, burst, engine) -> budget. max_rps nil: unknown (start unlimited, learn from 429s). burst:
-- how many requests may leave at once (default 1). The engine's token bucket then refills at rps a second
-- (the same total whatever the burst), and its window lets at most floor(rps) (at least 1) leave in any
-- second: burst at once, then the rest of that second's count spread over it. A fractional max_rps is its
-- whole part a second (2.5: 2 in any second; 0.5: one every 2 s).
function M.new(max_rps, burst, engine)
  local self = setmetatable({ cap = max_rps or math.huge, user_burst = burst, engine = engine, window = {}, first = 1,
    at = now() }, M)
  self:set(self.cap)
  self.grown_at = self.at
  return self
end

function M:set(rps)
  self.rps_set = rps ~= math.huge and rps or nil
  if rps == math.huge then
    self.rate, self.burst = math.huge, math.huge
    if self.engine then self.engine:pace(nil) end
    return
  end
  local per_second = math.max(1, math.floor(rps))
  self.burst = math.max(1, math.min(self.user_burst or 1, per_second))
  -- the engine counts a request when it gets its connection, the server when it arrives: delays differ by
  -- milliseconds, which at hundreds a second can carry one more request into a window the server counts,
  -- so the rate keeps a 2% headroom and the window 5% (a burst leaves at once: its first may arrive last)
  self.rate = math.min(rps, per_second) * 0.98
  if self.engine then self.engine:pace(self.rate, self.burst, per_second, 1.05) end
end

--- The requests per second in force (math.huge: unlimited).
function M:rps()
  return self.rps_set or math.huge
end

-- The answers granted in the last second: the rate the API let through.
local function granted_last_second(self, t)
  local w, n = self.window, 0
  for i = #w, self.first, -1 do
    if w[i] < t - 1 then break end
    n = n + 1
  end
  return n
end

--- The API refused for rate (429 / 50429): go well below the rate it let through, and remember that rate.
-- Once per half second at most: the refusals of one burst are one signal, not many.
function M:refused()
  local t = now()
  if self.cut_at and t - self.cut_at < 0.5 then return end
  self.cut_at = t
  local seen = granted_last_second(self, t)
  local target
  if seen > 0 then
    self.limit_seen = math.min(self.limit_seen or math.huge, seen)
    target = math.min(self:rps(), seen) * 0.7
  else -- nothing got through lately (a storm of 429s): the limit is unknown, halve what is in force
    target = self:rps() == math.huge and 10 or self:rps() * 0.5
  end
  if target < self:rps() then
    self:set(math.max(2, target)) -- never below 2 a second: a 429 at a trickle is a quota, not a pace
    self.at, self.grown_at = t, t
  end
end

--- A good answer: grow back toward the ceiling: 25% a second up to 90% of the rate last refused, then
-- 0.2% a second (a probe: the limit may have been raised).
function M:granted()
  local t = now()
  local w = self.window
  local n = #w + 1
  w[n] = t
  -- keep about a second of it: the older answers are left behind by `first`, and the array is compacted once
  -- they are the larger half (each answer is moved at most once: no copy of the window per answer)
  local first = self.first
  while w[first] < t - 1 do first = first + 1 end
  if first > 64 and first > n / 2 then
    local keep = {}
    for i = first, n do keep[i - first + 1] = w[i] end
    self.window, first = keep, 1
  end
  self.first = first
  if self.limit_seen and self.cut_at and t - self.cut_at > 30 then
    self.limit_seen = nil -- no refusal for half a minute: the limit seen then may have been a passing storm
  end
  local rps = self:rps()
  if rps >= self.cap then return end
  local dt = math.min(t - self.grown_at, 1)
  self.grown_at = t
  local soft = self.limit_seen and 0.9 * self.limit_seen or math.huge
  local next_rps = rps < soft and math.min(soft, rps * (1 + 0.25 * dt)) or rps * (1 + 0.002 * dt)
  self:set(math.min(self.cap, next_rps))
end

return M
