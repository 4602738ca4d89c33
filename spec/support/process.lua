-- Helpers for specs that drive other programs: shell commands, free ports, plain HTTP GETs.
local core = require "jimeng.core"

local M = {}

-- Subprocesses are other programs (make, sed, nginx, the CLI on the ordinary build): a sanitizer
-- preloaded into the suite (make asan) is not theirs, nor are the variables of the make running it.
M.clean_env = "unset LD_PRELOAD MAKEFLAGS MAKELEVEL MFLAGS BUILD CFLAGS LDFLAGS BUSTED_ARGS TEST_PRELOAD; "

-- Our own code in a child (the jimeng command, a Lua script using the module) runs the same build as the
-- suite, under the same sanitizer (make asan preloads it; JIMENG_BUILD names the build): only make's
-- variables go. The leak check is left to this process, which runs the same code (LeakSanitizer's tracer
-- can crash in short-lived children).
M.own_env = "unset MAKEFLAGS MAKELEVEL MFLAGS BUILD CFLAGS LDFLAGS BUSTED_ARGS TEST_PRELOAD; " ..
  "export ASAN_OPTIONS=\"${ASAN_OPTIONS:-}:detect_leaks=0\"; "

-- The suite's own Lua (the interpreter make test runs), by itself: for children whose point is timing or
-- that test other programs, never wrapped.
M.plain_lua = os.getenv("JIMENG_TEST_LUA") or "lua5.4"

-- The interpreter for our own children (the jimeng command, scripts on the module): the suite's own Lua,
-- under `make valgrind` wrapped in valgrind too (JIMENG_CHILD_WRAPPER), so that the children are checked.
M.lua = ((os.getenv("JIMENG_CHILD_WRAPPER") or "") .. " " .. M.plain_lua):gsub("^ ", "")

--- A time a spec gives the server to hold a state that this process or its children must see (a task in the
-- queue, a task processing), scaled for `make valgrind`, where our code runs 20 to 50 times slower.
function M.scaled(seconds)
  return os.getenv("JIMENG_CHILD_WRAPPER") and seconds * 10 or seconds
end

--- Runs a shell command (another program's: clean_env; pass M.own_env for ours); returns whether it
-- exited 0, and its output (5.1's close() tells no status).
function M.run(cmd, env)
  local p = io.popen((env or M.clean_env) .. cmd .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return code == 0, (out:gsub("exit=%d+%s*$", ""))
end

--- A free TCP port on 127.0.0.1 (the kernel's choice, released for the caller to bind).
function M.free_port()
  local ok, out = M.run([[python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])
  assert(ok, out)
  return tonumber(out:match("%d+"))
end

M.root = (function()
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d
end)()

local engine = core.engine()

--- Starts a GET and returns its transfer without waiting (the caller drives M.step()).
function M.start_get(url, timeout)
  return assert(engine:request { url = url, timeout = timeout or 30, max_body = 1024 * 1024 })
end

--- Drives the helper's transfers for up to ms milliseconds.
function M.step(ms)
  engine:perform()
  engine:poll(ms or 10)
  engine:perform()
end

--- A blocking GET: the result table of the engine (status, body, ...).
function M.get(url, timeout)
  local t = M.start_get(url, timeout)
  while not t:done() do M.step(50) end
  return t:result()
end

return M
