--- One account, many clients: where a client's budget (max_rps, burst, max_tasks) is held, so that every
-- client that spends the same account spends one budget. The bucket and the slots are C's (src/share.c):
-- in this process's memory ("process"), or in a small file every process of the machine maps ("local", or a
-- path). A share is named by a hash of the key and the base URL: clients with the same key and base URL
-- share it, and the key is never kept by the share.
--
-- Where (the client option `budget`, else JIMENG_BUDGET):
--   "client"  this client alone (what every client did before budgets could be shared)
--   "process" every client of this process with the same key and base URL
--   "local"   every process of this user on this machine with the same key and base URL
--   a path    the same, in that file (absolute, or starting with ./)
--   "redis://host:port/prefix"  every client of every machine that names it (src/share_redis.c)
-- Unset: "process" when the client sets max_rps or max_tasks (inside nginx "local": its workers are
-- processes), else "client".
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local runtime = require "jimeng.runtime"

local M = {}

local now = core.now

local WHERE = { "client", "process", "local" }

-- A shared bucket fills a little slower than the client's own: a token is taken when a request gets its
-- connection, and the requests of several processes (a loaded machine, nginx workers) reach the server with
-- more spread between that moment and their arrival, which would carry one more into a second the server
-- counts. 5% leaves 70 ms of spread at max_rps = 20 (the client's own 2% leaves 20 ms).
M.HEADROOM = 0.95

--- M.check(client) -> true | nil, err: the budget options as given (nothing opened yet).
function M.check(c)
  if c.max_tasks ~= nil and not (c.max_tasks >= 1 and c.max_tasks <= 1024 and -- luacheck: ignore 581
      c.max_tasks == math.floor(c.max_tasks)) then
    return errors.invalid("max_tasks must be a whole number of tasks from 1 to 1024", "max_tasks")
  end
  if c.budget_lease ~= nil and not (c.budget_lease >= 0.5 and c.budget_lease <= 86400) then -- luacheck: ignore 581
    return errors.invalid("budget_lease must be a number of seconds from 0.5 to 86400", "budget_lease")
  end
  local b = c.budget
  if b == nil then
    b = os.getenv("JIMENG_BUDGET")
    if b == "" then b = nil end
  end
  if b == nil then
    -- in nginx, "this process" is one worker of many: the default is every process of the machine
    local ngx = rawget(_G, "ngx")
    local nginx = type(ngx) == "table" and type(ngx.worker) == "table"
    c.budget = (c.max_rps or c.max_tasks) and (nginx and "local" or "process") or "client"
    return true
  end
  if b:match("^redis://") then
    local host, port, prefix = b:match("^redis://([%w.-]+):?(%d*)/?([%w_.:-]*)$")
    port = tonumber(port ~= "" and port or "6379")
    if not host or not port or port < 1 or port > 65535 then
      return errors.invalid(("budget %q: a Redis budget is redis://host[:port][/prefix] (prefix: letters, "
        .. "digits, _ . : -)"):format(b), "budget")
    end
    prefix = prefix ~= "" and prefix or "jimeng"
    c.budget, c.redis = ("redis://%s:%d/%s"):format(host, port, prefix), { host = host, port = port, prefix = prefix }
    return true
  end
  if b:match("^%a[%w+.-]*://") then
    return errors.invalid(("budget %q: a shared store by URL is redis://host:port/prefix"):format(b), "budget")
  end
  for _, w in ipairs(WHERE) do
    if b == w then
      c.budget = b
      return true
    end
  end
  if b:sub(1, 1) == "/" or b:sub(1, 2) == "./" then
    if b:find("%c") then return errors.invalid("budget: a path without control characters", "budget") end
    c.budget = b
    return true
  end
  local near = core.nearest(b, WHERE)
  return errors.invalid(("budget must be \"client\", \"process\", \"local\" or a file path (/..., ./...); got %q%s")
    :format(b, near and (" (did you mean " .. near .. "?)") or ""), "budget")
end

--- M.attach(client) -> pacer | nil, err: opens the client's share (none for "client") and hands its bucket to
-- the engine. The pacer is what the client's Budget paces: the share, or the engine.
function M.attach(c)
  if c.budget == "client" then return c.engine end
  local r = c.redis or {}
  local h, why = core.share_open {
    where = c.budget, id = core.budget_id(c.api_key or "", c.base_url), lease = c.budget_lease or 120,
    host = r.host, port = r.port, prefix = r.prefix,
  }
  if not h then return nil, errors.new { kind = "invalid_argument", field = "budget", message = why } end
  c.share = h
  if c.max_tasks then h:max_tasks(c.max_tasks) end
  c.engine:share(h)
  c.slots = {}
  -- the rate every sharer goes at is the last one set; a client that sets no max_rps leaves it alone until
  -- a 429 teaches it one
  return {
    pace = function(_, rate, burst, count, window)
      if (rate == nil or rate == math.huge) and not c.max_rps then return end
      h:pace(rate and rate * M.HEADROOM, burst, count, window)
    end,
  }
end

-- What the budget's store has to say, once (a Redis gone away, or back): to the client's logger, else stderr.
local function speak(c)
  local note = c.share and c.share:note()
  if not note then return end
  if c.logger then c:log("warning", note) else io.stderr:write("jimeng: ", note, "\n") end
end

--- M.acquire(client, deadline) -> ticket | true | nil, err: waits for a task's slot before a create is sent
-- (true: no share, or nothing to count). Waiting ends at the deadline or a signal, with created = false.
function M.acquire(c, deadline)
  local h = c.share
  if not h then return true end
  local pause = 0.02
  while true do
    speak(c)
    local t = h:acquire()
    if t then return t end
    if t == false then return true end
    local left = deadline and deadline - now()
    if left and left <= 0 then
      return nil, errors.new { kind = "timeout", created = false, retryable = true,
        message = ("no task slot came free before the deadline (max_tasks %s in flight): not sent"):format(
          tostring((h:stats()).max_tasks)) }
    end
    local sig = runtime.sleep(left and math.min(pause, left) or pause)
    if sig then
      return nil, errors.new { kind = "interrupted", created = false,
        message = "interrupted (" .. sig .. ") while waiting for a task slot: not sent" }
    end
    pause = math.min(pause * 1.5, 0.25)
  end
end

--- M.created(client, ticket, task_id, created): what a create did with its slot. Nothing made (created ==
-- false): the slot goes back. Made, or perhaps made: the slot is the task's until it is seen to finish (its id
-- known) or the client is closed.
function M.created(c, ticket, id, created)
  if type(ticket) ~= "number" then return end
  if created == false then
    c.share:release(ticket)
  elseif id then
    c.slots[id] = ticket
  end
