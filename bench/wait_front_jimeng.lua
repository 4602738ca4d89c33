-- bench: N tasks waiting at once through a TLS front (nginx), over HTTP/2 or HTTP/1.1; prints the CPU of the
-- waiting alone. args: sandbox_url front_url cainfo N http_version
local jimeng = require "jimeng"
local direct = assert(jimeng.new { api_key = "bench", base_url = arg[1] })
local n = tonumber(arg[4])
local ids = {}
for i = 1, n do ids[i] = assert(direct:create { prompt = "bench wait " .. i }).id end
local client = assert(jimeng.new { api_key = "bench", base_url = arg[2], cainfo = arg[3], http_version = arg[5],
  poll_interval = 0.5 })
local c0 = os.clock()
local _, errs = jimeng.run(function()
  local list = {}
  for i = 1, n do list[i] = function() return client:wait(ids[i]) end end
  return jimeng.gather(list)
end)
assert(next(errs) == nil, "a wait failed")
print(("cpu %.6f"):format(os.clock() - c0))
