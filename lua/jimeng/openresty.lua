--- The OpenResty (nginx + its Lua module) host adapter: one stepper per worker.
-- A request that waits for its transfer sleeps on an ngx.semaphore; one timer (ngx.timer.at) per worker
-- drives every engine that has a waiter while anything is in flight, and posts exactly the semaphores of
-- the transfers that finished. So the cost of a step does not grow with the number of waiting requests:
-- a step is one poll(2) without waiting over exactly the sockets libcurl asked to watch, then a socket action
-- for each ready one and for libcurl's timer when due (engine:step_sockets); curl_multi_perform, which looks at
-- every transfer's socket, only once a second as a sweep. Sleeping between polls is ngx.sleep.
-- Where nginx cannot yield (init, set_by_lua, header and body filters, log), the blocking adapter serves.
-- runtime.lua picks this adapter when it loads inside nginx.
local M = { name = "openresty" }

local core = require "jimeng.core"

local ngx = rawget(_G, "ngx")
local blocking -- runtime's blocking adapter (set by runtime through M.fallback, to avoid a require cycle)

-- Phases in which ngx.sleep and semaphores may yield the request's coroutine to nginx.
local YIELD_PHASES = {
  rewrite = true, access = true, content = true, timer = true, ssl_cert = true,
  ssl_session_fetch = true, ssl_client_hello = true, precontent = true,
}

local function can_yield()
  return YIELD_PHASES[ngx.get_phase()] == true
end

-- The stepper sleeps STEP_MIN after a step that found work, doubling up to STEP_MAX while nothing happens:
-- a transfer's answer is picked up within STEP_MAX, and an idle wait costs at most 1/STEP_MAX wakeups a second.
M.STEP_MIN, M.STEP_MAX = 0.002, 0.02

local waiting = {}   -- transfer -> semaphore of the request waiting for it
local engines = {}   -- engine -> number of waiting transfers
local orphans = setmetatable({}, { __mode = "k" }) -- engine -> set of transfers finished that no request waited on
local nwaiting = 0
local running = false

M.stats = { steps = 0, performs = 0, wakeups = 0 } -- what the stepper did (bench, specs)

local semaphore
local function new_semaphore()
  semaphore = semaphore or require "ngx.semaphore"
  return assert(semaphore.new(0))
end

local function unregister(engine, transfer)
  if not waiting[transfer] then return end
  waiting[transfer] = nil
  nwaiting = nwaiting - 1
  local n = engines[engine] - 1
  engines[engine] = n > 0 and n or nil
end

-- Hands the finished transfers of one engine to their waiters (forgotten here at once: a request that nginx
-- ended meanwhile leaves nothing behind); keeps the others for a scheduler's drive.
local function hand_over(engine, finished)
  if not finished then return end
  for i = 1, #finished do
    local t = finished[i]
    local sema = waiting[t]
    if sema then
      unregister(engine, t)
      sema:post(1)
      M.stats.wakeups = M.stats.wakeups + 1
    else
      local set = orphans[engine]
      if not set then
        set = setmetatable({}, { __mode = "k" }) -- a transfer nobody waits on is collected with it
        orphans[engine] = set
      end
      set[t] = true
    end
  end
end

-- A full curl_multi_perform this often as well: a transfer stepped by someone else's perform (the blocking
-- fallback) has sockets libcurl never reported to step_sockets.
M.SWEEP = 1
local last_sweep = 0

-- One step of every engine with a waiter: returns whether anything happened.
local function step()
  local busy = false
  M.stats.steps = M.stats.steps + 1
  local sweep = core.now() - last_sweep >= M.SWEEP
  if sweep then last_sweep = core.now() end
  for engine in pairs(engines) do
    local _, finished, ready = engine:step_sockets()
    if ready > 0 then
      busy = true
      M.stats.performs = M.stats.performs + 1
    end
    hand_over(engine, finished)
    if sweep then
      _, finished = engine:perform()
      hand_over(engine, finished)
    end
  end
  return busy
end

local function stepper(premature)
  if premature then -- the worker is exiting: every waiter returns, its transfer not done
    for _, sema in pairs(waiting) do sema:post(1) end
    running = false
    return
  end
  local pause = M.STEP_MIN
  while nwaiting > 0 do
    local ok, busy = pcall(step)
    if not ok then
      ngx.log(ngx.ERR, "jimeng: the stepper failed: ", tostring(busy))
      for _, sema in pairs(waiting) do sema:post(1) end
      break
    end
    if nwaiting == 0 then break end
    pause = busy and M.STEP_MIN or math.min(pause * 2, M.STEP_MAX)
    ngx.sleep(pause)
  end
  running = false
end

local function start_stepper()
  if running then return true end
  local ok, err = ngx.timer.at(0, stepper)
  if not ok then return nil, err end
  running = true
  return true
end

--- Waits for one transfer: sleeps on a semaphore that the worker's stepper posts when it finishes.
function M.await(engine, transfer, timeout)
  if transfer:done() then return true end
  if not can_yield() then return blocking.await(engine, transfer, timeout) end
  local sema = new_semaphore()
  waiting[transfer] = sema
  nwaiting = nwaiting + 1
  engines[engine] = (engines[engine] or 0) + 1
  local ok, err = start_stepper()
  if not ok then
    unregister(engine, transfer)
    ngx.log(ngx.WARN, "jimeng: no timer for the stepper (", tostring(err), "): this request steps its own transfer")
    return blocking.await(engine, transfer, timeout)
  end
  local deadline = timeout and core.now() + timeout
  while not transfer:done() do
    local left = deadline and deadline - core.now() or 60
    if left <= 0 then break end
    local posted, why = sema:wait(left)
    if not posted and why ~= "timeout" then break end -- the worker is exiting
  end
  unregister(engine, transfer)
  return transfer:done()
end

function M.sleep(seconds)
  if not can_yield() then return blocking.sleep(seconds) end
  ngx.sleep(seconds)
  return core.interrupted()
end

--- A scheduler inside a request (jimeng.run, a batch): its own step of an engine, plus whatever the stepper
-- finished for it meanwhile.
function M.drive(engine)
  local _, finished = engine:step_sockets()
  if finished then -- a request's transfer finished by this step: its request is woken as the stepper would
    local mine = {}
    for i = 1, #finished do
      local sema = waiting[finished[i]]
      if sema then
        unregister(engine, finished[i])
        sema:post(1)
      else
        mine[#mine + 1] = finished[i]
      end
    end
    finished = mine
  end
  local set = orphans[engine]
  if set then
    orphans[engine] = nil
    finished = finished or {}
    for t in pairs(set) do finished[#finished + 1] = t end
  end
  return finished
end

function M.idle(sched, engines_, wait_ms, nearest)
  if not can_yield() then return blocking.idle(sched, engines_, wait_ms, nearest) end
  -- never block the worker: let it serve others while the scheduler waits
  ngx.sleep(math.max(M.STEP_MIN, math.min(wait_ms / 1000, M.STEP_MAX)))
  return sched
end

function M.deliver(fn, ...)
  if fn then return fn(...) end
end

--- Requests waiting now, and whether the stepper runs.
function M.waiting()
  return nwaiting, running
end

function M.fallback(adapter)
  blocking = adapter
end

return M
