--- The Neovim plugin: setup{}, the :Jimeng* commands, progress through vim.notify and a User autocommand.
-- plugin/jimeng.lua defines the commands at start-up; require("jimeng").setup{...} (or
-- require("jimeng.plugin").setup{...}) changes the settings. Every call runs on jimeng.nvim's event-driven
-- driver, so the editor never waits for the API.
local M = {}

-- The settings, as setup{} leaves them.
local defaults = {
  output_dir = nil,      -- where videos go (default: the current directory when the command runs)
  seconds = 5,           -- 5 or 10
  ratio = nil,           -- aspect ratio, "16:9" (the API's default) ...
  model = nil,
  interval = 5,          -- seconds between status polls
  timeout = nil,         -- seconds for a whole generate (default: the client's wait_timeout, 600)
  client = nil,          -- options for jimeng.new (api_key, base_url, proxy, ...); default: the environment
  open_cmd = nil,        -- how :JimengOpen plays a video: a list ({"mpv"}); default xdg-open, or open on macOS
  notify = true,         -- progress through vim.notify
  coalesce_ms = 500,     -- polls and sleeps are woken on a grid of this many ms, so that many calls share wake-ups
}
M.config = vim.deepcopy(defaults)

local client, client_err -- one client per session: its connections are reused by every generate
local tasks = {}         -- this session's generates, oldest first

local function notify(msg, level)
  if M.config.notify or (level and level >= vim.log.levels.WARN) then
    vim.notify("jimeng: " .. msg, level or vim.log.levels.INFO)
  end
end

-- Progress for UIs that show it (statuslines, fidget-like plugins): User JimengProgress, with the task's
-- state in vim.g.jimeng_progress (and as the autocommand's data where Neovim passes one, 0.8+).
local function progress(task)
  local data = { n = task.n, state = task.state, task_id = task.task_id, percent = task.percent, path = task.path }
  vim.g.jimeng_progress = data
  if not pcall(vim.api.nvim_exec_autocmds, "User", { pattern = "JimengProgress", modeline = false, data = data }) then
    pcall(vim.api.nvim_exec_autocmds, "User", { pattern = "JimengProgress", modeline = false })
  end
end

function M.setup(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("jimeng.setup: opts must be a table, not " .. type(opts), 2) end
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts)
  require("jimeng.nvim").coalesce_ms = M.config.coalesce_ms
  client, client_err = nil, nil
  return M
end

local function get_client()
  if not client then
    client, client_err = require("jimeng").new(M.config.client)
  end
  return client, client_err
end

--- Parses ":JimengGenerate [-seconds=N] [-ratio=R] [-image=PATH] [--] prompt..." (also "-seconds N").
-- Before the prompt every word that starts with "-" is an option, and an unknown one is refused (a typo must not
-- become a paid prompt); "--" ends the options: the words after it are the prompt, even one that starts with "-".
-- Once the prompt has begun, every word is the prompt's.
function M.parse(args)
  local opts, words = {}, {}
  local list = vim.split(args or "", "%s+", { trimempty = true })
  local i = 1
  while i <= #list do
    local w = list[i]
    if #words > 0 then
      words[#words + 1] = w
    elseif w == "--" then
      for j = i + 1, #list do words[#words + 1] = list[j] end
      break
    elseif w:sub(1, 1) == "-" then
      local name, value = w:match("^%-(%a+)=(.*)$")
      if not name then
        name = w:match("^%-(%a+)$")
        if name then
          i = i + 1
          value = list[i]
        end
      end
      if name ~= "seconds" and name ~= "ratio" and name ~= "image" then
        return nil, ("unknown option %s (-seconds, -ratio, -image; a prompt that starts with - goes after --: " ..
          ":JimengGenerate -- %s)"):format(name and ("-" .. name) or w, w)
      end
      if value == nil or value == "" then return nil, "-" .. name .. " needs a value" end
      opts[name] = value
    else
      words[#words + 1] = w
    end
    i = i + 1
  end
  if #words == 0 then
    return nil, "a prompt is needed: :JimengGenerate [-seconds=5] [-ratio=16:9] [-image=path] [--] prompt"
  end
  opts.prompt = table.concat(words, " ")
  return opts
end

local function describe(task)
  local s = ("#%d %s"):format(task.n, task.state)
  if task.percent then s = s .. (" %d%%"):format(task.percent) end
  if task.task_id then s = s .. " task " .. task.task_id end
  if task.path then s = s .. " " .. task.path end
  if task.error then s = s .. ": " .. task.error end
  return s .. (" (%q)"):format(#task.prompt > 40 and task.prompt:sub(1, 37) .. "..." or task.prompt)
end

-- What a stopped generate paid for, in words.
local function paid_words(task, err)
  if task.resume and not task.task_id then
    -- a resume pays nothing, and until the API answers about the id nothing says a task has it
    if err and err.kind == "not_found" then return ("the API knows no task %s"):format(task.resume) end
    return ("no answer about task %s yet; :JimengResume %s asks again"):format(task.resume, task.resume)
  end
  if task.task_id or (err and err.task_id) then
    local id = task.task_id or err.task_id
    local part = task.dir and (task.dir .. "/jimeng_video_" .. id .. ".mp4.part")
    local kept = part and (vim.uv or vim.loop).fs_stat(part)
    return ("task %s was created and is paid for%s"):format(id,
      kept and ("; its download is kept in %s (%d bytes) and :JimengResume %s continues it"):format(part, kept.size, id)
      or ("; :JimengResume %s waits for it and downloads it"):format(id))
  end
  if err and err.created == nil and err.kind == "unknown_outcome" then
    return "the create's outcome is unknown: it may be billed"
  end
  return "nothing was paid for"
end

local function start(task, fn)
  task.job = require("jimeng.nvim").run(fn, function(result, err)
    task.job = nil
    if result then
      task.state, task.path, task.percent = "saved", result.path, nil
      notify(("saved %s (%d bytes)"):format(result.path, result.bytes))
    else
      local cancelled = task.cancelled
      task.state = cancelled and "cancelled" or "failed"
      task.error = tostring(err and err.message or err)
      if cancelled then
        notify(("#%d cancelled: %s"):format(task.n, paid_words(task, err)), vim.log.levels.WARN)
      else
        notify(("#%d failed: %s (%s)"):format(task.n, task.error, paid_words(task, err)), vim.log.levels.ERROR)
      end
    end
    progress(task)
  end)
end

-- The generate's callbacks run inside the driver, in a libuv callback, where the editor's API is refused
-- (E5560 on 0.7: vim.notify's nvim_echo, the User autocommand): each goes through the main loop
-- (jimeng.nvim's main_loop, the one hop, which on_done takes too), in order, so that they touch the task and
-- the user only there.
local function callbacks(task)
  local last_pct
  local on_main_loop = require("jimeng.nvim").main_loop
  local call = {
    on_created = function(t)
      task.task_id, task.state = t.id, "created"
      notify(("#%d task %s created"):format(task.n, t.id))
      progress(task)
    end,
    on_status = function(t)
      task.task_id, task.state = t.id, t.status
      notify(("#%d task %s %s"):format(task.n, t.id, t.status))
      progress(task)
    end,
    on_progress = function(got, total)
      task.state = "downloading"
      local pct = total and total > 0 and math.floor(100 * got / total) or nil
      if pct and pct ~= last_pct then
        last_pct = pct
        task.percent = pct
        if pct % 25 == 0 then notify(("#%d downloading %d%%"):format(task.n, pct)) end
        progress(task)
      end
    end,
  }
  for name, fn in pairs(call) do call[name] = on_main_loop(fn) end
  return call
end

-- The client (its error notified), the settings, and the absolute output directory.
local function client_and_dir()
  local c, cerr = get_client()
  if not c then
    notify(tostring(cerr), vim.log.levels.ERROR)
    return nil, cerr
  end
  local cfg = M.config
  return c, cfg, (vim.fn.fnamemodify(cfg.output_dir or vim.fn.getcwd(), ":p"):gsub("/$", ""))
end

local function new_task(prompt, dir)
  local task = { n = #tasks + 1, prompt = prompt, state = "creating", dir = dir }
  tasks[#tasks + 1] = task
  return task
end

--- :JimengGenerate: starts a generate; returns the task record (or nil, err).
function M.generate(args)
  local opts, perr = M.parse(args)
  if not opts then
    notify(perr, vim.log.levels.ERROR)
    return nil, perr
  end
  local c, cfg, dir = client_and_dir()
  if not c then return nil, cfg end
  local params = {
    prompt = opts.prompt, seconds = tonumber(opts.seconds) or opts.seconds or cfg.seconds,
    aspect_ratio = opts.ratio or cfg.ratio, model = cfg.model,
    image = opts.image and vim.fn.fnamemodify(vim.fn.expand(opts.image), ":p") or nil,
  }
  local task = new_task(opts.prompt, dir)
  local call = callbacks(task)
  call.output_dir, call.interval, call.timeout = dir, cfg.interval, cfg.timeout
  start(task, function() return c:generate(params, call) end)
  notify(("#%d started"):format(task.n))
  return task
end

--- :JimengResume {task_id}: waits for a task this client created and downloads it to the output directory,
-- continuing a .part that a cancel kept.
function M.resume(id)
  -- the id goes into the URL path: the client's one check, before anything is sent or recorded
  local _, ierr = require("jimeng.client").check_id(id)
  if ierr then
    local msg = (":JimengResume: %s; nothing was sent"):format(ierr.message)
    notify(msg, vim.log.levels.ERROR)
    return nil, msg
  end
  local c, cfg, dir = client_and_dir()
  if not c then return nil, cfg end
  local task = new_task("resume " .. id, dir)
  task.resume = id -- task.task_id once the API answered about it (on_status)
  local call = callbacks(task)
  start(task, function()
    local done, werr = c:wait(id, { interval = cfg.interval, timeout = cfg.timeout, on_status = call.on_status })
    if not done then return nil, werr end
    local info, derr = c:download(id, dir .. "/jimeng_video_" .. id .. ".mp4", { on_progress = call.on_progress })
    if not info then return nil, derr end
    info.task = done
    return info
  end)
  return task
end

--- :JimengStatus: the tasks of this session and their state.
function M.status()
  if #tasks == 0 then
    notify("no tasks in this session")
    return {}
  end
  local lines = {}
  for i, t in ipairs(tasks) do lines[i] = describe(t) end
  vim.notify(table.concat(lines, "\n"), vim.log.levels.INFO)
  return tasks
end

-- The running tasks, as ":JimengStatus" names them: "#1 (task 758...)".
local function running_words()
  local list = {}
  for _, t in ipairs(tasks) do
    if t.job then list[#list + 1] = "#" .. t.n .. (t.task_id and (" (task " .. t.task_id .. ")") or "") end
  end
  return #list > 0 and ("running: " .. table.concat(list, ", ")) or "nothing is running"
end

--- :JimengCancel [n]: cancels the running task whose number (#n) or task id is n (default: every running one).
-- Its transfers stop, a download keeps its .part (resumable), and the notification says what was paid for.
-- Anything else is refused and nothing is cancelled. Returns how many were cancelled (nil, err when refused).
function M.cancel(n)
  if n ~= nil and type(n) ~= "number" and type(n) ~= "string" then
    error("jimeng.plugin.cancel: n must be a task number or a task id, not a " .. type(n), 2)
  end
  n = n and vim.trim(tostring(n)) or ""
  local picked = {}
  for _, t in ipairs(tasks) do
    if t.job and (n == "" or tostring(t.n) == n or t.task_id == n or t.resume == n) then picked[#picked + 1] = t end
  end
  if #picked == 0 then
    if n == "" then
      notify("nothing is running")
      return 0
    end
    local msg = (":JimengCancel %s: no running task has that number or task id (%s); nothing was cancelled")
      :format(n, running_words())
    notify(msg, vim.log.levels.ERROR)
    return nil, msg
  end
  local count = 0
  for _, t in ipairs(picked) do
    t.cancelled = true
    if t.job.cancel() then count = count + 1 end
  end
  return count
end

--- :JimengOpen [n]: opens the last saved video (or task n's) with the system's player.
function M.open(n)
  if n == "" then n = nil end
  if n ~= nil and not (tonumber(n) and tostring(tonumber(n)) == vim.trim(tostring(n))) then
    local msg = (":JimengOpen %s: not a task number (:JimengStatus lists them)"):format(tostring(n))
    notify(msg, vim.log.levels.ERROR)
    return nil, msg
  end
  n = tonumber(n)
  local path
  for i = #tasks, 1, -1 do
    local t = tasks[i]
    if t.path and (not n or t.n == n) then
      path = t.path
      break
    end
  end
  if not path then
    notify(n and ("#" .. n .. " has no saved video") or "no saved video yet", vim.log.levels.WARN)
    return nil
  end
  local cmd = M.config.open_cmd
  if not cmd then cmd = { vim.fn.has("mac") == 1 and "open" or "xdg-open" } end
  cmd = vim.list_extend(vim.deepcopy(cmd), { path })
  if vim.fn.executable(cmd[1]) ~= 1 then
    notify(cmd[1] .. " is not installed: the video is " .. path, vim.log.levels.WARN)
    return nil
  end
  vim.fn.jobstart(cmd, { detach = true })
  return path
end

--- The session's tasks (for statuslines and tests).
function M.tasks() return tasks end

--- Defines the commands (plugin/jimeng.lua calls it once).
function M.commands()
  local cmd = vim.api.nvim_create_user_command
  cmd("JimengGenerate", function(c) M.generate(c.args) end,
    { nargs = "+", desc = "Generate a video in the background: [-seconds=5] [-ratio=16:9] [-image=path] [--] prompt" })
  cmd("JimengStatus", function() M.status() end, { nargs = 0, desc = "The Jimeng tasks of this session" })
  cmd("JimengCancel", function(c) M.cancel(c.args) end,
    { nargs = "?", desc = "Cancel a running Jimeng task, by number or task id (default: all); a download keeps its .part" })
  cmd("JimengOpen", function(c) M.open(c.args) end,
    { nargs = "?", desc = "Open the last video (or task n's) with the system player" })
  cmd("JimengResume", function(c) M.resume(c.args) end,
    { nargs = 1, desc = "Wait for a task created earlier and download it (continues a kept .part)" })
end

return M
