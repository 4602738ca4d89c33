--- The `jimeng` command: generate, create, status, wait, download, detect, recognize, omnihuman, batch,
-- experiment, sandbox. Progress goes to stderr (a redrawn line on a terminal, plain lines otherwise); results to
-- stdout, as JSON with --json. Exit codes: 0 ok, 1 task failed, 2 usage or invalid input, 3 API or
-- network error.
local argparse = require "argparse"
local jimeng = require "jimeng"
local core = require "jimeng.core"

local M = {}

local errors = require "jimeng.errors"

local EXIT_OK, EXIT_TASK, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

-- Output

local Out = {}
Out.__index = Out

local function new_out(args, stdout, stderr)
  return setmetatable({
    json = args.json, quiet = args.quiet, stdout = stdout, stderr = stderr,
    tty = stderr == io.stderr and core.isatty(2), started = core.now(), line_open = false,
  }, Out)
end

-- A copy of value whose strings are valid UTF-8 (a server may send anything; the output must stay JSON).
local function clean(value, depth)
  if type(value) == "string" then return core.utf8_clean(value) end
  if type(value) ~= "table" or (depth or 0) > 16 then return value end
  local out = {}
  for k, v in pairs(value) do out[clean(k, 17)] = clean(v, (depth or 0) + 1) end
  return out
end

-- Encodes for --json output; never raises (a value JSON cannot hold becomes an error object instead).
local function encode(value)
  local ok, text = pcall(jimeng.json.encode, clean(value))
  if ok then return text end
  return jimeng.json.encode { error = { kind = "protocol", message = "cannot encode the result as JSON: " .. tostring(text) } }
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
    self.stdout:write(text, "\n")
  end
end

-- A progress line: redrawn in place on a terminal; on anything else, printed only when `final`
-- or when its text changes (never a stream of carriage returns into a log file).
function Out:progress(text, final)
  if self.quiet then return end
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

function Out:note(text)
  if self.quiet then return end
  if self.line_open then
    self.stderr:write("\n")
    self.line_open = false
  end
  self.stderr:write(text, "\n")
end

-- Said the moment a task exists, whatever -q or --json say: the id is what was paid for.
function Out:created(task)
  if self.announced == task.id then return end
  self.announced = task.id
  if self.line_open then
    self.stderr:write("\n")
    self.line_open = false
  end
  self.stderr:write(("created task %s\n"):format(task.id))
  self.stderr:flush()
end

-- After Ctrl-C or SIGTERM: what exists, and the command that continues it.
function Out:interrupted(err, continue)
  if self.line_open then self.stderr:write("\n") end
  local what
  if err.task_id then
    what = ("task %s exists (it is paid for); continue with: %s"):format(err.task_id, continue(err.task_id))
  elseif err.created == nil and err.kind == "interrupted" and err.message:find("create") then
    what = "the create was in flight: the task may or may not exist (check before creating again)"
  else
    what = "nothing was sent: run the same command again"
  end
  self.stderr:write("jimeng: ", err.message, "\n  ", what, "\n")
  if self.json then
    self.stdout:write(encode { error = { kind = err.kind, message = err.message, task_id = err.task_id } }, "\n")
  end
  return EXIT_INTERRUPTED
end

function Out:fail(err, continue)
  if err.kind == "interrupted" and continue then return self:interrupted(err, continue) end
  if err.created and err.task_id then self:created { id = err.task_id } end
  if self.line_open then self.stderr:write("\n") end
  self.stderr:write(tostring(err), "\n")
  local hint = err.hint or errors.hint(err.kind)
  if err.created then -- the task exists and is paid for: running the command again would pay again
    hint = err.task_id and continue and ("the task exists and is paid for: do not create it again; " ..
      "continue with: " .. continue(err.task_id))
      or "the task was made (it is paid for) but its id could not be read: do not create it again"
  elseif err.kind == "unknown_outcome" and not err.task_id then
    hint = "the task may exist and be billed, and its id is unknown: check your account's tasks before " ..
      "creating it again"
  end
  if hint then self.stderr:write("  what to do: ", hint, "\n") end
  if self.json then
    self.stdout:write(encode { error = {
      kind = err.kind, message = err.message, status = err.status, code = err.code, field = err.field,
      request_id = err.request_id, task_id = err.task_id, retryable = err.retryable,
    } }, "\n")
  end
  return errors.exit_code(err.kind)
