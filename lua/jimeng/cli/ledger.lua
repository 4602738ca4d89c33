--- The commands on the ledger of paid creates (jimeng.ledger): `list`, `show ID` and `resume`. list and show
-- read the file only; resume waits for and downloads every task paid for and not saved, to the path it was
-- meant for, and creates nothing.
local jimeng = require "jimeng"
local core = require "jimeng.core"
local ledger = require "jimeng.ledger"
local progress = require "jimeng.cli.progress"
local template = require "jimeng.template"

local M = {}

local EXIT_OK, EXIT_TASK, EXIT_USAGE, EXIT_API = 0, 1, 2, 3

-- The ledger the command reads: the client's, else where jimeng.new would put it. -> path | nil, err
local function where(client)
  if client then return client.ledger and client.ledger.path end
  return ledger.path()
end

local function read(out, client)
  local path = where(client)
  if not path then
    return nil, jimeng.error { kind = "invalid_argument", field = "ledger",
      message = "there is no ledger: JIMENG_LEDGER turns it off (and neither XDG_STATE_HOME nor HOME is set)" }
  end
  local entries, by_id = ledger.read(path, jimeng.json)
  if not entries then
    return nil, jimeng.error { kind = "io", field = "ledger", message = by_id .. ": no task of it can be listed or " ..
      "resumed (JIMENG_LEDGER or XDG_STATE_HOME name another place)" }
  end
  out.ledger_path = path
  return entries, by_id
end

-- A task's prompt, on one line, cut to n characters.
local function prompt_of(e, n)
  local p = type(e.params) == "table" and (e.params.prompt or (e.what == "omnihuman" and "(omnihuman)")) or ""
  if type(p) ~= "string" and type(p) ~= "number" then p = "" end -- a damaged line: no prompt to show
  p = tostring(p):gsub("%s+", " ")
  return progress.fit(p, n)
end

