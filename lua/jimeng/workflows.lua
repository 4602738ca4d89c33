--- The workflows made of several calls: generate (create, wait, download under one deadline) and omnihuman
-- (recognition and subject detection before the paid create). The client's methods of the same names
-- call these.
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local ledger = require "jimeng.ledger"
local template = require "jimeng.template"
local download = require "jimeng.download"

local M = {}

local now = core.now

-- The options of generate and omnihuman, each with its check: all of them are checked before anything is
-- paid for (a bad one found after the create would cost a video, or raise and lose its task id).
local function seconds(lo)
  return function(v)
    if type(v) ~= "number" or not (v >= lo and v <= 30 * 86400) then -- luacheck: ignore 581 (NaN too)
      return ("must be a number of seconds from %g to %d"):format(lo, 30 * 86400)
    end
  end
end
local function of_type(t) return function(v) if type(v) ~= t then return "must be a " .. t end end end
local function whole(lo, hi)
  return function(v)
    if type(v) ~= "number" or not (v >= lo and v <= hi) or v ~= math.floor(v) then -- luacheck: ignore 581
      return ("must be a whole number from %d to %d"):format(lo, hi)
    end
  end
end
local function path_string(v)
  if type(v) ~= "string" or v == "" or v:find("%z") then return "must be a path (a non-empty string)" end
end
local function strings(v) -- one string, or a list of them (retake)
  if type(v) == "string" and v ~= "" then return end
  if type(v) == "table" and #v > 0 then
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if n == #v then
      local ok = true
      for _, x in ipairs(v) do ok = ok and type(x) == "string" and x ~= "" end
      if ok then return end
    end
  end
  return "must be a cell id (a string) or a list of them"
end
--- The one check of each option of the workflows (generate, omnihuman, batch, experiment): every entry point
-- (Lua, the command, the plugin) goes through these before anything is paid for.
local OPTION_CHECKS = {
  output = of_type("string"), output_dir = of_type("string"), overwrite = of_type("boolean"),
  timeout = seconds(0.001), interval = seconds(0.01),
  on_created = of_type("function"), on_status = of_type("function"), on_progress = of_type("function"),
  -- batch
  journal = path_string, concurrency = whole(1, 1024), recreate_unknown = of_type("boolean"),
  on_event = of_type("function"), on_start = of_type("function"),
  -- experiment
  dir = path_string, rows = of_type("string"), cols = of_type("string"), dry_run = of_type("boolean"),
  max_videos = whole(0, 100000), yes = of_type("boolean"), retake = strings, on_plan = of_type("function"),
  ffmpeg = function(v) if v ~= false and type(v) ~= "string" then return "must be a path or false" end end,
  poster_timeout = seconds(0.1),
}

-- Checks opts against the names a workflow takes. -> true | nil, err (invalid_argument, nothing sent)
-- opts may be nil (no options). A value false stands for "not given" only where false is no value of the
-- option's own (a boolean, or ffmpeg=false).
local function check_options(opts, names, what)
  if opts == nil then return true end
  if type(opts) ~= "table" then -- misuse of the API: raised, naming the call
    error(("jimeng: client:%s(..., opts): opts must be a table; got a %s"):format(what, type(opts)), 4)
  end
  for k, v in pairs(opts) do
    local known = type(k) == "string" and names[k]
    if not known then
      local list = {}
      for n in pairs(names) do list[#list + 1] = n end
      table.sort(list)
      local near = core.nearest(tostring(k), list)
      return errors.invalid(("%s: unknown option %q%s (options: %s; nothing was paid for)"):format(what,
        tostring(k), near and (": did you mean %q?"):format(near) or "", table.concat(list, ", ")), tostring(k))
    end
    local why = OPTION_CHECKS[k](v)
    if why then
      return errors.invalid(("%s: option %s %s; got %s (nothing was paid for)"):format(what, k, why,
        type(v) == "string" and ("%q"):format(v) or tostring(v)), k)
    end
  end
  return true
end
M.check_options = check_options

local GENERATE_OPTIONS = { output = true, output_dir = true, overwrite = true, timeout = true, interval = true,
  on_created = true, on_status = true, on_progress = true }
local OMNIHUMAN_OPTIONS = { overwrite = true, timeout = true, interval = true, on_created = true, on_status = true,
  on_progress = true }

-- Whether a ledger entry still holds its output: a task paid for and not saved yet, or a create handed to the
-- wire and never answered.
local function holds_output(e)
  return e.output and (e.id and ledger.UNSAVED[e.state] or not e.id and (e.state == "unknown" or e.state == "sending"))
end

-- The outputs the ledger keeps for paid tasks not saved yet, read once: a function(path) -> the ledger entry
-- that keeps it | nil. nil without a ledger.
local function ledger_held(client)
  if not client or not client.ledger then return nil end
  local held
  return function(path)
    if not held then
      held = {}
      for _, e in ipairs(ledger.read(client.ledger.path, client.json) or {}) do
        if holds_output(e) and not held[e.output] then held[e.output] = e end
      end
    end
    local abs = core.canonical_path(path)
    return abs and held[abs]
  end
end

-- The paths the ledger keeps: a function(path) -> true, for a template's {n} (which moves on to the next
-- number rather than be refused). nil without a ledger.
local function ledger_taken(client)
  local held = ledger_held(client)
  return held and function(path) return held(path) ~= nil end