end

local function human_bytes(n)
  if n >= 1024 * 1024 * 1024 then return ("%.1f GiB"):format(n / 1024 ^ 3) end
  if n >= 1024 * 1024 then return ("%.1f MiB"):format(n / 1024 ^ 2) end
  if n >= 1024 then return ("%.1f KiB"):format(n / 1024) end
  return ("%d B"):format(n)
end

-- Status and elapsed time while waiting.
function Out:status_reporter(id_hint)
  return function(task)
    local text = ("task %s: %s (%ds)"):format(task.id or id_hint, task.status, math.floor(core.now() - self.started))
    self:progress(text, task.status == "completed" or task.status == "failed")
  end
end

-- A download bar with rate and ETA (on a terminal), or a start and an end line.
function Out:download_reporter()
  local t0, shown_start = core.now(), false
  return function(got, total)
    local elapsed = math.max(core.now() - t0, 1e-3)
    local rate = got / elapsed
    if not self.tty then
      if not shown_start then
        shown_start = true
        self:progress(("downloading %s"):format(total and human_bytes(total) or "..."))
      end
      if total and got >= total then self:progress(("downloaded %s"):format(human_bytes(got)), true) end
      return
    end
    local width, pct = 30, total and total > 0 and got / total or 0
    local filled = math.floor(pct * width)
    local eta = total and rate > 0 and (total - got) / rate or nil
    self:progress(("[%s%s] %3d%% %s %s/s%s"):format(("#"):rep(filled), ("."):rep(width - filled), math.floor(pct * 100),
      human_bytes(got), human_bytes(rate), eta and (" ETA %ds"):format(math.ceil(eta)) or ""), total and got >= total)
  end
end

-- Arguments

local function add_video_options(cmd)
  cmd:option("--seconds", "Length: 5 or 10 seconds.")
  cmd:option("--frames", "Frames: 121 or 241 (instead of --seconds).")
  cmd:option("--size", "Size WIDTHxHEIGHT, e.g. 1280x720 (becomes the nearest aspect ratio).")
  cmd:option("--aspect-ratio", "16:9, 9:16, 4:3, 3:4, 1:1 or 21:9 (default 16:9).")
  cmd:option("--image", "A reference image: URL or local JPEG/PNG (twice: first and last frame).")
    :count("*"):args(1)
  cmd:option("--model", "jimeng-video-3.0-pro (default), jimeng-video-3.0-720P or jimeng-video-3.0-1080P.")
  cmd:option("--req-key", "A req_key of the model (chosen for you when left out).")
  cmd:option("--seed", "Random seed: -1 (random, default) or 0..4294967295.")
  cmd:flag("--camera-move", "A camera move from one image (720P).")
end

local function video_params(args)
  local images = args.image
  if images and #images == 0 then images = nil end
  return {
    prompt = args.prompt, seconds = args.seconds, frames = args.frames, size = args.size,
    aspect_ratio = args.aspect_ratio, images = images, model = args.model, req_key = args.req_key,
    seed = args.seed, camera_move = args.camera_move or nil,
  }
end

local function number_option(cmd, name, desc)
  return cmd:option(name, desc):convert(tonumber)
end

