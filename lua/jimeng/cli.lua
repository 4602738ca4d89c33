--- The `jimeng` command: generate, create, status, wait, download, detect, recognize, omnihuman, batch,
-- experiment, sandbox, doctor, completion. The arguments and the help are in jimeng.cli.help, what progress
-- looks like in jimeng.cli.progress, the checks of `doctor` in jimeng.cli.doctor. Progress goes to stderr
-- (redrawn in place on a terminal, plain lines otherwise); results to stdout, as JSON with --json.
-- Exit codes: 0 ok, 1 task failed, 2 usage or invalid input, 3 API or network error, 130 interrupted.
local jimeng = require "jimeng"
local core = require "jimeng.core"
local help = require "jimeng.cli.help"
local ledger = require "jimeng.ledger"
local template = require "jimeng.template"
local progress = require "jimeng.cli.progress"
local config = require "jimeng.cli.config"
local trace = require "jimeng.trace"
local ktext = require "jimeng.text"

local M = {}

local errors = require "jimeng.errors"

local EXIT_OK, EXIT_TASK, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

-- Output

local Out = {}
Out.__index = Out

-- listed: the options the command takes (only those are read: a command without -q has no quiet to read).
local function new_out(args, stdout, stderr, listed)
  local tty = stderr == io.stderr and core.isatty(2)
  -- color on a terminal only, and never with NO_COLOR (any non-empty value), --no-color or TERM=dumb
  local no_color = (os.getenv("NO_COLOR") or "") ~= "" or (listed.no_color and args.no_color) or
    os.getenv("TERM") == "dumb"
  return setmetatable({
    json = listed.json and args.json, quiet = listed.quiet and args.quiet, stdout = stdout, stderr = stderr,
    tty = tty, started = core.now(), line_open = false, command = args.command,
    color = tty and not no_color, color_stdout = not no_color and stdout == io.stdout and core.isatty(1),
  }, Out)
end

local STYLES = { red = "1;31", green = "32", yellow = "33", bold = "1", dim = "2" }
M.STYLES = STYLES

--- text in a style (red, green, yellow, bold, dim) when stderr (or, with on_stdout, stdout) shows color.
function Out:paint(style, text, on_stdout)
  if not (on_stdout and self.color_stdout or not on_stdout and self.color) then return text end
  return "\27[" .. STYLES[style] .. "m" .. text .. "\27[0m"
end

-- The style of a task status word.
local STATUS_STYLE = { completed = "green", failed = "red" }
M.STATUS_STYLE = STATUS_STYLE

--- A progress line with its status word in the status's color (on a terminal that shows color).
function Out:status_color(line, status)
  local style = STATUS_STYLE[status]
  if not style or not self.color then return line end
  local a, b = line:find(status, 1, true)
  if not a then return line end
  return line:sub(1, a - 1) .. self:paint(style, status) .. line:sub(b + 1)
end

--- The client's trace for -v (nil without it): each request and answer on stderr, the key never.
function Out:tracer()
  local level = self.verbose
  if not level then return nil end
  return function(ev)
    if self.table then -- a batch's table on a terminal: the lines go above it, and it is drawn again under them
      for _, l in ipairs(trace.format(ev, level)) do self.table:note(self:paint("dim", l), true) end
      return
    end
    if self.line_open then
      self.stderr:write(self.tty and "\r\27[K" or "\n")
      self.line_open = false
    end
    for _, l in ipairs(trace.format(ev, level)) do self.stderr:write(self:paint("dim", l), "\n") end
    self.stderr:flush()
  end
end

-- A copy of value whose strings are valid UTF-8 (a server may send anything; the output must stay JSON).
-- The fields of --json that are lists: empty, they are [] (lua-cjson 2.1.0 prints an empty table as {}, which
-- a typed reader or `jq '.tasks[0]'` takes for an object). An empty one becomes EMPTY_LIST, a string no value
-- can be (a NUL in it), which encode turns into [].
local LIST_FIELDS = { paid_task_ids = true, tasks = true, mask_urls = true, jobs = true, continue = true,
  cells = true, subjects = true, checks = true, ids = true, saved = true, failed = true, warnings = true }
local EMPTY_LIST = "\0jimeng empty list\0"
local EMPTY_LIST_JSON = '"\\u0000jimeng empty list\\u0000"'

local function clean(value, depth)
  if type(value) == "string" then return core.utf8_clean(value) end
  if type(value) ~= "table" or (depth or 0) > 16 then return value end
  local out = {}
  for k, v in pairs(value) do
    if LIST_FIELDS[k] and type(v) == "table" and next(v) == nil then
      out[clean(k, 17)] = EMPTY_LIST
    else
      out[clean(k, 17)] = clean(v, (depth or 0) + 1)
    end
  end
  return out
end

-- lua-cjson escapes every "/" as "\/" (valid JSON, but "vids\/fox.mp4" is not what a user reads or greps);
-- a cjson that can be told not to is told so, once, on a private instance of the CLI's own
local out_json = require("cjson").new()
out_json.encode_max_depth(32)
local slash_setting = out_json.encode_escape_forward_slash -- lua-cjson 2.1.0.9 and later; Debian 12 has 2.1.0
if slash_setting then slash_setting(false) end

--- JSON text with plain slashes: "\/" becomes "/". A backslash escapes only when it ends an odd run of
-- backslashes ("\\/" is an escaped backslash, then a plain slash), and backslashes occur only inside strings.
function M.plain_slashes(text)
  return (text:gsub("(\\+)/", function(run)
    if #run % 2 == 1 then return run:sub(2) .. "/" end
  end))
end

