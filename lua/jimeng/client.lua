--- A client of the Jimeng video API: its settings, its engine (one libcurl multi handle), its calls.
local core = require "jimeng.core"
local Budget = require "jimeng.budget"
local dialect = require "jimeng.dialect"
local Share = require "jimeng.share"
local errors = require "jimeng.errors"
local download = require "jimeng.download"
local http = require "jimeng.http"
local ledger = require "jimeng.ledger"
local runtime = require "jimeng.runtime"
local workflows = require "jimeng.workflows"

local Client = {}
Client.__index = Client

local now = core.now

local DEFAULTS = {
  base_url = "https://api.tokenops.ai/v1",
  timeout = 60, connect_timeout = core.limits.connect_timeout, max_retries = 2,
  poll_interval = 5, wait_timeout = 600, stall_timeout = 30, http_version = "auto", dialect = "auto",
}

local OPTIONS = {
  api_key = "string", base_url = "string", timeout = "number", connect_timeout = "number",
  max_retries = "number", poll_interval = "number", wait_timeout = "number", stall_timeout = "number",
  allow_insecure_http = "boolean", cainfo = "string", capath = "string", logger = "function", trace = "function",
  proxy = "string", no_proxy = "string", http_version = "string", max_connections = "number", max_rps = "number",
  burst = "number", ledger = "string or false", dialect = "string",
  max_tasks = "number", budget = "string", budget_lease = "number",
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

local invalid = errors.invalid

local OPTION_NAMES = {}
for k in pairs(OPTIONS) do OPTION_NAMES[#OPTION_NAMES + 1] = k end
table.sort(OPTION_NAMES)

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
      local near = core.nearest(tostring(k), OPTION_NAMES)
      return invalid(("unknown option %q%s (options: %s)"):format(tostring(k),
        near and (": did you mean %q?"):format(near) or "", table.concat(OPTION_NAMES, ", ")), tostring(k))
    end
    if k == "ledger" then
      if v ~= false and (type(v) ~= "string" or v == "") then
        return invalid("option ledger must be a path or false (no ledger); got a " .. type(v), k)
      end
    elseif type(v) ~= OPTIONS[k] then
      return invalid(("option %s must be a %s; got a %s"):format(k, OPTIONS[k], type(v)), k)
    end
  end
  local self = setmetatable({}, Client)
  for k, v in pairs(DEFAULTS) do self[k] = v end
  for k, v in pairs(opts) do self[k] = v end
  if opts.api_key == nil then self.api_key = os.getenv("JIMENG_API_KEY") end
  if opts.base_url == nil then self.base_url = getenv_nonempty("JIMENG_BASE_URL") or DEFAULTS.base_url end
  if opts.dialect == nil then self.dialect = getenv_nonempty("JIMENG_DIALECT") or DEFAULTS.dialect end
  do
    local ok, derr = dialect.check(self.dialect, opts.dialect == nil and "JIMENG_DIALECT" or "dialect")
    if not ok then return nil, derr end
  end
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
  self.max_connections = self.max_connections or core.limits.max_connections
  if not (self.max_connections >= 1 and self.max_connections <= 1024) or
      self.max_connections ~= math.floor(self.max_connections) then
    return invalid("max_connections must be a whole number from 1 to 1024", "max_connections")
  end
  if self.max_rps ~= nil and not (self.max_rps >= 0.5 and self.max_rps <= 100000) then -- luacheck: ignore 581
    return invalid("max_rps must be a number of requests per second from 0.5 to 100000", "max_rps")
  end
  -- a burst is at most the requests one second may hold: floor(max_rps), and 1 at least (max_rps 0.5 allows 1,
  -- as the default burst of 1 is, and as the budget paces it)
  local most_burst = self.max_rps and math.max(1, math.floor(self.max_rps)) or 100000
  if self.burst ~= nil and not (self.burst >= 1 and self.burst <= most_burst and self.burst == math.floor(self.burst)) then
    return invalid(("burst must be a whole number of requests from 1 to %d (%s); got %s"):format(most_burst,
      self.max_rps and "max_rps rounded down, at least 1" or "the most there is", tostring(self.burst)), "burst")
  end
  -- the ledger of paid creates (jimeng.ledger): ledger=false, or JIMENG_LEDGER=false, for none
  self.ledger = ledger.open(ledger.path(opts.ledger), json, self.api_key, ledger.explicit(opts.ledger))
  local shared_ok, share_err = Share.check(self)
  if not shared_ok then return nil, share_err end
  -- when each task this client created was created: its first wait learns and uses the queue time
  self.created_at = {}
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
  -- the request budget paces the engine: a request takes its token when it gets a connection
  -- (shared with the account's other clients: jimeng.share)
  local pacer, perr = Share.attach(self)
  if not pacer then
    self.engine:close()
    return nil, perr
  end
  self.budget = Budget.new(self.max_rps, self.burst, pacer)
  return self
end

function Client:log(...)
  if self.logger then self.logger(...) end
end

function Client:close()
  Share.close(self)
  self.closed = true
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
-- The one check of a task id, for callers that take ids before any client call (jimeng.plugin's :JimengResume).
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

-- opts of a call: nil or a table, else the call is misused (raised, naming it).
local function check_opts(opts, name)
  if opts ~= nil and type(opts) ~= "table" then
    error(("jimeng: client:%s(..., opts): opts must be a table; got a %s"):format(name, type(opts)), 3)
  end
end

-- Tasks

local function to_task(self, decoded, r, warnings, read)
  -- read: decoded is already the task (core.status_task read it from the body: http.json's third value)
  local task, why
  if read then task = decoded else task, why = core.task(decoded, r.body) end
  if not task then
    return nil, errors.new({ kind = "protocol", message = why, request_id = http.request_id(r, decoded) }, self.api_key)
  end
  task.request_id = errors.scrub(http.request_id(r, decoded), self.api_key)
  task.error = errors.scrub(task.error, self.api_key)
  task.raw_status = errors.scrub(task.raw_status, self.api_key)
  task.warnings = warnings or {}
  -- new-api's first status is the word "unknown" (NOT_START, model/task.go ToVideoStatus): waited on quietly
  if task.status == "unknown" and task.raw_status ~= "unknown" then
    task.warnings[#task.warnings + 1] = ("the API answered an unknown status %q: still waiting"):format(task.raw_status)
  end
  return task
end

--- client:create(params[, opts]) -> task | nil, err. A paid call: sent again only when the first try
-- provably made nothing. err.created says what is known: true (the task exists: err.task_id when its id
-- could be read), false (nothing was made), nil (unknown_outcome). opts: deadline, journal (see http.json),
-- until_deadline, on_retry; output (the path the video is meant for, kept in the ledger; a template may
-- still hold {id}) and output_for(id) (the path once the id is known); ref (the create's name in the ledger, when
-- the caller holds it: see ledger:hold).
-- The ledger (jimeng.ledger) gets a "sending" record the moment the request is handed to the wire and the
-- id the moment the answer is read: a create whose answer came is never lost, even to a kill.
-- A create refused as invalid (nothing made) by a gateway of the other family than the dialect set: the
-- parameter is likely fine and the dialect wrong ("req_key is required" is a tokenops gateway reading a new-api
-- body). Says so, with the gateway's evidence, and the fix.
local function wrong_dialect(self, err)
  if err.kind ~= "invalid_argument" or err.created ~= false or not err.status then return end
  local evidence
  if self.dialect == "new-api" and not err.new_api_headers then
    evidence = "it answered without new-api's X-New-Api-Version / X-Oneapi-Request-Id headers, which a new-api " ..
      "gateway sends on every answer"
  elseif self.dialect == "tokenops" and err.new_api_headers then
    evidence = "it answered with new-api's X-New-Api-Version / X-Oneapi-Request-Id headers"
  end
  if not evidence then return end
  err.message = ("%s (the dialect %s is likely wrong, not the parameter: %s; nothing was made)"):format(err.message,
    self.dialect, evidence)
  err.hint = "use --dialect auto (JIMENG_DIALECT=auto, dialect=\"auto\"): the client asks the gateway which it is"
end

function Client:create(params, opts)
  check_method_self(self, "create")
  check_opts(opts, "create")
  local body, warnings, class, field = core.normalize(params)
  local err
  if not body then
    err = errors.from_core(warnings, class, field)
  else
    local _
    _, err = need_key(self)
  end
  if not err then
    -- the body in the gateway's dialect: a parameter that cannot reach the vendor is refused here, unsent
    local name
    name, err = dialect.resolve(self)
    if name then body, err = dialect.shape(name, body, params) end
  end
  if err then
    err.created = false -- nothing was sent: nothing was paid for
    return nil, err
  end
  opts = opts or {}
  local sig = core.interrupted()
  if sig then
    return nil, errors.new { kind = "interrupted", created = false, message = "interrupted (" .. sig .. "): not sent" }
  end
  local book, ref, sending = self.ledger, nil, nil
  if book then
    local ok, lerr, lhow = book:ready()
    if not ok and lhow == "not_a_ledger" then
      return nil, errors.new { kind = "invalid_argument", created = false, field = "ledger", message = lerr ..
        " (nothing was sent; JIMENG_LEDGER names the ledger, ledger=false goes without)" }
    elseif not ok and book.explicit then
      return nil, errors.new { kind = "io", created = false, field = "ledger", message = ("cannot make the ledger's " ..
        "directory (%s): nothing was sent; pass ledger=false (JIMENG_LEDGER=false) to go without"):format(lerr) }
    elseif not ok then
      -- the default place cannot be made (a service's home that is not its own): the client goes without
      self:log("warning", ("no ledger: cannot make its directory (%s)"):format(lerr))
      self.ledger, book = nil, nil
    end
  end
  if book then
    -- another process holding the ledger's lock is waited for here, where Ctrl-C ends the wait, not at hand-over
    local ok, lerr = core.wait_lock(book.path)
    if not ok then
      return nil, errors.new { kind = core.interrupted() and "interrupted" or "io", created = false, field = "ledger",
        message = lerr .. ": nothing was sent" }
    end
    ref = opts.ref or ledger.new_ref()
    sending = book:line { ev = "sending", ref = ref, params = ledger.params(params), what = opts.what or "create",
      base_url = self.base_url, output = opts.output }
  end
  for _, w in ipairs(warnings) do self:log("warning", w) end
  local slot, slot_err = Share.acquire(self, opts.deadline) -- a task's slot of max_tasks, before anything is sent
  if not slot then return nil, slot_err end
  local decoded, r = http.json(self, {
    method = "POST", path = "/videos", body = body, paid = true, what = "create",
    deadline = opts.deadline, journal = opts.journal, until_deadline = opts.until_deadline, on_retry = opts.on_retry,
    ledger = book and { path = book.path, sending = sending, not_created = book:line { ev = "not_created", ref = ref } },
  })
  local task, terr
  if decoded then
    task, terr = to_task(self, decoded, r, warnings)
    if task and self.dialect == "tokenops" and not dialect.vendor_host(self) and
        (r.headers["x-new-api-version"] or r.headers["x-oneapi-request-id"]) then
      -- too late for this create (it is made), in time for the next: the gateway is new-api, which reads
      -- another shape (README "Gateways")
      task.warnings[#task.warnings + 1] = "the gateway answered as new-api (X-New-Api-Version / X-Oneapi-Request-Id): " ..
        "it reads the new-api dialect and may have dropped parameters of this create; use dialect new-api " ..
        "(--dialect new-api, JIMENG_DIALECT=new-api) or auto"
      self:log("warning", task.warnings[#task.warnings])
      -- every later create of this client is refused before it is sent (dialect.resolve)
      self.answered_new_api = r.headers["x-new-api-version"] and
        "its create answered X-New-Api-Version: " .. errors.scrub(r.headers["x-new-api-version"], self.api_key) or
        "its create answered X-Oneapi-Request-Id"
    end
    if not task then
      -- a 2xx: the task exists even if its answer makes no sense
      terr.created, terr.task_id = true, core.raw_id(r.body or "")
      terr.message = terr.message .. " (the task was made" .. (terr.task_id and "" or "; its id cannot be read") .. ")"
    end
    Share.created(self, slot, task and task.id or core.raw_id(r.body or ""), true)
  else
    terr = r
    Share.created(self, slot, r.task_id, r.created)
    wrong_dialect(self, terr)
  end
  if book and (task or terr.sent) then
    -- the answer's id first, before anything else is done with it
    local id = task and task.id or terr.task_id
    local rec
    if task or (terr.created and id) then
      local meant = opts.output
      if opts.output_for then
        local okp, p = pcall(opts.output_for, id)
        if okp and type(p) == "string" then meant = p end
      end
      rec = { ev = "created", ref = ref, id = id, output = meant }
    elseif terr.created == false then
      rec = { ev = "not_created", ref = ref }
    else
      rec = { ev = "unknown", ref = ref, error = terr.message, made = terr.created or nil }
    end
    local ok, lerr = book:append(rec)
    if not ok then
      local w = lerr .. (id and (" (task " .. id .. " is not in it)") or "")
      self:log("warning", w)
      if task then task.warnings[#task.warnings + 1] = w end
    end
  end
  if not task then return nil, terr end
  self.created_at[task.id] = now()
  return task
end

-- Appends a record about task `id` to the ledger (when there is one); a failure is logged, never raised:
-- the ledger serves the user, it never stops a call.
function Client:note(rec)
  if not self.ledger then return end
  rec.base_url = self.base_url -- a task is asked about at the API that made it
  local ok, lerr = self.ledger:append(rec)
  if not ok then self:log("warning", lerr) end
end

-- What became of a download of task `id` to `path`, in the ledger: saved (with which file it is), or failed.
function Client:noted(id, path, info, derr)
  local abs = core.canonical_path(path) or path
  if info then
    self:note { ev = "saved", id = id, path = abs, bytes = info.bytes, file = core.file_id(path) }
  elseif derr.kind ~= "invalid_argument" then
    self:note { ev = "download_failed", id = id, path = abs, error = derr.message }
  end
end

--- client:status(id) -> task | nil, err
function Client:status(id, opts)
  check_method_self(self, "status")
  check_opts(opts, "status")
  local _, err = check_id(id)
  if err then return nil, err end
  local ok, kerr = need_key(self)
  if not ok then return nil, kerr end
  local decoded, r, read = http.json(self, {
    method = "GET", path = "/videos/" .. id, what = "status", deadline = opts and opts.deadline, status = true,
  })
  if not decoded then
    r.task_id = id
    return nil, r
  end
  local task, terr = to_task(self, decoded, r, nil, read)
  if not task then return nil, terr end
  if task.id ~= id then
    return nil, errors.new({ kind = "protocol", task_id = id, request_id = task.request_id,
      message = ("asked for task %s, the API answered about task %s"):format(id, task.id:sub(1, 64)) }, self.api_key)
  end
  task.retry_after = http.server_delay(r.headers)
  Share.finished(self, task)
  return task
end

--- client:wait(id, opts) -> task | nil, err
-- Polls until completed (returns the task), failed (task_failed) or the timeout (timeout, err.task =
-- the last task seen). opts: interval, timeout, on_status(task) called on every change of status or of
-- task.progress (0-100, where the gateway says it).
-- A status this client does not know keeps it waiting (with a warning), until the deadline.
-- The first wait for a task this client created polls first when tasks usually leave the queue (the
-- client's typical_queue, learnt from its earlier tasks), at a random point of the interval after it.
function Client:wait(id, opts)
  check_method_self(self, "wait")
  check_opts(opts, "wait")
  opts = opts or {}
  local _, err = check_id(id)
  if err then return nil, err end
  local interval = opts.interval or self.poll_interval
  if type(interval) ~= "number" or not (interval >= 0.01) then -- luacheck: ignore 581 (NaN too)
    return invalid("interval must be a number of seconds, at least 0.01", "interval")
  end
  local timeout = opts.timeout or self.wait_timeout
  if type(timeout) ~= "number" or not (timeout > 0) then -- luacheck: ignore 581
    return invalid("timeout must be a positive number of seconds", "timeout")
  end
  local deadline = opts.deadline or (now() + timeout)
  local last, last_status, last_progress, last_err
  local created_at = self.created_at[id]
  self.created_at[id] = nil
  local fresh = created_at ~= nil
  local started, queued_until, learnt = created_at or now(), nil, false
  if fresh then
    -- a task this client created: its first poll comes no earlier than tasks of this client usually wait
    -- in the queue (a poll before that would only say in_queue), at a random point of the interval after
    -- it, so that the polls of tasks created together spread over the interval from the first round on
    local first = math.min(started + (self.typical_queue or 0) + math.random() * interval - now(),
      deadline - now() - 0.05)
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
    if task and fresh and not learnt then
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
      if task.status ~= last_status or task.progress ~= last_progress then -- progress: new-api's 0-100
        last_status, last_progress = task.status, task.progress
        if task.status == "unknown" and task.raw_status ~= "unknown" then
          self:log("warning", task.warnings[#task.warnings])
        end
        local ok, cerr = errors.call_back(opts.on_status, "on_status", id, task)
        if not ok then return nil, cerr end
      end
      if task.status == "completed" then
        self:note { ev = "completed", id = id }
        return task
      end
      if task.status == "failed" then
        self:note { ev = "failed", id = id, error = task.error or task.raw_status }
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

--- client:download(id, path, opts) -> info | nil, err
-- Streams to <path>.part, checks the byte count (when the server sent one: a chunked or HTTP/2 body may come
-- without) and that the file is a whole MP4 (its top-level boxes), fsyncs and renames onto path. A failure leaves no file
-- at path; the .part stays, bound to the task by its record (<path>.part.json), and the next call for the
-- same task resumes from it (opts.resume, default true). The .part is locked: a second download to the same
-- path is refused while one runs. An existing file at path is refused unless opts.overwrite.
-- opts.on_progress(received, total) is called at most every
-- opts.progress_interval seconds (0.25). info: {path=, bytes=, task_id=, status=, resumed_from= (bytes kept
-- from an earlier call), etag=, content_type=, request_id=, already= (true: the ledger saw this very file saved as
-- this task's video, and nothing was fetched)}. opts.on_resume(offset, total) when bytes of an earlier
-- call are kept. Each outcome is recorded in the ledger (saved: the file it became; download_failed).
function Client:download(id, path, opts)
  check_method_self(self, "download")
  check_opts(opts, "download")
  local _, err = check_id(id)
  if err then return nil, err end
  if type(path) ~= "string" or path == "" then
    return invalid("download needs an output path", "path")
  end
  opts = opts or {}
  local bad = download.not_an_output(path, self.ledger and self.ledger.path)
  if bad then return invalid(bad, "path") end
  local state, why = core.check_output(path)
  if not state then return nil, errors.new { kind = "io", task_id = id, field = "path", message = why } end
  if state == "file" and not opts.overwrite then
    -- the ledger saw this very file saved as this task's whole video: nothing to do
    local entries, by_id = ledger.read(self.ledger and self.ledger.path, self.json)
    local entry = entries and by_id[id]
    if entry and ledger.saved_here(entry, path) then
      local bytes = core.file_size(path)
      return { path = path, bytes = bytes, task_id = id, already = true }
    end
    return invalid(path .. " exists: choose another path, or pass overwrite=true (CLI --force) to replace it", "path")
  end
  local ok, kerr = need_key(self)
  if not ok then return nil, kerr end
  local on_progress = opts.on_progress
  if on_progress ~= nil and type(on_progress) ~= "function" then
    return invalid("on_progress must be a function", "on_progress")
  end
  local perr
  if on_progress then
    -- a progress callback that raises comes back as a `callback` error with the task id (as in generate and
    -- wait), after the download ends: the video it was watching is not lost to it
    local own = {}
    for k, v in pairs(opts) do own[k] = v end
    own.on_progress = function(...)
      if perr then return end
      local _, e = errors.call_back(on_progress, "on_progress", id, ...)
      perr = e
    end
    opts = own
  end
  local info, derr = download.download(self, id, path, opts)
  self:noted(id, path, info, derr)
  if info and perr then
    perr.message = perr.message .. " (the video was saved all the same: " .. info.path .. ")"
    perr.path = info.path
    return nil, perr
  end
  return info, derr
end

-- Subjects (OmniHuman)

-- which: "detection" | "recognition"; read: core.detection | core.recognition (reads its answer)
local function subject_call(self, which, read, image_url, opts)
  local body, why, class, field = core.subject_body(which, image_url)
  if not body then return nil, errors.from_core(why, class, field) end
  local ok, kerr = need_key(self)
  if not ok then return nil, kerr end
  local name, derr = dialect.resolve(self)
  if not name then return nil, derr end
  ok, derr = dialect.subject_route(name, which)
  if not ok then return nil, derr end
  local decoded, r = http.json(self, {
    method = "POST", path = "/omnihuman/subject/" .. which, body = body, what = which,
    deadline = opts and opts.deadline,
  })
  if not decoded then return nil, r end
  local result, rwhy = read(decoded)
  if not result then
    return nil, errors.new({ kind = "protocol", message = rwhy, request_id = http.request_id(r, decoded) }, self.api_key)
  end
  result.request_id = errors.scrub(http.request_id(r, decoded), self.api_key)
  result.task_id = errors.scrub(result.task_id, self.api_key)
  for i, m in ipairs(result.mask_urls or {}) do result.mask_urls[i] = errors.scrub(m, self.api_key) end
  return result
end

--- client:detect(image_url) -> {has_subject=, mask_urls={...largest first}, request_id=} | nil, err
function Client:detect(image_url, opts)
  check_method_self(self, "detect")
  check_opts(opts, "detect")
  return subject_call(self, "detection", core.detection, image_url, opts)
end

--- client:recognize(image_url) -> {has_subject=, task_id=, request_id=} | nil, err
function Client:recognize(image_url, opts)
  check_method_self(self, "recognize")
  check_opts(opts, "recognize")
  return subject_call(self, "recognition", core.recognition, image_url, opts)
end

-- Workflows (jimeng/workflows.lua)

--- client:generate(params, opts) -> result | nil, err
-- create + wait + download under one deadline (opts.timeout, default wait_timeout). opts.output is the
-- file; without it the file is jimeng_video_<id>.mp4 in opts.output_dir (default: the current directory),
-- checked before the create (opts.overwrite to replace an existing file). opts.on_created(task) as soon
-- as the task exists; opts.on_status and opts.on_progress as for wait and download.
-- result: {path=, bytes=, task=}. After the create, every error carries task_id and created = true: the video
-- is paid for.
function Client:generate(params, opts)
  check_method_self(self, "generate")
  return workflows.generate(self, params, opts)
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
  return workflows.omnihuman(self, params, opts)
end

--- client:batch(jobs, opts) -> summary | nil, err: many videos with a journal (see jimeng.batch).
function Client:batch(jobs, opts)
  check_method_self(self, "batch")
  return require("jimeng.batch").run(self, jobs, opts)
end

return Client
