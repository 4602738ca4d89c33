--- Neovim adapter: the client's work runs on Neovim's own event loop, event-driven, never blocking the editor.
-- One scheduler per session runs every call as a coroutine. libuv watches exactly libcurl's sockets (a
-- vim.loop poll handle each, from engine:watch) and one timer, armed for the nearest of libcurl's timeout
-- and the scheduler's next wake-up: nothing ticks, during transfers or between polls. The sockets and the
-- timer call engine:socket_action, which hands back the finished transfers; their coroutines resume. Every
-- result or progress report reaches user code on the main loop (vim.schedule), where vim.api is safe.
--
--   local job = require("jimeng.nvim").generate({ prompt = "a red kite" }, {
--     output = "kite.mp4",
--     on_status = function(task) vim.notify(task.status) end,
--     on_done = function(result, err) vim.notify(result and result.path or tostring(err)) end,
--   })
--   job:cancel() -- stops its transfers; a download keeps its .part; on_done gets the interrupted error
local jimeng = require "jimeng"
local runtime = require "jimeng.runtime"
local core = require "jimeng.core"

local M = {}

local unpack = table.unpack or unpack -- luacheck: ignore 143
local now = core.now

-- Sleeps and await deadlines of the scheduler are woken on a grid of this many milliseconds (late by less
-- than that), so that the polls of many waiting generates share their wake-ups. libcurl's own timer is
-- never delayed.
M.coalesce_ms = 500

-- What the adapter did: uv callbacks that fired (each is a wake-up of the editor's loop caused by jimeng):
-- timer (of which timer_idle: no call was waiting for a transfer, so a sleep or a poll was due), poll (a
-- libcurl socket was ready: a transfer in flight), rounds (scheduler rounds run).
M.stats = { timer = 0, timer_idle = 0, poll = 0, rounds = 0 }

local uv = vim.uv or vim.loop -- vim.uv from 0.10 on, where vim.loop is its deprecated name

-- The driver: one per session.
local sched, timer
local polls = {}   -- fd -> { handle = uv poll, engine = engine }
local engines = setmetatable({}, { __mode = "k" }) -- engines a coroutine waited on: watched
local jobs = {}    -- running calls: { handle =, on_done = }

local function deliver(fn, ...)
  if not fn then return end
  local args = { n = select("#", ...), ... }
  vim.schedule(function() fn(unpack(args, 1, args.n)) end)
end

local pump -- forward

local function close_poll(fd)
  local p = polls[fd]
  if not p then return end
  polls[fd] = nil
  p.handle:stop()
  if not p.handle:is_closing() then p.handle:close() end
end

local function on_socket(p, fd)
  return function(err, events)
    M.stats.poll = M.stats.poll + 1
    if polls[fd] ~= p then return end
    local ok, perr = pcall(function()
      local _, finished = p.engine:socket_action(fd, err and "err" or events)
      sched:deliver(finished)
    end)
    if not ok then deliver(vim.notify, "jimeng: " .. tostring(perr), vim.log.levels.ERROR) end
    pump()
  end
end

-- Applies one engine's socket changes: removals first, so that a number reused by another socket (of this
-- engine or another) is watched again from scratch.
local function apply(engine, changes)
  for fd, what in pairs(changes) do
    if what == "remove" and polls[fd] and polls[fd].engine == engine then close_poll(fd) end
  end
  for fd, what in pairs(changes) do
    if what ~= "remove" then
      local p = polls[fd]
      if p and p.engine ~= engine then
        close_poll(fd)
        p = nil
      end
      if not p then
        local handle = assert(uv.new_socket_poll(fd))
        p = { handle = handle, engine = engine }
        polls[fd] = p
      else
        p.handle:stop() -- re-armed below: the socket behind the number may be a new one
      end
      p.handle:start(what == "in" and "r" or what == "out" and "w" or "rw", on_socket(p, fd))
    end
  end
end

local function finish_jobs()
  for i = #jobs, 1, -1 do
    local job = jobs[i]
    if job.handle.done then
      table.remove(jobs, i)
      local h = job.handle
      if h.error ~= nil then
        deliver(job.on_done, nil, h.error)
      else
        deliver(job.on_done, unpack(h.results, 1, h.results.n))
      end
    end
  end
end

local function on_timer()
  M.stats.timer = M.stats.timer + 1
  if next(sched.engines) == nil then M.stats.timer_idle = M.stats.timer_idle + 1 end
  pump()
end

