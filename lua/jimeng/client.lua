--- A client of the Jimeng video API: its settings, its engine (one libcurl multi handle), its calls.
local core = require "jimeng.core"
local Budget = require "jimeng.budget"
local errors = require "jimeng.errors"
local http = require "jimeng.http"
local runtime = require "jimeng.runtime"

local Client = {}
Client.__index = Client

local now = core.now

local DEFAULTS = {
  base_url = "https://api.tokenops.ai/v1",
  timeout = 60, connect_timeout = 10, max_retries = 2,
  poll_interval = 5, wait_timeout = 600, stall_timeout = 30, http_version = "auto",
}

local OPTIONS = {
  api_key = "string", base_url = "string", timeout = "number", connect_timeout = "number",
  max_retries = "number", poll_interval = "number", wait_timeout = "number", stall_timeout = "number",
  allow_insecure_http = "boolean", cainfo = "string", capath = "string", logger = "function",
  proxy = "string", no_proxy = "string", http_version = "string", max_connections = "number", max_rps = "number",
}

local HTTP_VERSIONS = { auto = true, ["1.1"] = true, ["2"] = true }

-- Hosts never sent through a proxy, whatever the settings say: the key would go to the proxy for a server
-- on this very machine (the sandbox, make demo). libcurl's syntax: names, IPs and CIDR ranges.
local LOOPBACK_NO_PROXY = "localhost,127.0.0.1,::1,127.0.0.0/8"