-- s cut to n characters by its middle (a path keeps its start and its file name), "~" where it was cut.
local function middle_fit(s, n)
  local chars = {}
  for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do chars[#chars + 1] = ch end
  if #chars <= n then return s end
  if n < 3 then return progress.fit(s, n) end
  local name = #(s:match("/?[^/]*$"):gsub("[\128-\191]", "")) -- the file name (and its /) whole when it fits
  local tail = name <= n - 2 and name or math.floor((n - 1) * 2 / 3)
  local head = n - 1 - tail
  return table.concat(chars, "", 1, head) .. "~" .. table.concat(chars, "", #chars - tail + 1)
end

-- What an entry is, said to a user (its state, and where its video is or is meant to go).
local function status_of(e)
  return ledger.STATE_WORDS[e.state] or e.state
end

local function place_of(e)
  if e.state == "saved" then return e.path end
  return e.output
end

-- An entry as --json shows it.
local function json_entry(e)
  return { id = e.id, ref = e.ref, state = e.state, status = status_of(e), created_at = e.at, updated_at = e.updated,
    path = e.state == "saved" and e.path or nil, output = e.output, bytes = e.bytes, params = e.params,
    base_url = e.base_url, error = e.error, attempts = e.attempts, what = e.what }
end

local function when(t)
  return t and os.date("%Y-%m-%d %H:%M", t) or "?"
end

--- jimeng list: the most recent tasks first (-n, default 20).
function M.list(_, args, out)
  local entries, err = read(out, nil)
  if not entries then return out:fail(err) end
  local n = args.n or (args.ids and 100 or 20)
  if n < 1 or n ~= math.floor(n) then
    return out:fail(jimeng.error { kind = "invalid_argument", field = "n", message = "-n takes a number of tasks, from 1" })
  end
  local shown = {}
  for i = #entries, math.max(1, #entries - n + 1), -1 do shown[#shown + 1] = entries[i] end
  if args.ids then
    local ids = {}
    for _, e in ipairs(shown) do if e.id then ids[#ids + 1] = e.id end end
    if #ids > 0 then out.stdout:write(table.concat(ids, "\n"), "\n") end
    return EXIT_OK
  end
  if out.json then
    local list = {}
    for i, e in ipairs(shown) do list[i] = json_entry(e) end
    out:result({ ledger = out.ledger_path, tasks = list })
    return EXIT_OK
  end
  if #shown == 0 then
    out:note("no task in the ledger (" .. out.ledger_path .. ") yet", true)
    return EXIT_OK
  end
  -- on a terminal (or with $COLUMNS) each line fits its width: a long path loses its middle, the prompt its end
  local width = tonumber(os.getenv("COLUMNS") or "") and progress.width() or
    (out.stdout == io.stdout and core.isatty(1) and progress.width()) or nil
  local id_w, status_w = 0, 0
  for _, e in ipairs(shown) do
    id_w = math.max(id_w, #(e.id or "(id unknown)"))
    status_w = math.max(status_w, #status_of(e))
  end
  local lines = {}
  for _, e in ipairs(shown) do
    local place = place_of(e)
    local head = ("%s  %-" .. id_w .. "s  %-" .. status_w .. "s  "):format(when(e.at), e.id or "(id unknown)",
      status_of(e))
    local prompt_w = 40
    if width then
      local room = width - 1 - #head
      if place then
        -- the path first: the prompt (12 or more) only when the path keeps 20 besides
        local place_w = room - 2 - 12 >= 20 and room - 2 - 12 or room
        place_w = math.max(1, math.min(progress.display_len(place), place_w))
        place = middle_fit(place, place_w)
        room = room - progress.display_len(place) - 2
      end
      prompt_w = math.max(0, math.min(40, room))
    end
    lines[#lines + 1] = (head .. (place and (place .. "  ") or "") .. prompt_of(e, prompt_w)):gsub("%s+$", "")
  end
  out:result(nil, table.concat(lines, "\n"))
  return EXIT_OK
end

--- jimeng show ID: all the ledger knows of one task (ID, or the ref of a create whose id is unknown).
function M.show(_, args, out)
  local entries, by_id = read(out, nil)
  if not entries then return out:fail(by_id) end
  local e = by_id[args.id]
  if not e then
    for _, x in ipairs(entries) do
      if x.ref == args.id then e = x end
    end
  end
  if not e then
    return out:fail(jimeng.error { kind = "invalid_argument", field = "id",
      message = ("task %s is not in the ledger (%s): jimeng list shows the tasks it holds"):format(args.id,
        out.ledger_path) })
  end
  if out.json then
    out:result(json_entry(e))
    return EXIT_OK
  end
  local rows = { { "id", e.id or "(unknown: the create's answer never came)" }, { "ref", e.ref },
    { "status", status_of(e) }, { "created", when(e.at) }, { "updated", when(e.updated) },
    { "saved to", e.state == "saved" and e.path or nil }, { "bytes", e.bytes and ("%d"):format(e.bytes) or nil },
    { "meant for", e.output }, { "base URL", e.base_url }, { "error", e.error },
    { "attempts", e.attempts and e.attempts > 1 and tostring(e.attempts) or nil } }
  local params = {}
  if type(e.params) == "table" then
    for k, v in pairs(e.params) do
      params[#params + 1] = ("%s=%s"):format(k, type(v) == "table" and jimeng.json.encode(v) or template.value_text(v))
    end
    table.sort(params)
  end
  local lines = {}
  for _, r in ipairs(rows) do
    if r[2] then lines[#lines + 1] = ("%-10s %s"):format(r[1] .. ":", r[2]) end
  end
  if #params > 0 then lines[#lines + 1] = ("%-10s %s"):format("params:", table.concat(params, " ")) end
  if e.id == nil and (e.state == "sending" or e.state == "unknown") then
    lines[#lines + 1] = "the create was sent and its answer never came: the task may exist and be billed, and " ..
      "the API has no list of tasks to find its id; jimeng resume cannot save it"
  end
  out:result(nil, table.concat(lines, "\n"))
  return EXIT_OK
end

--- The path a task of the ledger is saved to by resume: the one it was meant for, else jimeng_video_<id>.mp4
-- in --output-dir (default: the current directory).
local function target(e, args)
  local p = e.output
  if p and p:find("{id}", 1, true) then p = p:gsub("{id}", (e.id:gsub("%%", "%%%%"))) end
  if p then return p end
  local dir = args.output_dir and args.output_dir:gsub("/+$", "") or nil
  return (dir and dir ~= "" and (dir .. "/") or "") .. "jimeng_video_" .. e.id .. ".mp4"
end

--- jimeng resume: waits for and downloads every task of the ledger paid for and not saved. Pays nothing.
function M.resume(client, args, out)
  local entries, err = read(out, client)
  if not entries then return out:fail(err) end
  local todo, lost, elsewhere = {}, {}, {}
  for _, e in ipairs(entries) do
    if e.id and ledger.UNSAVED[e.state] then
      if e.base_url ~= client.base_url then
        elsewhere[#elsewhere + 1] = e
      else
        todo[#todo + 1] = e
      end
    elseif not e.id and (e.state == "sending" or e.state == "unknown") then
      lost[#lost + 1] = e
    end
  end
  if args.output_dir then
    local ok, why = core.mkdirs(args.output_dir)
    if not ok then return out:fail(jimeng.error { kind = "invalid_argument", field = "output_dir", message = why }) end
  end
  local results, saved, failed, errs, busy = {}, 0, 0, 0, 0
  -- waits for task e and downloads it to path (the display of its progress on a terminal). -> info | nil, err
  local function save(i, e, path)
    out:note(("[%d/%d] task %s -> %s"):format(i, #todo, e.id, path))
    local d = out:task_display(e.id)
    d.phase = "wait"
    local task, werr = client:wait(e.id, { timeout = args.timeout, interval = args.interval,
      on_status = function(t) d:status_changed(t) end })
    local info, derr
    if task then
      d.ready_at = core.now()
      info, derr = client:download(e.id, path, { overwrite = args.force,
        on_progress = function(got, total) d:bytes(got, total) end,
        on_resume = function(offset, total) out:resumed(offset, total) end })
    end
    out.display = nil
    return info, werr or derr
  end
  for i, e in ipairs(todo) do
    local path = target(e, args)
    -- a task another process is saving (a generate still waiting or downloading, another resume) is its own
    local hold, herr = client.ledger:hold(e.ref or e.id)
    local info, why
    if hold or herr ~= "locked" then
      info, why = save(i, e, path)
      ledger.release(hold)
    end
    if (not hold and herr == "locked") or (why and why.message:find("another download is writing", 1, true)) then
      -- (the second: a jimeng download of the same task to the same path holds its .part)
      busy = busy + 1
      out:note(("[%d/%d] task %s: being saved by another process (to %s): left to it"):format(i, #todo, e.id, path))
      results[#results + 1] = { id = e.id, state = "busy", path = path }
    elseif info then
      saved = saved + 1
      out:note(("[%d/%d] %s %s"):format(i, #todo, info.already and "already saved" or "saved", info.path))
      results[#results + 1] = { id = e.id, state = "saved", path = info.path, bytes = info.bytes }
    else
      if why.kind == "interrupted" then return out:fail(why, function() return "jimeng resume" end) end
      if why.kind == "task_failed" then failed = failed + 1 else errs = errs + 1 end
      out:note(("[%d/%d] task %s: %s"):format(i, #todo, e.id, why.message), true)
      results[#results + 1] = { id = e.id, state = why.kind == "task_failed" and "failed" or "error", path = path,
        error = { kind = why.kind, message = why.message } }
    end
  end
  local by_url, urls = {}, {}
  for _, e in ipairs(elsewhere) do
    local url = e.base_url or "an unknown base URL"
    if not by_url[url] then urls[#urls + 1] = url end
    by_url[url] = (by_url[url] or 0) + 1
  end
  for _, url in ipairs(urls) do
    local n = by_url[url]
    if url == "an unknown base URL" then
      out:note(("%d task%s not saved at an API the ledger does not name (jimeng show ID)"):format(n,
        n == 1 and " is" or "s are"), true)
    else
      out:note(("%d task%s made at %s, not at %s: jimeng resume --base-url %s saves %s"):format(n,
        n == 1 and " was" or "s were", url, client.base_url, url, n == 1 and "it" or "them"), true)
    end
  end
  if #lost > 0 then
    out:note(("%d create%s sent whose answer never came (jimeng list: \"%s\"): the task may exist and be billed, " ..
      "and the API offers no list of tasks to find its id, so resume cannot save it; check the account's usage"):format(
      #lost, #lost == 1 and " was" or "s were", ledger.STATE_WORDS.sending), true)
  end
  -- the last word says what is left unsaved, never "every task is saved" when some are not
  local left = {}
  if busy > 0 then left[#left + 1] = ("%d being saved by another process"):format(busy) end
  if #elsewhere > 0 then left[#left + 1] = ("%d made at another API"):format(#elsewhere) end
  if #lost > 0 then left[#left + 1] = ("%d whose id is unknown"):format(#lost) end
  local line
  if #todo == 0 and #left == 0 then
    line = "nothing to resume: every task paid for is saved"
  elseif #todo - busy == 0 then
    line = "nothing to resume here; not saved: " .. table.concat(left, ", ")
  else
    line = ("%d task%s: %d saved, %d failed, %d errors"):format(#todo - busy, #todo - busy == 1 and "" or "s", saved,
      failed, errs)
    if #left > 0 then line = line .. "; also not saved: " .. table.concat(left, ", ") end
  end
  if out.json then
    out:result({ saved = saved, failed = failed, errors = errs, tasks = results, elsewhere = #elsewhere,
      id_unknown = #lost, busy = busy })
  else
    local paths = {}
    for _, r in ipairs(results) do if r.state == "saved" then paths[#paths + 1] = r.path end end
    if #paths > 0 then out:result(nil, table.concat(paths, "\n")) end
  end
  out:note(line)
  if errs > 0 then return EXIT_API end
  if failed > 0 then return EXIT_TASK end
  return EXIT_OK
end

M.EXIT_USAGE = EXIT_USAGE

return M
