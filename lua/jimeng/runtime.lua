--- Where a call waits: the coroutine scheduler of `jimeng.run`, or a blocking wait on the engine.
-- Every network call is a non-blocking libcurl transfer plus `await`. Inside a coroutine that the
-- scheduler runs, `await` and `sleep` yield to it, and the scheduler waits once (curl_multi_poll with
-- the nearest timer as its timeout) for every transfer and timer of every coroutine. Anywhere else
-- they block the thread without spinning, except inside nginx (OpenResty), where they step the engine
-- and ngx.sleep between steps so that the worker keeps serving. C never yields: only this Lua code
-- does, so the same code runs on Lua 5.1 to 5.4 and LuaJIT.
local core = require "jimeng.core"

local M = {}

local now = core.now
local co_running, co_yield, co_resume, co_create, co_status =
  coroutine.running, coroutine.yield, coroutine.resume, coroutine.create, coroutine.status
local unpack = table.unpack or unpack -- luacheck: ignore 143
local pack = table.pack or function(...) return { n = select("#", ...), ... } end -- luacheck: ignore 143

local interrupted = core.interrupted
-- A day: longer sleeps are cut to it (they are always inside a loop that checks its own deadline).
local MAX_SLEEP = 86400

-- The scheduler of each coroutine it runs (weak keys: a finished coroutine is forgotten).
local owner = setmetatable({}, { __mode = "k" })