local function build_parser()
  local p = argparse("jimeng", "Generate videos with the Jimeng API (tokenops.ai): create, wait, download.")
    :epilog([[
Examples:
  jimeng generate "千军万马奔腾在草原上,阳光明媚,高清画质" --seconds 5 -o horses.mp4
  jimeng generate "a cat jumps" --image cat.jpg --size 1280x720 --seed 7 -o cat.mp4
  jimeng create "waves at dusk" --json          # prints the task; then: jimeng wait ID; jimeng download ID
  jimeng omnihuman --image https://.../portrait.jpg --audio https://.../speech.mp3 --subject largest -o talk.mp4
  jimeng batch jobs.jsonl --journal run.jsonl -o videos/ -j 8
  jimeng experiment examples/experiment.lua --dry-run   # then without --dry-run; open DIR/index.html
  jimeng sandbox                                 # a local API for trying all of this without a key

Environment: JIMENG_API_KEY (required for the real API), JIMENG_BASE_URL (default https://api.tokenops.ai/v1).
Exit codes: 0 ok, 1 the task failed, 2 usage or invalid input, 3 API or network error.]])
  p:command_target("command")

  local gen = p:command("generate g", "Create a video, wait for it and download it.")
  gen:argument("prompt", "What the video shows (up to 800 characters; a warning past 400).")
  add_video_options(gen)
  gen:option("-o --output", "Output file (default jimeng_video_<id>.mp4).")
  gen:flag("--force", "Replace the output file if it exists (otherwise refused before paying).")

  local create = p:command("create", "Create a video task and print its id (no waiting).")
  create:argument("prompt", "What the video shows.")
  add_video_options(create)

  p:command("status", "Print a task's status."):argument("id", "Task id.")

  p:command("wait", "Wait until a task completes or fails."):argument("id", "Task id.")

  local dl = p:command("download", "Download a completed task's video (resumes a broken download).")
  dl:argument("id", "Task id.")
  dl:option("-o --output", "Output file (default jimeng_video_<id>.mp4).")
  dl:flag("--no-resume", "Start over even if a .part file exists.")

  p:command("detect", "Detect the subjects of a portrait (OmniHuman): their mask URLs, largest first.")
    :argument("image", "Portrait image URL.")
  p:command("recognize", "Tell whether a portrait holds a person-like subject (OmniHuman).")
    :argument("image", "Portrait image URL.")

  local omni = p:command("omnihuman", "A talking-head video from a portrait and an audio track.")
  omni:option("--image", "Portrait image URL."):count(1)
  omni:option("--audio", "Audio URL (under 60 s)."):count(1)
  omni:option("--prompt", "How the person speaks (up to 300 characters advised).")
  omni:option("--subject", 'Who speaks: "largest" or a number (runs detection first).')
  omni:flag("--recognize", "First check that the portrait holds a person-like subject.")
  omni:option("--mask", "A mask URL for the speaker (instead of --subject)."):count("*"):args(1)
  omni:option("--resolution", "720 or 1080 (default 1080).")
  omni:flag("--fast", "Fast mode (pe_fast_mode).")
  omni:option("--seed", "Random seed.")
  omni:option("-o --output", "Output file (without it, only the task is created).")
  omni:flag("--force", "Replace the output file if it exists (otherwise refused before paying).")

  local batch = p:command("batch", "Run many jobs from a JSON-lines file, resumable with a journal.")
  batch:argument("jobs", "JSON-lines file: one job per line, create parameters plus optional label and output.")
  batch:option("--journal", "Journal file: rerunning with it re-creates and re-downloads nothing already done.")
  batch:option("-o --output-dir", "Directory for the videos.", ".")
  number_option(batch, "-j --jobs-in-flight", "How many jobs run at once (default 4).")
  batch:flag("--recreate-unknown", "Create again the jobs whose earlier create may or may not have happened.")
  batch:flag("--force", "Replace output files this journal did not make (otherwise refused before paying).")

  local exp = p:command("experiment", "Run a grid of variations (a spec file) as one resumable batch, with a gallery.")
  exp:argument("spec", "Experiment spec: a Lua file returning a table, or a JSON file (base, vary, vars, cells).")
  exp:option("-o --output-dir", "The experiment's directory: journal, videos, index.html, results.json "
    .. "(default: the spec's name).")
  exp:option("--rows", "The axis shown as the gallery's rows.")
  exp:option("--cols", "The axis shown as the gallery's columns.")
  exp:flag("--dry-run", "Print the grid, how many videos would be paid and their seconds; create nothing.")
  number_option(exp, "--max-videos", "Refuse a run that would pay for more videos than this without --yes (default 20).")
  exp:flag("-y --yes", "Run even above --max-videos.")
  exp:option("--retake", "Make a new take of this cell (its id, as --dry-run prints it); earlier takes are kept.")
    :count("*"):args(1)
  number_option(exp, "-j --jobs-in-flight", "How many videos are made at once (default 4).")
  exp:flag("--recreate-unknown", "Create again the cells whose earlier create may or may not have happened.")
  exp:flag("--no-posters", "Do not make poster images with ffmpeg.")
  exp:flag("--force", "Replace video files in the directory that its journal did not make (otherwise refused before paying).")

  local sb = p:command("sandbox", "Run the local API emulator; prints its URL and the environment to use it.")
  number_option(sb, "--port", "Port (default: a free one).")
  number_option(sb, "--queue-seconds", "How long a task stays in_queue (default 0.2).")
  number_option(sb, "--process-seconds", "How long a task stays processing (default 0.5).")

  -- the options every command takes, after the command name: jimeng create "..." --json
  for _, cmd in ipairs(p._commands) do
    cmd:flag("--json", "Print results as JSON on stdout.")
    cmd:flag("-q --quiet", "No progress on stderr.")
    if cmd._name ~= "sandbox" then
      cmd:option("--api-key", "API key (default: $JIMENG_API_KEY); visible to other users in the process list.")
      cmd:option("--api-key-file", "Read the API key from this file ('-': standard input).")
      cmd:option("--base-url", "API base URL (default: $JIMENG_BASE_URL or https://api.tokenops.ai/v1).")
      number_option(cmd, "--timeout", "Seconds to wait for a task (default 600).")
      number_option(cmd, "--interval", "Seconds between status polls (default 5).")
      cmd:option("--cainfo", "PEM file of the CA(s) to trust, for a private CA (default: $CURL_CA_BUNDLE, $SSL_CERT_FILE).")
      cmd:option("--proxy", "Proxy URL, http://user:password@host:port (default: $https_proxy, $http_proxy, $all_proxy).")
      cmd:option("--no-proxy", "Hosts that bypass the proxy, comma-separated (default: $no_proxy); loopback always does.")
      cmd:mutex(cmd:flag("--http1.1", "Speak HTTP/1.1 only."),
        cmd:flag("--http2", "Ask for HTTP/2 (the default already uses it over TLS when the server speaks it)."))
    end
  end
  return p
end

-- Commands

local function shell_quote(s)
  if s:match("^[%w%-_./:=@%%+,]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function task_text(t)
  local s = ("%s\t%s"):format(t.id, t.status)
  if t.error then s = s .. "\t" .. t.error end
  return s
end

local commands = {}

-- The command that continues a paid task after an interruption or a timeout.
local function continue_with(output)
  return function(id)
    return ("jimeng wait %s && jimeng download %s -o %s"):format(id, id, output and shell_quote(output) or
      ("jimeng_video_" .. id .. ".mp4"))
  end
end

function commands.generate(client, args, out)
  local result, err = client:generate(video_params(args), {
    output = args.output, timeout = args.timeout, interval = args.interval, overwrite = args.force,
    on_created = function(task) out:created(task) end,
    on_status = out:status_reporter(), on_progress = out:download_reporter(),
  })
  if not result then return out:fail(err, continue_with(args.output)) end
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
  out:result(task, task_text(task))
  return EXIT_OK
end

function commands.wait(client, args, out)
  local task, err = client:wait(args.id, { timeout = args.timeout, interval = args.interval,
    on_status = out:status_reporter(args.id) })
  if not task then return out:fail(err, function(id) return "jimeng wait " .. id end) end
  out:result(task, task_text(task))
  return EXIT_OK
end

function commands.download(client, args, out)
  local path = args.output or ("jimeng_video_" .. args.id .. ".mp4")
  local info, err = client:download(args.id, path, { resume = not args.no_resume, on_progress = out:download_reporter() })
  if not info then
    err.task_id = err.task_id or args.id
    return out:fail(err, function(id) return ("jimeng download %s -o %s"):format(id, shell_quote(path)) end)
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
  local result, err = client:omnihuman({
    image = args.image, audio = args.audio, prompt = args.prompt, subject = subject, recognize = args.recognize or nil,
    masks = masks, resolution = args.resolution, fast = args.fast or nil, seed = args.seed, output = args.output,
  }, { timeout = args.timeout, interval = args.interval, on_status = out:status_reporter(),
       on_progress = out:download_reporter(), overwrite = args.force, on_created = function(task) out:created(task) end })
  if not result then return out:fail(err, continue_with(args.output)) end
  out:created(result.task or result)
  if result.path then
    out:result({ path = result.path, bytes = result.bytes, task = result.task, mask_url = result.mask_url }, result.path)
  else
    out:result(result, result.id)
  end
  return EXIT_OK
end

function commands.batch(client, args, out)
  local done = 0
  local summary, err = client:batch(args.jobs, {
    journal = args.journal, output_dir = args.output_dir, concurrency = args.jobs_in_flight, overwrite = args.force,
    recreate_unknown = args.recreate_unknown, interval = args.interval, timeout = args.timeout,
    on_event = function(ev)
      local job = ev.job
      local name = job.label or ("job " .. job.index)
      if ev.type == "backoff" then
        out:note(("rate limited: %d job(s) in flight from now on"):format(ev.limit))
      elseif ev.type == "warning" then
        out:note(("%s: %s"):format(name, ev.message))
      elseif ev.type == "created" then
        out.stderr:write(("%s: created task %s\n"):format(name, ev.task.id)) -- even with -q: it is paid for
      elseif ev.type ~= "status" then
        done = done + 1
        local what = ev.type == "saved" and ("saved " .. job.path) or ev.type == "skipped" and ("already saved " .. job.path)
          or (ev.type .. ": " .. tostring(job.error))
        out:note(("[%d/%d] %s: %s"):format(done, job.total, name, what))
      end
    end,
  })
  if not summary then return out:fail(err) end
  local line = ("%d jobs: %d saved, %d already saved, %d failed, %d unknown, %d errors%s"):format(summary.total,
    summary.saved, summary.skipped, summary.failed, summary.unknown, summary.errors,
    summary.interrupted > 0 and (", %d interrupted"):format(summary.interrupted) or "")
  if out.json then
    local jobs = {}
    for i, j in ipairs(summary.jobs) do
      jobs[i] = { index = j.index, label = j.label, status = j.status, path = j.path, task_id = j.task_id,
        error = j.error and { kind = j.error.kind, message = j.error.message } or nil }
    end
    out:result({ total = summary.total, saved = summary.saved, skipped = summary.skipped, failed = summary.failed,
      unknown = summary.unknown, errors = summary.errors, jobs = jobs })
  end
  out:note(line)
  if summary.interrupted > 0 then
    if args.journal then
      out.stderr:write("jimeng: interrupted; nothing is lost: run the same command again to continue\n")
    else
      out.stderr:write("jimeng: interrupted. Without --journal a second run cannot know what this one created: " ..
        "the tasks created above are paid for (jimeng wait ID, jimeng download ID); next time pass --journal FILE\n")
    end
    return EXIT_INTERRUPTED
  end
  if summary.errors > 0 or summary.unknown > 0 then return EXIT_API end
  if summary.failed > 0 then return EXIT_TASK end
  return EXIT_OK
end

local function videos(n) return ("%d video%s"):format(n, n == 1 and "" or "s") end

local STATE_WORDS = { saved = "made", created = "created, to download", failed = "failed (not made again)",
  unknown = "sent, outcome unknown" }

function commands.experiment(client, args, out)
  local done = 0
  local retake = args.retake
  if retake and #retake == 0 then retake = nil end
  local spec, serr = require("jimeng.experiment").load(args.spec, jimeng.json)
  if not spec then return out:fail(serr) end
  local report, err = client:experiment(spec, {
    dir = args.output_dir or (tostring(spec.name):gsub("[^%w%-_.]", "_")), rows = args.rows, cols = args.cols,
    dry_run = args.dry_run, max_videos = args.max_videos, yes = args.yes, retake = retake, overwrite = args.force,
    concurrency = args.jobs_in_flight, recreate_unknown = args.recreate_unknown, interval = args.interval,
    timeout = args.timeout, ffmpeg = args.no_posters and false or nil,
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
  out:result({ name = report.name, dir = report.dir, gallery = report.gallery, results = report.results,
    videos = #report.takes, made = report.made, skipped = report.skipped, failed = report.failed,
    unknown = report.unknown, errors = report.errors, interrupted = report.interrupted, paid = report.paid,
    paid_seconds = report.paid_seconds })
  out:note(line)
  if report.interrupted > 0 then
    out.stderr:write("jimeng: interrupted; nothing is lost: run the same command again to continue\n")
    return EXIT_INTERRUPTED
  end
  if report.errors > 0 or report.unknown > 0 then return EXIT_API end
  if report.failed > 0 then return EXIT_TASK end
  return EXIT_OK
end

function commands.sandbox(_, args, out)
  local sandbox = require "jimeng.sandbox"
  local sb, err = sandbox.start { port = args.port, queue_seconds = args.queue_seconds, process_seconds = args.process_seconds }
  if not sb then
    out.stderr:write("cannot start the sandbox: ", tostring(err), "\n")
    return EXIT_API
  end
  out:result({ base_url = sb.url, api_key = "sandbox" }, ("JIMENG_BASE_URL=%s\nJIMENG_API_KEY=sandbox"):format(sb.url))
  out:note(("sandbox: %s (Ctrl-C stops it)\n  export JIMENG_BASE_URL=%s JIMENG_API_KEY=sandbox"):format(sb.url, sb.url))
  out.stdout:flush()
  sb.proc:read("*a") -- until the server exits
  return EXIT_OK
end

--- The API key from --api-key-file (a file, or - for standard input), --api-key (with a warning: the
-- process list shows it), or the environment (jimeng.new reads JIMENG_API_KEY). -> key | nil, nil | nil, err
function M.api_key(args, out)
  if args.api_key_file then
    local f, why = io.stdin, nil
    if args.api_key_file ~= "-" then f, why = io.open(args.api_key_file, "r") end
    if not f then
      return nil, jimeng.error { kind = "invalid_argument", field = "api_key_file",
        message = "cannot read the API key file: " .. tostring(why) }
    end
    local key = f:read("*l")
    if f ~= io.stdin then f:close() end
    key = key and key:match("^%s*(.-)%s*$")
    if not key or key == "" then
      return nil, jimeng.error { kind = "invalid_argument", field = "api_key_file",
        message = "the API key file " .. args.api_key_file .. " is empty" }
    end
    return key
  end
  if args.api_key then
    out.stderr:write("warning: --api-key puts the key in the process list, where every user of this machine sees it; " ..
      "prefer JIMENG_API_KEY or --api-key-file\n")
  end
  return args.api_key
end

--- Runs the command line `argv` (an array of strings); returns the exit code.
-- streams: {stdout=, stderr=} (default io.stdout, io.stderr).
function M.main(argv, streams)
  streams = streams or {}
  local stdout, stderr = streams.stdout or io.stdout, streams.stderr or io.stderr
  local parser = build_parser()
  local list = {}
  for i = 1, #argv do list[i] = argv[i] end
  if #list == 0 then
    stdout:write(parser:get_help(), "\n")
    return EXIT_USAGE
  end
  local ok, args = parser:pparse(list)
  if not ok then
    stderr:write(parser:get_usage(), "\n\njimeng: ", tostring(args), "\n  what to do: see jimeng --help\n")
    return EXIT_USAGE
  end
  local out = new_out(args, stdout, stderr)
  local client
  if args.command ~= "sandbox" then
    local key, err = M.api_key(args, out)
    if err then return out:fail(err) end
    client, err = jimeng.new { api_key = key, base_url = args.base_url, poll_interval = args.interval,
      logger = function(kind, text) if kind == "interrupted" then stderr:write("jimeng: ", text, "\n") end end,
      cainfo = args.cainfo, proxy = args.proxy, no_proxy = args.no_proxy,
      http_version = args["http1.1"] and "1.1" or args.http2 and "2" or nil }
    if not client then return out:fail(err) end
  end
  -- Ctrl-C and SIGTERM end waits within a quarter second and come back as errors the commands report
  -- (what exists, how to continue); a closed stdout is an error on write, not a silent death (SIGPIPE)
  core.trap_signals()
  local done, code = pcall(commands[args.command], client, args, out)
  stdout:flush() -- while SIGPIPE is still ignored: a reader that went away is not a death
  core.untrap_signals()
  if not done then error(code, 0) end
  return code
end

return M
