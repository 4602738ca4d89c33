--- Batch runs that never lose or double-pay a video.
-- Jobs run concurrently (a cap, lowered on 429 and raised again on success), each saved to its own
-- file. With a journal (append-only JSON lines, fsync per record) a run can be killed at any moment and
-- run again: a job is identified by its normalized body (plus its label), so the second run re-creates
-- nothing the journal says was created, and re-downloads nothing already saved.
--
-- Journal records: {"event":"sending","job":K}, made durable by the engine at the moment the create is
-- handed to the wire (after connecting, before the first byte of the request); {"event":"not_created",
-- "job":K} as soon as an attempt is known to have made nothing (refused, or never acknowledged and reset),
-- before any backoff; {"event":"created","job":K,"task_id":ID} as soon as its answer comes;
-- {"event":"saved","job":K,"task_id":ID,"path":P,"bytes":N}; {"event":"failed","job":K,"task_id":ID,
-- "kind":...,"error":...} when the task itself failed. A "sending" with nothing after it means the process
-- died (or the answer was lost) between hand-over and answer: the task may or may not exist, and the API
-- cannot say. Only such a job is reported as `unknown` and not created again, unless
-- opts.recreate_unknown is true. The journal is locked while a run uses it: a second run refuses at once.
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local runtime = require "jimeng.runtime"

local M = {}

local JOB_KEYS = { label = true, output = true }

