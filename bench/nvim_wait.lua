-- Run by bench/host.lua inside `nvim --headless`: $BENCH_N generates wait on tasks far longer than the
-- measurement (polled every 5 s), through $BENCH_ADAPTER: "new" (this checkout's event-driven jimeng.nvim),
-- "old" (the 10 ms tick adapter, from $BENCH_OLD_LUA) or "idle" (no generate: a 5 s timer only). Once every
-- create is answered it writes "ready" to $BENCH_READY and idles until killed.
local n = tonumber(os.getenv("BENCH_N")) or 0
local adapter = os.getenv("BENCH_ADAPTER")
local ready_file = os.getenv("BENCH_READY")
local root = os.getenv("BENCH_ROOT")

local function ready()
  local f = assert(io.open(ready_file, "w"))
  f:write("ready\n")
  f:close()
end

if adapter == "idle" then
  local t = vim.loop.new_timer()
  t:start(5000, 5000, function() end)
  ready()
  return
end

package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
if adapter == "old" then package.path = os.getenv("BENCH_OLD_LUA") .. "/?.lua;" .. package.path end
package.cpath = root .. "/build/luajit/?.so;" .. package.cpath
local nvim = require "jimeng.nvim"
local created = 0

-- The adapter's own counts over the measurement window ($BENCH_SKIP s after the creates, $BENCH_WINDOW s
-- long): its timer's firings (wake-ups with no transfer to serve: a poll or a sleep is due) and its socket
-- handles' (a transfer in flight). Two one-shot timers read them: two wake-ups more in the window.
local function window_stats()
  if not nvim.stats then return end
  local skip, window = tonumber(os.getenv("BENCH_SKIP")), tonumber(os.getenv("BENCH_WINDOW"))
  local s0
  local t = vim.loop.new_timer()
  t:start(skip * 1000, 0, function()
    s0 = { timer = nvim.stats.timer, poll = nvim.stats.poll }
    t:start(window * 1000, 0, function()
      local f = assert(io.open(os.getenv("BENCH_STATS"), "w"))
      f:write(("timer %d poll %d\n"):format(nvim.stats.timer - s0.timer, nvim.stats.poll - s0.poll))
      f:close()
    end)
  end)
end
for i = 1, n do
  nvim.generate({ prompt = ("bench waiting %d sandbox:slow=600"):format(i) }, {
    output_dir = os.getenv("BENCH_OUT"), interval = 5,
    on_created = function()
      created = created + 1
      if created == n then
        window_stats()
        ready()
      end
    end,
  })
end
