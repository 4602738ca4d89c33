-- bench: a batch of videos under one max_tasks, split over 1, 3 and 6 processes that share the budget (a
-- budget file): the same videos per hour whatever the split. Each process makes its part of the videos
-- (create, wait, download) at once; the budget lets 10 tasks be in flight in all.
--   make bench-budget-split        BENCH_VIDEOS=200 (default), BENCH_SPLITS="1 3 6"
local core = require "jimeng.core"
local sandbox = require "jimeng.sandbox"

local VIDEOS = tonumber(os.getenv("BENCH_VIDEOS") or "") or 200
local SPLITS = {}
for n in (os.getenv("BENCH_SPLITS") or "1 3 6"):gmatch("%d+") do SPLITS[#SPLITS + 1] = tonumber(n) end
local LUA = os.getenv("JIMENG_TEST_LUA") or "lua5.4"

local WORKER = [[
local jimeng = require "jimeng"
local url, budget, first, last, dir = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]), arg[5]
local c = assert(jimeng.new { api_key = "split-key", base_url = url, poll_interval = 0.25, max_tasks = 10,
  budget = budget })
jimeng.run(function()
  local list = {}
  for i = first, last do
    list[#list + 1] = function()
      return assert(c:generate({ prompt = "split " .. i }, { output = dir .. "/v" .. i .. ".mp4" }))
    end
  end
  return jimeng.gather(list)
end)
]]

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

io.write("| processes | videos | wall time | videos per hour | most tasks at once (sandbox) |\n|---|---|---|---|---|\n")
for _, k in ipairs(SPLITS) do
  local sb = assert(sandbox.start { queue_seconds = 0.2, process_seconds = 1 })
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local f = assert(io.open(dir .. "/worker.lua", "w"))
  f:write(WORKER)
  f:close()
  local cmds, per = {}, math.ceil(VIDEOS / k)
  for i = 1, k do
    local first, last = (i - 1) * per + 1, math.min(i * per, VIDEOS)
    if first <= last then
      cmds[#cmds + 1] = ("%s %s %s %s %d %d %s"):format(LUA, q(dir .. "/worker.lua"), q(sb.url), q(dir .. "/budget"),
        first, last, q(dir))
    end
  end
  local t0 = core.now()
  assert(os.execute("( " .. table.concat(cmds, " & ") .. " & wait )"))
  local wall = core.now() - t0
  local seen = sb:budget()
  local made = sb:stats().creates
  io.write(("| %d | %d | %.1f s | %.0f | %d |\n"):format(k, made, wall, made / wall * 3600, seen.max_in_flight))
  os.execute("rm -rf " .. q(dir))
  sb:stop()
end
io.write(("\ntasks of 1.2 s (0.2 s queued, 1 s processing) on the sandbox, max_tasks = 10 shared by a budget file; %s\n")
  :format(_VERSION))