end

--- M.finished(client, task): a task seen completed or failed: its slot goes back.
function M.finished(c, task)
  speak(c)
  if not c.share or not (task.status == "completed" or task.status == "failed") then return end
  local t = c.slots[task.id]
  if t then
    c.slots[task.id] = nil
    c.share:release(t)
  end
end

--- M.close(client): every slot the client holds goes back (also when the client is collected).
function M.close(c)
  if c.share then c.share:close() end
end

--- M.stats(client) -> {where=, rate=, burst=, tokens=, max_tasks=, in_flight=, mine=, lease=} | nil
function M.stats(c)
  if not c.share then return nil end
  return c.share:stats()
end

--- M.describe(client) -> text: where the client's budget is held, who shares it, and how full it is (jimeng
-- doctor, :checkhealth).
function M.describe(c)
  local st = M.stats(c)
  if not st then
    if not c.max_rps then return "this client alone, no limit set (the rate is learnt from 429s)" end
    return ("this client alone: max_rps %g"):format(c.max_rps)
  end
  local whose = st.where == "process" and "this process's memory, shared by its clients"
    or c.redis and (st.where .. (st.up and (", shared by every client of it (%d process%s now)"):format(
      st.processes, st.processes == 1 and "" or "es") or (" (unreachable: %s; a safe local share meanwhile)")
      :format(st.why)))
    or (st.where .. ", shared by every process of this user on this machine")
  local rate = st.rate and ("max_rps %g (%.1f of %d requests ready at once)"):format(
    c.max_rps or st.rate, st.tokens, st.burst) or "no max_rps"
  local tasks = st.max_tasks and ("max_tasks %d: %d in flight"):format(st.max_tasks, st.in_flight)
    or ("no max_tasks: %d in flight"):format(st.in_flight)
  return ("%s with the same key and base URL; %s; %s%s"):format(whose, rate, tasks,
    st.lease > 0 and (" (a slot's lease: %g s)"):format(st.lease) or "")
end

return M
