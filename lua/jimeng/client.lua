--- A client of the Jimeng video API: its settings, its engine (one libcurl multi handle), its calls.
local core = require "jimeng.core"
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
  proxy = "string", no_proxy = "string", http_version = "string",
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
  self.base_url, self.base_host = url, parsed.host
  local ok, nerr = network_options(self, opts)
  if not ok then return nil, nerr end
  for _, k in ipairs { "timeout", "connect_timeout", "poll_interval", "wait_timeout", "stall_timeout" } do
    if self[k] <= 0 then return invalid(k .. " must be positive", k) end
  end
  if self.max_retries < 0 or self.max_retries ~= math.floor(self.max_retries) then
    return invalid("max_retries must be a whole number >= 0", "max_retries")
  end
  self.json = json
  self.engine = core.engine()
  local luav = _VERSION
  if type(jit) == "table" and jit.version then luav = jit.version end -- luacheck: ignore 113
  self.user_agent = ("jimeng/%s %s %s"):format(core._VERSION, core.curl_version(), luav)
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
  task.request_id = task.request_id or r.headers["x-request-id"]
  task.warnings = warnings or {}
  return task
end

--- client:create(params) -> task | nil, err. A paid call: never retried once it may have reached the server.
function Client:create(params, opts)
  check_method_self(self, "create")
  local body, warnings = core.normalize(params)
  if not body then return nil, errors.new(warnings) end
  local ok, err = need_key(self)
  if not ok then return nil, err end
  for _, w in ipairs(warnings) do self:log("warning", w) end
  local decoded, r = http.json(self, {
    method = "POST", path = "/videos", body = body, paid = true, what = "create",
    deadline = opts and opts.deadline,
  })
  if not decoded then return nil, r end
  return to_task(self, decoded, r, warnings)
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
  if task then task.retry_after = http.server_delay(r.headers) end
  return task, terr
end

--- client:wait(id, opts) -> task | nil, err
-- Polls until completed (returns the task), failed (task_failed) or the timeout (timeout, err.task =
-- the last task seen). opts: interval, timeout, on_status(task) called on every change of status.
function Client:wait(id, opts)
  check_method_self(self, "wait")
  opts = opts or {}
  local _, err = check_id(id)
  if err then return nil, err end
  local interval = opts.interval or self.poll_interval
  local deadline = opts.deadline or (now() + (opts.timeout or self.wait_timeout))
  local last, last_status, last_err
  while true do
    local task, serr = self:status(id, { deadline = deadline })
    if task then
      last, last_err = task, nil
      if task.status ~= last_status then
        last_status = task.status
        if opts.on_status then opts.on_status(task) end
      end
      if task.status == "completed" then return task end
      if task.status == "failed" then
        return nil, errors.new({
          kind = "task_failed", task_id = id, retryable = false, task = task, request_id = task.request_id,
          message = task.error or ("the task ended with status " .. task.raw_status),
        }, self.api_key)
      end
    elseif not serr.retryable then
      return nil, serr
    else
      last_err = serr -- a passing fault: keep polling until the deadline
    end
    local delay = (task and task.retry_after) or interval
    local left = deadline - now()
    if left <= 0 or delay > left then
      if left > 0 then runtime.sleep(left) end
      return nil, errors.new {
        kind = "timeout", task_id = id, task = last, retryable = true,
        message = ("task %s did not complete in time (last status: %s%s)"):format(id,
          last and last.raw_status or "unknown", last_err and ("; last error: " .. last_err.message) or ""),
      }
    end
    runtime.sleep(delay)
  end
end

-- Downloads

local function remove(path) os.remove(path) end

-- The ETag of a partial download is kept beside it, so that a later call resumes with If-Range.
local function read_etag(part)
  local f = io.open(part .. ".etag", "r")
  if not f then return nil end
  local etag = f:read("*l")
  f:close()
  if etag and etag ~= "" and not etag:find("[%c]") then return etag end
  return nil
end

local function write_etag(part, etag)
  if not etag then return end
  local f = io.open(part .. ".etag", "w")
  if f then
    f:write(etag, "\n")
    f:close()
  end
end

local function remove_part(part)
  remove(part)
  remove(part .. ".etag")
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