end

-- A path no earlier paid task of the ledger is still meant for: one created (or completed) and not saved is
-- taken up by `jimeng resume`, and a second create for the same file would pay for it twice. held: a
-- ledger_held of the client, for many paths (a batch's); else the ledger is read for this one.
local function check_reserved(client, path, overwrite, held)
  if overwrite then return true end
  held = held or ledger_held(client)
  local e = held and held(path)
  if e and e.id then
    return errors.invalid(("%s is meant for task %s, paid for and not saved yet: `jimeng resume` saves it there " ..
      "(or choose another path, or pass overwrite=true, CLI --force; nothing was paid for)"):format(path, e.id), "output")
  elseif e then
    -- a create for this file was handed to the wire and its answer never came: it may exist and be billed
    return errors.invalid(("%s is meant for a create that was sent and never answered (ledger ref %s): the " ..
      "task may exist and be billed; check the account's usage, then choose another path or pass " ..
      "overwrite=true (CLI --force) to create it again (nothing was paid for)"):format(path, tostring(e.ref)), "output")
  end
  return true
end

-- Lets go of a reserved .part: removed when it holds nothing (this call made it), else kept for its resume.
local function release(part)
  if (part:size() or 0) == 0 and not part:record() then part:discard() else part:close() end
end

-- Reserves a concrete output path before anything is paid for: its .part opened and locked (a second run for
-- the same path is refused here, --force or not), then, under the lock, the path and the .part's record
-- checked, and the ledger asked whether an earlier paid task is still meant for it. -> part | nil, err
local function reserve(path, overwrite, client)
  local bad = download.not_an_output(path, client and client.ledger and client.ledger.path)
  if bad then return errors.invalid(bad .. " (nothing was paid for)", "output") end
  local state, why = core.check_output(path)
  local part
  if state then
    part, why = core.part_open(path .. ".part")
    state = nil
    if part then state, why = core.check_output(path) end
  end
  if state and core.check_output(path .. ".part.json", ".tmp") == nil then
    local _, rwhy = core.check_output(path .. ".part.json", ".tmp")
    state, why = nil, rwhy
  end
  if state == "file" and not overwrite then
    state, why = nil, path .. " exists: choose another path, or pass overwrite=true (CLI --force) to replace it"
  end
  if not state then
    if part then release(part) end
    return errors.invalid(why .. " (nothing was paid for)", "output")
  end
  local ok, rerr = check_reserved(client, path, overwrite)
  if not ok then
    release(part)
    return nil, rerr
  end
  return part
end

-- A template's output (see jimeng.template): every field but {id} filled in now; its directory made (the
-- user named it); {id} only in the file name. -> plan function, the path meant (absolute), the reserved
-- .part when the path is known now | nil, err
local function plan_template(opts, params, client)
  local parts, err = template.parse(opts.output, "output")
  if not parts then return nil, err end
  parts = template.fill(parts, { seed = params and params.seed, prompt = params and params.prompt,
    model = params and params.model, time = os.time() })
  if template.field_in_dir(parts) then
    return errors.invalid(("output template %q: {id} and {n} go in the file name, not in a directory (nothing " ..
      "was paid for)"):format(opts.output), "output")
  end
  local text = template.text(parts) -- fields left only in the file name: the directory is known
  local dir, file = text:match("^(.*/)([^/]*)$")
  dir, file = dir or "", file or text
  if file == "" then return errors.invalid("output template " .. opts.output .. " names no file", "output") end
  if dir ~= "" then
    local ok, why = core.mkdirs(dir)
    if not ok then return errors.invalid(why .. " (nothing was paid for)", "output") end
  end
  if not template.has(parts, "id") then
    local path
    path, err = template.finish(parts, nil, "output", not opts.overwrite and ledger_taken(client) or nil)
    if not path then return nil, err end
    local part, rerr = reserve(path, opts.overwrite, client)
    if not part then return nil, rerr end
    return function() return path end, core.canonical_path(path), part
  end
  local state, why = core.check_output(dir .. "x.mp4")
  -- the id is not known yet: its length is counted as the vendor's (20 digits), so that a name its download
  -- could not write beside (NAME_MAX, PATH_MAX) is refused now
  if state then
    state, why = core.check_output((text:gsub("{id}", ("0"):rep(20))))
    if not state then why = ("output template %s: %s (its {id} counted as 20 bytes)"):format(text, why) end
  end
  if not state then return errors.invalid(why .. " (nothing was paid for)", "output") end
  local bad = download.not_an_output(text)
  if bad then return errors.invalid(bad .. " (nothing was paid for)", "output") end
  return function(id) return template.finish(parts, { id = id }, "output") end, core.canonical_path(text)
