--- Errors: tables with kind, message, status, code, request_id, retryable, task_id, and a __tostring.
-- Failures are returned as `nil, err`; only misuse of the Lua API itself raises.
-- The one table of kinds below says, for each, whether the same call may succeed if made again later,
-- what to do about it, and the CLI's exit code: the library and the CLI both read it.
local M = {}

local EXIT_TASK, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 1, 2, 3, 130

--- kind -> {retryable=, exit=, hint=, fix=}. fix: what to put right before continuing a task that exists (is
-- paid for), where the hint's "run the command again" would pay for it again (see M.paid_hint).
M.KINDS = {
  invalid_argument = { retryable = false, exit = EXIT_USAGE,
    hint = "fix the parameter named above (see jimeng COMMAND --help)" },
  auth = { retryable = false, exit = EXIT_API, hint = "set JIMENG_API_KEY to a valid key (or --api-key-file)" },
  not_found = { retryable = false, exit = EXIT_API, hint = "check the task id: it is the id that create printed" },
  not_ready = { retryable = false, exit = EXIT_API,
    hint = "the video is not ready yet: run `jimeng wait ID`, then download it" },
  quota = { retryable = false, exit = EXIT_API,
    hint = "the account's balance (quota) is used up: top it up at the gateway, then run the command again" },
  rate_limited = { retryable = true, exit = EXIT_API,
    hint = "the API is rate limiting: wait a minute and run the command again (for batches, lower -j)",
    fix = "wait a minute" },
  server = { retryable = true, exit = EXIT_API, hint = "the API had a server error: run the command again in a while",
    fix = "wait a while" },
  http = { retryable = false, exit = EXIT_API,
    hint = "the API answered with an unexpected HTTP status: check JIMENG_BASE_URL", fix = "check JIMENG_BASE_URL" },
  network = { retryable = true, exit = EXIT_API,
    hint = "check the network and JIMENG_BASE_URL, then run the command again",
    fix = "check the network and JIMENG_BASE_URL" },
  proxy = { retryable = false, exit = EXIT_API,
    hint = "check the proxy settings (proxy=, --proxy, https_proxy, no_proxy) and its credentials",
    fix = "check the proxy settings" },
  tls = { retryable = false, exit = EXIT_API,
    hint = "the server's certificate was refused: see the message (cainfo= / --cainfo for a private CA)" },
  timeout = { retryable = true, exit = EXIT_API,
    hint = "the task may still finish: run `jimeng wait ID` later, then `jimeng download ID`" },
  task_failed = { retryable = false, exit = EXIT_TASK,
    hint = "the server failed this task: change the prompt or parameters and generate again" },
  protocol = { retryable = false, exit = EXIT_API,
    hint = "the server's answer was not what the API documents: run again; report it if it persists" },
  io = { retryable = false, exit = EXIT_API, hint = "check that the output path is writable and the disk has room",
    fix = "make the output's directory exist and be writable, with room on its disk" },
  unknown_outcome = { retryable = false, exit = EXIT_API,
    hint = "the task may exist and be billed: check with `jimeng status ID` before creating again" },
  callback = { retryable = false, exit = EXIT_API,
    hint = "a callback of yours raised an error; the task id above is what was paid for",
    fix = "fix the callback" },
  interrupted = { retryable = false, exit = EXIT_INTERRUPTED,
    hint = "interrupted: nothing was lost; the line above says how to continue" },
  internal = { retryable = false, exit = EXIT_API,
    hint = "jimeng or libcurl failed where it should not: report the message above" },
}

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