-- Encodes for --json output; never raises (a value JSON cannot hold becomes an error object instead).
local function encode(value)
  local ok, text = pcall(out_json.encode, clean(value))
  if ok then
    text = text:gsub(EMPTY_LIST_JSON, "[]", nil)
    return slash_setting and text or M.plain_slashes(text)
  end
  text = out_json.encode { error = { kind = "protocol", message = "cannot encode the result as JSON: " .. tostring(text) } }
  return slash_setting and text or M.plain_slashes(text)
end

-- JSON output: a task's empty warnings list is left out (lua-cjson would print it as {}).
local function for_json(value)
  if type(value) == "table" then
    if value.warnings and next(value.warnings) == nil then value.warnings = nil end
    if type(value.task) == "table" then for_json(value.task) end
  end
  return value
end

function Out:result(value, text)
  if self.json then
    value = for_json(value)
    self.stdout:write(encode(value), "\n")
  elseif text then
    self.stdout:write(ktext.printable_lines(text), "\n")
  end
end

-- A progress line: redrawn in place on a terminal; on anything else, printed only when `final`
-- or when its text changes (never a stream of carriage returns into a log file). escaped: the text is
-- escaped already (and may hold the colors of Out:paint).
function Out:progress(text, final, escaped)
  if self.quiet then return end
  if not escaped then text = ktext.printable(text) end
  if self.tty then
    self.stderr:write("\r\27[K", text)
    self.line_open = true
    if final then
      self.stderr:write("\n")
      self.line_open = false
    end
  elseif final or text ~= self.last_plain then
    self.stderr:write(text, "\n")
  end
  self.last_plain = text
  self.stderr:flush()
end

-- On a terminal, text wrapped at words to its width (a message never cut by the terminal mid-word).
function Out:fitted(text)
  if self.tty then return progress.wrap(text, progress.width() - 1) end
  return text
end

function Out:note(text, always)
  if self.quiet and not always then return end
  text = ktext.printable_lines(text)
  if self.line_open then
    self.stderr:write("\n")
    self.line_open = false
  end
  if self.tty then text = progress.wrap(text, progress.width() - 1) end -- a terminal: wrapped at words
  self.stderr:write(text, "\n")
end

-- Said the moment a task exists, whatever -q or --json say: the id is what was paid for.
function Out:created(task)
  if self.announced == task.id then return end
  self.announced = task.id
  if self.line_open then -- "creating the task": done, so its line gives way to the id
    self.stderr:write(self.tty and "\r\27[K" or "\n")
    self.line_open = false
  end
  self.stderr:write(("created task %s\n"):format(self:paint("bold", ktext.printable(task.id))))
  self.stderr:flush()
end

local default_continue -- the command that continues a paid task when the command names none (below)

-- What to do about task `id`, which exists and is paid for, whatever stopped the command (an interruption, an
-- error after the create): the one wording of both, never "run the command again" (that would pay again).
-- -> the sentence (it ends with "continue with:"), the command to copy, and another for this task alone (or nil)
local function paid_continuation(id, kind, continue)
  local command, alternative = (continue or default_continue)(id)
  return ktext.printable(errors.paid_hint(id, kind)), command and ktext.printable(command),
    alternative and ktext.printable(alternative)
end

-- The what_to_do of --json: the sentence and its commands in one text, whole.
local function json_what(what, command, alternative)
  if not command then return what end
  return what .. " " .. command .. (alternative and (" (or, for this task alone: " .. alternative .. ")") or "")
end

-- Prints the hint and the commands to copy: each command on a line of its own, whole, whatever the width
-- (wrapped, a paste would run half of it), never with a # comment.
function Out:what_to_do(what, command, alternative, prefix)
  self.stderr:write(self:paint("yellow", self:fitted((prefix or "") .. what)), "\n")
  if command then self.stderr:write(self:paint("bold", command), "\n") end
  if command and alternative then self.stderr:write(self:fitted("  or, for this task alone:"), "\n", alternative, "\n") end
end

-- After Ctrl-C or SIGTERM: what exists, and the command that continues it.
function Out:interrupted(err, continue)
  if self.line_open then self.stderr:write("\n") end
  local what, command, alternative
  if err.task_id then
    what, command, alternative = paid_continuation(err.task_id, err.kind, continue)
  elseif err.created == nil and err.kind == "interrupted" and err.message:find("create") then
    what = "the create was on the wire when it was abandoned: the task may exist and be billed; check your " ..
      "account's tasks before creating it again"
  else
    what = "nothing was sent: run the same command again"
  end
  self.stderr:write(self:paint("yellow", self:fitted(ktext.printable("jimeng: " .. err.message))), "\n")
  self:what_to_do(what, command, alternative, "  ")
  if self.json then
    self.stdout:write(encode { error = { kind = err.kind, message = err.message, task_id = err.task_id,
      created = err.created, what_to_do = json_what(what, command, alternative),
      continue = command and { command, alternative } or nil } }, "\n")
  end
  return EXIT_INTERRUPTED
end

