--- Batch runs that never lose or double-pay a video.
-- Jobs run concurrently (a cap, lowered on 429 and raised again on success), each saved to its own
-- file. With a journal (append-only JSON lines, fsync per record) a run can be killed at any moment and
-- run again: a job is identified by its normalized body (plus its label), so the second run re-creates
-- nothing the journal says was created, and re-downloads nothing already saved.
--
-- Journal records: {"event":"creating","job":K} before a create is sent; {"event":"created","job":K,
-- "task_id":ID} as soon as its answer comes; {"event":"saved","job":K,"task_id":ID,"path":P,"bytes":N};
-- {"event":"failed","job":K,"task_id":ID,"kind":...,"error":...} when the task itself failed;
-- {"event":"not_created","job":K} when a create was refused before it could make a task.
-- A "creating" without its "created" means the process died while the create was in flight: the task
-- may or may not exist, and the API cannot say. Such a job is reported as `unknown` and not created
-- again, unless opts.recreate_unknown is true.
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local runtime = require "jimeng.runtime"

local M = {}

local JOB_KEYS = { label = true, output = true }

--- A canonical JSON text of a value (object keys sorted), so that equal bodies give equal texts.
local function canonical(json, v)
  if type(v) ~= "table" then return json.encode(v) end
  local n = #v
  local count = 0
  for _ in pairs(v) do count = count + 1 end
  local parts = {}
  if count == n and n > 0 then
    for i = 1, n do parts[i] = canonical(json, v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for i, k in ipairs(keys) do parts[i] = json.encode(k) .. ":" .. canonical(json, v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end
M.canonical = canonical

--- Reads jobs from a JSON-lines file: one JSON object per line (params, plus label and output).
function M.read_jobs(path, json)
  local f, why = io.open(path, "r")
  if not f then return nil, errors.new { kind = "io", message = "cannot read the jobs file: " .. tostring(why) } end
  local jobs, n = {}, 0
  for line in f:lines() do
    n = n + 1
    if line:find("%S") then
      local ok, job = pcall(json.decode, line)
      if not ok or type(job) ~= "table" then
        f:close()
        return nil, errors.new { kind = "invalid_argument", field = "jobs",
          message = ("%s line %d is not a JSON object: %s"):format(path, n, line:sub(1, 80)) }
      end
      jobs[#jobs + 1] = job
    end
  end
  f:close()
  return jobs
end

--- Replays a journal into the state of each job key. A torn last line (a crash mid-write) is ignored.
function M.read_journal(path, json)
  local state = {}
  local f = io.open(path, "r")
  if not f then return state, false end
  local data = f:read("*a")
  f:close()
  for line in data:gmatch("[^\n]+") do
    local ok, rec = pcall(json.decode, line)
    if ok and type(rec) == "table" and type(rec.job) == "string" then
      local s = state[rec.job] or {}
      state[rec.job] = s
      if rec.event == "creating" then
        s.creating = true
      elseif rec.event == "created" and type(rec.task_id) == "string" then
        s.task_id, s.creating = rec.task_id, false
      elseif rec.event == "saved" then
        s.saved = { path = rec.path, bytes = rec.bytes }
        s.task_id = rec.task_id or s.task_id
      elseif rec.event == "not_created" then
        s.creating = false
      elseif rec.event == "failed" then
        s.failed = { kind = rec.kind, message = rec.error }
      end
    end
  end
  return state, data ~= "" and data:sub(-1) ~= "\n"
end

local function file_size(path) return path and core.file_size(path) end

--- jimeng.batch(client, jobs, opts) -> summary | nil, err
-- jobs: an array of job tables (create params plus optional label and output) or a JSON-lines path.
-- opts: journal (path), output_dir (default "."), concurrency (default 4), recreate_unknown,
-- interval (poll seconds), timeout (seconds per job), on_event(event).
-- summary: {total=, saved=, skipped=, failed=, unknown=, errors=, jobs={...}} where each job has
-- key, label, index, status ("saved", "skipped", "failed", "unknown", "error"), path, task_id, error.
function M.run(client, jobs, opts)
  opts = opts or {}
  local json = client.json
  if type(jobs) == "string" then
    local err
    jobs, err = M.read_jobs(jobs, json)
    if not jobs then return nil, err end
  end
  if type(jobs) ~= "table" then
    return nil, errors.new { kind = "invalid_argument", message = "jobs must be an array or a JSON-lines path" }
  end
  local output_dir = (opts.output_dir or "."):gsub("/+$", "")
  local cap = opts.concurrency or 4
  if type(cap) ~= "number" or cap < 1 then
    return nil, errors.new { kind = "invalid_argument", field = "concurrency", message = "concurrency must be at least 1" }
  end
  local on_event = opts.on_event or function() end

  -- prepare every job before anything is sent: a bad job stops the batch before it pays for anything
  local prepared, seen = {}, {}
  for i, job in ipairs(jobs) do
    if type(job) ~= "table" then
      return nil, errors.new { kind = "invalid_argument", field = "jobs", message = ("job %d is not a table"):format(i) }
    end
    local params = {}
    for k, v in pairs(job) do
      if not JOB_KEYS[k] then params[k] = v end
    end
    local body, warnings = core.normalize(params)
    if not body then
      local e = errors.new(warnings)
      e.message = ("job %d%s: %s"):format(i, job.label and (" (" .. tostring(job.label) .. ")") or "", e.message)
      return nil, e
    end
    local fp = core.fingerprint(canonical(json, body) .. "\0" .. tostring(job.label or ""))
    seen[fp] = (seen[fp] or 0) + 1
    local key = fp:sub(1, 24) .. (seen[fp] > 1 and ("#" .. seen[fp]) or "") -- identical jobs stay distinct
    local name = job.output or (job.label and (tostring(job.label):gsub("[^%w%-_.]", "_") .. ".mp4"))
      or ("job-%03d-%s.mp4"):format(i, fp:sub(1, 8))
    prepared[i] = { index = i, total = #jobs, key = key, label = job.label, params = params,
      path = name:find("^/") and name or (output_dir .. "/" .. name) }
  end

  local state, torn = {}, false
  if opts.journal then state, torn = M.read_journal(opts.journal, json) end
  local function journal(rec)
    if not opts.journal then return true end
    local line = json.encode(rec) .. "\n"
    if torn then -- end the torn line so that this record starts on a line of its own
      line = "\n" .. line
      torn = false
    end
    local ok, why = core.append_durable(opts.journal, line)
    if not ok then return nil, errors.new { kind = "io", message = "cannot write the journal: " .. why } end
    return true
  end

  local limit, in_flight = cap, 0
  local summary = { total = #prepared, saved = 0, skipped = 0, failed = 0, unknown = 0, errors = 0, jobs = {} }

  local function finish(job, status, fields)
    job.status = status
    for k, v in pairs(fields or {}) do job[k] = v end
    summary[status == "error" and "errors" or status] = summary[status == "error" and "errors" or status] + 1
    summary.jobs[job.index] = job
    on_event { type = status, job = job }
  end

  local function run_job(job)
    local s = state[job.key] or {}
    if s.saved and s.saved.path and file_size(s.saved.path) == s.saved.bytes then
      return finish(job, "skipped", { path = s.saved.path, task_id = s.task_id, bytes = s.saved.bytes })
    end
    if s.failed then
      return finish(job, "failed", { task_id = s.task_id, error = errors.new { kind = s.failed.kind or "task_failed",
        message = (s.failed.message or "the task failed") .. " (from the journal; not created again)", task_id = s.task_id } })
    end
    if s.creating and not s.task_id and not opts.recreate_unknown then
      return finish(job, "unknown", { error = errors.new { kind = "unknown_outcome", retryable = false,
        message = "an earlier run died while this job's create was in flight: the task may exist and be billed; " ..
          "check, then run again with recreate_unknown (--recreate-unknown) to create it" } })
    end
    while in_flight >= limit do runtime.sleep(0.05) end
    in_flight = in_flight + 1
    local task_id = s.task_id
    if not task_id then
      local ok, jerr = journal { event = "creating", job = job.key, index = job.index }
      if not ok then
        in_flight = in_flight - 1
        return finish(job, "error", { error = jerr })
      end
      local task, err
      local backoff = 0
      while true do
        task, err = client:create(job.params)
        if task or err.kind ~= "rate_limited" then break end
        -- the API is saturated: fewer jobs in flight, and wait before asking again
        limit = math.max(1, math.floor(limit / 2))
        backoff = backoff + 1
        on_event { type = "backoff", job = job, limit = limit }
        runtime.sleep(math.min(2 ^ backoff, 30) * (1 - 0.25 * math.random()))
      end
      if not task then
        in_flight = in_flight - 1
        -- only a create without an answer, or a 5xx, may have made a task; any other refusal made none
        if err.kind ~= "unknown_outcome" and err.kind ~= "server" then journal { event = "not_created", job = job.key } end
        return finish(job, err.kind == "unknown_outcome" and "unknown" or "error", { error = err })
      end
      task_id = task.id
      ok, jerr = journal { event = "created", job = job.key, task_id = task_id }
      if not ok then
        in_flight = in_flight - 1
        return finish(job, "error", { task_id = task_id, error = jerr })
      end
      on_event { type = "created", job = job, task = task }
      if limit < cap then limit = limit + 1 end
    end
    job.task_id = task_id
    local deadline = core.now() + (opts.timeout or client.wait_timeout)
    local done, werr = client:wait(task_id, { interval = opts.interval, deadline = deadline,
      on_status = function(t) on_event { type = "status", job = job, task = t } end })
    if not done then
      in_flight = in_flight - 1
      if werr.kind == "task_failed" then
        journal { event = "failed", job = job.key, task_id = task_id, kind = werr.kind, error = werr.message }
        return finish(job, "failed", { error = werr })
      end
      return finish(job, "error", { error = werr })
    end
    local info, derr = client:download(task_id, job.path, { deadline = deadline })
    in_flight = in_flight - 1
    if not info then return finish(job, "error", { error = derr }) end
    local ok, jerr = journal { event = "saved", job = job.key, task_id = task_id, path = job.path, bytes = info.bytes }
    if not ok then return finish(job, "error", { error = jerr, path = job.path }) end
    return finish(job, "saved", { path = job.path, bytes = info.bytes })
  end

  runtime.run(function()
    local list = {}
    for i, job in ipairs(prepared) do list[i] = function() return run_job(job) end end
    local _, raised = runtime.gather(list)
    for i, e in pairs(raised) do
      if not prepared[i].status then
        finish(prepared[i], "error", { error = errors.new { kind = "protocol", message = tostring(e) } })
      end
    end
  end)
  return summary
end

return M
