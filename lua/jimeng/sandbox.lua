--- Starts the local API emulator (sandbox/server.py) and talks to its control plane.
-- Used by the demo, the examples, the specs and `jimeng sandbox`. The server binds a free loopback
-- port, prints its URL, and exits with the process that started it.
local core = require "jimeng.core"
local cjson = require "cjson"

local M = {}

local json = cjson.new()

local function dirname(p)
  return p:match("^(.*)/[^/]*$") or "."
end

--- Where server.py is: $JIMENG_SANDBOX, next to this checkout's lua/ tree, or the installed share dir.
function M.server_path()
  local env = os.getenv("JIMENG_SANDBOX")
  if env then return env end
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local candidates = {
    dirname(dirname(dirname(src))) .. "/sandbox/server.py", -- <checkout>/lua/jimeng/sandbox.lua
    dirname(dirname(dirname(dirname(src)))) .. "/jimeng/sandbox/server.py", -- <prefix>/share/lua/5.x/jimeng
  }
  for _, p in ipairs(candidates) do
    local f = io.open(p, "r")
    if f then
      f:close()
      return p
    end
  end
  return nil, "cannot find sandbox/server.py (set JIMENG_SANDBOX to its path)"
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local Sandbox = {}
Sandbox.__index = Sandbox

--- M.start{port=, host=, queue_seconds=, process_seconds=, video_bytes=, download_rate=, api_key=, tls=, backlog=,
-- max_rps=, dialect=, content_framing=, content_redirect=, python=} -> sandbox | nil, err
-- dialect "new-api" answers as QuantumNous/new-api does (its routes, ids, statuses, error shapes, headers);
-- content_framing "length" | "chunked" (new-api's default: chunked); content_redirect answers content with
-- a 302 to a signed URL on another host (localhost <-> 127.0.0.1).
-- sandbox.url is the base URL to give the client (".../v1"; host "::1" gives "http://[::1]:PORT/v1");
-- with tls, sandbox.cainfo is the certificate to trust. backlog is the listen backlog (default 512);
-- video_bytes makes every video a synthetic body of that size; download_rate sends videos at that many
-- bytes per second. max_rps answers 429 to API requests over that many in any one second (see sandbox/README.md).
function M.start(opts)
  opts = opts or {}
  local port = opts.port or 0
  if type(port) ~= "number" or not (port >= 0 and port <= 65535) or port ~= math.floor(port) then -- luacheck: ignore 581
    return nil, ("port must be a whole number from 0 to 65535 (0: a free one); got %s"):format(tostring(opts.port))
  end
  local path, err = M.server_path()
  if not path then return nil, err end
  -- env -u LD_PRELOAD: a sanitizer preloaded into the caller (make asan) has no business in Python
  local cmd = { "exec env -u LD_PRELOAD", shell_quote(opts.python or os.getenv("PYTHON") or "python3"), shell_quote(path),
    "--port", ("%d"):format(port), "--exit-with-parent" }
  if opts.queue_seconds then cmd[#cmd + 1] = "--queue-seconds " .. tonumber(opts.queue_seconds) end
  if opts.process_seconds then cmd[#cmd + 1] = "--process-seconds " .. tonumber(opts.process_seconds) end
  if opts.video_bytes then
    cmd[#cmd + 1] = "--video-bytes " .. math.floor(assert(tonumber(opts.video_bytes), "video_bytes: a number"))
  end
  if opts.download_rate then
    cmd[#cmd + 1] = "--download-rate " .. math.floor(assert(tonumber(opts.download_rate), "download_rate: a number"))
  end
  if opts.api_key then cmd[#cmd + 1] = "--api-key " .. shell_quote(opts.api_key) end
  if opts.host then cmd[#cmd + 1] = "--host " .. shell_quote(opts.host) end
  if opts.tls then cmd[#cmd + 1] = "--tls" end
  if opts.dialect then cmd[#cmd + 1] = "--dialect " .. shell_quote(opts.dialect) end
  if opts.content_framing then cmd[#cmd + 1] = "--content-framing " .. shell_quote(opts.content_framing) end
  if opts.content_redirect then cmd[#cmd + 1] = "--content-redirect" end
  if opts.backlog then cmd[#cmd + 1] = "--backlog " .. math.floor(assert(tonumber(opts.backlog), "backlog: a number")) end
  if opts.max_rps then cmd[#cmd + 1] = "--max-rps " .. math.floor(assert(tonumber(opts.max_rps), "max_rps: a number")) end
  local proc = io.popen(table.concat(cmd, " "), "r")
  if not proc then return nil, "cannot start " .. path end
  local url = proc:read("*l")
  if not url or not url:match("^https?://") then
    proc:close()
    return nil, "the sandbox did not start (is python3 installed?)"
  end
  local self = setmetatable({ proc = proc, url = url, root = url:gsub("/v1$", "") }, Sandbox)
  if opts.tls then self.cainfo = (proc:read("*l") or ""):match("^cert: (.+)$") end
  self.engine = core.engine { cainfo = self.cainfo, proxy = "" } -- never proxied
  return self
end

--- A control-plane call: GET when body is nil, POST otherwise. Returns the decoded answer.
function Sandbox:call(path, body)
  local t = assert(self.engine:request {
    url = self.root .. path, method = body ~= nil and "POST" or "GET",
    body = body ~= nil and json.encode(body) or nil, timeout = 30, max_body = 256 * 1024 * 1024,
  })
  while not t:done() do
    self.engine:perform()
    if not t:done() then self.engine:poll(100) end
  end
  local r = t:result()
  assert(r.ok and r.status == 200,
    ("sandbox control call %s failed: %s (HTTP %s)"):format(path, tostring(r.curl_error), tostring(r.status)))
  return json.decode(r.body)
end

function Sandbox:log() return self:call("/_sandbox/log") end
function Sandbox:stats() return self:call("/_sandbox/stats") end
function Sandbox:reset() return self:call("/_sandbox/reset", {}) end
function Sandbox:config(c) return self:call("/_sandbox/config", c) end
function Sandbox:tasks() return self:call("/_sandbox/tasks") end
--- Every task still running ends at its next status (a test holds one running as long as it needs);
-- stage "queue": only the queue ends, and the tasks in it process from now.
function Sandbox:finish(stage) return self:call("/_sandbox/finish", { stage = stage }) end
--- {busiest_second=, max_in_flight=, in_flight=}: the most API requests in any one-second window, the most
-- tasks in flight at once (from create to their end at the server), and those in flight now.
function Sandbox:budget() return self:call("/_sandbox/budget") end

--- Plans faults: the next `count` requests whose path matches `path` (a regex) get `fault`.
function Sandbox:faults(plans) return self:call("/_sandbox/faults", plans) end

--- One task as /_sandbox/tasks shows it ({status=, body=, seed=, bytes=, vendor=}), or nil. vendor: the
-- payload the vendor received for it (req_key, prompt, seed, frames, aspect_ratio, image_urls /
-- binary_data_base64; OmniHuman: image_url, audio_url, mask_url, output_resolution, pe_fast_mode).
function Sandbox:task(id) return self:tasks()[tostring(id)] end

--- How many creates the sandbox took for this prompt (0 for none): one payment per job, or more.
function Sandbox:creates_for(prompt) return self:stats().creates_by_prompt[prompt] or 0 end

--- Answers 429 to API requests over n in any one second from now on (0 or nil: no limit).
function Sandbox:max_rps(n) return self:config { max_rps = n or 0 } end

--- The log entry of the create that made task `id` (its `task_id`), or nil.
function Sandbox:create_entry(id)
  for _, e in ipairs(self:log()) do
    if e.task_id == tostring(id) then return e end
  end
  return nil
end

function Sandbox:stop()
  if not self.proc then return end
  pcall(self.call, self, "/_sandbox/shutdown", {})
  self.proc:close()
  self.proc = nil
  self.engine:close()
end

return M
