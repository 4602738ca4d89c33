-- Starts spec/support/video_server.py (a small video API whose behaviour each task id's prefix picks) on a
-- free loopback port, with its files in a directory of the spec's; reads its request log; stops it.
local cjson = require "cjson"
local proc = require "spec.support.process"

local M = {}
M.__index = M

--- M.start(dir, cdn) -> server: server.url is the base URL to give the client (".../v1").
function M.start(dir, cdn)
  local cmd = ("%sexec python3 %s/spec/support/video_server.py --dir '%s'%s"):format(proc.clean_env, proc.root, dir,
    cdn and (" --cdn '" .. cdn .. "'") or "")
  local pipe = assert(io.popen(cmd, "r"))
  local url, pid = pipe:read("*l"), tonumber(pipe:read("*l") or "")
  assert(url and url:match("^http://127%.0%.0%.1:%d+/v1$") and pid, "the video server did not start")
  return setmetatable({ pipe = pipe, url = url, dir = dir, pid = pid }, M)
end

--- The content requests it answered so far, for one task id or all: {id=, range=, if_range=, status=}.
function M:requests(id)
  local out = {}
  local f = io.open(self.dir .. "/requests.jsonl", "r")
  if not f then return out end
  for line in f:lines() do
    local r = cjson.decode(line)
    if not id or r.id == id then
      if r.range == cjson.null then r.range = nil end
      if r.if_range == cjson.null then r.if_range = nil end
      out[#out + 1] = r
    end
  end
  f:close()
  return out
end

function M:stop()
  -- closing the pipe waits for the server, so it is told to go first
  proc.run(("kill %d"):format(self.pid))
  self.pipe:close()
end

return M