-- nginx phases in which ngx.sleep may be called (it yields the request's coroutine to nginx).
local NGX_SLEEP_PHASES = {
  rewrite = true, access = true, content = true, timer = true, ssl_cert = true,
  ssl_session_fetch = true, ssl_client_hello = true, precontent = true,
}

--- ngx.sleep when this code runs inside nginx in a phase that allows it, else nil.
local function ngx_sleep()
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and ngx.get_phase and NGX_SLEEP_PHASES[ngx.get_phase()] then return ngx.sleep end
  return nil
end
M.ngx_sleep = ngx_sleep

-- Inside nginx, a transfer is stepped with ngx.sleep in between: short at first, up to 20 ms.
local NGX_STEP_MIN, NGX_STEP_MAX = 0.001, 0.02

--- The scheduler running the current coroutine, or nil.
local function current()
  local co = co_running()
  return co and owner[co], co
end

--- Waits until a transfer is done or `timeout` seconds pass; returns whether it is done, and the name
-- of the signal when a trapped SIGINT/SIGTERM (core.trap_signals) ended the wait.
function M.await(engine, transfer, timeout)
  if transfer:done() then return true end
  local sched = current()
  if sched then
    return co_yield("await", engine, transfer, timeout)
  end
  local deadline = timeout and now() + timeout
  local nsleep = ngx_sleep()
  local step = NGX_STEP_MIN
  while true do
    engine:perform()
    if transfer:done() then return true end
    local sig = interrupted()
    if sig then return false, sig end
    if nsleep then
      if deadline and now() >= deadline then return false end
      nsleep(step)
      step = math.min(step * 2, NGX_STEP_MAX)
    end
    local wait_ms = 1000
    if deadline then
      local left = deadline - now()
      if left <= 0 then return false end
      wait_ms = math.min(wait_ms, left * 1000)
    end
    if not nsleep then engine:poll(wait_ms) end
  end
end

--- Sleeps `seconds`, letting other coroutines of the scheduler run meanwhile. Returns the name of the
-- signal when a trapped SIGINT/SIGTERM cut the sleep short, else nil.
function M.sleep(seconds)
  if not seconds or not (seconds > 0) then return interrupted() end -- luacheck: ignore 581
  if seconds > MAX_SLEEP then seconds = MAX_SLEEP end
  if current() then
    return co_yield("sleep", seconds)
  end
  local nsleep = ngx_sleep()
  if nsleep then
    nsleep(seconds)
  elseif not interrupted() then
    core.sleep(seconds)
  end
  return interrupted()
end

-- The scheduler
--
-- Its cost per event does not grow with the number of waiting coroutines: a finished transfer comes back
-- from engine:perform() (libcurl's completion list) and wakes exactly the coroutine that waits for it;
-- sleepers and await deadlines sit in a binary heap of timers; nothing scans all waiters per tick.

local Scheduler = {}
Scheduler.__index = Scheduler

local function new_scheduler()
  return setmetatable({
    ready = {},       -- array of {co, pack(values to resume with)}
    waiting = {},     -- transfer -> {co=, engine=} (its timer entry, if any, is entry.timer)
    engines = {},     -- engine -> number of transfers waited on
    heap = {},        -- timers: {at=, co=, transfer=|nil}, smallest `at` first
    nengines = 0,
    alive = 0,        -- coroutines not yet finished
    handles = {},     -- co -> handle
  }, Scheduler)
end

-- The timer heap.
local function heap_push(heap, e)
  local i = #heap + 1
  heap[i] = e
  while i > 1 do
    local parent = (i - i % 2) / 2
    if heap[parent].at <= e.at then break end
    heap[i], heap[parent] = heap[parent], e
    i = parent
  end
end

local function heap_pop(heap)
  local n = #heap
  local top = heap[1]
  heap[1] = heap[n]
  heap[n] = nil
  n = n - 1
  local i = 1
  while true do
    local l, smallest = 2 * i, i
    if l <= n and heap[l].at < heap[smallest].at then smallest = l end
    if l + 1 <= n and heap[l + 1].at < heap[smallest].at then smallest = l + 1 end
    if smallest == i then break end
    heap[i], heap[smallest] = heap[smallest], heap[i]
    i = smallest
  end
  return top
end

local Handle = {}
Handle.__index = Handle

function Scheduler:spawn(fn, ...)
  local co = co_create(fn)
  local h = setmetatable({ co = co, done = false, joiners = {} }, Handle)
  owner[co] = self
  self.handles[co] = h
  self.alive = self.alive + 1
  self.ready[#self.ready + 1] = { co, pack(...) }
  return h
end

function Scheduler:finish(co, ok, ...)
  local h = self.handles[co]
  self.handles[co] = nil
  self.alive = self.alive - 1
  h.done = true
  if ok then
    h.results = pack(...)
  else
    h.error = (...)
  end
  for _, j in ipairs(h.joiners) do
    self.ready[#self.ready + 1] = { j, pack() }
  end
  h.joiners = nil
end

-- Stops waiting for a transfer (it finished, or its waiter's deadline came).
function Scheduler:unwait(transfer)
  local w = self.waiting[transfer]
  if not w then return nil end
  self.waiting[transfer] = nil
  local n = self.engines[w.engine] - 1
  if n == 0 then
    self.engines[w.engine] = nil
    self.nengines = self.nengines - 1
  else
    self.engines[w.engine] = n
  end
  if w.timer then w.timer.dead = true end
  return w
end

-- Resumes one coroutine and files what it asks for next.
function Scheduler:step(co, args)
  local res = pack(co_resume(co, unpack(args, 1, args.n)))
  if co_status(co) == "dead" then
    return self:finish(co, unpack(res, 1, res.n))
  end
  local what = res[2]
  local sig = interrupted()
  if sig and (what == "await" or what == "sleep") then
    -- after Ctrl-C nothing waits: every call returns its interrupted error at once
    self.ready[#self.ready + 1] = { co, what == "await" and pack(res[4]:done(), sig) or pack(sig) }
    return
  end
  if what == "await" then
    local engine, transfer, timeout = res[3], res[4], res[5]
    if transfer:done() then
      self.ready[#self.ready + 1] = { co, pack(true) }
      return
    end
    local w = { co = co, engine = engine }
    self.waiting[transfer] = w
    local n = self.engines[engine]
    if not n then self.nengines = self.nengines + 1 end
    self.engines[engine] = (n or 0) + 1
    if timeout then
      w.timer = { at = now() + timeout, co = co, transfer = transfer }
      heap_push(self.heap, w.timer)
    end
  elseif what == "sleep" then
    heap_push(self.heap, { at = now() + res[3], co = co })
  elseif what == "join" then
    local h = res[3]
    if h.done then
      self.ready[#self.ready + 1] = { co, pack() }
    else
      h.joiners[#h.joiners + 1] = co
    end
  else
    -- a yield the scheduler does not own (a coroutine library inside the user's function): resume it
    self.ready[#self.ready + 1] = { co, pack() }
  end
end

-- Wakes everyone after a trapped signal.
function Scheduler:interrupt(sig)
  for transfer, w in pairs(self.waiting) do
    self:unwait(transfer)
    self.ready[#self.ready + 1] = { w.co, pack(false, sig) }
  end
  for _, e in ipairs(self.heap) do
    if not e.dead and not e.transfer then self.ready[#self.ready + 1] = { e.co, pack(sig) } end
  end
  self.heap = {}
end

--- One round: resume whoever is ready, drive the engines, wake whoever is done, and wait at most
-- max_wait_ms (math.huge: until something happens) for the next event. Returns the number of
-- coroutines still alive. The Neovim adapter calls it from a timer with max_wait_ms = 0.
function Scheduler:tick(max_wait_ms)
  while #self.ready > 0 do
    local batch = self.ready
    self.ready = {}
    for i = 1, #batch do self:step(batch[i][1], batch[i][2]) end
  end
  if self.alive == 0 then return 0 end

  -- drive every engine that has a waiter; wake exactly the waiters of the transfers that finished
  for engine in pairs(self.engines) do
    local _, finished = engine:perform()
    if finished then
      for i = 1, #finished do
        local w = self:unwait(finished[i])
        if w then self.ready[#self.ready + 1] = { w.co, pack(true) } end
      end
    end
  end
  local sig = interrupted()
  if sig then
    self:interrupt(sig)
    return self.alive
  end
  local heap, t = self.heap, now()
  while heap[1] and (heap[1].dead or heap[1].at <= t) do
    local e = heap_pop(heap)
    if not e.dead then
      if e.transfer then
        self:unwait(e.transfer)
        self.ready[#self.ready + 1] = { e.co, pack(false) }
      else
        self.ready[#self.ready + 1] = { e.co, pack() }
      end
    end
  end

  if #self.ready == 0 and max_wait_ms > 0 then
    local nearest = heap[1] and heap[1].at or math.huge
    local wait_ms = nearest == math.huge and 1000 or math.max(0, (nearest - t) * 1000)
    wait_ms = math.min(wait_ms, max_wait_ms)
    local nsleep = ngx_sleep()
    if nsleep then
      -- inside nginx: never block the worker; let it serve others while we wait
      nsleep(math.max(NGX_STEP_MIN, math.min(wait_ms / 1000, NGX_STEP_MAX)))
    elseif self.nengines == 1 then
      next(self.engines):poll(wait_ms)
    elseif self.nengines > 1 then
      -- several clients: one wait over all their sockets and timers
      local list = {}
      for engine in pairs(self.engines) do list[#list + 1] = engine end
      core.wait_all(list, wait_ms)
    elseif nearest ~= math.huge then
      core.sleep(wait_ms / 1000)
    else
      error("jimeng: every coroutine is waiting and nothing can wake them (a join cycle?)")
    end
  end
  return self.alive
end

function Scheduler:loop()
  while self:tick(math.huge) > 0 do end
end

--- Runs fn(...) in a scheduler: every API call made by it, and by the coroutines it spawns, runs
-- concurrently with the others. Returns what fn returns once fn and every spawned coroutine are done;
-- raises fn's error if fn raised.
-- While it runs, SIGINT and SIGTERM are trapped (unless the program trapped them already, as the CLI
-- does): every call in flight returns an `interrupted` error within a quarter of a second (with the task
-- id it concerns), nothing new is sent, and run returns; then the signals' old handlers are back.
function M.run(fn, ...)
  assert(type(fn) == "function", "jimeng.run: fn must be a function")
  local sched = current()
  if sched then return fn(...) end -- already inside a scheduler: the same one runs it
  sched = new_scheduler()
  local h = sched:spawn(fn, ...)
  local mine = core.trap_signals()
  local ok, err = pcall(sched.loop, sched)
  if mine then
    core.untrap_signals()
    core.clear_interrupt()
  end
  if not ok then error(err, 0) end
  if h.error ~= nil then error(h.error, 0) end
  return unpack(h.results, 1, h.results.n)
end

--- Starts fn(...) as a new coroutine of the current scheduler; returns its handle.
-- Outside a scheduler it runs fn at once and returns a finished handle.
function M.spawn(fn, ...)
  assert(type(fn) == "function", "jimeng.spawn: fn must be a function")
  local sched = current()
  if sched then return sched:spawn(fn, ...) end
  local res = pack(pcall(fn, ...))
  local h = setmetatable({ done = true }, Handle)
  if res[1] then
    h.results = pack(unpack(res, 2, res.n))
  else
    h.error = res[2]
  end
  return h
end

--- Waits for this handle's coroutine; returns its results, or nil and its error if it raised.
function Handle:wait()
  if not self.done then
    assert(current(), "jimeng: a handle can only be waited for inside jimeng.run")
    co_yield("join", self)
  end
  if self.error ~= nil then return nil, self.error end
  return unpack(self.results, 1, self.results.n)
end

--- Waits for every handle (or function, spawned here) in list. Returns two arrays: the first value each
-- returned, and the error of each that failed (its second return value when the first was nil, or
-- what it raised). One failing never stops the others.
function M.gather(list)
  local handles = {}
  for i, item in ipairs(list) do
    handles[i] = type(item) == "function" and M.spawn(item) or item
  end
  local values, errors = {}, {}
  for i, h in ipairs(handles) do
    local v, err = h:wait()
    values[i] = v
    if v == nil then errors[i] = err end
  end
  return values, errors
end

M.in_scheduler = function() return current() ~= nil end

--- A scheduler to drive by hand (host event loops): sched:spawn(fn, ...) -> handle, sched:tick(0).
M.scheduler = new_scheduler

return M
