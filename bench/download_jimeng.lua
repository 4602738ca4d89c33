-- bench: one download through the client. args: base_url task_id output
local jimeng = require "jimeng"
local client = assert(jimeng.new { api_key = "bench", base_url = arg[1] })
assert(client:download(arg[2], arg[3], { resume = false }))
