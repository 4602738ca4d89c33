-- Inside Neovim (headless), with this checkout installed the way a plugin manager installs it (a native
-- package: pack/plugins/start/jimeng is a link to the repository): :JimengGenerate never freezes the editor,
-- waiting wakes it only when something is due, :checkhealth jimeng passes, :JimengCancel keeps the .part.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"

local nvim = proc.run("command -v nvim")

describe("inside Neovim, installed as a plugin #host", function()
  if not nvim then
    it("needs Neovim (apt-get install neovim)", function() pending("neovim is not installed") end)
    return
  end

  local sb, dir, pack
  setup(function()
    local ok, out = proc.run("make -s LUA=luajit")
    assert(ok, out)
    sb = h.sandbox { queue_seconds = 0.2, process_seconds = 0.2 }
    dir = h.tmpdir()
    pack = h.tmpdir()
    assert(proc.run(("mkdir -p %s/pack/plugins/start && ln -s %s %s/pack/plugins/start/jimeng"):format(pack, proc.root, pack)))
  end)
  teardown(function()
    sb:stop()
    h.cleanup()
  end)

  -- Runs one of spec/nvim/*.lua in headless Neovim; returns its outcome (JSON it wrote) and its output.
  local function run_nvim(script, env)
    local outfile = dir .. "/" .. script .. ".json"
    os.remove(outfile)
    local vars = ("JIMENG_PACK=%s JIMENG_API_KEY=nvim-key JIMENG_BASE_URL=%s JIMENG_OUTPUT_DIR=%s JIMENG_NVIM_OUT=%s ")
      :format(pack, sb.url, dir, outfile)
    for k, v in pairs(env or {}) do vars = vars .. k .. "=" .. v .. " " end
    local ok, out = proc.run(("cd %s && %s timeout 120 nvim --headless -u spec/nvim/init.lua -i NONE -n " ..
      "-c 'luafile spec/nvim/%s.lua'"):format(proc.root, vars, script))
    assert.is_true(ok, out)
    local body = h.read(outfile)
    assert(body, "no outcome: " .. out)
    return cjson.decode(body), out
  end

  it("keeps the editor's timers ticking while :JimengGenerate creates, waits and downloads, then reports the file", function()
    local outcome = run_nvim("generate")
    assert.equals(6, outcome.commands, "the plugin's commands are missing") -- exists() is 2 for each
    assert.is_true(outcome.done, "no result arrived")
    assert.equals("saved", outcome.state, outcome.result)
    assert.truthy(outcome.result:find("^jimeng: saved "), outcome.result)
    assert.equals(h.fixture(), h.read(outcome.path))
    -- the command returned at once, and the editor's own timer kept running all along
    assert.is_true(outcome.command_returned_ms < 200, "the command blocked for " .. outcome.command_returned_ms .. " ms")
    assert.is_true(outcome.elapsed_ms > 1500)
    assert.is_true(outcome.ticks >= outcome.elapsed_ms / 20 / 2, ("only %d ticks in %d ms"):format(outcome.ticks, outcome.elapsed_ms))
    assert.is_true(outcome.worst_gap_ms < 250, "the editor froze for " .. outcome.worst_gap_ms .. " ms")
    -- what the user read (:messages, through the real vim.notify): each step of the task, in order
    local shown = table.concat(outcome.messages, "\n")
    assert.truthy(shown:find("jimeng: #1 started.*#1 task %d+ created.*in_queue.*completed.*jimeng: saved "), shown)
    assert.falsy(shown:find("E5560"), shown)
    -- nothing ticked: the adapter's timer fired only when a poll was due (every 0.1 s, coalesced on a 0.5 s
    -- grid), where a 10 ms tick would have fired elapsed/10 times
    assert.is_true(outcome.stats.timer < outcome.elapsed_ms / 100, ("the adapter's timer fired %d times in %d ms")
      :format(outcome.stats.timer, outcome.elapsed_ms))
    -- and once done it holds nothing: no socket watched, no timer armed
    assert.equals(0, outcome.driver.sockets)
    assert.is_false(outcome.driver.timer_active)
  end)

  it("wakes the editor at most 2 times a second outside transfers while 20 generates wait", function()
    local window = 12
    local outcome = run_nvim("waiting", { JIMENG_NVIM_N = 20, JIMENG_NVIM_WINDOW = window })
    assert.is_true(outcome.created, "the 20 creates did not all come back")
    assert.equals(20, outcome.running)
    -- and a statusline heard of each: one User JimengProgress autocommand per create, at least
    assert.equals(20, outcome.created_events)
    -- a wake-up outside a transfer is the adapter's one timer firing while no call waits for a transfer (a
    -- poll or a sleep is due); the others are a libcurl socket that became ready or libcurl's own timer, during
    -- a transfer. Counted by the adapter's uv callbacks: the editor's own 20 ms timer would drown an strace count.
    local idle_rate = outcome.timer_idle / outcome.seconds
    local total_rate = (outcome.timer + outcome.poll) / outcome.seconds
    assert.is_true(idle_rate <= 2, ("%.2f wake-ups a second outside transfers"):format(idle_rate))
    -- 20 tasks polled every 5 s: 4 polls a second, each a send and an answer; the old 10 ms tick was 100/s
    assert.is_true(total_rate <= 15, ("%.2f wake-ups a second in all"):format(total_rate))
    assert.is_true(outcome.poll > 0, "no status poll was made in the window")
    assert.is_true(outcome.worst_gap_ms < 250, "the editor froze for " .. outcome.worst_gap_ms .. " ms")
    assert.equals(0, outcome.left_running, "JimengCancel left calls running")
  end)

  it("takes every setup{} option: the request, the file, what is shown, the player, the timeout", function()
    local outcome = run_nvim("options", { JIMENG_API_KEY = "" })
    assert.equals(100, outcome.coalesce_ms)
    assert.is_true(outcome.saved, "the generate did not end")
    assert.equals("saved", outcome.states[1])
    -- seconds, ratio, model and the key from setup{} made the create
    local create
    for _, r in ipairs(h.api_requests(sb, "^/v1/videos$")) do
      if r.body.prompt == "a lighthouse at dusk" then create = r end
    end
    assert.truthy(create, "no create for the prompt")
    assert.equals(241, create.body.frames) -- 10 s
    assert.equals("9:16", create.body.aspect_ratio)
    assert.equals("jimeng-video-3.0-720P", create.body.model)
    assert.equals("Bearer key-from-setup", create.headers.authorization)
    -- output_dir (made when missing)
    assert.truthy(outcome.path:find("^" .. (dir .. "/videos/jimeng_video_"):gsub("%p", "%%%0") .. "%d+%.mp4$"), outcome.path)
    assert.equals(h.fixture(), h.read(outcome.path))
    -- open_cmd played it
    assert.is_true(outcome.opened, "open_cmd was not run")
    assert.equals(outcome.path, h.read(dir .. "/opened.txt"))
    -- notify = false: no progress in :messages, but the refusal is there, before anything was paid
    local shown = table.concat(outcome.messages, "\n")
    assert.falsy(shown:find("#1 started", 1, true), shown)
    assert.falsy(shown:find("jimeng: saved", 1, true), shown)
    assert.truthy(shown:find("jimeng: #2 failed: [^\n]*no%-such%-image%.png[^\n]*nothing was paid for"), shown)
    assert.equals(0, sb:creates_for("a boat from an image"))
    -- timeout = 1: the slow generate stopped after about a second, naming the task it paid for
    assert.is_true(outcome.timed_out)
    assert.equals("failed", outcome.states[3])
    assert.is_true(outcome.timeout_ms < 5000, outcome.timeout_ms .. " ms")
    assert.truthy(shown:find("jimeng: #3 failed: [^\n]*task " .. outcome.task3 .. " was created and is paid for"), shown)
    assert.equals(1, sb:creates_for("too slow sandbox:slow=30"))
  end)

  it("takes a prompt after --, refuses what names no task, and pays or changes nothing for a refused command", function()
    local creates_before = sb:stats().creates
    local outcome = run_nvim("arguments")
    local shown = table.concat(outcome.messages, "\n")
    -- "--" ends the options: paid once, for the prompt after it, with the option before it
    assert.equals("", outcome.dash)
    assert.is_true(outcome.dash_saved, shown)
    assert.equals("saved", outcome.dash_state, shown)
    assert.equals(1, sb:creates_for("-nv dash"))
    assert.equals(0, sb:creates_for("-- -nv dash"))
    for _, r in ipairs(h.api_requests(sb, "^/v1/videos$")) do
      if r.body.prompt == "-nv dash" then assert.equals(241, r.body.frames) end -- -seconds=10
    end
    -- refused at once (an error, v:errmsg), before anything was sent or recorded
    assert.truthy(outcome.no_dashes:find("jimeng: unknown option -nv", 1, true), outcome.no_dashes)
    assert.truthy(outcome.no_dashes:find("after --", 1, true), outcome.no_dashes)
    assert.truthy(outcome.double_dash_option:find("jimeng: unknown option --seconds=10", 1, true),
      outcome.double_dash_option)
    assert.truthy(outcome.lone_dashes:find("jimeng: a prompt is needed", 1, true), outcome.lone_dashes)
    assert.equals(1, outcome.tasks_after_refusals)
    assert.equals(0, sb:creates_for("--seconds=10 a cat on a mat"))
    assert.equals(0, sb:creates_for("a cat on a mat"))
    assert.equals(0, sb:creates_for("--"))
    -- :JimengCancel abc, 99, or a task that is not running: an error naming what runs; nothing was cancelled
    assert.is_true(outcome.slow_created, shown)
    local running = ("running: #%d (task %s)"):format(outcome.slow_n, outcome.slow_id)
    for _, said in ipairs { outcome.cancel_abc, outcome.cancel_99, outcome.cancel_saved } do
      assert.truthy(said:find("no running task has that number or task id (" .. running .. "); nothing was cancelled",
        1, true), said)
    end
    assert.truthy(outcome.cancel_abc:find("jimeng: :JimengCancel abc:", 1, true), outcome.cancel_abc)
    assert.is_true(outcome.after_bad_cancels.running, shown)
    assert.are_not.equals("cancelled", outcome.after_bad_cancels.state)
    -- its task id cancels it
    assert.equals("", outcome.cancel_by_id)
    assert.is_true(outcome.cancelled, shown)
    assert.truthy(tostring(outcome.cancel_note):find("task " .. outcome.slow_id .. " was created and is paid for", 1, true),
      shown)
    -- :JimengResume ../../etc: an error before anything is sent, no task recorded, no word of a paid task
    for _, said in ipairs { outcome.resume_path, outcome.resume_slash } do
      assert.truthy(said:find("^jimeng: :JimengResume: task id \"[^\"]+\" is not a valid id"), said)
      assert.truthy(said:find("nothing was sent", 1, true), said)
    end
    assert.equals(0, outcome.tasks_after_bad_resume)
    assert.falsy(shown:find("etc was created", 1, true), shown)
    for _, r in ipairs(h.api_requests(sb)) do
      assert.falsy(r.path:find("etc", 1, true) or r.path:find("a/b", 1, true), r.path)
    end
    -- an id of the right shape the API does not know is asked about, and not called paid for
    assert.equals("", outcome.resume_unknown)
    assert.is_true(outcome.unknown_settled, shown)
    assert.truthy(tostring(outcome.unknown_note):find("failed: .*the API knows no task no%-such%-task"), shown)
    assert.falsy(shown:find("no-such-task was created", 1, true), shown)
    -- :JimengOpen abc: an error, nothing played; :JimengOpen 1 plays #1's video
    assert.truthy(outcome.open_abc:find("jimeng: :JimengOpen abc: not a task number", 1, true), outcome.open_abc)
    assert.is_false(outcome.open_abc_played)
    assert.is_true(outcome.open_1_played)
    -- paid twice in all: "-nv dash" and the slow one
    assert.equals(2, sb:stats().creates - creates_before)
  end)

  it(":checkhealth jimeng reports OK against the sandbox", function()
    local report = dir .. "/health.txt"
    local ok, out = proc.run(("cd %s && JIMENG_PACK=%s JIMENG_API_KEY=nvim-key JIMENG_BASE_URL=%s timeout 60 nvim --headless " ..
      "-u spec/nvim/init.lua -i NONE -n -c 'checkhealth jimeng' -c 'w! %s' -c 'qa!'"):format(proc.root, pack, sb.url, report))
    assert.is_true(ok, out)
    local text = assert(h.read(report), out)
    assert.falsy(text:find("ERROR"), text)
    assert.falsy(text:find("WARNING"), text)
    assert.truthy(text:find("OK:? jimeng %d+%.%d+%.%d+ loads"), text)
    assert.truthy(text:find("OK:? libcurl %d[%d.]+, TLS backend %S+"), text)
    assert.truthy(text:find("OK:? an API key is set"), text)
    assert.truthy(text:find("OK:? " .. sb.url:gsub("%p", "%%%0") .. " answers"), text)
    assert.truthy(text:find("OK:? available: python3 "), text)
    -- with an API that is not there, it says so
    ok, out = proc.run(("cd %s && JIMENG_PACK=%s JIMENG_API_KEY=nvim-key JIMENG_BASE_URL=http://127.0.0.1:%d/v1 timeout 60 nvim --headless " ..
      "-u spec/nvim/init.lua -i NONE -n -c 'checkhealth jimeng' -c 'w! %s' -c 'qa!'"):format(proc.root, pack, proc.free_port(), report))
    assert.is_true(ok, out)
    text = h.read(report)
    assert.truthy(text:find("ERROR:? " .. ("http://127.0.0.1:"):gsub("%p", "%%%0") .. "%d+/v1 is not reachable"), text)
  end)

  it(":checkhealth jimeng without a key says so and sends nothing to the API host", function()
    local report = dir .. "/health-nokey.txt"
    local before = #h.api_requests(sb)
    local ok, out = proc.run(("cd %s && JIMENG_PACK=%s JIMENG_BASE_URL=%s timeout 60 nvim --headless " ..
      "-u spec/nvim/init.lua -i NONE -n -c 'checkhealth jimeng' -c 'w! %s' -c 'qa!'"):format(proc.root, pack, sb.url, report))
    assert.is_true(ok, out)
    local text = assert(h.read(report), out)
    assert.truthy(text:find("ERROR:? no API key"), text)
    assert.truthy(text:find(sb.url:gsub("%p", "%%%0") .. " is not tried without a key"), text)
    assert.truthy(text:find("OK:? available: python3 "), text) -- the rest of the check still ran
    -- the sandbox is the API host here: it saw no request at all (the check with a key above made one)
    assert.equals(before, #h.api_requests(sb))
  end)

  it(":JimengCancel stops a download, keeps a resumable .part, says what was paid for; :JimengResume finishes it", function()
    sb:faults { { path = "/content$", fault = "stall_mid_body", after_bytes = 150000, seconds = 30, count = 1 } }
    local outcome = run_nvim("cancel")
    assert.is_true(outcome.stalled, "the download never started")
    assert.is_true(outcome.reported, "no word of the cancel")
    assert.equals("cancelled", outcome.state)
    assert.truthy(outcome.cancelled:find("task " .. outcome.task_id .. " was created and is paid for", 1, true), outcome.cancelled)
    assert.truthy(outcome.cancelled:find(".part", 1, true), outcome.cancelled)
    -- the transfer stopped and the file is closed now, not at the next garbage collection
    assert.equals(1, outcome.parts_before)
    assert.equals(0, outcome.parts_after)
    assert.equals(0, outcome.sockets_after)
    assert.equals(0, outcome.running_after)
    assert.equals(150000, outcome.part_size)
    -- resumable: the next download of the task continued from the kept bytes
    assert.is_true(outcome.resumed, "JimengResume did not finish")
    local bytes = assert(h.read(outcome.path))
    assert.equals(400000, #bytes)
    for _, i in ipairs { 56, 149999, 150000, 399999 } do
      assert.equals(h.synthetic_byte(i), bytes:byte(i + 1), "byte " .. i)
    end
    local ranged = false
    for _, r in ipairs(h.api_requests(sb, "/content$")) do
      if r.headers.range == "bytes=150000-" then ranged = true end
    end
    assert.is_true(ranged, "the resume did not ask for the rest (Range: bytes=150000-)")
  end)
end)