end

-- An output refused before the create: nothing was sent (err.created false, as for any bad argument).
local function unsent(err)
  if type(err) == "table" and err.created == nil then err.created = false end
  return err
end

--- Checks, before anything is paid for, that a video can be saved at opts.output (or in opts.output_dir,
-- which is made when missing: the user named it). An existing file is not replaced unless opts.overwrite;
-- nor is a path the ledger keeps for a task paid for and not saved. opts.output may be a template (see
-- jimeng.template: {id} is filled in after the create; params give {prompt}, {seed}, {model}).
-- Returns a function(task_id) -> path | nil, err, the path meant (absolute; {id} when not known yet), and
-- for a path known now the reserved .part (locked: see release) | nil, err.
local function plan_output(opts, prefix, params, client)
  for _, k in ipairs { "output", "output_dir" } do
    if opts[k] ~= nil and (type(opts[k]) ~= "string" or opts[k] == "" or opts[k]:find("%z")) then
      return errors.invalid(k .. " must be a path", k)
    end
  end
  if opts.output and template.is_template(opts.output) then return plan_template(opts, params, client) end
  if opts.output and opts.output:sub(-1) == "/" then -- `-o videos/`: a directory, made if missing
    opts = { output_dir = opts.output, overwrite = opts.overwrite }
  end
  if opts.output then
    local part, rerr = reserve(opts.output, opts.overwrite, client)
    if not part then return nil, rerr end
    return function() return opts.output end, core.canonical_path(opts.output), part
  end
  local dir = opts.output_dir and opts.output_dir:gsub("(.)/+$", "%1")
  if dir then
    local ok, why = core.mkdirs(dir)
    if not ok then return errors.invalid(why .. " (nothing was paid for)", "output_dir") end
  end
  local base = dir and (dir == "/" and "/" or dir .. "/") or ""
  local state, why = core.check_output(base .. prefix .. "x.mp4")
  if not state then return errors.invalid(why .. " (nothing was paid for)", dir and "output_dir" or "output") end
  return function(id) return base .. prefix .. id .. ".mp4" end, core.canonical_path(base .. prefix .. "{id}.mp4")
