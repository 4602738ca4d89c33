--- One API request with the client's policy: timeouts, retries with backoff, typed errors.
-- The engine (C) moves bytes; this decides what a result means and whether to try again.
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local neterrors = require "jimeng.neterrors"
local runtime = require "jimeng.runtime"

local M = {}

local now = core.now
local floor, min, random = math.floor, math.min, math.random

-- Statuses worth another try for calls that change nothing (status, detection, downloads...).
local RETRY_STATUS = { [408] = true, [409] = true, [429] = true, [500] = true, [502] = true, [503] = true, [504] = true }
-- libcurl codes after which not one byte of the request can have reached the server.
local NOT_SENT = { [5] = true, [6] = true, [7] = true, [35] = true, [60] = true }
local CURLE_OPERATION_TIMEDOUT = 28
-- A certificate that does not verify will not verify on a second try either.
local CURLE_PEER_FAILED_VERIFICATION = 60
-- Refusals that another try cannot change: a redirect to a protocol other than http(s), a bad URL,
-- a redirect chain past the limit.
local REFUSED = { [1] = "a redirect to a protocol other than http or https was refused", [3] = "the URL is malformed",
  [47] = "more than 5 redirects" }

-- Retry-After

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
  if d and d > 0 and d <= 60 then return d end
  return nil
end

--- The delay before retry number n (0-based): the server's, or exponential backoff with jitter.
function M.backoff(n, headers)
  local d = headers and M.server_delay(headers)
  if d then return d end
  return min(0.5 * 2 ^ n, 8) * (1 - 0.25 * random())
end


--- Turns a failed transfer (a libcurl error) into an error; `sent` tells if the request may have
-- reached the server. `client` lets a TLS failure be explained with the server's certificate.
local function transport_error(r, kind_hint, client)
  local sent = not (NOT_SENT[r.curl_code] or (r.request_size or 0) == 0)
  local kind = r.curl_code == CURLE_OPERATION_TIMEDOUT and "timeout" or "network"
  if r.too_large then
    return errors.new { kind = "protocol", message = "the response body is larger than the limit", status = r.status }, sent
  end
  if r.headers_too_large then
    return errors.new { kind = "protocol", message = "the response headers are larger than 64 KiB" }, sent
  end
  if r.io_error then
    return errors.new { kind = "io", message = "cannot write the download: " .. r.io_error }, sent
  end
  if REFUSED[r.curl_code] then
    return errors.new {
      kind = "protocol", retryable = false, message = REFUSED[r.curl_code] .. " (" .. r.curl_error .. ")",
    }, sent
  end
  local explained = neterrors.explain(r, client) -- a proxy's refusal, a certificate: the request never left
  if explained then return errors.new(explained), false end
  return errors.new { kind = kind_hint or kind, message = r.curl_error }, sent
end
M.transport_error = transport_error

--- The error for an HTTP response that is not a success.
function M.status_error(client, r, decoded)
  local explained = neterrors.explain(r, client)
  if explained then return errors.new(explained) end
  local msg, code = core.error_message(decoded, r.body)
  if r.status >= 300 and r.status < 400 and r.headers.location then
    msg = ("HTTP %d redirect to %s (API calls follow no redirect: check the base URL)"):format(r.status, r.headers.location)
  end
  local rid = r.headers["x-request-id"]
  if not rid and type(decoded) == "table" and type(decoded.request_id) == "string" then rid = decoded.request_id end
  return errors.new({
    kind = errors.kind_for_status(r.status),
    message = msg or ("HTTP " .. r.status),
    status = r.status,
    code = code,
    request_id = rid,
  }, client.api_key)
end

--- Whether to try again after a failure. `paid` calls (create) only retry when the request cannot
-- have reached the server, or the server refused it outright.
local function should_retry(paid, r, sent)
  if neterrors.final(r) then return false end -- a proxy's refusal, a certificate: no header changes them
  local hint = r.headers and r.headers["x-should-retry"]
  if hint == "true" then return true end
  if hint == "false" then return false end
  if r.status and r.status > 0 and r.ok then
    if paid then
      return r.status == 429 or (r.status == 503 and M.server_delay(r.headers) ~= nil)
    end
    return RETRY_STATUS[r.status] == true
  end
  if r.too_large or r.io_error or r.headers_too_large or r.cancelled then return false end
  if r.curl_code == CURLE_PEER_FAILED_VERIFICATION or REFUSED[r.curl_code] then return false end
  if paid then return not sent end
  return true