--- Replaces every occurrence of secret in s with "***", and what is left of a secret cut short (a server
-- that echoes a truncated key): any run of its first 12 characters or more. A secret under 8 characters
-- is no real key, and scrubbing it would only mangle words ("k" in "asked").
function M.scrub(s, secret)
  if type(s) ~= "string" or not secret or #secret < 8 then return s end
  local head = secret:sub(1, math.min(#secret, 12))
  if not s:find(head, 1, true) then return s end
  local out, pos = {}, 1
  while true do
    local a = s:find(head, pos, true)
    if not a then break end
    local n = #head
    while n < #secret and s:byte(a + n) == secret:byte(n + 1) do n = n + 1 end
    out[#out + 1] = s:sub(pos, a - 1) .. "***"
    pos = a + n
  end
  out[#out + 1] = s:sub(pos)
  return table.concat(out)
end

-- The fields of an error that can carry a server's text.
local TEXT_FIELDS = { "message", "code", "request_id", "body", "type" }

--- Makes an error. fields: kind (required), message, and any of status, code, request_id, task_id,
-- retryable, field, task. `secret`, when given, is scrubbed from every text field (a server may echo a key).
function M.new(fields, secret)
  local e = setmetatable({}, Error)
  for k, v in pairs(fields) do e[k] = v end
  e.message = tostring(e.message or e.kind)
  if e.code ~= nil and type(e.code) ~= "string" then e.code = tostring(e.code) end
  if secret then
    for _, k in ipairs(TEXT_FIELDS) do e[k] = M.scrub(e[k], secret) end
  end
  if e.retryable == nil then e.retryable = (M.KINDS[e.kind] or {}).retryable == true end
  return e
end

--- nil and an invalid_argument error: a call refused for a bad argument, before anything was sent.
function M.invalid(message, field)
  return nil, M.new { kind = "invalid_argument", message = message, field = field }
end

--- Calls a user's callback; a callback that raises becomes an error of kind `callback` carrying the task
-- id, so that a paid task is never lost to a bug in the caller's code. -> true | nil, err
function M.call_back(fn, name, task_id, ...)
  if not fn then return true end
  local ok, why = pcall(fn, ...)
  if ok then return true end
  return nil, M.new { kind = "callback", task_id = task_id, retryable = false,
    message = ("%s raised: %s"):format(name, tostring(why)) }
end

--- The error for a runtime failure returned by the C core as `nil, message, class[, field]`.
function M.from_core(message, class, field)
  return M.new { kind = M.KINDS[class] and class or "internal", message = message, field = field }
end

function M.is(v)
  return getmetatable(v) == Error
end

--- What to do about an error of this kind (one sentence), or nil.
function M.hint(kind)
  return M.KINDS[kind] and M.KINDS[kind].hint
end

--- What to do about a task that exists and is paid for, whatever stopped the call (an error after the
-- create, an interruption): never "run the command again", which would pay for it again. The sentence ends
-- with "continue with:", for the command(s) that save it (the CLI's jimeng resume, jimeng download ID -o FILE).
function M.paid_hint(task_id, kind)
  local fix = M.KINDS[kind] and M.KINDS[kind].fix
  return ("task %s exists (it is paid for): do not create it again; %scontinue with:"):format(tostring(task_id),
    fix and (fix .. ", then ") or "")
end

--- The CLI's exit code for an error of this kind.
function M.exit_code(kind)
  return M.KINDS[kind] and M.KINDS[kind].exit or EXIT_API
end

-- Error codes that say more than their HTTP status: an unknown task answered 400 (new-api: relay/relay_task.go,
-- videoFetchByIDRespBodyBuilder, TaskErrorWrapperLocal(..., "task_not_exist", 400)), an empty wallet 403 or
-- 429 (new-api: service/billing_session.go NewBillingSession, types.ErrorCodeInsufficientUserQuota, 403),
-- content asked for too early (the sandbox's tokenops "video_not_ready").
local CODE_KIND = { task_not_exist = "not_found", not_found = "not_found", insufficient_user_quota = "quota",
  insufficient_quota = "quota", video_not_ready = "not_ready" }

--- The kind of an HTTP error answer: from its code or message when they say more (an unknown task, an empty
-- wallet, a video not ready yet), else from its status.
function M.kind_for(status, code, message)
  local by_code = type(code) == "string" and CODE_KIND[code:lower()]
  if by_code then return by_code end
  if status < 500 and type(message) == "string" then
    local m = message:lower()
    -- new-api's content route (controller/video_proxy.go VideoProxy): "Task is not completed yet, current status: X"
    if m:find("not completed yet", 1, true) then return "not_ready" end
    if m:find("task_not_exist", 1, true) then return "not_found" end
  end
  return M.kind_for_status(status)
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
