--- Errors: tables with kind, message, status, code, request_id, retryable, task_id, and a __tostring.
-- Failures are returned as `nil, err`; only misuse of the Lua API itself raises.
local M = {}

local Error = {}
Error.__index = Error

Error.__tostring = function(e)
  local extra = {}
  if e.status then extra[#extra + 1] = "HTTP " .. e.status end
  if e.code and e.code ~= "" then extra[#extra + 1] = "code=" .. tostring(e.code) end
  if e.task_id then extra[#extra + 1] = "task_id=" .. e.task_id end
  if e.request_id then extra[#extra + 1] = "request_id=" .. e.request_id end
  local s = "jimeng: " .. e.kind .. ": " .. tostring(e.message)
  if #extra > 0 then s = s .. " (" .. table.concat(extra, ", ") .. ")" end
  return s
end

-- Whether the same call may succeed if made again later, by kind (unknown_outcome: check first; a proxy's
-- refusal and a certificate that does not verify stay as they are until someone changes a setting).
local RETRYABLE = {
  rate_limited = true, server = true, network = true, timeout = true, proxy = false, tls = false,
}

M.kinds = {
  "invalid_argument", "auth", "not_found", "rate_limited", "server", "http", "network", "timeout",
  "task_failed", "protocol", "io", "unknown_outcome", "proxy", "tls",
}

--- Makes an error. fields: kind (required), message, and any of status, code, request_id, task_id,
-- retryable, field, task. `secret`, when given, is scrubbed from the message (a server may echo a key);
-- a secret under 8 characters is no real key, and scrubbing it would only mangle words.
function M.new(fields, secret)
  local e = setmetatable({}, Error)
  for k, v in pairs(fields) do e[k] = v end
  e.message = tostring(e.message or e.kind)
  if secret and #secret >= 8 then
    local out, pos = {}, 1
    while true do
      local s, f = e.message:find(secret, pos, true)
      if not s then break end
      out[#out + 1] = e.message:sub(pos, s - 1) .. "***"
      pos = f + 1
    end
    out[#out + 1] = e.message:sub(pos)
    e.message = table.concat(out)
  end
  if e.retryable == nil then e.retryable = RETRYABLE[e.kind] == true end
  return e
end

function M.is(v)
  return getmetatable(v) == Error
end

--- The kind an HTTP status maps to.
function M.kind_for_status(status)
  if status == 401 or status == 403 then return "auth" end
  if status == 404 then return "not_found" end
  if status == 429 then return "rate_limited" end
  if status == 408 then return "timeout" end
  if status == 400 or status == 422 then return "invalid_argument" end
  if status >= 500 then return "server" end
  return "http"
end

return M
