--- What the `jimeng` command shows on stderr while it works: the elapsed time of a wait (ticking every
-- second, with the status and the number of polls), a download's rate and ETA measured over the download
-- alone (a moving window), one line per job of a batch, redrawn in place on a terminal and never wider
-- than it; plain lines, one per change, when stderr is not a terminal.
local core = require "jimeng.core"
local printable = require("jimeng.text").printable

local M = {}

local now = core.now

-- The moving window the rate is measured over (seconds), and how often the width is read again.
M.RATE_WINDOW = 3
local WIDTH_TTL = 1

--- Bytes in words: 59.7 KiB, 2.3 MiB.
function M.human_bytes(n)
  if n >= 1024 * 1024 * 1024 then return ("%.1f GiB"):format(n / 1024 ^ 3) end
  if n >= 1024 * 1024 then return ("%.1f MiB"):format(n / 1024 ^ 2) end
  if n >= 1024 then return ("%.1f KiB"):format(n / 1024) end
  return ("%d B"):format(n)
end

--- Seconds in words: 9s, 1m05s, 1h02m.
function M.human_seconds(s)
  s = math.max(0, math.floor(s + 0.5))
  if s < 60 then return s .. "s" end
  if s < 3600 then return ("%dm%02ds"):format(math.floor(s / 60), s % 60) end
  return ("%dh%02dm"):format(math.floor(s / 3600), math.floor(s % 3600 / 60))
end

--- The terminal's width: $COLUMNS when it is a number, else what `stty size` says of /dev/tty (the
-- TIOCGWINSZ ioctl, asked through stty: the C module has no ioctl of its own), else 80. Read again at most
-- once a second, so that a resized terminal is followed.
local cached_width, cached_height, cached_at
local function size()
  local t = now()
  if cached_width and t - cached_at < WIDTH_TTL then return cached_width, cached_height end
  local w, hgt = tonumber(os.getenv("COLUMNS") or ""), tonumber(os.getenv("LINES") or "")
  if not w or not hgt then
    local p = io.popen("stty size 2>/dev/null </dev/tty") -- 2> first: without a terminal, the redirect fails quietly
    local line = p and p:read("*l")
    if p then p:close() end
    local rows, cols = (line or ""):match("^(%d+)%s+(%d+)")
    w, hgt = w or tonumber(cols), hgt or tonumber(rows)
  end
  if not w or w < 10 then w = 80 end
  if not hgt or hgt < 3 then hgt = 24 end
  cached_width, cached_height, cached_at = math.floor(w), math.floor(hgt), t
  return cached_width, cached_height
end

function M.width() return (size()) end

--- The terminal's height, found as its width is (LINES, else stty size, else 24).
function M.height()
  local _, hgt = size()
  return hgt
end

-- The number of characters a line takes on screen (UTF-8: one per character; the texts here are ASCII
-- but for labels and prompts, whose wide characters are rare enough to be counted as one).
local function display_len(s)
  local _, n = s:gsub("\27%[[%d;]*m", ""):gsub("[^\128-\191]", "") -- a color takes no room
  return n
end
M.display_len = display_len

