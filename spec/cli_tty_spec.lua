-- The command's progress as a person sees it: run in a terminal (tmux, a pseudo-terminal of a given size),
-- its screen read back while it works. The elapsed time ticks while nothing else changes; the download's
-- rate is the download's own; nothing wraps at 50 columns; a batch is a table of jobs updated in place.
-- #host: these drive tmux, another program.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"
local cjson = require "cjson"

local SOCKET = "jimeng-spec-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e6))

local function tmux(args)
  local ok, out = proc.run(("tmux -L %s %s"):format(SOCKET, args))
  return ok, out
end

-- Starts `cmd` in a new tmux session of w x h cells; the shell stays afterwards so that its screen can be read.
local function start(name, w, hgt, cmd, dir, env)
  local script = ("%s/%s.sh"):format(dir, name)
  h.write(script, ("%s\ncd %s\n%s\necho \"exit=$?\"\nsleep 600\n"):format(env, dir, cmd))
  local ok, out = tmux(("new-session -d -s %s -x %d -y %d 'env -u LD_PRELOAD TERM=xterm bash --norc --noprofile %s'")
    :format(name, w, hgt, script))
  assert(ok, out)
end

-- The screen's lines (with the scrollback when `history`), as tmux shows them: one per terminal row.
local function screen(name, history)
  local _, out = tmux(("capture-pane -p -t %s%s"):format(name, history and " -S -" or ""))
  return out
end

-- The same, with the lines the terminal wrapped joined again: equal to screen() when nothing wrapped.
local function joined(name)
  local _, out = tmux(("capture-pane -p -J -t %s -S -"):format(name))
  return out
end

local function wait_for(name, pattern, seconds)
  local t0 = core.now()
  while core.now() - t0 < (seconds or 30) do
    local s = screen(name, true)
    if s:find(pattern) then return s end
    core.sleep(0.1)
  end
  error(("%s: %q never showed; the screen:\n%s"):format(name, pattern, screen(name, true)))
end