end
M.plan_output = plan_output
M.release = release
M.check_reserved = check_reserved
M.ledger_held = ledger_held

-- An error after the create: it carries the task's id, and created = true (the task exists and is paid for:
-- whatever failed, making the call again would pay again; the CLI says how to save it instead).
local function paid(err, task)
  err.task_id, err.created = task.id, true
  return nil, err
end

--- Waits for a created task and downloads it to output(task.id) before the deadline: the second half of
-- generate and omnihuman. -> {path=, bytes=, task=} | nil, err (always with task_id and created = true: it is
-- paid for)
local function complete(self, task, opts, deadline, output, part)
  local ok, cerr = errors.call_back(opts.on_created, "on_created", task.id, task)
  if ok then ok, cerr = errors.call_back(opts.on_status, "on_status", task.id, task) end
  local done, werr
  if ok then
    done, werr = self:wait(task.id, {
      deadline = deadline, interval = opts.interval,
      on_status = opts.on_status and function(t) if t.status ~= task.status then opts.on_status(t) end end,
    })
  end
  if not done then
    if part then release(part) end -- the download command that continues it takes the path then
    return paid(werr or cerr, task)
  end
  done.warnings = task.warnings
  local progress_err
  local progress = opts.on_progress and function(...)
    if progress_err then return end
    local _, perr = errors.call_back(opts.on_progress, "on_progress", task.id, ...)
    progress_err = perr
  end
  local path, perr = output(task.id)
  if not path then return paid(perr, task) end
  -- the path was checked before the create (plan_output): a file there now is one overwrite allowed
  local info, derr
  if part then -- the .part reserved before the create: this download writes it
    info, derr = download.download(self, task.id, path, { deadline = deadline, on_progress = progress, part = part })
    self:noted(task.id, path, info, derr)
  else
    info, derr = self:download(task.id, path, { deadline = deadline, on_progress = progress, overwrite = true })
  end
  if not info then return paid(derr, task) end
  info.task = done
  if progress_err then
    progress_err.message = progress_err.message .. " (the video was saved all the same: " .. info.path .. ")"
    progress_err.path = info.path
    return nil, progress_err
  end
  return info
end

--- client:generate: see its documentation in client.lua.
function M.generate(self, params, opts)
  local ok, oerr = check_options(opts, GENERATE_OPTIONS, "generate")
  opts = opts or {}
  if not ok then return nil, oerr end
  local deadline = now() + (opts.timeout or self.wait_timeout)
  local output, meant, part = plan_output(opts, "jimeng_video_", params, self)
  if not output then return nil, unsent(meant) end
  -- this process will save the task: held until it is done, so that a resume elsewhere leaves it alone
  local ref = self.ledger and ledger.new_ref()
  local hold = ref and self.ledger:hold(ref)
  local task, err = self:create(params, { deadline = deadline, output = meant, ref = ref, output_for = function(id)
    local p = output(id)
    return p and core.canonical_path(p)
  end })
  if not task then
    if part then release(part) end
    ledger.release(hold)
    return nil, err
  end
  local info
  info, err = complete(self, task, opts, deadline, output, part)
  ledger.release(hold)
  return info, err
end

-- The keys of client:omnihuman that steer the workflow rather than go on the wire.
local OMNI_WORKFLOW = { subject = true, recognize = true, output = true, output_dir = true }

--- Picks the speaking subject's mask from a detection, as `subject` asks: "largest", an index, or a
-- function(mask_urls) returning a mask URL or an index.
local function check_subject(subject)
  if subject == nil or subject == "largest" or type(subject) == "function" then return true end
  if type(subject) == "number" and subject >= 1 and subject == math.floor(subject) then return true end
  return errors.invalid('subject must be "largest", a subject number from 1, or a function(mask_urls); got ' ..
    tostring(subject) .. " (nothing was paid for)", "subject")
end

