--- Runs an example script against a fresh local sandbox, as a user would against the real API:
-- the script gets JIMENG_BASE_URL and JIMENG_API_KEY in its environment and nothing else.
--   lua5.4 examples/run_with_sandbox.lua examples/text_to_video.lua [args...]
-- Exits with the script's status, after stopping the sandbox.
local sandbox = require "jimeng.sandbox"

local script = arg[1]
if not script then
  io.stderr:write("usage: run_with_sandbox.lua SCRIPT [ARGS...]\n")
  os.exit(2)
end

local sb, err = sandbox.start { queue_seconds = 1, process_seconds = 2 }
if not sb then
  io.stderr:write("cannot start the sandbox: ", tostring(err), "\n")
  os.exit(1)
end
io.stderr:write("sandbox: ", sb.url, "\n")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local lua = os.getenv("JIMENG_TEST_LUA") or arg[-1] or "lua"
local cmd = { "JIMENG_BASE_URL=" .. q(sb.url), "JIMENG_API_KEY=sandbox-key", "JIMENG_POLL_INTERVAL=0.5",
  q(lua), q(script) }
for i = 2, #arg do cmd[#cmd + 1] = q(arg[i]) end
local ok, _, code = os.execute(table.concat(cmd, " "))
sb:stop()
if type(ok) == "number" then code = ok end -- Lua 5.1 returns the status alone
if ok == true or code == 0 then os.exit(0) end
os.exit(type(code) == "number" and code ~= 0 and code or 1)