describe("#host the command in a terminal", function()
  local sb, dir, env, jimeng
  setup(function()
    sb = h.sandbox { queue_seconds = 0.3, process_seconds = 4.5 }
    dir = h.tmpdir()
    env = ("%s export JIMENG_API_KEY=k JIMENG_BASE_URL=%s; unset COLUMNS LINES"):format(proc.own_env, sb.url)
    jimeng = ("%s %s/bin/jimeng"):format(proc.lua, proc.root)
  end)
  teardown(function()
    tmux("kill-server")
    sb:stop()
    h.cleanup()
  end)

  it("ticks the elapsed time every second while the status stays the same, with the polls counted", function()
    start("tick", 100, 10, jimeng .. " generate 'a slow heron' -o heron.mp4 --interval 4", dir, env)
    wait_for("tick", "processing")
    local seen, order = {}, {}
    local t0 = core.now()
    while core.now() - t0 < 3.2 do
      local line = screen("tick"):match("task %d+: processing  ([^\n]-)\n")
      if line then
        local secs = line:match("^(%d+)s")
        if secs and not seen[secs] then
          seen[secs] = true
          order[#order + 1] = tonumber(secs)
        end
        -- every poll is counted (the status said processing: at least the poll that said so)
        local polls = tonumber(line:match("%((%d+) polls?%)"))
        assert.truthy(polls and polls >= 1, line)
      end
      core.sleep(0.2)
    end
    -- the status did not change for 3 s (a poll every 4 s), yet the time moved every second
    assert.truthy(#order >= 3, "elapsed values seen: " .. table.concat(order, ", "))
    for i = 2, #order do assert.equals(order[i - 1] + 1, order[i]) end
    wait_for("tick", "exit=0")
  end)

  it("shows a download rate within 2x of the download's measured rate, not one averaged over the wait", function()
    sb:config { video_bytes = 1600000, download_rate = 800000 }
    start("rate", 120, 10, jimeng .. " generate 'a fast river' -o river.mp4 --interval 0.5", dir, env)
    wait_for("rate", "%%.-/s")
    local rates = {}
    local t0 = core.now()
    while core.now() - t0 < 10 do
      local s = screen("rate")
      local v, unit = s:match("%] +%d+%% [^\n]- ([%d.]+) (%a?i?B)/s")
      if v then rates[#rates + 1] = tonumber(v) * (unit == "MiB" and 1048576 or unit == "KiB" and 1024 or 1) end
      if s:find("downloaded") then break end
      core.sleep(0.2)
    end
    wait_for("rate", "exit=0")
    sb:config { video_bytes = 0, download_rate = 0 }
    -- measured: the bytes over the time from the GET of the content (the sandbox's log) to the rename
    local get
    for _, e in ipairs(sb:log()) do
      if e.path:match("/content$") then get = e end
    end
    assert.is_table(get)
    local final = screen("rate", true):match("downloaded [%d.]+ %a+ in ([%d.]+)s")
    assert.is_string(final, screen("rate", true))
    local measured = 1600000 / tonumber(final)
    assert.truthy(#rates >= 2, "rates seen: " .. #rates)
    for _, r in ipairs(rates) do
      assert.truthy(r > measured / 2 and r < measured * 2, ("shown %.0f B/s, measured %.0f B/s"):format(r, measured))
    end
    -- the download took about 2 s of a run of more than 5 s: the whole run's average would be far lower
    assert.truthy(measured > 1600000 / 3.5, ("measured %.0f B/s"):format(measured))
  end)

  it("after Ctrl-C during a wait, the command to continue is alone on its line at 40, 80 and 120 columns", function()
    local widths = { 40, 80, 120 }
    for _, w in ipairs(widths) do
      -- a path each: two runs for one path are refused before the second pays
      start("intr" .. w, w, 16, jimeng .. (" generate 'a kite over the grey sea at dawn' -o 'my kite %d.mp4' --interval 1")
        :format(w), dir, env)
    end
    for _, w in ipairs(widths) do wait_for("intr" .. w, "processing") end
    for _, w in ipairs(widths) do tmux(("send-keys -t intr%d C-c"):format(w)) end -- a real SIGINT, from the terminal
    for _, w in ipairs(widths) do
      local name = "intr" .. w
      local rows = wait_for(name, "exit=130")
      local id = rows:match("created task (%d+)")
      assert.is_string(id, rows)
      -- `jimeng resume` (it saves the task where it was meant to go), then, for this task alone, wait && download
      local command = "jimeng resume"
      local alone = ("jimeng wait %s && jimeng download %s -o 'my kite %d.mp4'"):format(id, id, w)
      -- the lines as written (the terminal's own wrapping undone): the command is one of them, whole and alone,
      -- under the line that says to continue with it
      local lines = {}
      for line in (joined(name) .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line:gsub("%s+$", "") end
      local at
      for i, line in ipairs(lines) do if line == command then at = i end end
      assert.truthy(at, ("%d columns: the command is not a line of its own:\n%s"):format(w, table.concat(lines, "\n")))
      assert.matches("continue with:$", lines[at - 1])
      assert.equals(alone, lines[at + 2], table.concat(lines, "\n"))
      assert.matches("or, for this task alone:$", lines[at + 1])
      -- every other line fits the width: nothing but the commands was wrapped by the terminal (no word cut in two)
      for i, line in ipairs(lines) do
        if i ~= at and i ~= at + 2 then
          assert.truthy(#line:gsub("%^C", "") < w, ("%d columns, wrapped by the terminal: %q"):format(w, line))
        end
      end
    end
  end)

  it("doctor on a terminal wraps its details at words, at 40 and 100 columns", function()
    local port = proc.free_port()
    for _, w in ipairs { 40, 100 } do
      start("doc" .. w, w, 50, ("JIMENG_BASE_URL=https://api.tokenops.ai/v1 https_proxy=http://127.0.0.1:%d %s doctor")
        :format(port, jimeng), dir, env)
    end
    for _, w in ipairs { 40, 100 } do
      local rows = wait_for("doc" .. w, "exit=3")
      assert.truthy(rows:find("nothing answers", 1, true), rows)
      -- a line the terminal wrapped is one holding a word longer than the width (a path): no other
      for line in joined("doc" .. w):gmatch("[^\n]+") do
        if #line >= w then
          local longest = 0
          for word in line:gmatch("%S+") do longest = math.max(longest, #word) end
          assert.truthy(longest > w - 4, ("%d columns, a line cut by the terminal: %q"):format(w, line))
        end
      end
    end
  end)

  it("shows color on a terminal (status, errors), and none with NO_COLOR, --no-color or TERM=dumb", function()
    start("color", 100, 12, jimeng .. " generate 'a green kite' -o green.mp4 --interval 0.5; " ..
      jimeng .. " status 0000 --base-url http://127.0.0.1:9/v1", dir, env)
    wait_for("color", "exit=")
    local _, painted = tmux("capture-pane -p -e -t color -S -")
    assert.truthy(painted:find("created task \27%[1m%d+"), painted) -- the id in bold
    assert.truthy(painted:find("\27%[1m\27%[31mjimeng: network") or painted:find("\27%[1;31mjimeng: network"),
      painted) -- an error in red
    assert.truthy(painted:find(": \27%[32mcompleted"), painted) -- a task's final status in green
    for i, extra in ipairs { "NO_COLOR=1 ", "", "TERM=dumb " } do
      local name = "plain" .. i
      start(name, 100, 12, extra .. jimeng .. " generate 'a grey kite' -o grey" .. i .. ".mp4 --interval 0.5" ..
        (extra == "" and " --no-color" or "") .. "; " .. extra .. jimeng .. " status 0000 --base-url " ..
        "http://127.0.0.1:9/v1" .. (extra == "" and " --no-color" or ""), dir, env)
      local plain = wait_for(name, "exit=")
      assert.truthy(plain:find("jimeng: network", 1, true), plain)
      local _, raw = tmux(("capture-pane -p -e -t %s -S -"):format(name))
      assert.falsy(raw:find("\27%[[%d;]*[1-9]%d*m"), raw) -- no color set (a reset alone is tmux's own)
    end
  end)

  it("never wraps a line at 40, 80 or 120 columns: waiting, downloading, the result", function()
    sb:config { video_bytes = 1000000, download_rate = 1000000 }
    for _, w in ipairs { 40, 80, 120 } do
      local name = "wide" .. w
      start(name, w, 12, jimeng .. " generate 'a pane of " .. w .. " columns with a long prompt of many words' -o w" ..
        w .. ".mp4 --interval 0.5", dir, env)
    end
    local t0 = core.now()
    local done = {}
    while core.now() - t0 < 25 and not (done[40] and done[80] and done[120]) do
      for _, w in ipairs { 40, 80, 120 } do
        local s = screen("wide" .. w, true)
        for line in s:gmatch("[^\n]+") do
          assert.truthy(#line < w, ("%d columns: a line as wide as the pane (it wrapped, or will): %q"):format(w, line))
        end
        if s:find("exit=") then done[w] = true end
      end
      core.sleep(0.15)
    end
    sb:config { video_bytes = 0, download_rate = 0 }
    for _, w in ipairs { 40, 80, 120 } do
      local s = wait_for("wide" .. w, "exit=0")
      assert.equals(s, joined("wide" .. w), "the terminal wrapped a line")
      assert.truthy(s:find("downloaded", 1, true), s)
    end
  end)

  it("never wraps a line at 50 columns: waiting, downloading, the result", function()
    sb:config { video_bytes = 1000000, download_rate = 1000000 }
    start("narrow", 50, 12, jimeng .. " generate 'a narrow pane with a long prompt of many words' -o n.mp4 " ..
      "--interval 0.5", dir, env)
    local t0 = core.now()
    local samples = 0
    while core.now() - t0 < 20 do
      local s = screen("narrow", true)
      samples = samples + 1
      for line in s:gmatch("[^\n]+") do
        assert.truthy(#line < 50, ("a line as wide as the pane (it wrapped, or will): %q"):format(line))
      end
      if s:find("exit=") then break end
      core.sleep(0.15)
    end
    sb:config { video_bytes = 0, download_rate = 0 }
    local s = wait_for("narrow", "exit=0")
    assert.equals(s, joined("narrow"), "the terminal wrapped a line")
    assert.truthy(s:find("downloaded", 1, true), s)
    assert.truthy(samples > 10)
  end)

  it("shows a batch as one line per job, each updated in place", function()
    h.write(dir .. "/jobs.jsonl", table.concat({
      cjson.encode { prompt = "a red fox", label = "fox" },
      cjson.encode { prompt = "a paper boat sandbox:slow=2", label = "boat" },
      cjson.encode { prompt = "a grey cat sandbox:fail", label = "cat" },
    }, "\n") .. "\n")
    start("batch", 50, 16, jimeng .. " batch jobs.jsonl -o videos/ --interval 0.5", dir, env)
    local mid = wait_for("batch", "processing")
    -- while they run: each job is one line, with its state
    for _, label in ipairs { "fox", "boat", "cat" } do
      local n = 0
      for line in mid:gmatch("[^\n]+") do
        if line:match("^" .. label .. "%s%s+") then n = n + 1 end
      end
      assert.equals(1, n, label .. " in:\n" .. mid)
    end
    local final = wait_for("batch", "exit=", 40)
    -- at the end, with the scrollback: still one line per job (redrawn, never appended), with its outcome
    for label, outcome in pairs { fox = "saved videos/fox.mp4", boat = "saved videos/boat.mp4", cat = "failed" } do
      local lines = {}
      for line in final:gmatch("[^\n]+") do
        if line:match("^" .. label .. "%s%s+") then lines[#lines + 1] = line end
      end
      assert.equals(1, #lines, label .. " in:\n" .. final)
      assert.truthy(lines[1]:find(outcome, 1, true), lines[1])
    end
    assert.truthy(final:find("3 jobs: 2 saved, 1 failed", 1, true), final)
    for line in final:gmatch("[^\n]+") do assert.truthy(#line < 50, line) end
  end)

  it("with --json, stdout holds the JSON alone while the terminal shows the progress", function()
    start("json", 80, 10, jimeng .. " generate 'a json owl' -o owl.mp4 --interval 0.5 --json > owl.json", dir, env)
    local s = wait_for("json", "exit=0")
    assert.truthy(s:find("downloaded", 1, true), s)
    local out = h.read(dir .. "/owl.json")
    local r = cjson.decode(out)
    assert.equals("owl.mp4", r.path)
    assert.equals(1, select(2, out:gsub("\n", "")), out)
  end)
end)