function Out:fail(err, continue)
  if err.kind == "interrupted" and continue then return self:interrupted(err, continue) end
  if err.created and err.task_id then self:created { id = err.task_id } end
  if self.line_open then self.stderr:write("\n") end
  self.stderr:write(self:paint("red", self:fitted(ktext.printable(tostring(err)))), "\n")
  local hint = err.hint or errors.hint(err.kind)
  local command, alternative -- commands to copy
  if hint and self.command then hint = hint:gsub("jimeng COMMAND", "jimeng " .. self.command) end
  if hint and err.task_id then hint = hint:gsub("jimeng wait ID", "jimeng wait " .. err.task_id) end
  if err.created then -- the task exists and is paid for: running the command again would pay again
    if err.task_id then
      hint, command, alternative = paid_continuation(err.task_id, err.kind, continue)
    else
      hint = "the task was made (it is paid for) but its id could not be read: do not create it again"
    end
  elseif err.kind == "unknown_outcome" and not err.task_id then
    hint = "the task may exist and be billed, and its id is unknown: check your account's tasks before " ..
      "creating it again"
  end
  if hint then self:what_to_do(ktext.printable(hint), command, alternative, "  what to do: ") end
  if self.json then
    self.stdout:write(encode { error = {
      kind = err.kind, message = err.message, status = err.status, code = err.code, field = err.field,
      request_id = err.request_id, task_id = err.task_id, retryable = err.retryable, created = err.created,
      what_to_do = hint and json_what(hint, command, alternative), continue = command and { command, alternative } or nil,
    } }, "\n")
  end
  return errors.exit_code(err.kind)
end

-- A download that continues an earlier one says from where, as curl and wget do.
function Out:resumed(offset, total)
  self:note(("resuming at %s of %s (%d%%): the .part of an earlier download holds them"):format(
    progress.human_bytes(offset), progress.human_bytes(total), math.floor(offset * 100 / total)))
end

-- The display of one task's progress (elapsed time, polls, download rate), ticked every second by main.
function Out:task_display(id)
  local d = progress.task(self, id)
  self.display = d
  return d
end

-- Arguments

local function video_params(args)
  local images = args.image
  if images and #images == 0 then images = nil end
  return {
    prompt = args.prompt, seconds = args.seconds, frames = args.frames, size = args.size,
    aspect_ratio = args.aspect_ratio, images = images, model = args.model, req_key = args.req_key,
    seed = tonumber(args.seed) or args.seed, camera_move = args.camera_move or nil, -- a number, as batch has it
  }
end

-- Commands

