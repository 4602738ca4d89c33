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
local template = require "jimeng.template"
local errors = require "jimeng.errors"
local runtime = require "jimeng.runtime"
local text = require "jimeng.text"
local workflows = require "jimeng.workflows"
local download = require "jimeng.download"
local ledger = require "jimeng.ledger"

local M = {}

-- The options of batch, checked by the workflows' one check of each option (as generate's are).
local BATCH_OPTIONS = { journal = true, output_dir = true, concurrency = true, recreate_unknown = true, interval = true,
  timeout = true, overwrite = true, on_event = true, on_start = true }

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
    if n == 1 then
      local why_bom
      line, why_bom = text.without_bom(line, path)
      if not line then
        f:close()
        return nil, errors.new { kind = "invalid_argument", field = "jobs", message = why_bom }
      end
    end
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

-- The fields of a job's output template: all but {id} (every path is checked before the first create).
local BATCH_FIELDS = { n = true, prompt = true, seed = true, model = true, date = true, time = true, ext = true }

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
  local started = os.time()
  if template.is_template(output_dir) then -- the run's {date} or {time}
    local expanded, terr = template.expand(output_dir, { time = started }, "output_dir", { date = true, time = true })
    if not expanded then return nil, terr end
    output_dir = expanded
  end
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
    local e
    if not body then
      e = errors.from_core(why, class, field)
    else
      local _
      _, e = require("jimeng.dialect").precheck(client, body, params) -- one that cannot travel: refused now
    end
    if e then
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
    if job.output and template.is_template(job.output) then -- {n}: the job's number; no {id}: paths come first
      local expanded, terr = template.expand(job.output, { n = i, prompt = params.prompt, seed = params.seed,
        model = params.model, time = started }, ("job %d: output"):format(i), BATCH_FIELDS)
      if not expanded then return nil, terr end
      name = expanded
    end
    prepared[i] = { index = i, total = #jobs, key = key, label = job.label, params = params,
      path = name:find("^/") and name or (output_dir .. "/" .. name),
      -- a template's directories are made (as generate makes them); a plain path's must exist
      template = job.output and template.is_template(job.output) or nil }
  end
  return prepared, output_dir
end

-- What the journal says of a job: "saved" (and the file is still whole), "failed" (the task failed),
-- "created" (a task exists), "unknown" (sent, no answer), "new" (never sent).
local function job_state(s)
  if s.saved and s.saved.path and file_size(s.saved.path) == s.saved.bytes then return "saved" end
  if s.failed then return "failed" end
  if s.task_id then return "created" end
  if s.creating then return "unknown" end
  return "new"
end

--- What a run of these jobs would do, read from the journal without locking it or sending anything:
-- batch.plan(client, jobs, opts) -> {{index=, key=, label=, path=, state=, task_id=, create=bool}, ...} | nil, err
-- state: "saved" (saved, and the file is still whole), "created" (a task exists: waited for and downloaded,
-- not paid again), "failed" (the task failed: not made again), "unknown" (sent, no answer: created again only
-- with recreate_unknown), "new" (never sent). create: whether the run would pay for it. opts as for run.
function M.plan(client, jobs, opts)
  if type(client) ~= "table" or type(client.create) ~= "function" then -- misuse raises, naming call and argument
    error(("jimeng.batch.plan(client, jobs, opts): client must be a client of jimeng.new; got a %s"):format(
      type(client)), 2)
  end
  local ok, oerr = workflows.check_options(opts, BATCH_OPTIONS, "batch")
  if not ok then return nil, oerr end
  opts = opts or {}
  local prepared, output_dir = prepare(client, jobs, opts)
  if not prepared then return nil, output_dir end
  local state = opts.journal and M.read_journal(opts.journal, client.json) or {}
  local out = {}
  for i, job in ipairs(prepared) do
    local s = state[job.key] or {}
    local st = job_state(s)
    out[i] = { index = i, key = job.key, label = job.label, path = s.saved and st == "saved" and s.saved.path or job.path,
      state = st, task_id = s.task_id, create = st == "new" or (st == "unknown" and opts.recreate_unknown == true) }
  end
  return out
end

-- A run: its jobs, journal (locked), the state the journal replayed, the summary, and the cap on jobs in flight.
local Run = {}
Run.__index = Run

local function job_name(job)
  return ("job %d%s"):format(job.index, job.label and (" (" .. tostring(job.label) .. ")") or "")
end

