-- bench: the best hand-written Lua loop: Debian's lua-curl under Lua 5.1, one reused easy handle,
-- lua-cjson decoding each body. args: base_url task_id N
local curl = require "curl"
local cjson = require "cjson"
local url, n = arg[1] .. "/videos/" .. arg[2], tonumber(arg[3])
local e = curl.easy_init()
e:setopt(curl.OPT_URL, url)
e:setopt(curl.OPT_HTTPHEADER, { "Authorization: Bearer bench" })
local parts
e:setopt(curl.OPT_WRITEFUNCTION, function(buf) -- (buffer, size) without OPT_WRITEDATA
  parts[#parts + 1] = buf
  return #buf
end)
local t0 = os.clock()
for _ = 1, n do
  parts = {}
  assert(e:perform())
  local task = cjson.decode(table.concat(parts))
  assert(task.status)
end
io.write(("cpu %.6f\n"):format(os.clock() - t0)) -- the loop alone: start-up is not counted
