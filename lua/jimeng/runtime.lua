--- Where a call waits: the coroutine scheduler of `jimeng.run`, or the host's adapter.
-- Every network call is a non-blocking libcurl transfer plus `await`. Inside a coroutine that a scheduler
-- runs, `await` and `sleep` yield to it, and the scheduler waits once for every transfer and timer of every
-- coroutine. Anywhere else they go to the host adapter, chosen once when this module loads: blocking (the
-- thread waits in poll(2) on exactly libcurl's sockets, its timer and the signal pipe: src/loop.c) or
-- OpenResty's (jimeng.openresty: one stepper per worker drives the transfers, the request sleeps on a
-- semaphore). Neovim drives a scheduler from its own event loop (jimeng.nvim, with engine:watch and
-- engine:socket_action). Every host waits on the same thing, libcurl's socket and timer wishes; they differ
-- only in who waits. C never yields: only this Lua code does, so the same code runs on Lua 5.1 to 5.4 and
-- LuaJIT.
--
-- An adapter is a table of these functions, the whole interface between the client and a host:
--   sleep(seconds) -> signal name | nil          how a call outside a scheduler sleeps
--   await(engine, transfer, timeout) -> done, sig how a call outside a scheduler waits for its transfer
--   drive(engine) -> finished | nil              a scheduler's step of one engine (engine:perform's list)
--   idle(sched, engines, wait_ms)                a scheduler's one wait between rounds (jimeng.run)
--   wait(engines, wait_ms) -> finished | nil    optional: drive and idle in one, a wait over every engine that
--                                                acts only on what is ready (the blocking adapter's core.wait)
--   deliver(fn, ...)                             how results and progress reach user code
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

-- What a call yields to its scheduler: private values, so that a yield of the caller's own (a callback's
-- coroutine.yield("sleep", 1e9)) is never taken for one of ours: it is resumed at once.
local AWAIT, SLEEP, JOIN = {}, {}, {}

-- The scheduler of each coroutine it runs (weak keys: a finished coroutine is forgotten).
local owner = setmetatable({}, { __mode = "k" })

--- The current coroutine's scheduler, or nil.
local function current()
  local co = co_running()
  return co and owner[co], co
end

-- The blocking adapter: a plain Lua program waits in poll(2) on libcurl's sockets and timer and the signal
-- pipe (engine:wait, core.wait: src/loop.c), never spinning; a wake-up acts only on the sockets that moved.
local blocking = { name = "blocking" }

