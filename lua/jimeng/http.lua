--- One API request with the client's policy: timeouts, retries with backoff, typed errors.
-- The engine (C) moves bytes; this decides what a result means and whether to try again.
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local neterrors = require "jimeng.neterrors"
local runtime = require "jimeng.runtime"
local trace = require "jimeng.trace"

local M = {}

local now = core.now
local floor, min, random = math.floor, math.min, math.random

-- Statuses worth another try for calls that change nothing (status, detection, downloads...).
local RETRY_STATUS = { [408] = true, [409] = true, [429] = true, [500] = true, [502] = true, [503] = true, [504] = true }
-- Transport failures (the engine's class) worth another try: the path to the server, not the request.
local RETRY_CLASS = { dns = true, connect = true, timeout = true, reset = true }
-- What a failure class is, said to a user.
local CLASS_KIND = { timeout = "timeout", tls = "tls", proxy = "proxy", refused = "protocol", too_large = "protocol",
  io = "io", internal = "network", cancelled = "network" }
local CLASS_SAYS = {
  refused = ("the request was refused by the client's rules (a redirect to another protocol, a malformed URL " ..
    "or more than %d redirects)"):format(core.limits.max_redirects),
  too_large = ("the answer is larger than the limit (%d MiB of JSON, %d KiB of headers)"):format(
    floor(core.limits.max_json_body / 1048576), floor(core.limits.max_header_bytes / 1024)),
}
-- Codes with which a 429 means "no more, ever" rather than "not now": retrying cannot help.
local FINAL_429 = { insufficient_quota = true, ["50430"] = true }

-- Retry-After

-- The shortest wait a server's hint may ask for: `retry-after-ms: 1` must not become a storm of requests.
local MIN_SERVER_DELAY = 0.05

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Seconds since the epoch of an IMF-fixdate ("Wed, 21 Oct 2015 07:28:00 GMT"), computed in UTC.
local function http_date(s)
  local d, mon, y, h, mi, sec = s:match("^%a+, (%d%d?) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  local m = MONTHS[mon or ""]
  if not m then return nil end
  y, m, d = tonumber(y), m, tonumber(d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
end

--- The server's requested delay in seconds (retry-after-ms, then Retry-After as seconds or a date),
-- when it is a sane one: 0 < delay <= 60.
function M.server_delay(headers)
  local d
  local ms = tonumber(headers["retry-after-ms"] or "")
  if ms then
    d = ms / 1000
  else
    local ra = headers["retry-after"]
    if ra then
      d = tonumber(ra)
      if not d then
        local at = http_date(ra)
        d = at and (at - os.time())
      end
    end
  end
  if d and d > 0 and d <= 60 then return math.max(d, MIN_SERVER_DELAY) end
  return nil
end

--- The delay before retry number n (0-based): the server's, or exponential backoff with jitter.
function M.backoff(n, headers)
  local d = headers and M.server_delay(headers)
  if d then return d end
  return min(0.5 * 2 ^ n, 8) * (1 - 0.25 * random())
end


--- The error for a failed transfer (no usable HTTP answer), from the engine's failure class.
local function transport_error(r, _, client)
  local explained = neterrors.explain(r, client) -- a proxy's refusal, a certificate: said with their details
  if explained then
    local e = errors.new(explained)
    e.class = r.class
    return e
  end
  local class = r.class or "reset"
  local kind = CLASS_KIND[class] or "network"
  local message = r.curl_error or class
  if class == "too_large" and message:lower():find("out of memory", 1, true) then
    message = "a header line longer than libcurl takes" -- what an older libcurl calls "out of memory"
  end
  if CLASS_SAYS[class] then message = CLASS_SAYS[class] .. " (" .. message .. ")" end
  if r.io_error then message = "cannot write the download: " .. r.io_error end
  if r.journal_error then message = "cannot write the journal before sending: " .. r.journal_error end
  if r.ledger_error then
    message = "cannot write the ledger before sending: " .. r.ledger_error .. " (ledger=false, JIMENG_LEDGER=false: none)"
  end
  if class == "tls" then
    message = message .. " (TLS verification is always on: pass cainfo= for a private CA)"
  elseif class == "proxy" then
    message = ("the proxy refused%s: %s"):format(r.proxy_status and r.proxy_status > 0 and
      (" with HTTP " .. r.proxy_status) or "", message)
  end
  return errors.new { kind = kind, message = message, class = class,
    retryable = RETRY_CLASS[class] == true or nil }
end
M.transport_error = transport_error

--- The request id of an answer: the body's `request_id` (the API page's field) when it is text, else the
-- gateway's x-request-id header, else new-api's X-Oneapi-Request-Id (middleware/request-id.go). The one rule,
-- for tasks, subject results and errors alike.
function M.request_id(r, decoded)
  if type(decoded) == "table" and type(decoded.request_id) == "string" then return decoded.request_id end
  return r.headers and (r.headers["x-request-id"] or r.headers["x-oneapi-request-id"])
end

--- The error for an HTTP response that is not a success. The body is scrubbed of the key before it is
-- read or cut short (a key split at a cut would leak its first half).
function M.status_error(client, r, decoded)
  local explained = neterrors.explain(r, client)
  if explained then return errors.new(explained) end
  local body = errors.scrub(r.body, client.api_key)
  if body ~= r.body then
    local ok, d = pcall(client.json.decode, body)
    decoded = ok and d or nil
  end
  local msg, code = core.error_message(decoded, body)
  if r.status >= 300 and r.status < 400 and r.headers.location then
    msg = ("HTTP %d redirect to %s (API calls follow no redirect: check the base URL)"):format(r.status,
      errors.scrub(r.headers.location, client.api_key))
  end
  return errors.new({
    kind = errors.kind_for(r.status, code, msg),
    message = msg or ("HTTP " .. r.status),
    status = r.status,
    code = code,
    request_id = M.request_id(r, decoded),
    -- whether the answer came with new-api's headers (middleware Version / RequestId, on every answer of it):
    -- a refusal in the other dialect's words says the dialect is wrong, not the parameter (client.create)
    new_api_headers = (r.headers and (r.headers["x-new-api-version"] or r.headers["x-oneapi-request-id"])) and true or nil,
  }, client.api_key)
end

--- Whether a paid request made its task, from what the engine saw: true (any 2xx: the task exists),
-- false (never handed to the wire, refused with a 3xx/4xx, or not one byte acknowledged and reset so it
-- can never land), nil (handed over, then a 5xx or no answer: it may exist).
local function created(r)
  if not r.handed_over or r.class == "proxy" then return false end
  local status = r.status or 0
  if status >= 200 and status < 300 then return true end
  if status >= 300 and status < 500 then return false end
  if status >= 500 then return nil end -- a gateway answers so after the backend got it: whatever it adds
  if r.reset_sent or r.acked == 0 then return false end
  return nil
end
M.created = created

--- Whether to try again after a failure. A paid request is tried again only when it made no task.
local function should_retry(paid, r, err)
  if r.cancelled or (err and err.code and FINAL_429[err.code]) then return false end
  if err and err.kind == "quota" then return false end -- an empty wallet stays empty: never asked again
  if neterrors.final(r) then return false end -- a proxy's refusal, a certificate: no header changes them
  local status = r.status or 0
  if paid then
    if created(r) ~= false then return false end
    if status > 0 and r.handed_over and r.ok then
      local hint = r.headers["x-should-retry"]
      if hint then return hint == "true" end -- only a complete refusal (3xx/4xx) may say so
      return status == 429 or status == 408
    end
    if status > 0 and r.handed_over then return status == 429 or status == 408 end
    return RETRY_CLASS[r.class or "reset"] == true or r.reset_sent == true
  end
  if status > 0 and r.ok then
    local hint = r.headers["x-should-retry"]
    if hint == "true" then return true end
    if hint == "false" then return false end
    return RETRY_STATUS[status] == true
  end
  return RETRY_CLASS[r.class or "reset"] == true
end
M.should_retry = function(paid, r) return should_retry(paid, r) end

-- The answer of a 2xx that cannot be read: the task exists all the same, so its id (when the raw body
-- shows one) and the body go into the error, and the error says the task was made.
local function unreadable(client, spec, r)
  local id = core.raw_id and core.raw_id(r.body or "")
  local body = errors.scrub(r.body or "", client.api_key)
  return errors.new({
    kind = "protocol", status = r.status, request_id = M.request_id(r), task_id = id, created = true,
    body = #body > 2000 and body:sub(1, 2000) or body,
    message = ("the server's answer to %s is not a JSON object%s: %s"):format(spec.what,
      spec.paid and (" but it made the task" .. (id and "" or " (its id cannot be read)")) or "",
      core.error_message(nil, body) or "empty body"),
  }, client.api_key)
end

--- Performs a JSON API call: the one retry driver. spec: method, path, body (table), what (a name for
-- messages), paid (bool: a create), deadline (absolute, from core.now), max_retries, journal (for a paid
-- call: {path=, sending=line, not_created=line}: `sending` is made durable by the engine the moment the
-- request is handed to the wire, `not_created` when an attempt is found to have made nothing),
-- until_deadline (retry rate limits until the deadline, not max_retries), on_retry(err, delay), status (a
-- status poll: its answer may be read straight into a task, returned as decoded with a third value, true).
-- Returns decoded, result | nil, err. A paid call's error says `created`: true, false or nil (unknown).
function M.json(client, spec)
  local url = client.base_url .. spec.path
  local body = spec.body and client.json.encode(spec.body)
  local retries = spec.max_retries or client.max_retries
  local journal = spec.paid and spec.journal
  local sent -- an attempt was handed to the wire (a paid call's error says so: err.sent)
  local not_made -- what a paid call's error says when nothing was sent: created = false
  if spec.paid then not_made = false end
  local function fail(e)
    if spec.paid then e.sent = sent or nil end
    return nil, e
  end
  local attempt = 0
  while true do
    if spec.deadline and spec.deadline - now() <= 0 then
      return fail(errors.new { kind = "timeout", created = not_made,
        message = "the deadline passed before " .. spec.what })
    end
    if client.closed then -- client:close() (from another coroutine, say): a typed error, never a raise
      return nil, errors.new { kind = "interrupted", created = not_made, retryable = false,
        message = ("the client was closed (client:close()) before %s was sent"):format(spec.what) }
    end
    -- the engine holds the client's settings (key, TLS, proxy, timeouts): the call gives only its own fields
    -- (a paid call's after the constructor: a table constructor sizes its table for every field it names, nil
    -- or not, and a status poll builds this table every time)
    local ropts = {
      url = url, method = spec.method, body = body, timeout = client.timeout, deadline = spec.deadline,
      head = client.trace ~= nil or nil, -- every header line of the answer, for the trace
    }
    if spec.paid then
      ropts.paid = true
      if journal then ropts.journal, ropts.journal_line = journal.path, journal.sending end
      if spec.ledger then ropts.ledger, ropts.ledger_line = spec.ledger.path, spec.ledger.sending end
    end
    local t, why, class = client.engine:request(ropts)
    if not t then return fail(errors.from_core(why, class)) end
    local _, interrupted = runtime.await(client.engine, t)
    if interrupted and spec.paid and not t:done() and t:handed_over() then
      -- Ctrl-C while a paid create is on the wire: its answer names the task that may now exist, so it is
      -- awaited (within the request's timeout; a second Ctrl-C abandons it) rather than lost
      client:log("interrupted", "waiting for the create's answer to learn its task id (Ctrl-C again to abandon)")
      core.mute_interrupt()
      while not t:done() do
        if core.insisted() then -- abandoned: the task may exist and be billed, and this call says so
          t:cancel()
          break
        end
        client.engine:wait(200)
      end
    elseif interrupted then
      t:cancel()
    end
    local r = t:result()
    if client.closed and not r.ok and not spec.paid then
      return nil, errors.new { kind = "interrupted", retryable = false,
        message = ("the client was closed (client:close()) during %s"):format(spec.what) }
    end
    local made = spec.paid and created(r)
    if r.handed_over then sent = true end
    if r.status == 429 then client.budget:refused() elseif r.ok and r.status < 400 then client.budget:granted() end
    local tspec = client.trace and { method = spec.method, url = url, what = spec.what }
    if r.ok and r.status >= 200 and r.status < 300 then
      -- a status answer of the common shape is read straight into its task (src/status.c); any other body
      -- (nil from the reader) is decoded whole below, as every other answer is
      local task = spec.status and core.status_task(r.body)
      if task then
        if tspec then trace.request(client, tspec, r, attempt, M.request_id(r, task)) end
        return task, r, true
      end
      local ok, decoded = pcall(client.json.decode, r.body)
      if ok and type(decoded) == "table" then
        if tspec then trace.request(client, tspec, r, attempt, M.request_id(r, decoded)) end
        return decoded, r
      end
      local uerr = unreadable(client, spec, r)
      if tspec then trace.request(client, tspec, r, attempt, uerr.request_id, uerr) end
      return fail(uerr)
    end
    local err
    if spec.paid and made then
      -- a 2xx whose body broke off: the task exists, whatever else went wrong
      err = unreadable(client, spec, r)
    elseif r.status > 0 and (r.ok or r.class ~= "proxy") and r.handed_over ~= false and r.status >= 300 then
      local ok, decoded = pcall(client.json.decode, r.body or "")
      err = M.status_error(client, r, ok and decoded or nil)
    else
      err = transport_error(r, nil, client)
    end
    if tspec then trace.request(client, tspec, r, attempt, err.request_id, err) end
    if spec.paid then
      err.created = made
      if made == nil then
        err = errors.new({
          kind = "unknown_outcome", retryable = false, created = nil, status = r.status > 0 and r.status or nil,
          request_id = err.request_id,
          message = ("the create request was sent and %s; the task may exist and be billed: check before " ..
            "creating it again"):format(r.status > 0 and ("the answer was HTTP " .. r.status .. " (" .. err.message .. ")")
            or ("no answer came back (" .. (r.curl_error or "?") .. ")")),
        }, client.api_key)
      elseif made == false and r.handed_over then
        -- journaled before any backoff: a kill during the wait leaves a job known not to be created
        if journal and journal.not_created then
          local ok, jerr = core.append_durable(journal.path, journal.not_created)
          if not ok then
            return fail(errors.new { kind = "io", created = false, message = "cannot write the journal: " .. jerr })
          end
        end
        if spec.ledger and spec.ledger.not_created then
          core.append_durable(spec.ledger.path, spec.ledger.not_created, true) -- the ledger only informs
        end
      end
    end
    if interrupted then
      return fail(errors.new({ kind = "interrupted", created = err.created, status = err.status,
        message = ("interrupted (%s) during %s"):format(interrupted, spec.what) }))
    end
    local retry = should_retry(spec.paid, r, err)
    local limit = retries
    if spec.until_deadline and err.kind == "rate_limited" then limit = math.huge end
    if not retry or attempt >= limit then
      if retry then err.retryable = true end
      return fail(err)
    end
    local delay = M.backoff(attempt, r.headers)
    if spec.deadline and now() + delay >= spec.deadline then return fail(err) end
    attempt = attempt + 1
    client:log("retry", spec.what, attempt, delay, tostring(err))
    trace.retry(client, spec.what, attempt, delay, err.message)
    if spec.on_retry then spec.on_retry(err, delay) end
    local stopped = runtime.sleep(delay)
    if stopped then
      return fail(errors.new { kind = "interrupted", created = err.created,
        message = ("interrupted (%s) while waiting to retry %s"):format(stopped, spec.what) })
    end
  end
end

return M
