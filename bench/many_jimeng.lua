-- bench: N tasks created, waited and downloaded concurrently in one Lua state. args: base_url N outdir
local jimeng = require "jimeng"
local client = assert(jimeng.new { api_key = "bench", base_url = arg[1], poll_interval = 0.25 })
local n, dir = tonumber(arg[2]), arg[3]
local _, errs = jimeng.run(function()
  local list = {}
  for i = 1, n do
    list[i] = function() return client:generate({ prompt = "bench " .. i }, { output = dir .. "/c" .. i .. ".mp4", overwrite = true }) end
  end
  return jimeng.gather(list)
end)
assert(next(errs) == nil, "a task failed")
