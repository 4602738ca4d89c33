-- bench: N status calls through the client. args: base_url task_id N
local jimeng = require "jimeng"
local client = assert(jimeng.new { api_key = "bench", base_url = arg[1] })
local id, n = arg[2], tonumber(arg[3])
local t0 = os.clock()
for _ = 1, n do assert(client:status(id)) end
io.write(("cpu %.6f\n"):format(os.clock() - t0)) -- the loop alone: start-up is not counted