local function shell_quote(s)
  if s:match("^[%w%-_./:=@%%+,]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function task_text(t, out)
  local status = t.status
  if out and STATUS_STYLE[status] then status = out:paint(STATUS_STYLE[status], status, true) end
  local s = ("%s\t%s"):format(t.id, status)
  if t.error then s = s .. "\t" .. t.error end
  return s
end

local commands = {}
local NO_CONFIG

-- The command that continues a paid task after an interruption or a timeout (an -o template filled in);
-- --force when the run had it (the file it was to replace is still there: without it the download is refused).
local function continue_with(output, args)
  local force = args and args.force and " --force" or ""
  return function(id)
    if output and template.is_template(output) then
      output = template.expand(output, { id = id, prompt = args and args.prompt, seed = args and args.seed,
        model = args and args.model }) or output
    end
    local path = "jimeng_video_" .. id .. ".mp4"
    if output and output:sub(-1) == "/" then path = output .. path elseif output then path = output end
    return ("jimeng wait %s && jimeng download %s -o %s%s"):format(id, id, shell_quote(path), force)
  end
end

default_continue = continue_with(nil)

-- `jimeng resume`, with --force when the run had it (it replaces the file the run was to replace).
local function resume_command(args)
  return args and args.force and "jimeng resume --force" or "jimeng resume"
end

-- The config's output_dir, for commands whose -o names a file (generate, download): where the default name goes.
local function default_dir(out)
  local dir = out.run and out.run.output_dir
  if dir and dir ~= "" then return (dir:gsub("/+$", "")) .. "/" end
  return nil
end

function commands.generate(client, args, out)
  local d = out:task_display()
  local output = args.output or default_dir(out)
  local result, err = client:generate(video_params(args), {
    output = output, timeout = args.timeout, interval = args.interval, overwrite = args.force,
    on_created = function(task)
      out:created(task)
      d:created(task)
    end,
    on_status = function(task) d:status_changed(task) end,
    on_progress = function(got, total) d:bytes(got, total) end,
  })
  if not result then
    local alone = continue_with(output, args)
    -- with a ledger, resume saves it (and any other task paid for and not saved) where it was meant to go
    return out:fail(err, client.ledger and function(id) return resume_command(args), alone(id) end or alone)
  end
  for _, w in ipairs(result.task.warnings or {}) do out:note("warning: " .. w) end
  out:result({ path = result.path, bytes = result.bytes, task = result.task }, result.path)
  return EXIT_OK
end

function commands.create(client, args, out)
  local task, err = client:create(video_params(args))
  if not task then return out:fail(err, continue_with(nil)) end
  out:created(task)
  for _, w in ipairs(task.warnings or {}) do out:note("warning: " .. w) end
  out:result(task, task.id)
  return EXIT_OK
end

function commands.status(client, args, out)
  local task, err = client:status(args.id)
  if not task then return out:fail(err) end
  out:result(task, task_text(task, out))
  return EXIT_OK
end

function commands.wait(client, args, out)
  local d = out:task_display(args.id)
  d.phase = "wait"
  local task, err = client:wait(args.id, { timeout = args.timeout, interval = args.interval,
    on_status = function(t) d:status_changed(t) end })
  if task then d:draw(true) end
  if not task then return out:fail(err, function(id) return "jimeng wait " .. id end) end
  out:result(task, task_text(task, out))
  return EXIT_OK
end

function commands.download(client, args, out)
  local path = args.output or ((default_dir(out) or "") .. "jimeng_video_" .. args.id .. ".mp4")
  if template.is_template(path) then
    -- the template's {prompt}, {seed} and {model} come from the ledger, when it saw the task created
    local _, by_id = ledger.read(client.ledger and client.ledger.path, jimeng.json)
    local e = by_id and by_id[args.id]
    if e and type(e.params) ~= "table" then e = nil end -- a wait or a download noted, never its create
    local params = e and e.params or {}
    -- a field the ledger cannot fill is refused, never filled with a guess ({prompt} as "_", {seed} as "random")
    local parts, perr = template.parse(path, "output")
    if not parts then return out:fail(perr) end
    for _, p in ipairs(parts) do
      local f = type(p) == "table" and p.field
      local why
      if (f == "prompt" or f == "seed" or f == "model") and not e then
        why = ("the ledger (%s) never saw task %s created, so its %s is not known here"):format(
          client.ledger and client.ledger.path or "there is none", args.id, f)
      elseif f == "prompt" and type(params.prompt) ~= "string" then
        why = ("the ledger holds no prompt for task %s"):format(args.id)
      end
      if why then
        return out:fail(jimeng.error { kind = "invalid_argument", field = "output", message = ("output template " ..
          "%q: {%s} cannot be filled in: %s; name the file without it"):format(path, f, why) })
      end
    end
    local expanded, terr = template.expand(path, { id = args.id, prompt = params.prompt, seed = params.seed,
      model = params.model, time = e and e.at }, "output")
    if not expanded then return out:fail(terr) end
    path = expanded
    -- a template's directories are made, as generate makes them ({date}/...); a plain path's must exist
    local dir = path:match("^(.+)/[^/]*$")
    if dir then
      local made, why = core.mkdirs(dir)
      if not made then return out:fail(jimeng.error { kind = "invalid_argument", field = "output", message = why }) end
    end
  end
  local d = out:task_display(args.id)
  d.ready_at = core.now()
  local info, err = client:download(args.id, path, { resume = not args.no_resume, overwrite = args.force,
    on_progress = function(got, total) d:bytes(got, total) end,
    on_resume = function(offset, total) out:resumed(offset, total) end })
  if not info then
    err.task_id = err.task_id or args.id
    return out:fail(err, function(id) return ("jimeng download %s -o %s"):format(id, shell_quote(path)) end)
  end
  if info.already then
    out.display = nil
    out:note(("already saved: %s is task %s's whole video (the ledger saw it saved there)"):format(info.path, args.id))
  end
  out:result(info, info.path)
  return EXIT_OK
end

function commands.detect(client, args, out)
  local d, err = client:detect(args.image)
  if not d then return out:fail(err) end
  out:result(d, #d.mask_urls == 0 and "no subject" or table.concat(d.mask_urls, "\n"))
  return EXIT_OK
end

function commands.recognize(client, args, out)
  local r, err = client:recognize(args.image)
  if not r then return out:fail(err) end
  out:result(r, r.has_subject and "subject found" or "no person-like subject")
  return EXIT_OK
end

function commands.omnihuman(client, args, out)
  local subject = args.subject
  if subject and subject ~= "largest" then
    subject = tonumber(subject)
    if not subject then return out:fail(jimeng.error { kind = "invalid_argument", field = "subject",
      message = '--subject takes "largest" or a number' }) end
  end
  local masks = args.mask
  if masks and #masks == 0 then masks = nil end
  local d = out:task_display()
  local result, err = client:omnihuman({
    image = args.image, audio = args.audio, prompt = args.prompt, subject = subject, recognize = args.recognize or nil,
    masks = masks, resolution = args.resolution, fast = args.fast or nil, output = args.output,
    seed = tonumber(args.seed) or args.seed,
  }, { timeout = args.timeout, interval = args.interval, on_status = function(t) d:status_changed(t) end,
       on_progress = function(got, total) d:bytes(got, total) end, overwrite = args.force,
       on_created = function(task)
         out:created(task)
         d:created(task)
       end })
  if not result then
    local alone = continue_with(args.output, args)
    -- with a ledger and an output, resume saves it where it was meant to go (as generate's)
    return out:fail(err, client.ledger and args.output and function(id) return resume_command(args), alone(id) end
      or alone)
  end
  out:created(result.task or result)
  if result.path then
    out:result({ path = result.path, bytes = result.bytes, task = result.task, mask_url = result.mask_url }, result.path)
  else
    out:result(result, result.id)
  end
  return EXIT_OK
end

-- The command line this process runs, to copy (a batch or an experiment with its journal continues with it).
local function same_command(out)
  local words = { "jimeng" }
  for _, a in ipairs(out.argv or {}) do words[#words + 1] = shell_quote(a) end
  return table.concat(words, " ")
end

-- What a batch or an experiment that stopped leaves to do about what it paid for. jobs: its jobs (or takes),
-- each with status, task_id and path; journal: whether a second run knows what this one created (then the
-- same command continues it, paying for nothing it saw created); else each task paid for and not saved is
-- saved by jimeng resume (the ledger) or by wait && download, never by the same command (it would pay again).
-- -> nil when there is nothing to say, else the sentence, the commands (the first the one to run)
local function stopped_continuation(out, client, jobs, journal, interrupted)
  local unsaved, ids = {}, {}
  for _, j in ipairs(jobs) do
    if j.task_id and (j.status == "error" or j.status == "interrupted") then
      unsaved[#unsaved + 1], ids[#ids + 1] = j, j.task_id
    end
  end
  local tasks = #unsaved > 0 and ("%d task%s paid for and not saved (%s)"):format(#unsaved, #unsaved == 1 and "" or "s",
    table.concat(ids, ", "))
  if journal then
    if not interrupted and not tasks then return nil end
    return (tasks and (tasks .. "; ") or "") .. "nothing is lost: run the same command again to continue (it pays " ..
      "for nothing a run before it created):", { same_command(out) }
  end
  if not tasks then
    return interrupted and "nothing this run paid for is left unsaved: the jobs it did not save were never created" or nil
  end
  local cmds = {}
  if client.ledger then cmds[1] = "jimeng resume" end
  for _, j in ipairs(unsaved) do
    cmds[#cmds + 1] = ("jimeng wait %s && jimeng download %s -o %s"):format(j.task_id, j.task_id,
      shell_quote(j.path or ("jimeng_video_" .. j.task_id .. ".mp4")))
  end
  return tasks .. ": do not run the same command again (without --journal it would pay for them again); " ..
    "continue with:", cmds
end

-- Puts what to do after a batch or an experiment stopped in its --json summary: what_to_do whole (the
-- commands in it) and continue (the commands, the first the one to run).
local function report_stopped(summary, what, cmds)
  if not what then return end
  summary.what_to_do, summary.continue = what, cmds
  if cmds then
    summary.what_to_do = what .. " " .. cmds[1] .. (#cmds > 1 and (" (or, for each task alone: " ..
      table.concat(cmds, "; ", 2) .. ")") or "")
  end
end

-- Says it on stderr: each command on a line of its own, whole.
local function print_stopped(out, what, cmds)
  out:note("jimeng: " .. what, true)
  for i, c in ipairs(cmds or {}) do
    if i == 2 then out.stderr:write(out:fitted("  or, for each task alone:"), "\n") end
    out.stderr:write(out:paint("bold", ktext.printable(c)), "\n")
  end
end

function commands.batch(client, args, out)
  local done = 0
  local paid = {} -- the tasks this run created, in order: what it paid for
  local view = progress.batch(out)
  out.batch_view = view -- counts the polls of each job, for the table or the plain lines
  out.table = view.out.tty and not out.quiet and view or nil
  local summary, err = client:batch(args.jobs, {
    journal = args.journal, output_dir = args.output_dir, concurrency = args.jobs_in_flight, overwrite = args.force,
    recreate_unknown = args.recreate_unknown, interval = args.interval, timeout = args.timeout,
    on_event = function(ev)
      local job = ev.job
      local name = job.label or ("job " .. job.index)
      if ev.type == "created" then paid[#paid + 1] = ev.task.id end
      if out.table then -- a terminal: one line per job, redrawn in place; notes above it
        if ev.type == "backoff" then
          view:note(("rate limited: %d job(s) in flight from now on"):format(ev.limit))
        elseif ev.type == "warning" then
          view:note(("%s: %s"):format(name, ev.message))
        elseif ev.type == "created" then
          view:note(("%s: created task %s"):format(name, ev.task.id), true)
        end
        view:event(ev)
        return
      end
      view:job(job) -- counted for the polls of plain lines
      if ev.type == "backoff" then
        out:note(("rate limited: %d job(s) in flight from now on"):format(ev.limit))
      elseif ev.type == "warning" then
        out:note(("%s: %s"):format(name, ev.message))
      elseif ev.type == "created" then
        out.stderr:write(ktext.printable(("%s: created task %s"):format(name, ev.task.id)), "\n") -- even with -q: it is paid for
        view:event(ev)
      elseif ev.type == "status" then
        view:event(ev)
      else
        done = done + 1
        local what = ev.type == "saved" and ("saved " .. job.path) or ev.type == "skipped" and ("already saved " .. job.path)
          or (ev.type .. ": " .. tostring(job.error))
        out:note(("[%d/%d] %s: %s"):format(done, job.total, name, what))
      end
    end,
  })
  if out.table then view:close() end
  if not summary then return out:fail(err) end
  -- the counts that are not zero (saved always)
  local counts = { ("%d saved"):format(summary.saved) }
  for _, c in ipairs { { summary.skipped, "already saved" }, { summary.failed, "failed" }, { summary.unknown, "unknown" },
    { summary.errors, "errors" }, { summary.interrupted, "interrupted" } } do
    if c[1] > 0 then counts[#counts + 1] = ("%d %s"):format(c[1], c[2]) end
  end
  local line = ("%d jobs: %s"):format(summary.total, table.concat(counts, ", "))
  local what, continue = stopped_continuation(out, client, summary.jobs, args.journal, summary.interrupted > 0)
  if out.json then
    local jobs = {}
    for i, j in ipairs(summary.jobs) do
      jobs[i] = { index = j.index, label = j.label, status = j.status, path = j.path, task_id = j.task_id,
        error = j.error and { kind = j.error.kind, message = j.error.message } or nil }
    end
    local result = { total = summary.total, saved = summary.saved, skipped = summary.skipped, failed = summary.failed,
      unknown = summary.unknown, errors = summary.errors, interrupted = summary.interrupted, jobs = jobs,
      paid = #paid, paid_task_ids = paid }
    report_stopped(result, what, continue)
    out:result(result)
  end
  out:note(line)
  if summary.interrupted > 0 then
    out:note(args.journal and "jimeng: interrupted; nothing is lost: run the same command again to continue" or
      "jimeng: interrupted. Without --journal a second run cannot know what this one created; next time pass " ..
      "--journal FILE", true)
  end
  if continue and not args.journal then print_stopped(out, what, continue) end
  if summary.interrupted > 0 then return EXIT_INTERRUPTED end
  if summary.errors > 0 or summary.unknown > 0 then return EXIT_API end
  if summary.failed > 0 then return EXIT_TASK end
  return EXIT_OK
end

local function videos(n) return ("%d video%s"):format(n, n == 1 and "" or "s") end

local STATE_WORDS = { saved = "made", created = "created, to download", failed = "failed (not made again)",
  unknown = "sent, outcome unknown" }

function commands.experiment(client, args, out)
  local done = 0
  local paid = {} -- the tasks this run created, in order: what it paid for
  local retake = args.retake
  if retake and #retake == 0 then retake = nil end
  local spec, serr = require("jimeng.experiment").load(args.spec, jimeng.json)
  if not spec then return out:fail(serr) end
  -- --no-posters is ffmpeg = false; without it nil (found on PATH). Never `x and false or nil`: that is always nil.
  local ffmpeg
  if args.no_posters then ffmpeg = false end
  local report, err = client:experiment(spec, {
    dir = args.output_dir or (tostring(spec.name):gsub("[^%w%-_.]", "_")), rows = args.rows, cols = args.cols,
    dry_run = args.dry_run, max_videos = args.max_videos, yes = args.yes, retake = retake, overwrite = args.force,
    concurrency = args.jobs_in_flight, recreate_unknown = args.recreate_unknown, interval = args.interval,
    timeout = args.timeout, ffmpeg = ffmpeg,
    on_plan = function(plan, r)
      local dims = {}
      for _, a in ipairs(plan.axes) do dims[#dims + 1] = ("%d %s"):format(#a.values, a.name) end
      out:note(("experiment %s: %d cell%s (%s), %s with %s takes, in %s"):format(plan.name, #plan.cells,
        #plan.cells == 1 and "" or "s", #dims > 0 and table.concat(dims, " x ") or "no axes", videos(#r.takes),
        #plan.cells == 1 and "its" or "their", r.dir))
      if not args.dry_run then return end
      for _, t in ipairs(r.takes) do
        local what = t.new and "to make" or t.state == "unknown" and "sent, outcome unknown (--recreate-unknown)"
          or ((STATE_WORDS[t.state] or t.state) .. ": " .. tostring(t.task_id))
        out:note(("  %-50s %s  %s"):format(t.label, t.cell.seconds and (t.cell.seconds .. " s") or "?", what))
      end
    end,
    on_event = function(ev)
      local name = ev.job.label
      if ev.type == "created" then paid[#paid + 1] = ev.task.id end
      if ev.type == "backoff" then
        out:note(("rate limited: %d video(s) in flight from now on"):format(ev.limit))
      elseif ev.type == "created" then
        out:note(("%s: created task %s"):format(name, ev.task.id))
      elseif ev.type ~= "status" then
        done = done + 1
        local what = ev.type == "saved" and ("saved " .. ev.job.path) or ev.type == "skipped" and "already made"
          or (ev.type .. ": " .. tostring(ev.job.error))
        out:note(("[%d/%d] %s: %s"):format(done, ev.job.total, name, what))
      end
    end,
  })
  if not report then return out:fail(err) end
  if report.dry_run then
    local line = ("would pay for %s, %d s in total (%d already made); --max-videos is %d"):format(videos(report.to_pay),
      report.to_pay_seconds, #report.takes - report.to_pay, args.max_videos or 20)
    local grid = {}
    for i, t in ipairs(report.takes) do
      grid[i] = { id = t.cell.id, label = t.label, take = t.take, seconds = t.cell.seconds, params = t.cell.params,
        video = t.video, state = t.state, task_id = t.task_id, to_pay = t.new or false, extra = t.cell.extra or false }
    end
    out:result({ name = report.name, dir = report.dir, cells = report.cells, videos = #report.takes,
      to_pay = report.to_pay, to_pay_seconds = report.to_pay_seconds, grid = grid }, line)
    return EXIT_OK
  end
  local line = ("%s: %d made, %d already made, %d failed, %d unknown, %d errors%s; paid for %s (%d s); "
    .. "gallery: %s"):format(videos(#report.takes), report.made, report.skipped, report.failed, report.unknown,
    report.errors, report.interrupted > 0 and (", %d interrupted"):format(report.interrupted) or "",
    videos(report.paid), report.paid_seconds, report.gallery)
  local result = { name = report.name, dir = report.dir, gallery = report.gallery, results = report.results,
    videos = #report.takes, made = report.made, skipped = report.skipped, failed = report.failed,
    unknown = report.unknown, errors = report.errors, interrupted = report.interrupted, paid = report.paid,
    paid_seconds = report.paid_seconds, paid_task_ids = paid }
  -- an experiment always has its journal: the same command continues it
  report_stopped(result, stopped_continuation(out, client, report.takes, true, report.interrupted > 0))
  out:result(result)
  out:note(line)
  if report.interrupted > 0 then
    out:note("jimeng: interrupted; nothing is lost: run the same command again to continue", true)
    return EXIT_INTERRUPTED
  end
  if report.errors > 0 or report.unknown > 0 then return EXIT_API end
  if report.failed > 0 then return EXIT_TASK end
  return EXIT_OK
end

local function serve_until_exit(sb) sb.proc:read("*a") end -- the server's output ends when it exits

function commands.sandbox(_, args, out, streams)
  local sandbox = require "jimeng.sandbox"
  local sb, err = sandbox.start { port = args.port, queue_seconds = args.queue_seconds,
    process_seconds = args.process_seconds, video_bytes = args.video_bytes, download_rate = args.download_rate,
    tls = args.tls or nil, dialect = args.dialect }
  if not sb then
    out.stderr:write("cannot start the sandbox: ", tostring(err), "\n")
    return tostring(err):find("^port must") and EXIT_USAGE or EXIT_API
  end
  local ca = sb.cainfo and (" CURL_CA_BUNDLE=" .. sb.cainfo) or ""
  -- the dialect the sandbox speaks, for both: an export that left it out would keep the one of a sandbox used
  -- before in that shell (new-api's), and every create against this one would be refused
  local nd = args.dialect == "new-api" and "new-api" or "tokenops"
  out:result({ base_url = sb.url, api_key = "sandbox", cainfo = sb.cainfo, dialect = nd },
    ("JIMENG_BASE_URL=%s\nJIMENG_API_KEY=sandbox%s\nJIMENG_DIALECT=%s"):format(sb.url,
      sb.cainfo and ("\nCURL_CA_BUNDLE=" .. sb.cainfo) or "", nd))
  out:note(("sandbox: %s (Ctrl-C stops it)"):format(sb.url))
  -- a command to copy: whole, on its own line, never wrapped (a wrapped export would set half the variables)
  if not out.quiet then
    out.stderr:write(("  export JIMENG_BASE_URL=%s JIMENG_API_KEY=sandbox%s JIMENG_DIALECT=%s\n"):format(sb.url, ca, nd))
  end
  out.stdout:flush()
  ;(streams.serve or serve_until_exit)(sb)
  return EXIT_OK
end

function commands.doctor(_, args, out)
  local doctor = require "jimeng.cli.doctor"
  local key, kerr
  if out.run and out.run.key_file_error then kerr = out.run.key_file_error else key, kerr = M.api_key(args, out) end
  local report = doctor.run(args, key, kerr, { run = out.run, config_error = out.config_error, trace = out:tracer() })
  if out.json then
    out:result(report)
  else
    -- on a terminal, the details wrapped at words in their column (the terminal would cut them anywhere)
    local width = out.stdout == io.stdout and core.isatty(1) and progress.width() or nil
    out.stdout:write(doctor.text(report, function(style, text) return out:paint(style, text, true) end, width), "\n")
  end
  return report.ok and EXIT_OK or EXIT_API
end

function commands.config(_, args, out)
  if args.action == "profiles" then -- one name a line (the completions read them)
    out:result({ profiles = out.run.profiles }, #out.run.profiles > 0 and table.concat(out.run.profiles, "\n") or nil)
    return EXIT_OK
  end
  if args.action == "path" then
    out:result({ path = out.run.path, exists = not out.run.absent }, out.run.path)
    return EXIT_OK
  end
  local rows = config.report(args, out.run, help.parser(), out.listed)
  if out.json then
    local settings = {}
    for _, r in ipairs(rows) do settings[#settings + 1] = { name = r.name, value = r.value, from = r.from } end
    out:result { settings = settings }
  else
    out.stdout:write(config.text(rows), "\n")
  end
  return EXIT_OK
end

function commands.completion(_, args, out)
  out.stdout:write(help.completion(help.parser(), args.shell))
  return EXIT_OK
end

local ledger_commands = require "jimeng.cli.ledger"
commands.list, commands.show, commands.resume = ledger_commands.list, ledger_commands.show, ledger_commands.resume

-- The commands that call no API: no client is made for them.
local NO_CLIENT = { sandbox = true, doctor = true, completion = true, config = true, list = true, show = true }
-- The commands that read no config file.
NO_CONFIG = config.NO_CONFIG

--- The API key from --api-key-file (a file, or - for standard input), --api-key (with a warning: the
-- process list shows it), or the environment (jimeng.new reads JIMENG_API_KEY). -> key | nil, nil | nil, err
function M.api_key(args, out)
  if args.api_key_file then
    local f, why = io.stdin, nil
    if args.api_key_file ~= "-" then f, why = io.open(args.api_key_file, "r") end
    local data = f and f:read(64 * 1024)
    if f and not data and f ~= io.stdin and f:seek("end") ~= 0 then
      why = args.api_key_file .. " is a directory" -- a directory opens, then fails every read
      data = nil
    elseif f then
      data = data or ""
    end
    if f and f ~= io.stdin then f:close() end
    if not data then
      return nil, jimeng.error { kind = "invalid_argument", field = "api_key_file",
        message = "cannot read the API key file: " .. tostring(why) }
    end
    local bom_why
    data, bom_why = ktext.without_bom(data, "the API key file " .. args.api_key_file)
    if not data then return nil, jimeng.error { kind = "invalid_argument", field = "api_key_file", message = bom_why } end
    -- the key is the first line that is neither blank nor a # comment, without the spaces around it
    local key
    for line in (data .. "\n"):gmatch("([^\n]*)\n") do
      line = line:match("^%s*(.-)%s*$")
      if line ~= "" and line:sub(1, 1) ~= "#" then
        key = line
        break
      end
    end
    if not key then
      return nil, jimeng.error { kind = "invalid_argument", field = "api_key_file",
        message = "the API key file " .. args.api_key_file .. " holds no key (only blank or # comment lines)" }
    end
    if key:find("[%s%c]") then
      return nil, jimeng.error { kind = "invalid_argument", field = "api_key_file",
        message = "the API key in " .. args.api_key_file .. " holds spaces or control characters: is it the key?" }
    end
    return key
  end
  if args.api_key then
    out:note("warning: --api-key puts the key in the process list, where every user of this machine sees it; " ..
      "prefer JIMENG_API_KEY or --api-key-file", true)
  end
  return args.api_key
end

--- The version line: jimeng, the libcurl it runs on, and the Lua.
function M.version()
  local luav = _VERSION
  if type(jit) == "table" and jit.version then luav = jit.version end -- luacheck: ignore 113
  return ("jimeng %s (%s, %s)"):format(core._VERSION, core.curl_version(), luav)
end

-- The command a command line names (its first word that is not an option), or nil.
local function command_of(parser, list)
  for _, word in ipairs(list) do
    if word:sub(1, 1) ~= "-" then return help.command(parser, word) end
  end
  return nil
end

--- Runs the command line `argv` (an array of strings); returns the exit code.
-- streams: {stdout=, stderr=} (default io.stdout, io.stderr); for tests, trace_args(args) -> args (a
-- proxy that records which options a command reads) and serve(sandbox) (instead of serving until exit).
function M.main(argv, streams)
  streams = streams or {}
  local stdout, stderr = streams.stdout or io.stdout, streams.stderr or io.stderr
  local parser = help.parser()
  local list = {}
  for i = 1, #argv do
    -- `--seed -1`: argparse would read -1 as an option; a negative number after an option is its value
    local prev = list[#list]
    if argv[i]:match("^%-%d+%.?%d*$") and prev and prev:match("^%-%-[%w%-%.]+$") then
      list[#list] = prev .. "=" .. argv[i]
    else
      list[#list + 1] = argv[i]
    end
  end
  if #list == 0 then
    stdout:write(parser:get_help(), "\n")
    return EXIT_USAGE
  end
  -- --help is answered here (argparse's own would exit the process): the help of the command named
  for _, word in ipairs(list) do
    if word == "--" then break end
    if word == "-h" or word == "--help" then
      stdout:write((command_of(parser, list) or parser):get_help(), "\n")
      return EXIT_OK
    end
  end
  local ok, args = parser:pparse(list)
  if not ok then
    -- the usage of the command the line names (jimeng generate without a prompt: generate's usage)
    local cmd = command_of(parser, list)
    local text = ("%s\n\njimeng: %s\n  what to do: see jimeng %s--help"):format((cmd or parser):get_usage(),
      tostring(args), cmd and (cmd._name .. " ") or "")
    -- on a terminal, wrapped at words (the terminal would cut them)
    if stderr == io.stderr and core.isatty(2) then text = progress.wrap(text, progress.width() - 1) end
    stderr:write(text, "\n")
    return EXIT_USAGE
  end
  if args.version then
    stdout:write(M.version(), "\n")
    return EXIT_OK
  end
  if not args.command then
    stderr:write(parser:get_usage(), "\n\njimeng: a command is needed\n  what to do: see jimeng --help\n")
    return EXIT_USAGE
  end
  if streams.trace_args then args = streams.trace_args(args) end
  local listed = {}
  for _, o in ipairs(help.command(parser, args.command)._options) do
    listed[o._target or o:_get_default_target()] = true
  end
  local run, cerr
  if not NO_CONFIG[args.command] then run, cerr = config.apply(args, listed, parser) end
  local out = new_out(args, stdout, stderr, listed)
  if cerr and args.command ~= "doctor" then return out:fail(cerr) end -- doctor reports it among its checks
  out.config_error = cerr
  -- a profile's key file others can read: refused before anything is sent (config and doctor report it)
  if run and run.key_file_error and args.command ~= "config" and args.command ~= "doctor" then
    return out:fail(run.key_file_error)
  end
  out.run, out.listed, out.argv = run, listed, argv
  out.verbose = listed.verbose and (args.verbose or 0) > 0 and args.verbose or nil
  local client
  if not NO_CLIENT[args.command] then
    local key, err = M.api_key(args, out)
    if err then return out:fail(err) end
    -- (the poll interval goes to the calls that wait, as their `interval`: only they read --interval)
    client, err = jimeng.new { api_key = key, base_url = args.base_url,
      -- said even with -q: after Ctrl-C, why the command goes on (on a line of its own, wrapped at words)
      logger = function(kind, text)
        if kind == "interrupted" then out:note("jimeng: " .. text, true) end
        -- the default ledger's place cannot be made: said before the create (a paid task would be known
        -- only to this terminal, and resume could not find it)
        if kind == "warning" and text:find("^no ledger") then
          out:note(("jimeng: warning: %s; this task is known only to this terminal: keep its id"):format(text), true)
        end
        -- the shared budget's store gone away, or back (said once each): why a create waits, or runs slower
        if kind == "warning" and text:find("^the budget's") then out:note("jimeng: " .. text, true) end
      end,
      cainfo = args.cainfo, proxy = args.proxy, no_proxy = args.no_proxy, dialect = args.dialect,
      http_version = args["http1.1"] and "1.1" or args.http2 and "2" or nil, trace = out:tracer(),
      max_rps = args.max_rps, max_tasks = args.max_tasks, budget = args.budget }
    if not client then return out:fail(err) end
    -- every poll counted and shown (the display of a task, or the batch table), every batch download seen
    progress.observe(client, function(id, task)
      if out.display then out.display:polled(task) end
      if out.batch_view then out.batch_view:polled(id, task) end
    end, args.command == "batch" and function(id, got, total)
      if out.table then out.table:bytes(id, got, total) end
    end or nil)
  end
  -- Ctrl-C and SIGTERM end waits within a quarter second and come back as errors the commands report
  -- (what exists, how to continue); a closed stdout is an error on write, not a silent death (SIGPIPE)
  core.trap_signals()
  local tick = out.tty and not out.quiet and function()
    if out.display then out.display:tick() end
    if out.table then out.table:tick() end
  end or nil
  local done, code = pcall(progress.with_ticker, 1, client and tick, commands[args.command], client, args, out, streams)
  stdout:flush() -- while SIGPIPE is still ignored: a reader that went away is not a death
  core.untrap_signals()
  if not done then error(code, 0) end
  return code
end

return M