local function getenv_nonempty(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local function invalid(message, field)
  return nil, errors.new { kind = "invalid_argument", message = message, field = field }
end

local function nearest_option(name)
  local best, bestd
  for k in pairs(OPTIONS) do
    -- a cheap similarity: shared prefix length, enough for typos like "timout" or "api-key"
    local d = 0
    for i = 1, math.min(#k, #name) do
      if k:sub(i, i) == name:sub(i, i) then d = d + 1 end
    end
    if not bestd or d > bestd then best, bestd = k, d end
  end
  return best
end

--- Checks a base URL with libcurl's own parser (core.parse_url), so the host judged is the host libcurl will
-- connect to: https, or http on a loopback host (or with allow_insecure_http); no userinfo, query or fragment.
-- Returns the URL as libcurl normalized it, without trailing slashes.
local function check_base_url(url, allow_http)
  if url:find("[%s%c]") then return invalid("base_url contains spaces or control characters", "base_url") end
  local u, why = core.parse_url(url)
  if not u then
    return invalid(("base_url must look like https://host/v1; got %s (%s)"):format(url, why), "base_url")
  end
  local scheme = u.scheme:lower()
  if scheme ~= "https" and scheme ~= "http" then
    return invalid("base_url must be http or https; got " .. url, "base_url")
  end
  if u.user or u.password or u.options then
    return invalid("base_url must not carry a user name or password (user@host): the API key is the only " ..
      "credential, and a URL like http://localhost:x@other-host/ goes to other-host", "base_url")
  end
  if u.query or u.fragment then
    return invalid("base_url must not have a query (?...) or fragment (#...); got " .. url, "base_url")
  end
  if scheme == "http" and not allow_http and not u.loopback then
    return invalid("base_url " .. url .. " is plain http to a non-loopback host (" .. u.host .. "): the API key " ..
      "would travel in clear text; use https, or pass allow_insecure_http=true", "base_url")
  end
  return (u.url:gsub("/+$", "")), u
end

-- Whether path is a readable file that holds a PEM certificate (a CA bundle), or why not.
local function check_ca_file(path)
  local f, why = io.open(path, "rb")
  if not f then return nil, "cannot be read (" .. tostring(why) .. ")" end
  local data, rerr = f:read(64 * 1024) -- a bundle's first certificate is near its start
  f:close()
  if not data then return nil, "is a directory or cannot be read (" .. tostring(rerr or "empty") .. ")" end
  if not data:find("%-%-%-%-%-BEGIN [%u ]*CERTIFICATE%-%-%-%-%-") then
    return nil, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
  end
  return true
end

-- Whether path is a readable directory.
local function check_ca_dir(path)
  local f = io.open(path .. "/.", "rb")
  if not f then return nil, "is not a readable directory" end
  f:close()
  return true
end

--- The network settings: http_version, TLS trust (cainfo/capath, or CURL_CA_BUNDLE, SSL_CERT_FILE and
-- SSL_CERT_DIR as curl reads them), the proxy (proxy=, or libcurl's https_proxy/http_proxy/all_proxy) and
-- the hosts that bypass it (no_proxy=, or no_proxy/NO_PROXY), loopback always among them.
local function network_options(self, opts)
  if not HTTP_VERSIONS[self.http_version] then
    return invalid(('http_version must be "auto", "1.1" or "2"; got %q'):format(self.http_version), "http_version")
  end
  local sources = {
    { "cainfo", { "CURL_CA_BUNDLE", "SSL_CERT_FILE" }, check_ca_file },
    { "capath", { "SSL_CERT_DIR" }, check_ca_dir },
  }
  for _, src in ipairs(sources) do
    local field, vars, check = src[1], src[2], src[3]
    local value, from = opts[field], field
    if value == nil then
      for _, var in ipairs(vars) do
        value = getenv_nonempty(var)
        if value then
          from = var .. " (used as " .. field .. ")"
          break
        end
      end
    end
    if value ~= nil then
      local ok, why = check(value)
      if not ok then return invalid(("%s %s %s"):format(from, value, why), field) end
    end
    self[field] = value
  end
  if opts.proxy ~= nil and opts.proxy ~= "" then
    local with_scheme = opts.proxy:find("://", 1, true) and opts.proxy or ("http://" .. opts.proxy)
    local u, why = core.parse_url(with_scheme)
    if not u then return invalid("proxy must be a URL like http://user:password@host:3128; " .. why, "proxy") end
    local scheme = u.scheme:lower()
    if not (scheme == "http" or scheme == "https" or scheme:match("^socks[45]h?a?$")) then
      return invalid("proxy must be http://, https:// or socks5:// (socks4, socks4a, socks5h); got " .. scheme, "proxy")
    end
  end
  local no_proxy = opts.no_proxy
  if no_proxy == nil then no_proxy = getenv_nonempty("no_proxy") or getenv_nonempty("NO_PROXY") end
  if no_proxy and no_proxy:find("[%c]") then return invalid("no_proxy contains control characters", "no_proxy") end
  if no_proxy and no_proxy:match("^%s*%*%s*$") then
    self.no_proxy = "*"
  else
    no_proxy = no_proxy and no_proxy:gsub("^[%s,]+", ""):gsub("[%s,]+$", "") or ""
    self.no_proxy = no_proxy == "" and LOOPBACK_NO_PROXY or (no_proxy .. "," .. LOOPBACK_NO_PROXY)
  end
  if self.base_loopback then
    -- a loopback API (the sandbox) is reached directly, however its address is spelt ([::ffff:127.0.0.1],
    -- 127.1 ...): a no_proxy list of names cannot cover them all, and the key must never go to a proxy
    self.proxy = ""
  end
  return true
end

--- jimeng.new(opts) -> client | nil, err
function Client.new(opts, json)
  opts = opts or {}
  if type(opts) ~= "table" then error("jimeng.new: options must be a table", 2) end
  for k, v in pairs(opts) do
    if not OPTIONS[k] then
      return invalid(("unknown option %q: did you mean %q?"):format(tostring(k), nearest_option(tostring(k))), tostring(k))
    end
    if type(v) ~= OPTIONS[k] then
      return invalid(("option %s must be a %s; got a %s"):format(k, OPTIONS[k], type(v)), k)
    end
  end
  local self = setmetatable({}, Client)
  for k, v in pairs(DEFAULTS) do self[k] = v end
  for k, v in pairs(opts) do self[k] = v end
  if opts.api_key == nil then self.api_key = os.getenv("JIMENG_API_KEY") end
  if opts.base_url == nil then self.base_url = os.getenv("JIMENG_BASE_URL") or DEFAULTS.base_url end
  if self.api_key == "" then self.api_key = nil end
  if self.api_key and self.api_key:find("[%c]") then
    return invalid("api_key contains control characters (CR, LF...)", "api_key")
  end
  local url, parsed = check_base_url(self.base_url, self.allow_insecure_http)
  if not url then return nil, parsed end
  self.base_url, self.base_host, self.base_loopback = url, parsed.host, parsed.loopback
  local ok, nerr = network_options(self, opts)
  if not ok then return nil, nerr end
  -- seconds: positive, finite, and sane (NaN, infinities and microseconds are mistakes, not settings)
  for k, lo in pairs { timeout = 0.001, connect_timeout = 0.001, poll_interval = 0.01, wait_timeout = 0.001,
    stall_timeout = 1 } do
    local v = self[k]
    if not (v >= lo and v <= 30 * 86400) then
      return invalid(("%s must be a number of seconds from %g to %d; got %s"):format(k, lo, 30 * 86400, tostring(v)), k)
    end
  end
  if not (self.max_retries >= 0 and self.max_retries <= 100) or self.max_retries ~= math.floor(self.max_retries) then
    return invalid("max_retries must be a whole number from 0 to 100", "max_retries")
  end
  self.max_connections = self.max_connections or 8
  if not (self.max_connections >= 1 and self.max_connections <= 1024) or
      self.max_connections ~= math.floor(self.max_connections) then
    return invalid("max_connections must be a whole number from 1 to 1024", "max_connections")
  end
  if self.max_rps ~= nil and not (self.max_rps >= 0.5 and self.max_rps <= 100000) then -- luacheck: ignore 581
    return invalid("max_rps must be a number of requests per second from 0.5 to 100000", "max_rps")
  end
  self.budget = Budget.new(self.max_rps)
  self.json = json
  local luav = _VERSION
  if type(jit) == "table" and jit.version then luav = jit.version end -- luacheck: ignore 113
  self.user_agent = ("jimeng/%s %s %s"):format(core._VERSION, core.curl_version(), luav)
  -- the engine holds the network settings from here on: each request gives only its own fields
  self.engine = core.engine {
    max_connections = self.max_connections, connect_timeout = self.connect_timeout, user_agent = self.user_agent,
    cainfo = self.cainfo, capath = self.capath, proxy = self.proxy, no_proxy = self.no_proxy,
    http_version = self.http_version, api_key = self.api_key, stall_timeout = self.stall_timeout,
  }
  return self
end

function Client:log(...)
  if self.logger then self.logger(...) end
end

function Client:close()
  self.engine:close()
end

-- Arguments

--- Task ids go into the URL path: anything that could change the path is refused before any request.
local function check_id(id)
  if type(id) ~= "string" then
    if type(id) == "number" then
      return invalid("task ids are strings (a number loses digits): pass the id as the API returned it", "id")
    end
    return invalid("task id must be a string; got a " .. type(id), "id")
  end
  if id == "" or #id > 256 or id == "." or id == ".." or not id:match("^[%w%-%._~:]+$") then
    return invalid(("task id %q is not a valid id (letters, digits, - . _ ~ :; at most 256)"):format(id:sub(1, 64)), "id")
  end
  return id
end
Client.check_id = check_id

local function need_key(self)
  if not self.api_key then
    return nil, errors.new { kind = "auth", message = "no API key: set JIMENG_API_KEY or pass api_key to jimeng.new" }
  end
  return true
end

local function check_method_self(self, name)
  if getmetatable(self) ~= Client then
    error(("jimeng: call client:%s(...) with a colon"):format(name), 3)
  end
end

-- Tasks

local function to_task(self, decoded, r, warnings)
  local task, why = core.task(decoded, r.body)
  if not task then
    return nil, errors.new({ kind = "protocol", message = why, request_id = r.headers["x-request-id"] }, self.api_key)
  end
  task.request_id = errors.scrub(task.request_id or r.headers["x-request-id"], self.api_key)
  task.error = errors.scrub(task.error, self.api_key)
  task.raw_status = errors.scrub(task.raw_status, self.api_key)
  task.warnings = warnings or {}
  if task.status == "unknown" then
    task.warnings[#task.warnings + 1] = ("the API answered an unknown status %q: still waiting"):format(task.raw_status)
  end
  return task
end

--- client:create(params[, opts]) -> task | nil, err. A paid call: sent again only when the first try
-- provably made nothing. err.created says what is known: true (the task exists: err.task_id when its id
-- could be read), false (nothing was made), nil (unknown_outcome). opts: deadline, journal (see http.json),
-- until_deadline, on_retry.
function Client:create(params, opts)
  check_method_self(self, "create")
  local body, warnings, class, field = core.normalize(params)
  if not body then return nil, errors.from_core(warnings, class, field) end
  local ok, err = need_key(self)
  if not ok then return nil, err end
  opts = opts or {}
  local sig = core.interrupted()
  if sig then
    return nil, errors.new { kind = "interrupted", created = false, message = "interrupted (" .. sig .. "): not sent" }
  end
  for _, w in ipairs(warnings) do self:log("warning", w) end
  local decoded, r = http.json(self, {
    method = "POST", path = "/videos", body = body, paid = true, what = "create",
    deadline = opts.deadline, journal = opts.journal, until_deadline = opts.until_deadline, on_retry = opts.on_retry,
  })
  if not decoded then return nil, r end
  local task, terr = to_task(self, decoded, r, warnings)
  if not task then
    -- a 2xx: the task exists even if its answer makes no sense
    terr.created, terr.task_id = true, core.raw_id(r.body or "")
    terr.message = terr.message .. " (the task was made" .. (terr.task_id and "" or "; its id cannot be read") .. ")"
    return nil, terr
  end
  return task
end

--- client:status(id) -> task | nil, err
function Client:status(id, opts)
  check_method_self(self, "status")
  local _, err = check_id(id)
  if err then return nil, err end
  local ok, kerr = need_key(self)
  if not ok then return nil, kerr end
  local decoded, r = http.json(self, {
    method = "GET", path = "/videos/" .. id, what = "status", deadline = opts and opts.deadline,
  })
  if not decoded then
    r.task_id = id
    return nil, r
  end
  local task, terr = to_task(self, decoded, r)
  if not task then return nil, terr end
  if task.id ~= id then
    return nil, errors.new({ kind = "protocol", task_id = id, request_id = task.request_id,
      message = ("asked for task %s, the API answered about task %s"):format(id, task.id:sub(1, 64)) }, self.api_key)
  end
  task.retry_after = http.server_delay(r.headers)
  return task
end

-- Calls a user's callback; a callback that raises becomes an error of kind `callback` carrying the task
-- id, so that a paid task is never lost to a bug in the caller's code.
local function call_back(fn, name, task_id, ...)
  if not fn then return true end
  local ok, why = pcall(fn, ...)
  if ok then return true end
  return nil, errors.new { kind = "callback", task_id = task_id, retryable = false,
    message = ("%s raised: %s"):format(name, tostring(why)) }
end

--- client:wait(id, opts) -> task | nil, err
-- Polls until completed (returns the task), failed (task_failed) or the timeout (timeout, err.task =
-- the last task seen). opts: interval, timeout, on_status(task) called on every change of status.
-- A status this client does not know keeps it waiting (with a warning), until the deadline.
function Client:wait(id, opts)
  check_method_self(self, "wait")
  opts = opts or {}
  local _, err = check_id(id)
  if err then return nil, err end
  local interval = opts.interval or self.poll_interval
  if not (interval >= 0.01) then return invalid("interval must be at least 0.01 seconds", "interval") end -- luacheck: ignore 581
  local deadline = opts.deadline or (now() + (opts.timeout or self.wait_timeout))
  if deadline ~= deadline then return invalid("timeout must be a number of seconds", "timeout") end
  local last, last_status, last_err
  local started, queued_until, learnt = now(), nil, false
  if opts.fresh then
    -- a task just created: its first poll comes no earlier than tasks of this client usually wait in the
    -- queue (a poll before that would only say in_queue), at a random point of the interval after it, so
    -- that the polls of tasks created together spread over the interval from the first round on
    local first = math.min((self.typical_queue or 0) + math.random() * interval, deadline - now() - 0.05)
    if first > 0 then
      local sig = runtime.sleep(first)
      if sig then
        return nil, errors.new { kind = "interrupted", task_id = id, created = true,
          message = ("interrupted (%s) while waiting for task %s"):format(sig, id) }
      end
    end
  end
  while true do
    local task, serr = self:status(id, { deadline = deadline })
    if task and opts.fresh and not learnt then
      if task.status == "in_queue" then
        queued_until = now() - started
      elseif task.status ~= "unknown" then
        learnt = true
        local q = queued_until or 0 -- it was queued at least this long: learn the lower bound
        self.typical_queue = self.typical_queue and (0.8 * self.typical_queue + 0.2 * q) or q
      end
    end
    if task then
      last, last_err = task, nil
      if task.status ~= last_status then
        last_status = task.status
        if task.status == "unknown" then self:log("warning", task.warnings[#task.warnings]) end
        local ok, cerr = call_back(opts.on_status, "on_status", id, task)
        if not ok then return nil, cerr end
      end
      if task.status == "completed" then return task end
      if task.status == "failed" then
        return nil, errors.new({
          kind = "task_failed", task_id = id, retryable = false, task = task, request_id = task.request_id,
          message = task.error or ("the task ended with status " .. task.raw_status),
        }, self.api_key)
      end
    elseif serr.kind == "interrupted" or not serr.retryable then
      serr.task_id = id
      return nil, serr
    else
      last_err = serr -- a passing fault: keep polling until the deadline
    end
    -- the server's hint wins, within sane bounds; otherwise the interval, give or take 10%, so that the
    -- polls of many tasks created together drift apart and spread over the interval
    local delay = task and task.retry_after or interval * (0.9 + 0.2 * math.random())
    delay = math.max(delay, math.min(interval, 1))
    local left = deadline - now()
    if left <= 0 or delay > left then
      if left > 0 then runtime.sleep(left) end
      return nil, errors.new {
        kind = "timeout", task_id = id, task = last, retryable = true,
        message = ("task %s did not complete in time (last status: %s%s)"):format(id,
          last and last.raw_status or "unknown", last_err and ("; last error: " .. last_err.message) or ""),
      }
    end
    local sig = runtime.sleep(delay)
    if sig then
      return nil, errors.new { kind = "interrupted", task_id = id, task = last, created = true,
        message = ("interrupted (%s) while waiting for task %s"):format(sig, id) }
    end
  end
end

-- Downloads

local YIELDING_PCALL = _VERSION ~= "Lua 5.1" or type(jit) == "table" -- luacheck: ignore 113

-- The record beside a .part (written by the engine before the first byte lands in it): the task, the
-- validator (ETag, else Last-Modified) and the total length of the bytes it holds. nil when it is missing,
-- unreadable, a link, or another task's.
local function read_record(self, part, id)
  local text = part:record()
  if not text then return nil end
  local ok, rec = pcall(self.json.decode, text)
  if not ok or type(rec) ~= "table" or rec.task_id ~= id then return nil end
  if type(rec.total) ~= "number" or rec.total < 1 or rec.total ~= math.floor(rec.total) then return nil end
  if type(rec.validator) ~= "string" or rec.validator == "" or rec.validator:find("%c") then rec.validator = nil end
  return rec
end

-- Where the next attempt starts: the bytes of the .part are kept only when its record binds them to this
-- task and they can be continued (a validator to send in If-Range) or are already whole; otherwise the .part
-- is emptied and its record removed. -> offset, record | nil, err
local function resume_point(self, part, id)
  local size, serr = part:size()
  if not size then return nil, serr end
  local rec = size > 0 and read_record(self, part, id)
  if rec and size <= rec.total and (rec.validator or size == rec.total) then return size, rec end
  if size > 0 or part:record() then
    local ok, rerr = part:reset()
    if not ok then return nil, rerr end
  end
  return 0
end

local function download_error(self, r, id)
  local decoded
  local ok, d = pcall(self.json.decode, r.body or "")
  if ok then decoded = d end
  if r.status >= 200 and r.status < 300 then
    local msg = core.error_message(decoded, r.body) or "an empty body"
    return errors.new({
      kind = "protocol", status = r.status, task_id = id, request_id = r.headers["x-request-id"],
      message = "expected a video but the server sent " .. (r.headers["content-type"] or "no content type") ..
        ": " .. msg,
    }, self.api_key)
  end
  local e = http.status_error(self, r, decoded)
  e.task_id = id
  return e
end

-- What a refused body means (see the engine): whether the .part must restart from zero, the message, and
-- whether another try may succeed.
local REFUSED = {
  range = { true, "the server resumed at the wrong offset", true },
  validator = { true, "the server resumed another version of the video (its ETag or Last-Modified changed)", true },
  total = { true, "the server resumed a video of another length", true },
  length = { false, "the server sent the video without a length (no Content-Length or Content-Range): " ..
    "a cut one could not be told from a whole one", true },
  encoding = { false, "the server sent the video compressed (Content-Encoding) although identity was asked", false },
}

-- The error for a download stopped by a signal its runtime trapped; an empty .part goes, any other stays.
local function interrupted(part, id, sig)
  if (part:size() or 0) == 0 then part:discard() end
  return nil, errors.new { kind = "interrupted", task_id = id, retryable = false,
    message = ("interrupted (%s): the .part is kept and the next download of this task resumes it"):format(tostring(sig)) }
end

-- The download proper, with the .part open and locked; the caller closes it.
local function fetch(self, part, id, path, opts)
  if opts.resume == false then
    local ok, rerr = part:reset()
    if not ok then return nil, errors.new { kind = "io", task_id = id, message = rerr } end
  end
  local url = self.base_url .. "/videos/" .. id .. "/content"
  local on_progress, every = opts.on_progress, opts.progress_interval or 0.25
  local attempt = 0
  local kept -- bytes of an earlier call's .part that are still in it: resumed_from
  while true do
    local offset, rec = resume_point(self, part, id)
    if not offset then return nil, errors.new { kind = "io", task_id = id, message = rec } end
    if kept == nil or offset == 0 then kept = offset end
    if rec and offset == rec.total then -- already whole: an earlier call was stopped before its rename
      local done, cerr = part:commit(path)
      if not done then return nil, errors.new { kind = "io", task_id = id, message = cerr } end
      if on_progress then on_progress(offset, offset) end
      return { path = path, bytes = offset, task_id = id, resumed_from = kept > 0 and kept or nil,
        etag = rec.validator and rec.validator:find('"', 1, true) and rec.validator or nil }
    end
    local headers = { "Accept-Encoding: identity" }
    if offset > 0 then
      headers[2] = ("Range: bytes=%d-"):format(offset)
      headers[3] = "If-Range: " .. rec.validator
    end
    local timeout
    if opts.deadline then
      timeout = opts.deadline - now()
      if timeout <= 0 then
        return nil, errors.new { kind = "timeout", task_id = id, message = "the deadline passed before the download" }
      end
    end
    local t, why, class = self.engine:request {
      kind = "download", url = url, headers = headers, timeout = timeout,
      part = part, task_id = id, offset = offset, validator = rec and rec.validator, total = rec and rec.total,
    }
    if not t then return nil, errors.from_core(why, class) end
    local done, sig
    if on_progress then
      local last_call = -1
      while true do
        done, sig = runtime.await(self.engine, t, every)
        if done or sig then break end
        local got, total = t:progress()
        if got ~= last_call then
          last_call = got
          on_progress(got, total)
        end
      end
    else
      done, sig = runtime.await(self.engine, t)
    end
    if not done then
      -- a runtime that traps SIGINT/SIGTERM ended the wait with the signal's name: stop, keeping the .part
      t:cancel()
      return interrupted(part, id, sig)
    end
    local r = t:result()
    if r.sink == "file" and r.file_start == 0 then kept = 0 end
    local e, retry
    local refused = REFUSED[r.refused or ""]
    if r.ok and (r.status == 200 or r.status == 206) and r.sink == "file" then
      if r.file_bytes ~= r.total then
        e = errors.new {
          kind = "network", task_id = id, message = ("the download ended at %d of %d bytes"):format(r.file_bytes, r.total),
        }
        retry = true
      else
        local committed, cerr = part:commit(path)
        if not committed then return nil, errors.new { kind = "io", task_id = id, message = cerr } end
        if on_progress then on_progress(r.file_bytes, r.file_bytes) end
        return {
          path = path, bytes = r.file_bytes, task_id = id, status = r.status,
          resumed_from = kept > 0 and kept or nil,
          content_type = r.headers["content-type"], etag = r.headers.etag,
          request_id = r.headers["x-request-id"],
        }
      end
    elseif refused then
      if refused[1] then
        local ok, rerr = part:reset()
        if not ok then return nil, errors.new { kind = "io", task_id = id, message = rerr } end
      end
      e = errors.new { kind = "protocol", task_id = id, status = r.status, message = refused[2],
        retryable = refused[3], request_id = r.headers["x-request-id"] }
      retry = refused[3]
    elseif r.ok and r.status == 416 then
      -- the partial file is not a prefix the server can continue: start again from zero
      local ok, rerr = part:reset()
      if not ok then return nil, errors.new { kind = "io", task_id = id, message = rerr } end
      e = errors.new { kind = "protocol", task_id = id, status = 416, message = "the server cannot resume this download" }
      retry = attempt == 0
    elseif r.ok and r.sink == "none" and r.status >= 200 and r.status < 300 then
      e = errors.new { kind = "protocol", task_id = id, status = r.status, message = "the server sent an empty video" }
    elseif r.ok then
      e = download_error(self, r, id)
      retry = http.should_retry(false, r, true)
    else
      e = http.transport_error(r, nil, self)
      e.task_id = id
      retry = http.should_retry(false, r, true)
    end
    if not retry or attempt >= self.max_retries then
      if retry then e.retryable = true end
      if (part:size() or 0) == 0 then part:discard() end
      return nil, e
    end
    local delay = http.backoff(attempt, r.headers)
    if e.kind == "protocol" then delay = 0 end
    attempt = attempt + 1
    self:log("retry", "download", attempt, delay, tostring(e))
    sig = runtime.sleep(delay)
    if sig then return interrupted(part, id, sig) end
  end
end

--- client:download(id, path, opts) -> info | nil, err
-- Streams to <path>.part, checks the byte count, fsyncs and renames onto path. A failure leaves no file
-- at path; the .part stays, bound to the task by its record (<path>.part.json), and the next call for the
-- same task resumes from it (opts.resume, default true). The .part is locked: a second download to the same
-- path is refused while one runs. opts.on_progress(received, total) is called at most every
-- opts.progress_interval seconds (0.25). info: {path=, bytes=, task_id=, status=, resumed_from= (bytes kept
-- from an earlier call), etag=, content_type=, request_id=}.
function Client:download(id, path, opts)
  check_method_self(self, "download")
  opts = opts or {}
  local _, err = check_id(id)
  if err then return nil, err end
  if type(path) ~= "string" or path == "" then
    return invalid("download needs an output path", "path")
  end
  local ok, kerr = need_key(self)
  if not ok then return nil, kerr end
  local part, perr = core.part_open(path .. ".part")
  if not part then return nil, errors.new { kind = "io", task_id = id, message = perr } end
  if not YIELDING_PCALL then -- PUC 5.1 cannot yield across pcall: an error leaves the lock to the collector
    local info, derr = fetch(self, part, id, path, opts)
    part:close()
    return info, derr
  end
  -- an error raised inside (an on_progress callback, Ctrl-C) releases the lock at once, not at the next collection
  local done, info, derr = pcall(fetch, self, part, id, path, opts)
  part:close()
  if not done then error(info, 0) end
  return info, derr
end

-- Subjects (OmniHuman)

local function subject_call(self, which, image_url, opts)
  local body, why, class, field = core.subject_body(which, image_url)
  if not body then return nil, errors.from_core(why, class, field) end
  local ok, kerr = need_key(self)
  if not ok then return nil, kerr end
  local decoded, r = http.json(self, {
    method = "POST", path = "/omnihuman/subject/" .. which, body = body, what = which,
    deadline = opts and opts.deadline,
  })
  if not decoded then return nil, r end
  local result, why = core[which](decoded)
  if not result then
    return nil, errors.new({ kind = "protocol", message = why, request_id = r.headers["x-request-id"] }, self.api_key)
  end
  result.request_id = errors.scrub(result.request_id or r.headers["x-request-id"], self.api_key)
  result.task_id = errors.scrub(result.task_id, self.api_key)
  for i, m in ipairs(result.mask_urls or {}) do result.mask_urls[i] = errors.scrub(m, self.api_key) end
  return result
end

--- client:detect(image_url) -> {has_subject=, mask_urls={...largest first}, request_id=} | nil, err
function Client:detect(image_url, opts)
  check_method_self(self, "detect")
  return subject_call(self, "detection", image_url, opts)
end

--- client:recognize(image_url) -> {has_subject=, task_id=, request_id=} | nil, err
function Client:recognize(image_url, opts)
  check_method_self(self, "recognize")
  return subject_call(self, "recognition", image_url, opts)
end

-- Workflows

--- Checks, before anything is paid for, that a video can be saved at opts.output (or in opts.output_dir,
-- which is made when missing: the user named it). An existing file is not replaced unless opts.overwrite.
-- Returns a function(task_id) -> path | nil, err.
local function plan_output(opts, prefix)
  for _, k in ipairs { "output", "output_dir" } do
    if opts[k] ~= nil and (type(opts[k]) ~= "string" or opts[k] == "" or opts[k]:find("%z")) then
      return invalid(k .. " must be a path", k)
    end
  end
  if opts.output and opts.output:sub(-1) == "/" then -- `-o videos/`: a directory, made if missing
    opts = { output_dir = opts.output, overwrite = opts.overwrite }
  end
  if opts.output then
    local state, why = core.check_output(opts.output)
    if not state then return invalid(why .. " (nothing was paid for)", "output") end
    if state == "file" and not opts.overwrite then
      return invalid(opts.output .. " exists: choose another path, or pass overwrite=true (CLI --force) to " ..
        "replace it (nothing was paid for)", "output")
    end
    return function() return opts.output end
  end
  local dir = opts.output_dir and opts.output_dir:gsub("(.)/+$", "%1")
  if dir then
    local ok, why = core.mkdirs(dir)
    if not ok then return invalid(why .. " (nothing was paid for)", "output_dir") end
  end
  local base = dir and (dir == "/" and "/" or dir .. "/") or ""
  local state, why = core.check_output(base .. prefix .. "x.mp4")
  if not state then return invalid(why .. " (nothing was paid for)", dir and "output_dir" or "output") end
  return function(id) return base .. prefix .. id .. ".mp4" end
end
Client.plan_output = plan_output

--- client:generate(params, opts) -> result | nil, err
-- create + wait + download under one deadline (opts.timeout, default wait_timeout). opts.output is the
-- file; without it the file is jimeng_video_<id>.mp4 in opts.output_dir (default: the current directory),
-- checked before the create (opts.overwrite to replace an existing file). opts.on_created(task) as soon
-- as the task exists; opts.on_status and opts.on_progress as for wait and download.
-- result: {path=, bytes=, task=}. After the create, every error carries task_id: the video is paid for.
function Client:generate(params, opts)
  check_method_self(self, "generate")
  opts = opts or {}
  local timeout = opts.timeout or self.wait_timeout
  if not (timeout > 0) then return invalid("timeout must be a positive number of seconds", "timeout") end -- luacheck: ignore 581
  local deadline = now() + timeout
  local output, oerr = plan_output(opts, "jimeng_video_")
  if not output then return nil, oerr end
  local task, err = self:create(params, { deadline = deadline })
  if not task then return nil, err end
  return self:finish(task, opts, deadline, output)
end

--- Waits for a created task and downloads it to output(task.id) before the deadline: the second half of
-- generate and omnihuman. -> {path=, bytes=, task=} | nil, err (always with task_id: it is paid for)
function Client:finish(task, opts, deadline, output)
  local ok, cerr = call_back(opts.on_created, "on_created", task.id, task)
  if not ok then return nil, cerr end
  ok, cerr = call_back(opts.on_status, "on_status", task.id, task)
  if not ok then return nil, cerr end
  local done, werr = self:wait(task.id, {
    deadline = deadline, interval = opts.interval, fresh = true,
    on_status = opts.on_status and function(t) if t.status ~= task.status then opts.on_status(t) end end,
  })
  if not done then
    werr.task_id = task.id
    return nil, werr
  end
  done.warnings = task.warnings
  local progress_err
  local progress = opts.on_progress and function(...)
    if progress_err then return end
    local _, perr = call_back(opts.on_progress, "on_progress", task.id, ...)
    progress_err = perr
  end
  local path = output(task.id)
  local info, derr = self:download(task.id, path, { deadline = deadline, on_progress = progress })
  if not info then
    derr.task_id = task.id
    return nil, derr
  end
  info.task = done
  if progress_err then
    progress_err.message = progress_err.message .. " (the video was saved all the same: " .. info.path .. ")"
    progress_err.path = info.path
    return nil, progress_err
  end
  return info
end

--- client:batch(jobs, opts) -> summary | nil, err: many videos with a journal (see jimeng.batch).
function Client:batch(jobs, opts)
  check_method_self(self, "batch")
  return require("jimeng.batch").run(self, jobs, opts)
end

-- The keys of client:omnihuman that steer the workflow rather than go on the wire.
local OMNI_WORKFLOW = { subject = true, recognize = true, output = true, output_dir = true }

--- Picks the speaking subject's mask from a detection, as `subject` asks: "largest", an index, or a
-- function(mask_urls) returning a mask URL or an index.
local function choose_mask(subject, masks)
  local choice = subject
  if type(subject) == "function" then
    choice = subject(masks)
    if choice == nil then return nil, "the subject function chose no mask" end
  elseif subject == "largest" then
    choice = 1
  elseif type(subject) ~= "number" then
    return nil, 'subject must be "largest", a number or a function(mask_urls); got ' .. tostring(subject)
  end
  if type(choice) == "number" then
    if choice ~= math.floor(choice) or choice < 1 or choice > #masks then
      return nil, ("subject %s was asked for, but detection found %d subject%s"):format(tostring(choice), #masks,
        #masks == 1 and "" or "s")
    end
    return masks[choice]
  end
  for _, m in ipairs(masks) do
    if m == choice then return m end
  end
  return nil, "the subject function returned " .. tostring(choice) .. ", which is not one of the detected masks"
end

--- client:omnihuman(params, opts) -> task | result | nil, err
-- A talking-head video. params: image, audio, prompt, resolution, fast, seed, mask(s) (see normalize),
-- and the workflow keys:
--   recognize = true   first check (recognition) that the image holds a person-like subject
--   subject = "largest" | n | function(mask_urls)   run detection and send the chosen subject's mask
--   output = path / output_dir = dir   also wait and download: returns {path=, bytes=, task=, mask_url=}
-- Without output it returns the created task (task.mask_url is the mask chosen, if any). Every check,
-- recognition and detection happen before the paid create; a failed one creates nothing.
-- opts: timeout, on_status, on_progress, interval (as for generate).
function Client:omnihuman(params, opts)
  check_method_self(self, "omnihuman")
  opts = opts or {}
  if type(params) ~= "table" then return invalid("omnihuman needs a table of parameters") end
  local wire = { generation_type = "omni_human" }
  for k, v in pairs(params) do
    if not OMNI_WORKFLOW[k] then wire[k] = v end
  end
  local body, warnings, class, field = core.normalize(wire, "omni_human")
  if not body then return nil, errors.from_core(warnings, class, field) end
  if params.subject ~= nil and body.mask_urls then
    return invalid("give either subject (detect and choose) or masks, not both", "subject")
  end
  local output
  if params.output or params.output_dir then
    local oerr
    output, oerr = plan_output({ output = params.output, output_dir = params.output_dir,
      overwrite = opts.overwrite }, "omnihuman_video_")
    if not output then return nil, oerr end
  end
  local deadline = now() + (opts.timeout or self.wait_timeout)
  local image = body.content[1].image_url.url
  if params.recognize then
    local rec, err = self:recognize(image, { deadline = deadline })
    if not rec then return nil, err end
    if not rec.has_subject then
      return nil, errors.new { kind = "invalid_argument", field = "image", request_id = rec.request_id,
        message = "recognition found no person, human-like or anthropomorphic subject in " .. image ..
          ": an OmniHuman video of it would fail (nothing was paid for)" }
    end
  end
  local mask
  if params.subject ~= nil then
    local det, err = self:detect(image, { deadline = deadline })
    if not det then return nil, err end
    if not det.has_subject or #det.mask_urls == 0 then
      return nil, errors.new { kind = "invalid_argument", field = "subject", request_id = det.request_id,
        message = "detection found no subject in " .. image .. " (nothing was paid for)" }
    end
    local why
    mask, why = choose_mask(params.subject, det.mask_urls)
    if not mask then return nil, errors.new { kind = "invalid_argument", field = "subject", message = why } end
    wire.mask = mask
  end
  local task, err = self:create(wire, { deadline = deadline })
  if not task then return nil, err end
  task.mask_url = mask
  if not output then return task end
  local info, ferr = self:finish(task, {
    interval = opts.interval, on_created = opts.on_created, on_status = opts.on_status, on_progress = opts.on_progress,
  }, deadline, output)
  if not info then return nil, ferr end
  info.task.mask_url, info.mask_url = mask, mask
  return info
end

return Client