function blocking.await(engine, transfer, timeout)
  local deadline = timeout and now() + timeout
  local wait_ms = 0 -- the first look acts on what is due (a new request: libcurl's timer at 0)
  while true do
    engine:wait(wait_ms)
    if transfer:done() then return true end
    local sig = interrupted()
    if sig then return false, sig end
    wait_ms = 1000
    if deadline then
      local left = deadline - now()
      if left <= 0 then return false end
      wait_ms = math.min(wait_ms, left * 1000)
    end
  end
end

function blocking.sleep(seconds)
  if not interrupted() then core.sleep(seconds) end
  return interrupted()
end

function blocking.drive(engine)
  local _, finished = engine:wait(0)
  return finished
end

-- A wait with nothing to wait for would never end.
local function check_wakeable(engines, nearest)
  if #engines == 0 and nearest == math.huge then
    error("jimeng: every coroutine is waiting and nothing can wake them (a join cycle?)")
  end
end

function blocking.idle(sched, engines, wait_ms, nearest)
  check_wakeable(engines, nearest)
  -- one wait over every client's sockets and timers (none: a sleep a trapped signal cuts short), acting on
  -- what is ready: the transfers it finishes are handed to their waiters here
  local finished = core.wait(engines, wait_ms)
  if finished then sched:deliver(finished) end
  return sched
end

function blocking.wait(engines, wait_ms)
  return (core.wait(engines, wait_ms))
end

function blocking.deliver(fn, ...)
  if fn then return fn(...) end
end

M.blocking = blocking

-- The adapter of this process, chosen once: OpenResty's inside nginx, else blocking.
local host = blocking
if type(rawget(_G, "ngx")) == "table" and rawget(_G, "ngx").timer then
  -- no pcall: a missing adapter must fail loudly, not block the worker in the blocking one
  local openresty = require "jimeng.openresty"
  openresty.fallback(blocking)
  host = openresty
end

--- The host adapter in use.
function M.host() return host end

--- Replaces the host adapter (a table with sleep, await, drive, idle and deliver, and optionally wait);
-- returns the old one.
function M.use(adapter)
  for _, k in ipairs { "sleep", "await", "drive", "idle", "deliver" } do
    assert(type(adapter[k]) == "function", "jimeng.runtime.use: the adapter needs " .. k)
  end
  local old = host
  host = adapter
  return old
end

--- Waits until a transfer is done or `timeout` seconds pass; returns whether it is done, and the name
-- of the signal when a trapped SIGINT/SIGTERM (core.trap_signals) ended the wait (or "cancelled" when a host
-- cancelled the call).
function M.await(engine, transfer, timeout)
  if transfer:done() then return true end
  if current() then
    return co_yield(AWAIT, engine, transfer, timeout)
  end
  return host.await(engine, transfer, timeout)
end

--- Sleeps `seconds`, letting other coroutines of the scheduler run meanwhile. Returns the name of the
-- signal when a trapped SIGINT/SIGTERM cut the sleep short (or "cancelled"), else nil.
function M.sleep(seconds)
  if type(seconds) ~= "number" and seconds ~= nil then
    error(("jimeng.sleep(seconds): seconds must be a number; got a %s"):format(type(seconds)), 2)
  end
  if not seconds or not (seconds > 0) then return interrupted() end -- luacheck: ignore 581
  if seconds > MAX_SLEEP then seconds = MAX_SLEEP end
  if current() then
    return co_yield(SLEEP, seconds)
  end
  return host.sleep(seconds)
end

-- The scheduler
--
-- Its cost per event does not grow with the number of waiting coroutines: a finished transfer comes back
-- from engine:perform() (libcurl's completion list) and wakes exactly the coroutine that waits for it;
-- sleepers and await deadlines sit in a binary heap of timers; nothing scans all waiters per tick.

local Scheduler = {}
Scheduler.__index = Scheduler

-- What a coroutine is resumed with, for the common wake-ups: shared, never written (no table per wake-up).
local ARGS_NONE, ARGS_TRUE, ARGS_FALSE = pack(), pack(true), pack(false)

-- Sleeps of a second or more end on a grid: 0.1 s, and 0.25 s from 5 s (at most 10%, then 5%, late). The
-- polls of many tasks, spread over their interval, then share wake-ups instead of each waking the process:
-- a wake-up after a sleep costs more than the poll itself (caches gone cold; bench/README.md).
local function coalesced(at, seconds)
  local grid = seconds >= 5 and 0.25 or seconds >= 1 and 0.1
  if not grid then return at end
  return math.ceil(at / grid) * grid
end

local function new_scheduler()
  return setmetatable({
    ready = {},       -- coroutines to resume, in order (reused: swapped with spare by run_ready)
    args = {},        -- what each is resumed with (ARGS_* or a pack)
    spare = {}, spare_args = {},
    waiting = {},     -- transfer -> {co=, engine=} (its timer entry, if any, is entry.timer)
    engines = {},     -- engine -> number of transfers waited on
    list = {},        -- the same engines as an array, kept as they come and go (a wait walks no table)
    slot = {},        -- engine -> its index in list
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

--- Files a coroutine to resume with args (a pack).
function Scheduler:wake(co, args)
  local n = #self.ready + 1
  self.ready[n], self.args[n] = co, args
end

function Scheduler:spawn(fn, ...)
  local co = co_create(fn)
  local h = setmetatable({ co = co, done = false, joiners = {} }, Handle)
  owner[co] = self
  self.handles[co] = h
  self.alive = self.alive + 1
  self:wake(co, pack(...))
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
    self:wake(j, ARGS_NONE)
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
    local list, slot = self.list, self.slot
    local i, last = slot[w.engine], list[#list]
    list[i], slot[last] = last, i
    list[#list], slot[w.engine] = nil, nil
  else
    self.engines[w.engine] = n
  end
  if w.timer then w.timer.dead = true end
  return w
end

-- Resumes one coroutine and files what it asks for next.
function Scheduler:step(co, args)
  return self:file(co, co_resume(co, unpack(args, 1, args.n)))
end

-- What a coroutine's resume gave (no table made of it): its end, with all it returned, or a yield.
function Scheduler:file(co, ...)
  if co_status(co) == "dead" then
    return self:finish(co, ...)
  end
  return self:yielded(co, ...)
end

-- What a coroutine asked for when it yielded.
function Scheduler:yielded(co, _, what, a1, a2, a3)
  local h = self.handles[co]
  local sig = interrupted() or h.cancelled
  if sig and what == AWAIT and not interrupted() and a2:paid() and a2:handed_over() and not a2:done() then
    -- a create on the wire when its call was cancelled: its answer names the task that may now exist, so
    -- it is awaited (within its own timeout) and the cancel lands at the call's next wait
    sig = nil
  end
  if sig and (what == AWAIT or what == SLEEP) then
    -- after Ctrl-C (or a cancel) nothing waits: every call returns its interrupted error at once
    self:wake(co, what == AWAIT and pack(a2:done(), sig) or pack(sig))
    return
  end
  if what == AWAIT then
    local engine, transfer, timeout = a1, a2, a3
    if transfer:done() then
      self:wake(co, ARGS_TRUE)
      return
    end
    -- the handle's own wait entry (one await at a time; unwait's callers read it at once)
    local w = h.wait_entry
    if not w then
      w = {}
      h.wait_entry = w
    end
    w.co, w.engine, w.timer = co, engine, nil
    self.waiting[transfer] = w
    h.parked = transfer
    local n = self.engines[engine]
    if not n then
      self.nengines = self.nengines + 1
      local list = self.list
      list[#list + 1] = engine
      self.slot[engine] = #list
    end
    self.engines[engine] = (n or 0) + 1
    if timeout then
      w.timer = { at = now() + timeout, co = co, transfer = transfer }
      heap_push(self.heap, w.timer)
    end
    if self.on_await then self.on_await(engine) end
  elseif what == SLEEP then
    local at = coalesced(now() + a1, a1)
    -- the handle's own timer entry, reused unless the heap still holds it (dead)
    local e = h.timer
    if e and not e.queued then
      e.at, e.dead = at, nil
    else
      e = { at = at, co = co }
      h.timer = e
    end
    e.queued = true
    h.parked = e
    heap_push(self.heap, e)
  elseif what == JOIN then
    local j = a1
    if j.done then
      self:wake(co, ARGS_NONE)
    else
      j.joiners[#j.joiners + 1] = co
    end
  else
    -- a yield the scheduler does not own (a coroutine library inside the user's function, a callback's own
    -- yield): resumed at once; only jimeng.sleep sleeps, at most a day at a time
    self:wake(co, ARGS_NONE)
  end
end

--- Cancels one coroutine's calls: its wait ends now with `reason` (as a trapped signal would end it), and
-- every later wait of it too, so that its calls return their interrupted errors (a download keeps its
-- .part) and it finishes. A create on the wire is awaited first: its answer names the task paid for.
-- Coroutines it spawned are not cancelled with it: cancel each handle (or have it check its own).
function Scheduler:cancel(h, reason)
  if h.done or h.cancelled then return false end
  reason = reason or "cancelled"
  h.cancelled = reason
  local parked = h.parked
  if parked and self.waiting[parked] then
    if parked:paid() and parked:handed_over() and not parked:done() then return true end
    self:unwait(parked)
    self:wake(h.co, pack(false, reason))
  elseif type(parked) == "table" and parked.co == h.co and not parked.dead then
    parked.dead = true
    self:wake(h.co, pack(reason))
  end
  h.parked = nil
  return true
end

-- Wakes everyone after a trapped signal.
function Scheduler:interrupt(sig)
  for transfer, w in pairs(self.waiting) do
    self:unwait(transfer)
    self:wake(w.co, pack(false, sig))
  end
  local heap = self.heap
  for i = 1, #heap do
    local e = heap[i]
    e.queued = nil
    if not e.dead and not e.transfer then self:wake(e.co, pack(sig)) end
  end
  for i = #heap, 1, -1 do heap[i] = nil end
end

--- Resumes whoever is ready, until nobody is. Returns the number of coroutines still alive.
function Scheduler:run_ready()
  while #self.ready > 0 do
    -- this batch runs from the one list while new wake-ups go to the other; both are reused
    local batch, args = self.ready, self.args
    self.ready, self.args, self.spare, self.spare_args = self.spare, self.spare_args, batch, args
    for i = 1, #batch do
      local co, a = batch[i], args[i]
      batch[i], args[i] = nil, nil
      local h = self.handles[co]
      if h then h.parked = nil end
      self:step(co, a)
    end
  end
  return self.alive
end

--- Wakes exactly the waiters of these finished transfers (what engine:perform or engine:socket_action
-- returned).
function Scheduler:deliver(finished)
  if not finished then return end
  for i = 1, #finished do
    local w = self:unwait(finished[i])
    if w then self:wake(w.co, ARGS_TRUE) end
  end
end

--- Wakes the sleepers and await deadlines due at time t. Returns when the next one is due (math.huge: none).
function Scheduler:expire(t)
  local heap = self.heap
  while heap[1] and (heap[1].dead or heap[1].at <= t) do
    local e = heap_pop(heap)
    e.queued = nil
    if not e.dead then
      if e.transfer then
        self:unwait(e.transfer)
        self:wake(e.co, ARGS_FALSE)
      else
        self:wake(e.co, ARGS_NONE)
      end
    end
  end
  return heap[1] and heap[1].at or math.huge
end

--- One round: resume whoever is ready, drive the engines (through the host adapter), wake whoever is done,
-- and wait at most max_wait_ms (math.huge: until something happens) for the next event. Returns the number
-- of coroutines still alive.
-- client:close() from another coroutine: the closed engine's transfers ended (cancelled), and their waiters
-- wake now rather than wait on an engine nobody drives any more.
function Scheduler:drop_closed()
  local list, closed = self.list, nil
  for i = 1, #list do
    local engine = list[i]
    if engine.closed and engine:closed() then
      closed = closed or {}
      closed[engine] = true
    end
  end
  if not closed then return end
  for transfer, w in pairs(self.waiting) do
    if closed[w.engine] then
      self:unwait(transfer)
      self:wake(w.co, ARGS_TRUE)
    end
  end
end

function Scheduler:tick(max_wait_ms)
  if self:run_ready() == 0 then return 0 end
  self:drop_closed()
  if #self.ready > 0 then return self.alive end
  local list = self.list

  if host.wait then
    -- one wait over every engine with a waiter, as long as the nearest timer allows (none when someone is
    -- ready): it acts only on the sockets that moved and hands back the transfers that finished
    local t = now()
    local nearest = self:expire(t)
    local wait_ms = 0
    if #self.ready == 0 and max_wait_ms > 0 then
      check_wakeable(list, nearest)
      wait_ms = nearest == math.huge and 1000 or math.max(0, (nearest - t) * 1000)
      wait_ms = math.min(wait_ms, max_wait_ms)
    end
    self:deliver(host.wait(list, wait_ms))
    local sig = interrupted()
    if sig then
      self:interrupt(sig)
      return self.alive
    end
    self:expire(now())
    return self.alive
  end

  -- drive every engine that has a waiter; wake exactly the waiters of the transfers that finished (backwards:
  -- an engine left without waiters leaves the list in its place)
  for i = #list, 1, -1 do
    self:deliver(host.drive(list[i]))
  end
  local sig = interrupted()
  if sig then
    self:interrupt(sig)
    return self.alive
  end
  local t = now()
  local nearest = self:expire(t)

  if #self.ready == 0 and max_wait_ms > 0 then
    local wait_ms = nearest == math.huge and 1000 or math.max(0, (nearest - t) * 1000)
    wait_ms = math.min(wait_ms, max_wait_ms)
    host.idle(self, list, wait_ms, nearest)
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
    co_yield(JOIN, self)
  end
  if self.error ~= nil then return nil, self.error end
  return unpack(self.results, 1, self.results.n)
end

--- Waits for every handle (or function, spawned here) in list. Returns two arrays: the first value each
-- returned, and the error of each that failed (its second return value when the first was nil, or
-- what it raised). One failing never stops the others.
function M.gather(list)
  -- misuse raises, naming the call and the argument; every item is checked before any is started
  if type(list) ~= "table" then
    error(("jimeng.gather(list): list must be an array of functions or handles; got a %s"):format(type(list)), 2)
  end
  for i, item in ipairs(list) do
    if type(item) ~= "function" and getmetatable(item) ~= Handle then
      error(("jimeng.gather(list): list[%d] must be a function or a handle (of jimeng.spawn); got a %s"):format(i,
        type(item)), 2)
    end
  end
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