--- A canonical JSON text of a value (object keys sorted), so that equal bodies give equal texts. `leaf`
-- encodes the values that are not tables (default json.encode: the journal's identity depends on it).
local function canonical(json, v, leaf)
  leaf = leaf or json.encode
  if type(v) ~= "table" then return leaf(v) end
  local n = #v
  local count = 0
  for _ in pairs(v) do count = count + 1 end
  local parts = {}
  if count == n and n > 0 then
    for i = 1, n do parts[i] = canonical(json, v[i], leaf) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for i, k in ipairs(keys) do parts[i] = json.encode(k) .. ":" .. canonical(json, v[k], leaf) end
  return "{" .. table.concat(parts, ",") .. "}"
end
M.canonical = canonical

--- Reads jobs from a JSON-lines file: one JSON object per line (params, plus label and output).
function M.read_jobs(path, json)
  local f, why = io.open(path, "r")
  if f and not f:read(0) and f:seek("end") ~= 0 then -- a directory opens, then fails every read
    f:close()
    f, why = nil, path .. " is not a readable file"
  end
  if not f then
    return nil, errors.new { kind = "invalid_argument", field = "jobs", message = "cannot read the jobs file: " ..
      tostring(why) }
  end
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
      if rec.event == "sending" or rec.event == "creating" then -- "creating": journals of version 0.1
        s.creating = true
      elseif rec.event == "created" and type(rec.task_id) == "string" then
        s.task_id, s.creating = rec.task_id, false
      elseif rec.event == "created" then -- paid, but its answer named no readable id
        s.creating, s.unreadable = true, rec.error
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

--- Prepares jobs: each normalized and given its key (its identity in the journal) and its output path.
-- A bad job stops the batch before it pays for anything. -> prepared, output_dir | nil, err
local function prepare(client, jobs, opts)
  local json = client.json
  if type(jobs) == "string" then
    local err
    jobs, err = M.read_jobs(jobs, json)
    if not jobs then return nil, err end
  end
  if type(jobs) ~= "table" then
    return nil, errors.new { kind = "invalid_argument", message = "jobs must be an array or a JSON-lines path" }
  end
  local output_dir = (opts.output_dir or "."):gsub("(.)/+$", "%1")
  local prepared, seen = {}, {}
  for i, job in ipairs(jobs) do
    if type(job) ~= "table" then
      return nil, errors.new { kind = "invalid_argument", field = "jobs", message = ("job %d is not a table"):format(i) }
    end
    local params = {}
    for k, v in pairs(job) do
      if not JOB_KEYS[k] then params[k] = v end
    end
    local body, why, class, field = core.normalize(params)
    if not body then
      local e = errors.from_core(why, class, field)
      e.message = ("job %d%s: %s"):format(i, job.label and (" (" .. tostring(job.label) .. ")") or "", e.message)
      return nil, e
    end
    local fp = core.fingerprint(canonical(json, body) .. "\0" .. tostring(job.label or ""))
    seen[fp] = (seen[fp] or 0) + 1
    local key = fp:sub(1, 24) .. (seen[fp] > 1 and ("#" .. seen[fp]) or "") -- identical jobs stay distinct
    if job.output ~= nil and (type(job.output) ~= "string" or job.output == "") then
      return nil, errors.new { kind = "invalid_argument", field = "output",
        message = ("job %d: output must be a file path"):format(i) }
    end
    local name = job.output or (job.label and (tostring(job.label):gsub("[^%w%-_.]", "_") .. ".mp4"))
      or ("job-%03d-%s.mp4"):format(i, fp:sub(1, 8))
    prepared[i] = { index = i, total = #jobs, key = key, label = job.label, params = params,
      path = name:find("^/") and name or (output_dir .. "/" .. name) }
  end
  return prepared, output_dir
end

--- What a run of these jobs would do, read from the journal without locking it or sending anything:
-- batch.plan(client, jobs, opts) -> {{index=, key=, label=, path=, state=, task_id=, create=bool}, ...} | nil, err
-- state: "saved" (saved, and the file is still whole), "created" (a task exists: waited for and downloaded,
-- not paid again), "failed" (the task failed: not made again), "unknown" (sent, no answer: created again only
-- with recreate_unknown), "new" (never sent). create: whether the run would pay for it. opts as for run.
function M.plan(client, jobs, opts)
  opts = opts or {}
  local prepared, output_dir = prepare(client, jobs, opts)
  if not prepared then return nil, output_dir end
  local state = opts.journal and M.read_journal(opts.journal, client.json) or {}
  local out = {}
  for i, job in ipairs(prepared) do
    local s = state[job.key] or {}
    local st
    if s.saved and s.saved.path and file_size(s.saved.path) == s.saved.bytes then st = "saved"
    elseif s.failed then st = "failed"
    elseif s.task_id then st = "created"
    elseif s.creating then st = "unknown"
    else st = "new" end
    out[i] = { index = i, key = job.key, label = job.label, path = s.saved and st == "saved" and s.saved.path or job.path,
      state = st, task_id = s.task_id, create = st == "new" or (st == "unknown" and opts.recreate_unknown == true) }
  end
  return out
end

--- jimeng.batch(client, jobs, opts) -> summary | nil, err
-- jobs: an array of job tables (create params plus optional label and output) or a JSON-lines path.
-- opts: journal (path), output_dir (default "."), concurrency (default 4), recreate_unknown,
-- interval (poll seconds), timeout (seconds per job), overwrite, on_event(event), on_start() (called once
-- every check has passed and the journal is locked, before any create; returning nil, err stops the run).
-- summary: {total=, saved=, skipped=, failed=, unknown=, errors=, jobs={...}} where each job has
-- key, label, index, status ("saved", "skipped", "failed", "unknown", "error"), path, task_id, error.
function M.run(client, jobs, opts)
  opts = opts or {}
  local json = client.json
  local cap = opts.concurrency or 4
  if type(cap) ~= "number" or not (cap >= 1 and cap <= 1024) then -- luacheck: ignore 581
    return nil, errors.new { kind = "invalid_argument", field = "concurrency", message = "concurrency must be 1 to 1024" }
  end
  local on_event = opts.on_event or function() end

  local prepared, output_dir = prepare(client, jobs, opts)
  if not prepared then return nil, output_dir end

  local lock
  if opts.journal then
    if type(opts.journal) ~= "string" or opts.journal == "" or (type(jobs) == "string" and
        (core.canonical_path(opts.journal) or opts.journal) == (core.canonical_path(jobs) or jobs)) then
      return nil, errors.new { kind = "invalid_argument", field = "journal",
        message = "the journal must be a file of its own (not the jobs file): " .. tostring(opts.journal) }
    end
    local st, cwhy = core.check_output(opts.journal)
    if not st then
      return nil, errors.new { kind = "invalid_argument", field = "journal", message = "journal: " .. cwhy }
    end
    local why, held
    lock, why, held = core.lock(opts.journal)
    if not lock then
      return nil, errors.new { kind = "io", field = "journal", locked = held == "locked" or nil, message = why ..
        ": two runs on one journal would pay for every job twice", hint = held == "locked" and
        "another run is using this journal: wait for it to end, or give this run another journal" or nil }
    end
  end
  local state, torn = {}, false
  if opts.journal then state, torn = M.read_journal(opts.journal, json) end

  -- every output path, checked before the first create: a video paid for must have somewhere to go
  local ok, why = core.mkdirs(output_dir)
  if not ok then
    if lock then lock:unlock() end
    return nil, errors.new { kind = "invalid_argument", field = "output_dir", message = why .. " (nothing was paid for)" }
  end
  local owner = {}
  for _, job in ipairs(prepared) do
    local function refuse(msg)
      if lock then lock:unlock() end
      return nil, errors.new { kind = "invalid_argument", field = "output",
        message = ("job %d%s: %s (nothing was paid for)"):format(job.index,
          job.label and (" (" .. tostring(job.label) .. ")") or "", msg) }
    end
    local same = core.canonical_path(job.path) or job.path -- one file, however it is spelt
    local other = owner[same]
    if other then
      return refuse(("it would be saved to %s, like job %d%s: give the jobs distinct labels or outputs"):format(
        job.path, other.index, other.label and (" (" .. tostring(other.label) .. ")") or ""))
    end
    owner[same] = job
    local st, cwhy = core.check_output(job.path)
    if not st then return refuse(cwhy) end
    local s = state[job.key]
    if st == "file" and not (s and (s.task_id or s.saved)) and not opts.overwrite then
      return refuse(job.path .. " exists and this journal did not make it: move it away, or pass overwrite " ..
        "(--force)")
    end
  end

  local function journal(rec)
    if not opts.journal then return true end
    local line = json.encode(rec) .. "\n"
    if torn then -- end the torn line so that this record starts on a line of its own
      line = "\n" .. line
      torn = false
    end
    local jok, jwhy = core.append_durable(opts.journal, line)
    if not jok then return nil, errors.new { kind = "io", message = "cannot write the journal: " .. jwhy } end
    return true
  end
  if torn then
    local jok, jerr = journal { event = "resumed" }
    if not jok then
      if lock then lock:unlock() end
      return nil, jerr
    end
  end
  if opts.on_start then -- every check passed and the journal is ours: the caller's last word before paying
    local sok, serr = opts.on_start()
    if not sok then
      if lock then lock:unlock() end
      return nil, serr
    end
  end

  local limit, in_flight = cap, 0
  local summary = { total = #prepared, saved = 0, skipped = 0, failed = 0, unknown = 0, errors = 0, interrupted = 0,
    jobs = {} }

  local function finish(job, status, fields)
    job.status = status
    for k, v in pairs(fields or {}) do job[k] = v end
    local field = status == "error" and "errors" or status
    summary[field] = summary[field] + 1
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
        message = (s.unreadable and ("the task was made but its answer named no id (%s)"):format(s.unreadable) or
          "an earlier run sent this job's create and got no answer: the task may exist and be billed") ..
          "; check, then run again with recreate_unknown (--recreate-unknown) to create it" } })
    end
    while in_flight >= limit do
      local sig = runtime.sleep(0.05)
      if sig then return finish(job, "interrupted", { error = errors.new { kind = "interrupted",
        message = "interrupted (" .. sig .. ") before this job started: nothing was sent" } }) end
    end
    if core.interrupted() then
      return finish(job, "interrupted", { error = errors.new { kind = "interrupted",
        message = "interrupted (" .. core.interrupted() .. ") before this job started: nothing was sent" } })
    end
    in_flight = in_flight + 1
    local deadline = core.now() + (opts.timeout or client.wait_timeout)
    local task_id = s.task_id
    if not task_id then
      local task, err = client:create(job.params, {
        deadline = deadline, until_deadline = true,
        journal = opts.journal and { path = opts.journal,
          sending = json.encode { event = "sending", job = job.key, index = job.index } .. "\n",
          not_created = json.encode { event = "not_created", job = job.key } .. "\n" },
        on_retry = function(err)
          if err.kind == "rate_limited" then
            -- the API is saturated: fewer jobs in flight until it recovers
            limit = math.max(1, math.floor(limit / 2))
            on_event { type = "backoff", job = job, limit = limit }
          end
        end,
      })
      if not task and err.created and err.task_id then
        task = { id = err.task_id } -- the answer was unreadable, but it named the task it made
        on_event { type = "warning", job = job, message = tostring(err) }
      end
      if not task then
        in_flight = in_flight - 1
        if err.created then
          journal { event = "created", job = job.key, error = err.message }
          return finish(job, "unknown", { error = err })
        end
        if err.kind == "interrupted" then
          return finish(job, err.created == nil and "unknown" or "interrupted", { error = err })
        end
        return finish(job, err.created == nil and "unknown" or "error", { error = err })
      end
      task_id = task.id
      local jok, jerr = journal { event = "created", job = job.key, task_id = task_id }
      if not jok then
        in_flight = in_flight - 1
        return finish(job, "error", { task_id = task_id, error = jerr })
      end
      on_event { type = "created", job = job, task = task }
      if limit < cap then limit = limit + 1 end
    end
    job.task_id = task_id
    local done, werr = client:wait(task_id, { interval = opts.interval, deadline = deadline, fresh = not s.task_id,
      on_status = function(t) on_event { type = "status", job = job, task = t } end })
    if not done then
      in_flight = in_flight - 1
      if werr.kind == "task_failed" then
        journal { event = "failed", job = job.key, task_id = task_id, kind = werr.kind, error = werr.message }
        return finish(job, "failed", { error = werr })
      end
      return finish(job, werr.kind == "interrupted" and "interrupted" or "error", { error = werr })
    end
    local info, derr = client:download(task_id, job.path, { deadline = deadline })
    in_flight = in_flight - 1
    if not info then
      return finish(job, derr.kind == "interrupted" and "interrupted" or "error", { error = derr })
    end
    local jok, jerr = journal { event = "saved", job = job.key, task_id = task_id, path = job.path, bytes = info.bytes }
    if not jok then return finish(job, "error", { error = jerr, path = job.path }) end
    return finish(job, "saved", { path = job.path, bytes = info.bytes })
  end

  runtime.run(function()
    local list = {}
    for i, job in ipairs(prepared) do list[i] = function() return run_job(job) end end
    local _, raised = runtime.gather(list)
    for i, e in pairs(raised) do
      if not prepared[i].status then
        finish(prepared[i], "error", { error = errors.new { kind = "callback", task_id = prepared[i].task_id,
          message = "this job stopped on an error in Lua code: " .. tostring(e) } })
      end
    end
  end)
  if lock then lock:unlock() end
  return summary
end

return M