end

-- The options of a client's JSON requests that never change: one table per client, of which each call
-- sets only its own fields (engine:request reads it at once, so coroutines cannot see each other's).
-- JSON calls follow no redirect, so the key can travel as a plain Authorization header: it cannot reach
-- another host (downloads, which follow redirects, leave it to libcurl's bearer handling instead). No
-- Accept-Encoding: compressing answers of a hundred bytes costs more than it saves.
local function request_options(client)
  local o = client._json_request
  if not o then
    local auth = "Authorization: Bearer " .. client.api_key
    o = {
      profile = "json", -- the engine is this client's own: its JSON calls share configured handles
      connect_timeout = client.connect_timeout, user_agent = client.user_agent, cainfo = client.cainfo,
      capath = client.capath, proxy = client.proxy, no_proxy = client.no_proxy, http_version = client.http_version,
      max_body = 8 * 1024 * 1024, follow = 0,
      get_headers = { "Accept: application/json", auth },
      post_headers = { "Accept: application/json", "Content-Type: application/json", auth },
    }
    client._json_request = o
  end
  return o
end

--- Performs a JSON API call with retries. spec: method, path, body (table), paid (bool), deadline
-- (absolute, from core.now), max_retries. Returns decoded, result | nil, err.
function M.json(client, spec)
  local url = client.base_url .. spec.path
  local body = spec.body and client.json.encode(spec.body)
  local retries = spec.max_retries or client.max_retries
  local opts = request_options(client)
  local headers = body and opts.post_headers or opts.get_headers
  local attempt = 0
  while true do
    local timeout = client.timeout
    if spec.deadline then
      local left = spec.deadline - now()
      if left <= 0 then
        return nil, errors.new { kind = "timeout", message = "the deadline passed before " .. spec.what }
      end
      timeout = min(timeout, left)
    end
    opts.url, opts.method, opts.body, opts.headers = url, spec.method, body, headers
    opts.timeout, opts.fresh_connect = timeout, spec.paid
    local t, why = client.engine:request(opts)
    opts.body = nil -- the request has its own copy; a large body is not kept alive here
    if not t then return nil, errors.new { kind = "invalid_argument", message = why } end
    runtime.await(client.engine, t)
    local r = t:result()
    local err, sent
    if r.ok and r.status >= 200 and r.status < 300 then
      local ok, decoded = pcall(client.json.decode, r.body)
      if ok and type(decoded) == "table" then return decoded, r end
      return nil, errors.new({
        kind = "protocol",
        message = "the server's answer to " .. spec.what .. " is not a JSON object: " ..
          (core.error_message(nil, r.body) or "empty body"),
        status = r.status, request_id = r.headers["x-request-id"],
      }, client.api_key)
    elseif r.ok then
      local ok, decoded = pcall(client.json.decode, r.body)
      err = M.status_error(client, r, ok and decoded or nil)
      sent = true
    else
      err, sent = transport_error(r, nil, client)
    end
    local retry = should_retry(spec.paid, r, sent)
    if spec.paid and not r.ok and sent and not retry then
      -- the body left this machine and no answer came back: the video may exist and be billed
      err = errors.new {
        kind = "unknown_outcome", retryable = false,
        message = "the create request was sent but no answer came back (" .. r.curl_error ..
          "); the task may exist and be billed: check before creating it again",
      }
    end
    if not retry or attempt >= retries then
      if retry then err.retryable = true end
      return nil, err
    end
    local delay = M.backoff(attempt, r.headers)
    if spec.deadline and now() + delay >= spec.deadline then return nil, err end
    attempt = attempt + 1
    client:log("retry", spec.what, attempt, delay, tostring(err))
    runtime.sleep(delay)
  end
end

M.should_retry = should_retry

return M