local function choose_mask(subject, masks)
  local choice = subject
  if type(subject) == "function" then
    local ok, chosen = pcall(subject, masks)
    if not ok then
      return nil, errors.new { kind = "callback", retryable = false,
        message = "the subject function raised: " .. tostring(chosen) .. " (nothing was paid for)" }
    end
    choice = chosen
    if choice == nil then return nil, "the subject function chose no mask" end
  elseif subject == "largest" then
    choice = 1
  end
  if type(choice) == "number" then
    if choice ~= math.floor(choice) or choice < 1 or choice > #masks then
      return nil, ("subject %s was asked for, but detection found %d subject%s"):format(tostring(choice), #masks,
        #masks == 1 and "" or "s")
    end
    return masks[choice]
  end
  for _, m in ipairs(masks) do
    if m == choice then return m end
  end
  return nil, "the subject function returned " .. tostring(choice) .. ", which is not one of the detected masks"
end

--- client:omnihuman: see its documentation in client.lua.
function M.omnihuman(self, params, opts)
  if type(params) ~= "table" then return errors.invalid("omnihuman needs a table of parameters") end
  local ok, oerr = check_options(opts, OMNIHUMAN_OPTIONS, "omnihuman")
  opts = opts or {}
  if not ok then return nil, oerr end
  ok, oerr = check_subject(params.subject)
  if not ok then return nil, oerr end
  local wire = { generation_type = "omni_human" }
  for k, v in pairs(params) do
    if not OMNI_WORKFLOW[k] then wire[k] = v end
  end
  local body, warnings, class, field = core.normalize(wire, "omni_human")
  if not body then return nil, errors.from_core(warnings, class, field) end
  if params.subject ~= nil and body.mask_urls then
    return errors.invalid("give either subject (detect and choose) or masks, not both", "subject")
  end
  local output, meant, part
  if params.output or params.output_dir then
    output, meant, part = plan_output({ output = params.output, output_dir = params.output_dir,
      overwrite = opts.overwrite }, "omnihuman_video_", params, self)
    if not output then return nil, unsent(meant) end
  end
  local function fail(e) -- before the create: the reserved .part goes
    if part then release(part) end
    return nil, e
  end
  local deadline = now() + (opts.timeout or self.wait_timeout)
  local image = body.content[1].image_url.url
  if params.recognize then
    local rec, err = self:recognize(image, { deadline = deadline })
    if not rec then return fail(err) end
    if not rec.has_subject then
      return fail(errors.new { kind = "invalid_argument", field = "image", request_id = rec.request_id,
        message = "recognition found no person, human-like or anthropomorphic subject in " .. image ..
          ": an OmniHuman video of it would fail (nothing was paid for)" })
    end
  end
  local mask
  if params.subject ~= nil then
    local det, err = self:detect(image, { deadline = deadline })
    if not det then return fail(err) end
    if not det.has_subject or #det.mask_urls == 0 then
      return fail(errors.new { kind = "invalid_argument", field = "subject", request_id = det.request_id,
        message = "detection found no subject in " .. image .. " (nothing was paid for)" })
    end
    local why
    mask, why = choose_mask(params.subject, det.mask_urls)
    if not mask then
      if errors.is(why) then return fail(why) end
      return fail(errors.new { kind = "invalid_argument", field = "subject", message = why })
    end
    wire.mask = mask
  end
  -- saved by this process (as generate's): held, so that a resume elsewhere leaves it alone
  local ref = output and self.ledger and ledger.new_ref()
  local hold = ref and self.ledger:hold(ref)
  local task, err = self:create(wire, { deadline = deadline, output = meant, what = "omnihuman", ref = ref,
    output_for = output and function(id)
      local p = output(id)
      return p and core.canonical_path(p)
    end })
  if not task then
    ledger.release(hold)
    return fail(err)
  end
  task.mask_url = mask
  if not output then return task end
  local info, ferr = complete(self, task, {
    interval = opts.interval, on_created = opts.on_created, on_status = opts.on_status, on_progress = opts.on_progress,
  }, deadline, output, part)
  ledger.release(hold)
  if not info then return nil, ferr end
  info.task.mask_url, info.mask_url = mask, mask
  return info
end

return M