-- One round: resume the ready coroutines, hand libcurl's socket changes to libuv, run libcurl's timer when it
-- is due, wake due sleepers, until nothing is ready; then arm the one timer, or stop it when nothing waits.
local pumping, again = false, false
local function round()
  M.stats.rounds = M.stats.rounds + 1
  local wake = math.huge
  for _ = 1, 50 do
    again = false
    sched:run_ready()
    finish_jobs()
    local t = now()
    wake = sched:expire(t + 0.001)
    if #sched.ready > 0 then
      again = true
    else
      local curl_wake = math.huge
      for engine in pairs(engines) do
        local changes, tmo, inflight = engine:watch()
        if changes == false then -- closed: libcurl's sockets are gone with it
          engines[engine] = nil
          for fd, p in pairs(polls) do
            if p.engine == engine then close_poll(fd) end
          end
        else
          if changes then apply(engine, changes) end
          if tmo and tmo <= 1 then
            local _, finished = engine:socket_action_timeout()
            sched:deliver(finished)
            again = true
          elseif tmo then
            curl_wake = math.min(curl_wake, t + tmo / 1000)
          elseif inflight == 0 and sched.engines[engine] == nil then
            local watched = false
            for _, p in pairs(polls) do
              if p.engine == engine then watched = true break end
            end
            if not watched then engines[engine] = nil end -- idle: watched again on its next await
          end
        end
      end
      if wake ~= math.huge and M.coalesce_ms > 0 then
        local grid = M.coalesce_ms / 1000
        wake = math.ceil(wake / grid) * grid
      end
      wake = math.min(wake, curl_wake)
    end
    if not again then break end
  end
  if again then wake = now() end -- libcurl keeps asking for more: the next round comes from the loop
  timer:stop()
  if wake ~= math.huge then
    timer:start(math.max(0, math.ceil((wake - now()) * 1000)), 0, on_timer)
  end
end

pump = function()
  if pumping then return end
  pumping = true
  local ok, err = pcall(round)
  pumping = false
  if not ok then
    deliver(vim.notify, "jimeng: " .. tostring(err), vim.log.levels.ERROR)
    -- a round that failed armed nothing: try again in a second rather than leave every call waiting
    timer:stop()
    timer:start(1000, 0, on_timer)
  end
end

local function driver()
  if not sched then
    sched = runtime.scheduler()
    sched.on_await = function(engine) engines[engine] = true end
    timer = assert(uv.new_timer())
  end
  return sched
end

--- Runs fn(...) as a coroutine of the session's scheduler, on Neovim's event loop. on_done(...) receives what
-- fn returns (or nil and the error it raised), on the main loop. Returns a job: job:cancel() stops its calls
-- (see Scheduler:cancel), job:done().
function M.run(fn, on_done, ...)
  assert(type(fn) == "function", "jimeng.nvim.run: fn must be a function")
  local s = driver()
  local handle = s:spawn(fn, ...)
  jobs[#jobs + 1] = { handle = handle, on_done = on_done }
  -- started from the next turn of the loop: the caller (a command) returns at once
  vim.schedule(pump)
  return {
    handle = handle,
    cancel = function()
      local cancelled = s:cancel(handle, "cancelled")
      if cancelled then vim.schedule(pump) end
      return cancelled
    end,
    done = function() return handle.done end,
  }
end

--- Wraps a callback so that it runs on the main loop: the one way anything the driver runs reaches the user.
-- The driver's coroutines run inside libuv callbacks, where Neovim refuses most of its API (vim.notify's
-- nvim_echo, autocommands: E5560 on 0.7); the wrapped function is queued with vim.schedule and runs, in
-- order, from the next turn of the loop. Its error, if any, is Neovim's to show and stops no call.
function M.main_loop(fn)
  return fn and function(...) deliver(fn, ...) end
end
local main_loop = M.main_loop

--- generate without blocking: opts as for client:generate, plus client (default: from the environment)
-- and on_done(result, err). on_created, on_status and on_progress are called on the main loop too.
function M.generate(params, opts)
  opts = opts or {}
  local client = opts.client
  local on_done = opts.on_done
  local call = {}
  for k, v in pairs(opts) do
    if k ~= "client" and k ~= "on_done" then call[k] = v end
  end
  call.on_created = main_loop(opts.on_created)
  call.on_status = main_loop(opts.on_status)
  call.on_progress = main_loop(opts.on_progress)
  return M.run(function()
    local c, err = client, nil
    if not c then c, err = jimeng.new() end
    if not c then return nil, err end
    return c:generate(params, call)
  end, on_done)
end

--- What the driver holds now: sockets watched, whether the timer is armed, calls running.
function M.state()
  local n = 0
  for _ in pairs(polls) do n = n + 1 end
  return { sockets = n, timer_active = timer ~= nil and timer:is_active() or false, running = #jobs }
end

-- The user-facing plugin (commands, setup, notifications) lives in jimeng.plugin; setup is here too so
-- that require("jimeng.nvim").setup{} works as well as require("jimeng").setup{}.
function M.setup(opts)
  return require("jimeng.plugin").setup(opts)
end

return M
