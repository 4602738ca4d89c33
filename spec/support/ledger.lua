-- What the ledger specs share: reading a ledger file's records, waiting for one, and running the command with
-- the ledger in a spec's own directory.
local cjson = require "cjson"
local core = require "jimeng.core"
local h = require "spec.support.helpers"
local proc = require "spec.support.process"

local M = {}

-- The records of a ledger file, one per line (every line must be JSON: nothing torn, nothing mixed).
function M.records(path)
  local out = {}
  local f = io.open(path, "rb")
  if not f then return out end
  for line in f:lines() do out[#out + 1] = cjson.decode(line) end
  f:close()
  return out
end

-- Waits (up to `limit` seconds) until the ledger at path holds a record `ev`; returns it.
function M.wait_for(path, ev, limit)
  local deadline = core.now() + (limit or 10)
  while core.now() < deadline do
    for _, r in ipairs(M.records(path)) do
      if r.ev == ev then return r end
    end
    core.sleep(0.02)
  end
  error("no " .. ev .. " record in " .. path)
end

-- `jimeng <args>` in env.dir with the ledger in env.dir/state, against env.sb: exit code, stdout, stderr.
function M.jimeng(env, args, extra_env)
  local errfile = env.dir .. "/stderr"
  local p = io.popen(("%scd %s && XDG_STATE_HOME=%s/state JIMENG_LEDGER= JIMENG_API_KEY=ledger-secret-key " ..
    "JIMENG_BASE_URL=%s %s %s %s/bin/jimeng %s 2>%s; echo \"exit=$?\""):format(proc.own_env, env.dir, env.dir,
    env.sb.url, extra_env or "", proc.lua, proc.root, args, errfile))
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("exit=(%d+)%s*$")), (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
end

return M