--- s cut to at most n characters on screen, with "…" (as "~") where it was cut.
function M.fit(s, n)
  if display_len(s) <= n then return s end
  if n <= 1 then return ("~"):rep(n) end
  local out, count = {}, 0
  for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do
    if count >= n - 1 then break end
    out[#out + 1] = ch
    count = count + 1
  end
  return table.concat(out) .. "~"
end

--- text wrapped at spaces into lines of at most n characters (the lines after the first indented by two).
function M.wrap(text, n)
  local out = {}
  for para in (text .. "\n"):gmatch("(.-)\n") do
    local line, indent = "", para:match("^%s*")
    for word in para:gmatch("%S+") do
      if line == "" then
        line = indent .. word
      elseif display_len(line) + 1 + display_len(word) <= n then
        line = line .. " " .. word
      else
        out[#out + 1] = line
        line = indent .. "  " .. word
      end
    end
    out[#out + 1] = line
  end
  return table.concat(out, "\n")
end

-- Rate

--- A download's rate over the last RATE_WINDOW seconds of samples (bytes received, at a time).
local Rate = {}
Rate.__index = Rate

function M.rate()
  return setmetatable({ samples = {} }, Rate)
end

--- Records that `got` bytes had arrived at time t (default now).
function Rate:add(got, t)
  t = t or now()
  local s = self.samples
  if s[#s] and got < s[#s].got then self.samples, s = {}, {} end -- started over (a restarted download)
  s[#s + 1] = { t = t, got = got }
  if not self.first then self.first = s[1] end
  -- keep one sample at or before the window's start, so that the window is always covered
  while #s > 2 and s[2].t <= t - M.RATE_WINDOW do table.remove(s, 1) end
end

--- Bytes per second over the window, or nil until there is a span of at least a quarter second.
function Rate:bytes_per_second()
  local s = self.samples
  if #s < 2 then return nil end
  local a, b = s[1], s[#s]
  if b.t - a.t < 0.25 then return nil end
  return (b.got - a.got) / (b.t - a.t)
end

-- The progress of one task (generate, wait, download, omnihuman)

local Task = {}
Task.__index = Task

--- A display for one task on `out` (an Out of the CLI: out.tty, out.quiet, out:progress, out:note).
function M.task(out, id)
  return setmetatable({ out = out, id = id, status = nil, polls = 0, started = now(), phase = "start" }, Task)
end

--- The line for the current state, fitted to width (a short form under 60 columns).
function Task:line(width)
  local narrow = width < 60
  local t = now()
  local text
  if self.phase == "download" then
    local got, total = self.got or 0, self.total
    local rate = self.rate:bytes_per_second()
    local pct = total and total > 0 and math.floor(got / total * 100) or nil
    local eta = rate and rate > 0 and total and (total - got) / rate or nil
    local sizes = narrow and "" or (M.human_bytes(got) .. (total and ("/" .. M.human_bytes(total)) or "") .. " ")
    local tail = ("%s%s%s"):format(sizes, rate and (M.human_bytes(rate) .. "/s") or "-/s",
      eta and (" ETA " .. M.human_seconds(eta)) or "")
    local head = pct and ("%3d%%"):format(pct) or "   "
    -- the bar's width stays put while the text beside it grows (room kept for the longest rate and ETA)
    local bar_room = width - 1 - display_len(head) - 4 - (narrow and 24 or 44)
    if pct and bar_room >= 10 then
      local bw = math.min(bar_room, 30)
      local filled = math.floor(pct / 100 * bw)
      text = ("[%s%s] %s %s"):format(("#"):rep(filled), ("."):rep(bw - filled), head, tail)
    else
      text = head .. " " .. tail
    end
  else
    local status = self.status or (self.phase == "start" and "creating" or "waiting")
    local since = t - (self.created_at or self.started)
    if self.phase == "start" then
      text = ("creating the task  %s"):format(M.human_seconds(since))
    elseif narrow then
      text = ("%s %s #%d"):format(status, M.human_seconds(since), self.polls)
    else
      text = ("task %s: %s%s  %s  (%d poll%s)"):format(self.id or "(creating)", status,
        self.progress and (" " .. self.progress .. "%") or "", M.human_seconds(since),
        self.polls, self.polls == 1 and "" or "s")
    end
  end
  return M.fit(text, width - 1)
end

--- Redraws the line (on a terminal).
-- The line as drawn: its status word in color where the output shows color.
function Task:painted()
  local line = printable(self:line(M.width())) -- escaped first: the color's own escapes are ours
  if self.out.status_color and self.status then line = self.out:status_color(line, self.status) end
  return line
end

function Task:draw(final)
  if not self.out.tty then return end
  self.out:progress(self:painted(), final, true)
end

--- The task exists (its create answered).
function Task:created(task)
  self.id, self.created_at, self.phase = task.id, now(), "wait"
  self.status = task.status
end

--- A poll answered (every poll, changed or not).
function Task:polled(task)
  self.polls = self.polls + 1
  if task then self.status, self.progress = task.status, task.progress end
  if not self.created_at and task and type(task.created_at) == "number" then
    -- a task created before this command (jimeng wait ID): its age from the API's created_at
    self.created_at = now() - math.max(0, os.time() - task.created_at)
  end
  if self.phase == "start" then self.phase = "wait" end
  self:draw()
end

--- The status changed: on a terminal, redrawn; otherwise a plain line.
function Task:status_changed(task)
  self.id = self.id or task.id
  self.status, self.progress = task.status, task.progress
  if self.phase == "start" then self.phase = "wait" end
  if task.status == "completed" then self.ready_at = now() end
  if self.out.tty then
    self:draw(task.status == "failed")
  else
    self.out:progress(("task %s: %s%s (%s, %d poll%s)"):format(task.id or self.id, task.status,
      task.progress and (" " .. task.progress .. "%") or "",
      M.human_seconds(now() - (self.created_at or self.started)), self.polls, self.polls == 1 and "" or "s"), true)
  end
end

--- Bytes arrived (got of total): the rate is measured from the first call on, over the download alone.
function Task:bytes(got, total)
  if self.phase ~= "download" then
    if self.out.tty and self.out.line_open then self.out:progress(self:painted(), true, true) end
    self.phase, self.rate, self.first = "download", M.rate(), { t = now(), got = got }
    if not self.out.tty then
      self.out:progress(("downloading %s"):format(total and M.human_bytes(total) or "..."), true)
    end
  end
  self.got, self.total = got, total
  self.rate:add(got)
  if not self.out.tty and total and total > 0 and got < total then
    -- a log, not a terminal: a line at every tenth of the download (10%, 20% ... 90%), none in between
    local tenth = math.floor(got * 10 / total)
    if tenth > (self.tenth or 0) then
      self.tenth = tenth
      local rate = self.rate:bytes_per_second()
      self.out:progress(("downloaded %d%% (%s of %s%s)"):format(tenth * 10, M.human_bytes(got), M.human_bytes(total),
        rate and (", " .. M.human_bytes(rate) .. "/s") or ""), true)
    end
  end
  if total and got >= total then
    -- the average over the download alone: from its first report, or (a download too quick for more than
    -- one report) from the moment the video was ready
    local t, first = now(), self.first
    local rate, secs
    if t - first.t >= 0.2 then
      rate = (got - first.got) / (t - first.t)
    elseif self.ready_at and t - self.ready_at > 0 then
      rate = got / (t - self.ready_at)
    end
    secs = t - (self.ready_at or first.t)
    local done = ("downloaded %s in %s%s"):format(M.human_bytes(got), ("%.1fs"):format(secs),
      rate and (" (" .. M.human_bytes(rate) .. "/s)") or "")
    if self.out.tty then
      self.out:progress(M.fit(done, M.width() - 1), true)
    else
      self.out:progress(done, true)
    end
    self.phase = "done"
    return
  end
  self:draw()
end

--- Called every second by the ticker: redraws, so that the elapsed time moves while nothing else does.
function Task:tick()
  if self.phase ~= "done" then self:draw() end
end

-- The batch table: one line per job, redrawn in place on a terminal

local Table = {}
Table.__index = Table

function M.batch(out)
  return setmetatable({ out = out, jobs = {}, order = {}, by_task = {}, drawn = 0 }, Table)
end

function Table:job(job)
  local j = self.jobs[job.index]
  if not j then
    j = { index = job.index, label = job.label or ("job " .. job.index), state = "waiting", polls = 0 }
    self.jobs[job.index] = j
    self.order[#self.order + 1] = j
    table.sort(self.order, function(a, b) return a.index < b.index end)
  end
  j.total_jobs = job.total
  return j
end

local function job_text(j, width)
  local t = now()
  local state
  if j.state == "download" then
    local rate = j.rate and j.rate:bytes_per_second()
    local pct = j.total and j.total > 0 and math.floor(j.got / j.total * 100) or 0
    state = ("downloading %d%%%s"):format(pct, rate and (" " .. M.human_bytes(rate) .. "/s") or "")
  elseif j.state == "waiting" then
    state = "waiting for a slot"
  elseif j.finished then
    state = j.state
  else
    state = ("%s %s #%d"):format(j.state, M.human_seconds(t - (j.since or t)), j.polls)
  end
  local label_w = math.max(8, math.min(24, math.floor(width / 3)))
  local label = M.fit(printable(j.label), label_w)
  state = printable(state)
  return M.fit(("%-" .. label_w .. "s %s"):format(label, state), width - 1), label
end

--- The lines of the table, fitted to width: every job when they fit the terminal's height, else the jobs
-- in flight and a line counting the others.
function Table:lines(width, height)
  local lines = {}
  local room = math.max(3, (height or 24) - 2)
  if #self.order <= room then
    for _, j in ipairs(self.order) do lines[#lines + 1] = (job_text(j, width)) end
    return lines
  end
  -- jobs not started yet have no line either: they wait too
  local done, waiting = 0, math.max(0, (self.order[1].total_jobs or #self.order) - #self.order)
  for _, j in ipairs(self.order) do
    if j.finished then done = done + 1 elseif j.state == "waiting" then waiting = waiting + 1
    elseif #lines < room - 1 then lines[#lines + 1] = (job_text(j, width)) end
  end
  lines[#lines + 1] = M.fit(("... %d done, %d waiting"):format(done, waiting), width - 1)
  return lines
end

--- Erases the table drawn last (the cursor is left where its first line was).
function Table:erase()
  if self.drawn == 0 then return end
  self.out.stderr:write(("\27[%dA"):format(self.drawn), "\r\27[J")
  self.drawn = 0
end

function Table:draw()
  if not self.out.tty or self.out.quiet then return end
  local lines = self:lines(M.width(), M.height())
  local buf = {}
  if self.drawn > 0 then buf[#buf + 1] = ("\27[%dA\r"):format(self.drawn) end
  for i, l in ipairs(lines) do buf[i + (self.drawn > 0 and 1 or 0)] = "\27[K" .. l .. "\n" end
  if #lines < self.drawn then buf[#buf + 1] = "\27[J" end
  self.out.stderr:write(table.concat(buf))
  self.out.stderr:flush()
  self.drawn = #lines
end

--- A line above the table (a note, "created task ..."): the table is drawn again under it.
function Table:note(text, always)
  if self.out.quiet and not always then return end
  text = printable(text)
  if self.out.tty and not self.out.quiet then
    self:erase()
    self.out.stderr:write(M.wrap(text, M.width() - 1), "\n") -- wrapped at words, never cut by the terminal
    self:draw()
  else
    self.out.stderr:write(text, "\n")
    self.out.stderr:flush()
  end
end

--- A batch event (see jimeng.batch's on_event).
function Table:event(ev)
  local j = self:job(ev.job)
  if ev.type == "created" then
    j.task_id, j.state, j.since = ev.task.id, ev.task.status or "in_queue", now()
    self.by_task[ev.task.id] = j
  elseif ev.type == "status" then
    j.state = ev.task.status
    j.since = j.since or now()
    if not self.out.tty and not self.out.quiet then
      self:note(("%s: task %s %s (%d poll%s)"):format(j.label, ev.task.id or j.task_id or "?", ev.task.status,
        j.polls, j.polls == 1 and "" or "s"))
    end
  elseif ev.type ~= "backoff" and ev.type ~= "warning" then
    j.finished = true
    local job = ev.job
    j.state = ev.type == "saved" and ("saved " .. tostring(job.path)) or ev.type == "skipped" and
      ("already saved " .. tostring(job.path)) or (ev.type .. ": " .. tostring(job.error and job.error.message or job.error))
  end
  self:draw()
end

--- A poll of task id answered (counted for its job).
function Table:polled(id, task)
  local j = self.by_task[id]
  if not j then return end
  j.polls = j.polls + 1
  if task and not j.finished and j.state ~= "download" then j.state = task.status end
end

--- A job's task started downloading, or received bytes.
function Table:bytes(id, got, total)
  local j = self.by_task[id]
  if not j then return end
  if j.state ~= "download" then j.state, j.rate = "download", M.rate() end
  j.got, j.total = got, total
  j.rate:add(got)
end

function Table:tick() self:draw() end

--- Leaves the table on screen as it stands (the summary goes under it).
function Table:close()
  if self.out.tty then self:draw() end
  self.drawn = 0
end

-- Watching a client's calls: the wait counts its polls, a batch sees its downloads

--- Wraps client's status (and, with on_bytes, download) on the instance, so that the display sees every
-- poll and every byte. The client's own code is untouched: its calls go through self:status and
-- self:download. on_poll(id, task|nil, err), on_bytes(id, got, total).
function M.observe(client, on_poll, on_bytes)
  local class = getmetatable(client)
  if on_poll then
    client.status = function(self, id, opts)
      local task, err = class.status(self, id, opts)
      on_poll(id, task, err)
      return task, err
    end
  end
  if on_bytes then
    client.download = function(self, id, path, opts)
      local o = {}
      for k, v in pairs(opts or {}) do o[k] = v end
      local user = o.on_progress
      o.on_progress = function(got, total)
        on_bytes(id, got, total)
        if user then return user(got, total) end
      end
      return class.download(self, id, path, o)
    end
  end
end

--- Runs fn inside jimeng.run with a ticker beside it that calls tick() every `period` seconds until fn
-- returns or raises (waits and downloads yield to the scheduler, so the ticker runs while they wait).
-- Returns what fn returns; raises what it raises.
function M.with_ticker(period, tick, fn, ...)
  local runtime = require "jimeng.runtime"
  if not tick then return fn(...) end
  local unpack = table.unpack or unpack -- luacheck: ignore 143
  local pack = table.pack or function(...) return { n = select("#", ...), ... } end -- luacheck: ignore 143
  local fn_args = pack(...)
  return runtime.run(function()
    local work = runtime.spawn(fn, unpack(fn_args, 1, fn_args.n))
    runtime.spawn(function()
      local next_tick = now() + period
      while not work.done do
        if runtime.sleep(math.min(period, 0.1)) then return end -- Ctrl-C: the work itself reports it
        if not work.done and now() >= next_tick then
          next_tick = next_tick + period
          tick()
        end
      end
    end)
    runtime.gather { work }
    if work.error ~= nil then error(work.error, 0) end
    return unpack(work.results, 1, work.results.n)
  end)
end

return M