--- client:download(id, path, opts) -> info | nil, err
-- Streams to <path>.part, checks the byte count, fsyncs and renames onto path. A failure leaves no file
-- at path; the .part stays and the next call resumes from it (opts.resume, default true).
-- opts.on_progress(received, total) is called at most every opts.progress_interval seconds (0.25).
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
  local part = path .. ".part"
  if opts.resume == false then remove_part(part) end
  local url = self.base_url .. "/videos/" .. id .. "/content"
  local on_progress, every = opts.on_progress, opts.progress_interval or 0.25
  local attempt, etag = 0, read_etag(part)
  local resumed_from
  while true do
    local offset = core.file_size(part) or 0
    resumed_from = resumed_from or offset
    local headers = {}
    if offset > 0 then
      headers[#headers + 1] = ("Range: bytes=%d-"):format(offset)
      if etag then headers[#headers + 1] = "If-Range: " .. etag end
    end
    local timeout
    if opts.deadline then
      timeout = opts.deadline - now()
      if timeout <= 0 then
        return nil, errors.new { kind = "timeout", task_id = id, message = "the deadline passed before the download" }
      end
    end
    local t, why = self.engine:request {
      url = url, headers = headers, bearer = self.api_key, user_agent = self.user_agent, cainfo = self.cainfo,
      capath = self.capath, proxy = self.proxy, no_proxy = self.no_proxy, http_version = self.http_version,
      connect_timeout = self.connect_timeout, timeout = timeout, low_speed_time = self.stall_timeout, follow = 5,
      output = part, offset = offset, expect_binary = true, max_body = 1024 * 1024,
    }
    if not t then return nil, errors.new { kind = "invalid_argument", message = why } end
    if on_progress then
      local last_call = -1
      while not runtime.await(self.engine, t, every) do
        local got, total = t:progress()
        if got ~= last_call then
          last_call = got
          on_progress(got, total)
        end
      end
    else
      runtime.await(self.engine, t)
    end
    local r = t:result()
    etag = r.headers.etag or etag
    local e, retry
    if r.ok and (r.status == 200 or r.status == 206) and r.sink == "file" then
      local total = r.content_length and (r.file_start + r.content_length)
      local cr_total = r.headers["content-range"] and tonumber(r.headers["content-range"]:match("/(%d+)$"))
      total = cr_total or total
      if total and r.file_bytes ~= total then
        e = errors.new {
          kind = "network", task_id = id, message = ("the download ended at %d of %d bytes"):format(r.file_bytes, total),
        }
        retry = true
      else
        local done, cerr = core.commit(part, path)
        if not done then return nil, errors.new { kind = "io", task_id = id, message = cerr } end
        remove(part .. ".etag")
        if on_progress then on_progress(r.file_bytes, r.file_bytes) end
        return {
          path = path, bytes = r.file_bytes, task_id = id, status = r.status,
          resumed_from = resumed_from > 0 and resumed_from or nil,
          content_type = r.headers["content-type"], etag = r.headers.etag,
          request_id = r.headers["x-request-id"],
        }
      end
    elseif r.ok and r.status == 416 then
      -- the partial file is not a prefix the server can continue: start again from zero
      remove_part(part)
      etag = nil
      e = errors.new { kind = "protocol", task_id = id, status = 416, message = "the server cannot resume this download" }
      retry = attempt == 0
    elseif r.range_mismatch then
      remove_part(part)
      etag = nil
      e = errors.new { kind = "protocol", task_id = id, message = "the server resumed at the wrong offset" }
      retry = true
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
      if (core.file_size(part) or 0) == 0 then
        remove_part(part)
      else
        write_etag(part, etag)
      end
      return nil, e
    end
    local delay = http.backoff(attempt, r.headers)
    if e.kind == "protocol" then delay = 0 end
    attempt = attempt + 1
    self:log("retry", "download", attempt, delay, tostring(e))
    runtime.sleep(delay)
  end
end

-- Subjects (OmniHuman)

local function subject_call(self, which, image_url, opts)
  local body, err = core.subject_body(which, image_url)
  if not body then return nil, errors.new(err) end
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
  result.request_id = result.request_id or r.headers["x-request-id"]
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

--- client:generate(params, opts) -> result | nil, err
-- create + wait + download under one deadline (opts.timeout, default wait_timeout). opts.output is the
-- file; without it the file is jimeng_video_<id>.mp4 in opts.output_dir (default: the current directory).
-- opts.on_status and opts.on_progress as for wait and download.
-- result: {path=, bytes=, task=}. After the create, every error carries task_id: the video is paid for.
function Client:generate(params, opts)
  check_method_self(self, "generate")
  opts = opts or {}
  local deadline = now() + (opts.timeout or self.wait_timeout)
  for _, k in ipairs { "output", "output_dir" } do
    if opts[k] ~= nil and (type(opts[k]) ~= "string" or opts[k] == "") then
      return invalid(k .. " must be a path", k)
    end
  end
  local task, err = self:create(params, { deadline = deadline })
  if not task then return nil, err end
  return self:finish(task, opts, deadline, "jimeng_video_")
end

--- Waits for a created task and downloads it to opts.output (or <opts.output_dir>/<prefix><id>.mp4)
-- before the deadline: the second half of generate and omnihuman. -> {path=, bytes=, task=} | nil, err
function Client:finish(task, opts, deadline, prefix)
  if opts.on_status then opts.on_status(task) end
  local done, werr = self:wait(task.id, {
    deadline = deadline, interval = opts.interval,
    on_status = opts.on_status and function(t) if t.status ~= task.status then opts.on_status(t) end end,
  })
  if not done then return nil, werr end
  done.warnings = task.warnings
  local output = opts.output or ((opts.output_dir and (opts.output_dir:gsub("/+$", "") .. "/") or "") ..
    prefix .. task.id .. ".mp4")
  local info, derr = self:download(task.id, output, { deadline = deadline, on_progress = opts.on_progress })
  if not info then return nil, derr end
  info.task = done
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
  local body, warnings = core.normalize(wire, "omni_human")
  if not body then return nil, errors.new(warnings) end
  if params.subject ~= nil and body.mask_urls then
    return invalid("give either subject (detect and choose) or masks, not both", "subject")
  end
  for _, k in ipairs { "output", "output_dir" } do
    if params[k] ~= nil and (type(params[k]) ~= "string" or params[k] == "") then return invalid(k .. " must be a path", k) end
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
  if not params.output and not params.output_dir then return task end
  local info, ferr = self:finish(task, {
    output = params.output, output_dir = params.output_dir, interval = opts.interval,
    on_status = opts.on_status, on_progress = opts.on_progress,
  }, deadline, "omnihuman_video_")
  if not info then return nil, ferr end
  info.task.mask_url, info.mask_url = mask, mask
  return info
end

return Client