-- Takes the journal: a file of its own, writable, locked for this run; replays it. -> true | nil, err
function Run:take_journal(jobs)
  local path = self.opts.journal
  if type(path) ~= "string" or path == "" or (type(jobs) == "string" and
      ledger.same_file(path, jobs)) then
    return errors.invalid("the journal must be a file of its own (not the jobs file): " .. tostring(path), "journal")
  end
  local book = self.client.ledger and self.client.ledger.path
  if ledger.same_file(path, book) then -- its lock would stop every ledger line (this run's too) for good
    return errors.invalid("the journal must be a file of its own (not the ledger of paid tasks): " .. path ..
      " (nothing was paid for)", "journal")
  end
  local st, cwhy = core.check_output(path, "") -- appended to: nothing is written beside it
  if not st then return errors.invalid("journal: " .. cwhy, "journal") end
  local ok, rwhy = ledger.records_file(path, self.json, "event", "a journal")
  if not ok then return errors.invalid("the journal " .. rwhy .. " (nothing was paid for)", "journal") end
  local lock, why, held = core.lock(path)
  if not lock then
    return nil, errors.new { kind = "io", field = "journal", locked = held == "locked" or nil, message = why ..
      ": two runs on one journal would pay for every job twice", hint = held == "locked" and
      "another run is using this journal: wait for it to end, or give this run another journal" or nil }
  end
  self.lock = lock
  self.state, self.torn = M.read_journal(path, self.json)
  return true
end

-- Checks every output path before the first create: a video paid for must have somewhere to go.
function Run:check_outputs(output_dir)
  local ok, why = core.mkdirs(output_dir)
  if not ok then return errors.invalid(why .. " (nothing was paid for)", "output_dir") end
  local owner, held = {}, workflows.ledger_held(self.client) -- the ledger read once for every job
  for _, job in ipairs(self.jobs) do
    local function refuse(msg)
      return errors.invalid(("%s: %s (nothing was paid for)"):format(job_name(job), msg), "output")
    end
    local same = core.canonical_path(job.path) or job.path -- one file, however it is spelt
    local journal = self.opts.journal
    if journal and same == (core.canonical_path(journal) or journal) then
      return refuse(job.path .. " is the journal: a video there would replace what says what was paid for")
    end
    local bad = download.not_an_output(job.path, self.client.ledger and self.client.ledger.path)
    if bad then return refuse(bad) end
    -- the same files however they are reached (a link, another directory's spelling): by their identity
    for _, f in ipairs { { self.jobs_file, "the jobs file" }, { journal, "the journal" },
      { self.client.ledger and self.client.ledger.path, "the ledger of paid tasks" } } do
      if ledger.same_file(job.path, f[1]) then
        return refuse(("%s is %s: a video there would replace it"):format(job.path, f[2]))
      end
    end
    local other = owner[same]
    if other then
      return refuse(("it would be saved to %s, like %s: give the jobs distinct labels or outputs"):format(
        job.path, job_name(other)))
    end
    owner[same] = job
    local dir = job.template and job.path:match("^(.+)/[^/]*$")
    if dir then
      local made, mwhy = core.mkdirs(dir)
      if not made then return refuse(mwhy) end
    end
    local st, cwhy = core.check_output(job.path)
    job.existed = st == "file"
    for _, beside in ipairs { ".part", ".part.json" } do -- where its download writes: no directory, no link
      if st and not core.check_output(job.path .. beside, ".tmp") then
        st, cwhy = core.check_output(job.path .. beside, ".tmp")
      end
    end
    if not st then return refuse(cwhy) end
    local s = self.state[job.key]
    if not (s and (s.task_id or s.creating)) then -- a task this journal made is continued, not paid again
      -- a path the ledger keeps for a paid task not saved yet (an earlier run's): `jimeng resume` saves it
      local free, rerr = workflows.check_reserved(self.client, job.path, self.opts.overwrite, held)
      if not free then
        local msg = rerr.message:gsub("; nothing was paid for%)$", ")"):gsub(" %(nothing was paid for%)$", "")
        return refuse(msg)
      end
    end
    if st == "file" and not (s and (s.task_id or s.saved)) and not self.opts.overwrite then
      return refuse(job.path .. " exists and this journal did not make it: move it away, or pass overwrite " ..
        "(--force)")
    end
  end
  return true
end

-- Appends a record to the journal (fsynced). -> true | nil, err
function Run:journal(rec)
  if not self.opts.journal then return true end
  local line = self.json.encode(rec) .. "\n"
  if self.torn then -- end the torn line so that this record starts on a line of its own
    line = "\n" .. line
    self.torn = false
  end
  local ok, why = core.append_durable(self.opts.journal, line)
  if not ok then return nil, errors.new { kind = "io", message = "cannot write the journal: " .. why } end
  return true
end

function Run:close()
  if self.lock then self.lock:unlock() end
  self.lock = nil
end

-- Ends a job with its status (and fields: path, task_id, bytes, error), counted in the summary.
function Run:finish(job, status, fields)
  job.status = status
  for k, v in pairs(fields or {}) do job[k] = v end
  local field = status == "error" and "errors" or status
  self.summary[field] = self.summary[field] + 1
  self.summary.jobs[job.index] = job
  self.on_event { type = status, job = job }
end

-- What the journal already settles for a job (saved, failed, unknown), or nil: it must run.
function Run:replay(s)
  local st = job_state(s)
  if st == "saved" then
    return "skipped", { path = s.saved.path, task_id = s.task_id, bytes = s.saved.bytes }
  elseif st == "failed" then
    return "failed", { task_id = s.task_id, error = errors.new { kind = s.failed.kind or "task_failed",
      message = (s.failed.message or "the task failed") .. " (from the journal; not created again)", task_id = s.task_id } }
  elseif st == "unknown" and not self.opts.recreate_unknown then
    return "unknown", { error = errors.new { kind = "unknown_outcome", retryable = false,
      message = (s.unreadable and ("the task was made but its answer named no id (%s)"):format(s.unreadable) or
        "an earlier run sent this job's create and got no answer: the task may exist and be billed") ..
        "; check, then run again with recreate_unknown (--recreate-unknown) to create it" } }
  end
end

-- Waits for a slot under the cap. -> nil | the error of an interruption (nothing was sent)
function Run:slot()
  local sig
  while self.in_flight >= self.limit and not sig do sig = runtime.sleep(0.05) end
  sig = sig or core.interrupted()
  if sig then
    return errors.new { kind = "interrupted", message = "interrupted (" .. sig .. ") before this job started: nothing was sent" }
  end
end

-- The paid create of a job, journaled. -> task_id | nil, status, fields (the job ended)
-- Its output is reserved first (its .part opened and locked, kept for its download): another run writing the
-- same path is found before this job pays, and a file that appeared there since the checks is not replaced.
function Run:create(job, deadline)
  local json = self.json
  local part, perr = core.part_open(job.path .. ".part")
  if part and not self.opts.overwrite and not job.existed and core.file_size(job.path) then
    workflows.release(part)
    part, perr = nil, job.path .. " appeared since this run checked it (another run made it?)"
  end
  if not part then
    return nil, "error", { error = errors.new { kind = "io", field = "output", created = false,
      message = perr .. " (nothing was paid for)" } }
  end
  job.part = part
  local task, err = self.client:create(job.params, {
    deadline = deadline, until_deadline = true, output = core.canonical_path(job.path) or job.path,
    journal = self.opts.journal and { path = self.opts.journal,
      sending = json.encode { event = "sending", job = job.key, index = job.index } .. "\n",
      not_created = json.encode { event = "not_created", job = job.key } .. "\n" },
    on_retry = function(e)
      if e.kind == "rate_limited" then
        -- the API is saturated: fewer jobs in flight until it recovers
        self.limit = math.max(1, math.floor(self.limit / 2))
        self.on_event { type = "backoff", job = job, limit = self.limit }
      end
    end,
  })
  if not task and err.created and err.task_id then
    task = { id = err.task_id } -- the answer was unreadable, but it named the task it made
    self.on_event { type = "warning", job = job, message = tostring(err) }
  end
  if not task then
    workflows.release(part)
    job.part = nil
    if err.created then
      self:journal { event = "created", job = job.key, error = err.message }
      return nil, "unknown", { error = err }
    end
    if err.created == nil then return nil, "unknown", { error = err } end
    return nil, err.kind == "interrupted" and "interrupted" or "error", { error = err }
  end
  local ok, jerr = self:journal { event = "created", job = job.key, task_id = task.id }
  if not ok then return nil, "error", { task_id = task.id, error = jerr } end
  self.on_event { type = "created", job = job, task = task }
  if self.limit < self.cap then self.limit = self.limit + 1 end
  return task.id
end

-- Waits for a created task and saves its video, journaled. -> status, fields
function Run:complete(job, task_id, deadline)
  local client = self.client
  local done, werr = client:wait(task_id, { interval = self.opts.interval, deadline = deadline,
    on_status = function(t) self.on_event { type = "status", job = job, task = t } end })
  local part = job.part
  job.part = nil
  if not done and part then workflows.release(part) end
  if not done then
    if werr.kind == "task_failed" then
      self:journal { event = "failed", job = job.key, task_id = task_id, kind = werr.kind, error = werr.message }
      return "failed", { error = werr }
    end
    return werr.kind == "interrupted" and "interrupted" or "error", { error = werr }
  end
  -- the path was checked before the first create (check_outputs): a file there is one this journal made
  -- or overwrite allowed
  local info, derr
  if part then -- the .part this job reserved before its create
    info, derr = download.download(client, task_id, job.path, { deadline = deadline, part = part })
    client:noted(task_id, job.path, info, derr) -- what client:download records in the ledger
  else
    info, derr = client:download(task_id, job.path, { deadline = deadline, overwrite = true })
  end
  if not info then return derr.kind == "interrupted" and "interrupted" or "error", { error = derr } end
  local ok, jerr = self:journal { event = "saved", job = job.key, task_id = task_id, path = job.path, bytes = info.bytes }
  if not ok then return "error", { error = jerr, path = job.path } end
  return "saved", { path = job.path, bytes = info.bytes }
end

-- One job from start to end; it holds a slot from its create (or its wait) to its download's end.
function Run:run_job(job)
  local s = self.state[job.key] or {}
  local status, fields = self:replay(s)
  if status then return self:finish(job, status, fields) end
  local stopped = self:slot()
  if stopped then return self:finish(job, "interrupted", { error = stopped }) end
  self.in_flight = self.in_flight + 1
  local deadline = core.now() + (self.opts.timeout or self.client.wait_timeout)
  local task_id = s.task_id
  if not task_id then
    task_id, status, fields = self:create(job, deadline)
  end
  if task_id and job.callback_error then
    -- on_event raised at the create: the job stops there (the journal holds its task: the next run saves it)
    job.task_id = task_id
    status, fields, task_id = "error", { task_id = task_id, error = job.callback_error }, nil
  end
  if task_id then
    job.task_id = task_id
    status, fields = self:complete(job, task_id, deadline)
  end
  if job.callback_error and status ~= "error" then
    status, fields = "error", { task_id = job.task_id, error = job.callback_error }
  end
  -- the slot is given back whatever happened: a raise here would leave the jobs waiting for it waiting forever
  self.in_flight = self.in_flight - 1
  return self:finish(job, status, fields)
end

--- jimeng.batch(client, jobs, opts) -> summary | nil, err
-- jobs: an array of job tables (create params plus optional label and output) or a JSON-lines path.
-- opts: journal (path), output_dir (default "."), concurrency (default 4), recreate_unknown,
-- interval (poll seconds), timeout (seconds per job), overwrite, on_event(event), on_start() (called once
-- every check has passed and the journal is locked, before any create; returning nil, err stops the run).
-- summary: {total=, saved=, skipped=, failed=, unknown=, errors=, jobs={...}} where each job has
-- key, label, index, status ("saved", "skipped", "failed", "unknown", "error"), path, task_id, error.
function M.run(client, jobs, opts)
  local valid, oerr = workflows.check_options(opts, BATCH_OPTIONS, "batch")
  if not valid then return nil, oerr end
  opts = opts or {}
  local cap = opts.concurrency or 4
  local prepared, output_dir = prepare(client, jobs, opts)
  if not prepared then return nil, output_dir end
  -- on_event raising never unwinds a job (it holds a slot others wait for): its error is the job's, which stops
  local user_event = opts.on_event
  local function on_event(ev)
    if not user_event then return end
    local ok, e = pcall(user_event, ev)
    if not ok and type(ev.job) == "table" and not ev.job.callback_error then
      ev.job.callback_error = errors.new { kind = "callback", task_id = ev.job.task_id or (ev.task and ev.task.id),
        message = "this job stopped on an error in Lua code: " .. tostring(e) }
    end
  end
  local run = setmetatable({ client = client, json = client.json, opts = opts, jobs = prepared, state = {},
    torn = false, cap = cap, limit = cap, in_flight = 0, on_event = on_event,
    summary = { total = #prepared, saved = 0, skipped = 0, failed = 0, unknown = 0, errors = 0, interrupted = 0,
      jobs = {} } }, Run)
  run.jobs_file = type(jobs) == "string" and jobs or nil
  local ok, err = true, nil
  if opts.journal then ok, err = run:take_journal(jobs) end
  if ok then ok, err = run:check_outputs(output_dir) end
  if ok and run.torn then ok, err = run:journal { event = "resumed" } end
  if ok and opts.on_start then -- every check passed and the journal is ours: the caller's last word before paying
    ok, err = opts.on_start()
  end
  if not ok then
    run:close()
    return nil, err
  end
  runtime.run(function()
    local list = {}
    for i, job in ipairs(prepared) do list[i] = function() return run:run_job(job) end end
    local _, raised = runtime.gather(list)
    for _, job in ipairs(prepared) do -- a job that stopped between its create and its download lets go of its path
      if job.part then job.part:close() end
      job.part = nil
    end
    for i, e in pairs(raised) do
      if not prepared[i].status then
        run:finish(prepared[i], "error", { error = errors.new { kind = "callback", task_id = prepared[i].task_id,
          message = "this job stopped on an error in Lua code: " .. tostring(e) } })
      end
    end
  end)
  run:close()
  return run.summary
end

return M
