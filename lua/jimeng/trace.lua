--- The request trace: what a client's `trace` option is handed, one event per HTTP attempt and one per retry
-- (what `jimeng -v` prints). Every text is scrubbed of the key, and the Authorization header is never shown.
--
-- An attempt's event: {event="request", what=, method=, url=, attempt= (0 first), status= (0: no answer),
--   time= (seconds, libcurl's total), connection="new"|"reused"|"none", http_version= ("1.1", "2"...),
--   request_id=, error= (why it failed, when it did), request_headers={lines},
--   response_headers={ {name, value}... } (in the order received)}
-- A retry's event: {event="retry", what=, attempt= (the one about to be made), delay= (seconds), reason=}
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local text = require "jimeng.text"

local M = {}

M.REDACTED = "[redacted]"

-- The header lines an API request carries (as the engine builds them), the key redacted.
local function request_headers(client, spec)
  local h = {}
  if spec.kind == "download" then
    for _, line in ipairs(spec.headers or {}) do h[#h + 1] = line end
  else
    h[#h + 1] = "Accept: application/json"
    if spec.method == "POST" then h[#h + 1] = "Content-Type: application/json" end
  end
  if client.api_key then h[#h + 1] = "Authorization: Bearer " .. M.REDACTED end
  h[#h + 1] = "User-Agent: " .. tostring(client.user_agent)
  return h
end

--- Hands the trace of one attempt to client.trace (when set). spec: method, url, what, kind, headers;
-- r: the transfer's result; request_id, err: what the attempt came to.
function M.request(client, spec, r, attempt, request_id, err)
  local fn = client.trace
  if not fn then return end
  local key = client.api_key
  -- the answer's header lines as received (r.head, asked for when tracing), else those the engine keeps
  local resp = {}
  if r.head then
    for line in r.head:gmatch("[^\r\n]+") do
      local name, value = line:match("^([^:%s]+):%s*(.-)%s*$")
      if name then resp[#resp + 1] = { name, errors.scrub(value, key) } end
    end
  else
    -- result.headers reads each header when indexed: core.headers gives them all as a plain table
    for k, v in pairs(core.headers(r.headers or {})) do resp[#resp + 1] = { k, errors.scrub(v, key) } end
    table.sort(resp, function(a, b) return a[1] < b[1] end)
  end
  fn {
    event = "request", what = spec.what, method = spec.method or "GET", url = errors.scrub(spec.url, key),
    attempt = attempt, status = r.status or 0, time = r.total_time,
    connection = (r.num_connects or 0) > 0 and "new" or (r.connected or (r.status or 0) > 0) and "reused" or "none",
    http_version = r.http_version,
    -- a download's redirect hop (new-api's 302 to a signed URL): its query and fragment are a secret, never shown
    redirects = r.redirects, final_url = r.final_url and errors.scrub((r.final_url:gsub("[?#].*$", "?[redacted]")), key),
    request_id = errors.scrub(request_id, key), error = err and errors.scrub(tostring(err.message or err), key) or nil,
    request_headers = request_headers(client, spec), response_headers = resp,
  }
end

--- Hands a retry to client.trace: the attempt about to be made, after delay seconds, and why.
function M.retry(client, what, attempt, delay, reason)
  if not client.trace then return end
  client.trace { event = "retry", what = what, attempt = attempt, delay = delay,
    reason = errors.scrub(tostring(reason), client.api_key) }
end

-- The lines for a terminal: what a server sent (a header, a request id, an error) shown with its control
-- characters escaped, never run by the terminal.
local function printable(lines)
  for i, l in ipairs(lines) do lines[i] = text.printable(l) end
  return lines
end

--- One event as the lines `jimeng -v` prints (level 2: with the headers), each starting "* ", "> " or "< ".
function M.format(ev, level)
  local lines = {}
  if ev.event == "retry" then
    lines[1] = ("* retry %d of %s in %.2fs: %s"):format(ev.attempt, tostring(ev.what), ev.delay, ev.reason)
    return printable(lines)
  end
  lines[1] = ("> %s %s%s"):format(ev.method, ev.url, ev.attempt > 0 and (" (retry %d)"):format(ev.attempt) or "")
  if level >= 2 then
    for _, l in ipairs(ev.request_headers) do lines[#lines + 1] = "> " .. l end
  end
  local facts = { ev.status > 0 and ("HTTP/%s %d"):format(ev.http_version or "?", ev.status) or "no answer",
    ("%.0f ms"):format((ev.time or 0) * 1000), ev.connection == "none" and "no connection" or
    (ev.connection .. " connection") }
  if ev.redirects then
    facts[#facts + 1] = ("after %d redirect%s to %s"):format(ev.redirects, ev.redirects == 1 and "" or "s",
      ev.final_url or "?")
  end
  if ev.request_id then facts[#facts + 1] = "request id " .. ev.request_id end
  lines[#lines + 1] = "< " .. table.concat(facts, ", ") .. (ev.error and (": " .. ev.error) or "")
  if level >= 2 then
    for _, h in ipairs(ev.response_headers) do lines[#lines + 1] = ("< %s: %s"):format(h[1], h[2]) end
  end
  return printable(lines)
end

return M
