--- Neovim adapter: the client's work runs on a vim.loop timer, never blocking the editor.
-- The scheduler of jimeng.run is stepped without waiting from a timer callback (libuv), and every
-- result or progress report is handed back to the main loop with vim.schedule, where vim.api is safe.
--
--   require("jimeng.nvim").generate({ prompt = "a red kite" }, {
--     output = "kite.mp4",
--     on_status = function(task) vim.notify(task.status) end,
--     on_done = function(result, err) vim.notify(result and result.path or tostring(err)) end,
--   })
local jimeng = require "jimeng"
local runtime = require "jimeng.runtime"

local M = {}

-- How often the timer steps the transfers while work is in flight (milliseconds).
M.interval_ms = 10

local function schedule(fn, ...)
  if not fn then return end
  local args = { n = select("#", ...), ... }
  vim.schedule(function() fn(unpack(args, 1, args.n)) end)
end

--- Runs fn(...) as a coroutine of a scheduler stepped by a vim.loop timer. on_done(...) receives what
-- fn returns (or nil and the error it raised), on the main loop. Returns a handle with :cancel().
function M.run(fn, on_done, ...)
  assert(type(fn) == "function", "jimeng.nvim.run: fn must be a function")
  local uv = vim.loop
  local sched = runtime.scheduler()
  local handle = sched:spawn(fn, ...)
  local timer = uv.new_timer()
  local stopped = false
  local function stop()
    if stopped then return end
    stopped = true
    timer:stop()
    timer:close()
  end
  timer:start(0, M.interval_ms, function()
    local ok, alive = pcall(sched.tick, sched, 0)
    if not ok then
      stop()
      schedule(on_done, nil, alive)
    elseif alive == 0 then
      stop()
      if handle.error ~= nil then
        schedule(on_done, nil, handle.error)
      else
        schedule(on_done, unpack(handle.results, 1, handle.results.n))
      end
    end
  end)
  return { cancel = stop }
end

-- Wraps a callback so that it runs on the main loop.
local function main_loop(fn)
  return fn and function(...) schedule(fn, ...) end
end

--- generate without blocking: opts as for client:generate, plus client (default: from the environment)
-- and on_done(result, err). on_status and on_progress are called on the main loop too.
function M.generate(params, opts)
  opts = opts or {}
  local client = opts.client
  local on_done = opts.on_done
  local call = {}
  for k, v in pairs(opts) do
    if k ~= "client" and k ~= "on_done" then call[k] = v end
  end
  call.on_status = main_loop(opts.on_status)
  call.on_progress = main_loop(opts.on_progress)
  return M.run(function()
    local c, err = client, nil
    if not c then c, err = jimeng.new() end
    if not c then return nil, err end
    return c:generate(params, call)
  end, on_done)
end

return M
