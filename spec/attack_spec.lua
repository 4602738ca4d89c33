-- The findings of the second outside attack (issue #25), one spec each: never pay for what is then refused,
-- never let one paid video replace another, never show a raw error or a raw escape sequence. Money is counted
-- at the sandbox (its creates).
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"
local cjson = require "cjson"

local lua = proc.lua

local function cli(env, args, extra_env)
  return proc.run(("cd %s && %sJIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng %s"):format(env.dir,
    extra_env or "", env.sb.url, lua, proc.root, args), proc.own_env)
end

local GRID = { name = "grid", base = { prompt = "a {animal}", seconds = 5 }, vars = { animal = { "fox", "owl" } },
  vary = { seed = { 1, 2 } } }

describe("every option is checked before the first paid call", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("batch and experiment refuse a poll interval generate refuses, before they pay (Lua and the command)", function()
    for _, bad in ipairs { 0, -1, 1e9, 0 / 0, "1" } do
      local s, err = env.client:batch({ { prompt = "a fox" } }, { output_dir = env.dir, interval = bad })
      h.failed("invalid_argument", s, err)
      assert.equals("interval", err.field)
      local r
      r, err = env.client:experiment(GRID, { dir = env.dir .. "/e", interval = bad })
      h.failed("invalid_argument", r, err)
      assert.equals("interval", err.field)
    end
    h.write(env.dir .. "/jobs.jsonl", '{"prompt":"a fox"}\n')
    h.write(env.dir .. "/grid.json", cjson.encode(GRID))
    for _, line in ipairs { "batch jobs.jsonl --interval 0", "batch jobs.jsonl --interval 1e9",
      "experiment grid.json --interval -1", "experiment grid.json --timeout 0" } do
      local ok, out = cli(env, line)
      assert.is_false(ok, line)
      assert.truthy(out:find("nothing was paid for", 1, true), out)
    end
    assert.equals(0, env.sb:stats().creates)
  end)

  it("max_videos is a whole number or refused: NaN, 2.5 and \"3\" pay for nothing and raise nothing", function()
    for _, bad in ipairs { 0 / 0, 2.5, "3", -1, math.huge } do
      local r, err = env.client:experiment(GRID, { dir = env.dir .. "/e", max_videos = bad })
      h.failed("invalid_argument", r, err)
      assert.equals("max_videos", err.field)
    end
    h.write(env.dir .. "/grid.json", cjson.encode(GRID))
    local ok, out = cli(env, "experiment grid.json --max-videos 2.5")
    assert.is_false(ok)
    assert.falsy(out:find("traceback", 1, true), out)
    assert.truthy(out:find("max_videos must be a whole number", 1, true), out)
    assert.equals(0, env.sb:stats().creates)
  end)

  it("retake, concurrency, on_event of the wrong type are refused as invalid_argument naming the option", function()
    for opt, bad in pairs { retake = 1, concurrency = 2.5, on_event = "print", yes = "yes" } do
      local r, err = env.client:experiment(GRID, { dir = env.dir .. "/e", [opt] = bad })
      h.failed("invalid_argument", r, err)
      assert.equals(opt, err.field)
    end
    assert.equals(0, env.sb:stats().creates)
  end)
end)

describe("a retake is journaled when it is decided", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  -- (a job whose on_event raised used to keep its slot: with concurrency 1 the next job waited for it forever,
  -- as often as the order of the jobs let one wait behind it)
  it("the same --retake command after a run that did not end finishes that run, and pays no take more", function()
    local dir = env.dir .. "/e"
    assert(env.client:experiment(GRID, { dir = dir, ffmpeg = false }))
    assert.equals(4, env.sb:stats().creates)
    local grown = cjson.decode(cjson.encode(GRID))
    grown.vary.seed = { 1, 2, 3 }
    local id = "animal=fox,seed=1"
    -- the retake is saved, then the run stops on an error before its last job has its video
    local first = assert(env.client:experiment(grown, { dir = dir, retake = id, concurrency = 1, ffmpeg = false,
      on_event = function(ev)
        if ev.type == "created" and ev.job.label == "animal=owl,seed=3" then error("stopped here") end
      end }))
    assert.equals(1, first.errors)
    assert.equals(7, env.sb:stats().creates) -- the retake and the two new cells
    local again = assert(env.client:experiment(grown, { dir = dir, retake = id, ffmpeg = false }))
    assert.equals(0, again.errors)
    assert.equals(7, #again.takes)
    assert.equals(7, env.sb:stats().creates) -- the same command paid for nothing more
    -- that run ended with every take made: the same command now makes one more take
    local third = assert(env.client:experiment(grown, { dir = dir, retake = id, ffmpeg = false }))
    assert.equals(8, #third.takes)
    assert.equals(8, env.sb:stats().creates)
  end)
end)

describe("the output path is reserved before paying", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  -- The first run's task is held running until both refusals are seen (sb:finish): with a fixed processing time,
  -- a slow machine (valgrind) let the first finish and save before the --force run started, which then rightly
  -- paid to replace the saved file.
  it("a second generate for the same path, --force or not, is refused before it pays while the first runs", function()
    env.sb:config { queue_seconds = 0.05, process_seconds = 120 }
    local cmd = ("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng generate 'the first' --interval 0.05 " ..
      "-o same.mp4 >out1 2>err1; echo $? >code1"):format(env.dir, env.sb.url, lua, proc.root)
    os.execute(proc.own_env .. "(" .. cmd .. ") >/dev/null 2>&1 &")
    local deadline = core.now() + 10
    while env.sb:stats().creates < 1 and core.now() < deadline do core.sleep(0.02) end
    assert.equals(1, env.sb:stats().creates)
    for _, force in ipairs { "", " --force" } do
      local ok, out = cli(env, "generate 'the second' --interval 0.05 -o same.mp4" .. force)
      assert.is_false(ok, out .. "\nthe first: " .. (h.read(env.dir .. "/code1") or "running") .. " " ..
        (h.read(env.dir .. "/err1") or ""))
      assert.truthy(out:find("another download is writing", 1, true), out)
      assert.truthy(out:find("nothing was paid for", 1, true), out)
    end
    assert.equals(1, env.sb:stats().creates)
    assert.is_nil(h.read(env.dir .. "/code1"), "the first run ended before the second was tried")
    env.sb:finish()
    deadline = core.now() + 60
    while not (h.read(env.dir .. "/code1") or ""):find("%d") and core.now() < deadline do core.sleep(0.05) end
    assert.equals("0", h.read(env.dir .. "/code1"):match("%d+"), h.read(env.dir .. "/err1"))
    assert.equals(1, env.sb:creates_for("the first"))
    assert.equals(0, env.sb:creates_for("the second"))
  end)

  it("a .part or .part.json that is a directory is found before paying (generate and batch)", function()
    for _, beside in ipairs { ".part", ".part.json" } do
      local path = env.dir .. "/v" .. beside:gsub("%W", "") .. ".mp4"
      assert(core.mkdirs(path .. beside))
      local r, err = env.client:generate({ prompt = "a fox" }, { output = path })
      h.failed("invalid_argument", r, err)
      assert.truthy(err.message:find("nothing was paid for", 1, true), err.message)
      local s
      s, err = env.client:batch({ { prompt = "a fox", output = path } }, { output_dir = env.dir })
      h.failed("invalid_argument", s, err)
      assert.truthy(err.message:find("directory", 1, true), err.message)
    end
    assert.equals(0, env.sb:stats().creates)
  end)

  it("a link planted at the .part.json is refused before paying and left where it was, its target untouched", function()
    local path, victim = env.dir .. "/v.mp4", env.dir .. "/victim"
    h.write(victim, "keep me")
    assert(os.execute(("ln -s %s %s.part.json"):format(victim, path)))
    local r, err = env.client:generate({ prompt = "a fox" }, { output = path })
    h.failed("invalid_argument", r, err)
    assert.truthy(err.message:find("nothing was paid for", 1, true), err.message)
    assert.is_false(err.created) -- nothing was sent: false, not unknown
    assert.equals(0, env.sb:stats().creates)
    local kind = io.popen("stat -c %F " .. path .. ".part.json 2>/dev/null")
    assert.equals("symbolic link", kind:read("*l"))
    kind:close()
    assert.equals("keep me", h.read(victim))
    assert.is_false(h.exists(path .. ".part"))
  end)

  it("a refused create leaves no .part behind, and generate still saves where it was asked", function()
    local path = env.dir .. "/fox.mp4"
    local r, err = env.client:generate({ prompt = "a fox", seconds = 7 }, { output = path })
    h.failed("invalid_argument", r, err)
    assert.is_false(h.exists(path .. ".part"))
    env.sb:faults { path = "^/v1/videos$", method = "POST", fault = "status", status = 400, count = 1 }
    r = env.client:generate({ prompt = "a fox" }, { output = path })
    assert.is_nil(r)
    assert.is_false(h.exists(path .. ".part"))
    r = assert(env.client:generate({ prompt = "a fox" }, { output = path }))
    assert.equals(path, r.path)
    assert.is_false(h.exists(path .. ".part"))
  end)
end)

describe("the experiment's files", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("a cell whose id is another cell's take label is refused before paying (its retake was shown under it)", function()
    local spec = { name = "takes", base = { prompt = "a fox" }, cells = { { id = "fox" }, { id = "fox take 2", seed = 3 } } }
    local r, err = env.client:experiment(spec, { dir = env.dir .. "/e", ffmpeg = false })
    h.failed("invalid_argument", r, err)
    assert.truthy(err.message:find('"fox take 2" ends like the label of a take', 1, true), err.message)
    r, err = env.client:experiment({ base = { prompt = "a fox" }, cells = { { id = "fox\27]0;owned\7" } } },
      { dir = env.dir .. "/e", ffmpeg = false })
    h.failed("invalid_argument", r, err)
    assert.falsy(err.message:find("\27", 1, true), err.message)
    assert.equals(0, env.sb:stats().creates)
  end)

  it("the gallery's, results' and takes' temporary files never follow a planted link", function()
    local dir = env.dir .. "/e"
    assert(core.mkdirs(dir))
    local victims = {}
    for _, name in ipairs { "index.html", "results.json", "takes.json" } do
      local victim = env.dir .. "/victim-" .. name
      h.write(victim, "precious")
      victims[#victims + 1] = victim
      assert(os.execute(("ln -s %s %s/%s.tmp"):format(victim, dir, name)))
    end
    assert(env.client:experiment(GRID, { dir = dir, ffmpeg = false }))
    assert(env.client:experiment(GRID, { dir = dir, ffmpeg = false, retake = "animal=fox,seed=1" }))
    for _, v in ipairs(victims) do assert.equals("precious", h.read(v)) end
    assert.truthy(h.read(dir .. "/index.html"):find("<html", 1, true))
    assert.equals(2, cjson.decode(h.read(dir .. "/takes.json"))["animal=fox,seed=1"])
  end)
end)

describe("the request budget holds as documented", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, client = false, reset = true }
  local jimeng = require "jimeng"

  -- n status calls of one task at once; -> the seconds they took
  local function statuses(client, n)
    local task = assert(client:create { prompt = "paced" })
    local t0 = core.now()
    jimeng.run(function()
      local list = {}
      for i = 1, n do list[i] = function() return assert(client:status(task.id)) end end
      return jimeng.gather(list)
    end)
    return core.now() - t0
  end

  it("max_rps = 2.5 lets no more than 2 into any one second (the server's limit of 2 never answers 429)", function()
    local client = h.client(env.sb, { max_rps = 2.5, max_retries = 0 })
    env.sb:config { max_rps = 2 }
    statuses(client, 6)
    assert.equals(0, env.sb:stats().rate_limited)
  end)

  it("burst = max_rps keeps the same total a second: 4 at once, and 12 requests in about 3 s, not 9", function()
    local client = h.client(env.sb, { max_rps = 4, burst = 4, max_retries = 0 })
    env.sb:config { max_rps = 4 }
    local took = statuses(client, 12)
    assert.equals(0, env.sb:stats().rate_limited)
    assert.is_true(took < 4.5, "took " .. took)
  end)
end)

describe("input at the edges", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("a prompt of white space only is refused before it is sent", function()
    for _, p in ipairs { " ", "\t\n ", "\194\160", "\227\128\128 " } do
      local t, err = env.client:create { prompt = p }
      h.failed("invalid_argument", t, err)
      assert.equals("prompt", err.field)
    end
    local ok, out = cli(env, "generate '   '")
    assert.is_false(ok)
    assert.truthy(out:find("prompt is only white space", 1, true), out)
    assert.equals(0, env.sb:stats().creates)
  end)

  it("the gallery's copied command works for a prompt that starts with -", function()
    local prompt = "-a fox at -dawn"
    assert(env.client:experiment({ base = { prompt = prompt, seed = 4 } }, { dir = env.dir, ffmpeg = false }))
    local cell = cjson.decode(h.read(env.dir .. "/results.json")).cells[1]
    local cmd = cell.command:gsub("^jimeng generate ", ("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng " ..
      "generate --interval 0.05 -q "):format(env.dir, env.sb.url, lua, proc.root))
    local ok, out = proc.run(cmd, proc.own_env)
    assert.is_true(ok, cell.command .. "\n" .. out)
    assert.equals(2, env.sb:creates_for(prompt))
  end)

  it("a jobs file or a spec with a UTF-8 byte order mark is read; a UTF-16 one is refused naming its BOM", function()
    h.write(env.dir .. "/jobs.jsonl", '\239\187\191{"prompt":"a bom fox"}\n')
    local s = assert(env.client:batch(env.dir .. "/jobs.jsonl", { output_dir = env.dir, interval = 0.05 }))
    assert.equals(1, s.saved)
    h.write(env.dir .. "/spec.json", '\239\187\191' .. cjson.encode { base = { prompt = "a bom owl" } })
    assert(env.client:experiment(env.dir .. "/spec.json", { dir = env.dir .. "/e", ffmpeg = false }))
    h.write(env.dir .. "/spec.lua", '\239\187\191return { base = { prompt = "a bom hare" } }')
    assert(env.client:experiment(env.dir .. "/spec.lua", { dir = env.dir .. "/e2", ffmpeg = false }))
    assert.equals(3, env.sb:stats().creates)
    h.write(env.dir .. "/u16.jsonl", '\255\254{\0"\0')
    local r, err = env.client:batch(env.dir .. "/u16.jsonl", { output_dir = env.dir })
    h.failed("invalid_argument", r, err)
    assert.truthy(err.message:find("UTF-16 byte order mark", 1, true), err.message)
    r, err = env.client:experiment(env.dir, { dir = env.dir .. "/e3" })
    h.failed("invalid_argument", r, err)
    assert.truthy(err.message:find("is a directory", 1, true), err.message)
    local ok, out = cli(env, "experiment /tmp")
    assert.is_false(ok)
    assert.truthy(out:find("/tmp is a directory", 1, true), out)
    assert.equals(3, env.sb:stats().creates)
  end)

  it("--api-key-file: a BOM and # comment lines are not the key; a directory is called a directory", function()
    local sb = h.sandbox { api_key = "the-real-key" }
    finally(function() sb:stop() end)
    h.write(env.dir .. "/key", "\239\187\191# my key, from the console\n\n  the-real-key  \n")
    local ok, out = proc.run(("cd %s && JIMENG_BASE_URL=%s %s %s/bin/jimeng create 'a keyed fox' --api-key-file key"):format(
      env.dir, sb.url, lua, proc.root), proc.own_env)
    assert.is_true(ok, out)
    assert.equals(1, sb:stats().creates)
    ok, out = proc.run(("cd %s && JIMENG_BASE_URL=%s %s %s/bin/jimeng create 'a fox' --api-key-file /tmp"):format(
      env.dir, sb.url, lua, proc.root), proc.own_env)
    assert.is_false(ok)
    assert.truthy(out:find("/tmp is a directory", 1, true), out)
    h.write(env.dir .. "/comments", "# nothing here\n")
    ok, out = proc.run(("cd %s && JIMENG_BASE_URL=%s %s %s/bin/jimeng create 'a fox' --api-key-file comments"):format(
      env.dir, sb.url, lua, proc.root), proc.own_env)
    assert.is_false(ok)
    assert.truthy(out:find("holds no key", 1, true), out)
    assert.equals(1, sb:stats().creates)
  end)

  it("sandbox --port 70000 and --port 2.5 are refused cleanly (exit 2), not a traceback or port 2", function()
    for _, p in ipairs { "70000", "2.5", "-1" } do
      local ok, out = proc.run(("%s %s/bin/jimeng sandbox --port %s"):format(lua, proc.root, p), proc.own_env)
      assert.is_false(ok)
      assert.truthy(out:find("port must be a whole number from 0 to 65535", 1, true), out)
      assert.falsy(out:find("Traceback", 1, true), out)
    end
  end)
end)

describe("misuse raises naming the call; every runtime failure is a typed error", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }
  local jimeng = require "jimeng"

  it("non-table opts and jimeng.sleep(true) raise a message naming the function and the argument", function()
    local c = env.client
    for name, call in pairs {
      wait = function() return c:wait("1", "fast") end,
      download = function() return c:download("1", env.dir .. "/x.mp4", 5) end,
      generate = function() return c:generate({ prompt = "a fox" }, "x.mp4") end,
      batch = function() return c:batch({}, true) end,
      experiment = function() return c:experiment(GRID, "dir") end,
    } do
      local ok, why = pcall(call)
      assert.is_false(ok, name)
      assert.truthy(tostring(why):find("client:" .. name .. "(..., opts): opts must be a table", 1, true), tostring(why))
    end
    local ok, why = pcall(jimeng.sleep, true)
    assert.is_false(ok)
    assert.truthy(tostring(why):find("jimeng.sleep(seconds): seconds must be a number", 1, true), tostring(why))
    assert.equals(0, env.sb:stats().creates)
  end)

  it("image = {} is refused, not paid for as a video without an image", function()
    for _, k in ipairs { "image", "images", "image_urls" } do
      local t, err = env.client:create { prompt = "a fox", [k] = {} }
      h.failed("invalid_argument", t, err)
      assert.equals(k, err.field)
    end
    assert.equals(0, env.sb:stats().creates)
  end)

  it("download's on_progress raising is a callback error with the task id, and the video is saved", function()
    local task = assert(env.client:create { prompt = "a fox" })
    assert(env.client:wait(task.id, { interval = 0.05 }))
    local path = env.dir .. "/p.mp4"
    local info, err = env.client:download(task.id, path, { on_progress = function() error("my bug") end })
    h.failed("callback", info, err)
    assert.equals(task.id, err.task_id)
    assert.truthy(err.message:find("my bug", 1, true))
    assert.equals(path, err.path)
    assert.equals(#h.fixture(), core.file_size(path))
  end)

  it("a callback's own yield ('sleep', 1e9) does not hang jimeng.run: only jimeng.sleep sleeps", function()
    local t0 = core.now()
    local r, err = jimeng.run(function()
      return env.client:generate({ prompt = "a yielding fox" }, { output = env.dir .. "/y.mp4", interval = 0.05,
        on_status = function() coroutine.yield("sleep", 1e9) end })
    end)
    if _VERSION == "Lua 5.1" and not rawget(_G, "jit") then -- no yield across pcall there: the callback's error
      h.failed("callback", r, err)
    else
      assert.equals(env.dir .. "/y.mp4", assert(r, tostring(err)).path)
    end
    assert.is_true(core.now() - t0 < 10)
  end)

  it("close() from another coroutine ends the sibling's call with a typed error; jimeng.run does not raise", function()
    env.sb:config { queue_seconds = 0.05, process_seconds = 5 }
    local c = h.client(env.sb)
    local task = assert(c:create { prompt = "a closed fox" })
    local results, errs = jimeng.run(function()
      return jimeng.gather {
        function() return c:wait(task.id, { interval = 0.05, timeout = 30 }) end,
        function() jimeng.sleep(0.3); c:close(); return true end,
      }
    end)
    assert.is_nil(results[1])
    assert.is_true(jimeng.is_error(errs[1]), tostring(errs[1]))
    assert.equals("interrupted", errs[1].kind)
    assert.truthy(errs[1].message:find("closed", 1, true), errs[1].message)
    assert.is_true(results[2])
  end)

  it("an oversized header line is a typed protocol error, not \"io: Out of memory\"", function()
    local task = assert(env.client:create { prompt = "a fox" })
    env.sb:faults { path = "^/v1/videos/[0-9]+$", fault = "headers", headers = { ["X-Huge"] = ("a"):rep(200000) }, count = 1 }
    local t, err = env.client:status(task.id)
    h.failed("protocol", t, err)
    assert.falsy(err.message:find("Out of memory", 1, true), err.message)
  end)
end)

describe("signals end with the line that says what was paid and how to continue", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  -- Starts `jimeng ARGS` in the background (stdout to out, stderr to err, its exit code to code); -> its shell's pid.
  local function start(args)
    local cmd = ("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng %s"):format(env.dir, env.sb.url, lua,
      proc.root, args)
    return io.popen(("%ssh -c '%s >%s/out 2>%s/err; echo $? >%s/code' >/dev/null 2>&1 & echo $!"):format(proc.own_env,
      cmd:gsub("'", "'\\''"), env.dir, env.dir, env.dir)):read("*l")
  end
  local function ended(deadline)
    while not (h.read(env.dir .. "/code") or ""):find("%d") and core.now() < deadline do core.sleep(0.02) end
    return (h.read(env.dir .. "/code") or ""):match("%d+"), h.read(env.dir .. "/err") or "", h.read(env.dir .. "/out") or ""
  end

  it("a second Ctrl-C during a create on the wire says the task may exist and be billed, in --json too", function()
    env.sb:faults { path = "^/v1/videos$", method = "POST", fault = "stall", seconds = 4, count = 1 }
    local pid = start("create 'a stalled fox' --json")
    local deadline = core.now() + 15
    while #h.api_requests(env.sb, "^/v1/videos$") == 0 and core.now() < deadline do core.sleep(0.02) end
    core.sleep(0.2)
    os.execute(proc.clean_env .. "pkill -INT -P " .. pid)
    core.sleep(0.3)
    os.execute(proc.clean_env .. "pkill -INT -P " .. pid)
    local code, err, out = ended(core.now() + 3) -- abandoned at once, not after the stall
    assert.equals("130", code, err)
    assert.truthy(err:find("may exist and be billed", 1, true), err)
    local j = cjson.decode(out)
    assert.equals("interrupted", j.error.kind)
    assert.truthy(j.error.what_to_do:find("may exist and be billed", 1, true), out)
  end)

  it("SIGHUP stops a batch like Ctrl-C: exit 130 and the line that says how to continue", function()
    env.sb:config { queue_seconds = 0.05, process_seconds = 3 }
    h.write(env.dir .. "/jobs.jsonl", '{"prompt":"a hup fox"}\n{"prompt":"a hup owl"}\n')
    local pid = start("batch jobs.jsonl --journal j.jsonl --interval 0.05")
    local deadline = core.now() + 15
    while env.sb:stats().creates < 2 and core.now() < deadline do core.sleep(0.02) end
    core.sleep(0.2)
    os.execute(proc.clean_env .. "pkill -HUP -P " .. pid)
    local code, err = ended(core.now() + 5)
    assert.equals("130", code, err)
    assert.truthy(err:find("nothing is lost: run the same command again", 1, true), err)
    assert.truthy(err:find("SIGHUP", 1, true), err)
  end)
end)

describe("text from a server or a file reaches the terminal with its control characters escaped", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }
  local EVIL = "bad \27]0;owned\7 \27[2J"

  it("a server's error message, a task id and a status word", function()
    env.sb:faults { path = "^/v1/videos$", method = "POST", fault = "status", status = 400, message = EVIL, count = 1 }
    local ok, out = cli(env, "generate 'a fox'")
    assert.is_false(ok)
    assert.falsy(out:find("\27", 1, true), out)
    assert.truthy(out:find("bad \\e]0;owned\\x07 \\e[2J", 1, true), out)
    env.sb:faults { path = "^/v1/videos$", method = "POST", fault = "json", count = 1,
      body = { id = "12\27[2J34", status = "in_queue" } }
    ok, out = cli(env, "create 'a fox'")
    assert.is_true(ok, out)
    assert.falsy(out:find("\27", 1, true), out)
    assert.truthy(out:find("12\\e[2J34", 1, true), out)
    local task = assert(env.client:create { prompt = "a fox" })
    env.sb:faults { path = "^/v1/videos/[0-9]+$", fault = "answer_status", status_value = "odd\27[2J", count = 1 }
    ok, out = cli(env, "status " .. task.id)
    assert.is_true(ok, out)
    assert.falsy(out:find("\27", 1, true), out)
  end)

  it("a jobs file's label in a batch's lines", function()
    h.write(env.dir .. "/jobs.jsonl", cjson.encode { prompt = "a fox", label = "fox\27[2J" } .. "\n")
    local ok, out = cli(env, "batch jobs.jsonl --interval 0.05")
    assert.is_true(ok, out)
    assert.falsy(out:find("\27", 1, true), out)
    assert.truthy(out:find("fox\\e[2J", 1, true), out)
  end)
end)

describe("two batch runs with their own journals never let one paid video replace another", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("a job whose output another run is writing is refused before it pays", function()
    local path = env.dir .. "/fox.mp4"
    local held = assert(core.part_open(path .. ".part")) -- as another run's job holds it, between create and download
    local s = assert(env.client:batch({ { prompt = "a fox", label = "fox" }, { prompt = "an owl", label = "owl" } },
      { output_dir = env.dir, journal = env.dir .. "/j.jsonl", interval = 0.05 }))
    held:close()
    assert.equals(1, s.saved)
    assert.equals(1, s.errors)
    assert.truthy(tostring(s.jobs[1].error):find("nothing was paid for", 1, true), tostring(s.jobs[1].error))
    assert.equals(0, env.sb:creates_for("a fox"))
    assert.equals(1, env.sb:creates_for("an owl"))
  end)
end)

describe("redirect hops of a download take their tokens", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("with max_rps = 1, the request after a download that took 2 redirects waits for 3 tokens, not 1", function()
    local task = assert(env.client:create { prompt = "a redirected fox" })
    assert(env.client:wait(task.id, { interval = 0.05 }))
    local content = "/videos/" .. task.id .. "/content"
    env.sb:faults { path = "^/v1" .. content .. "$", fault = "redirect", location = env.sb.url .. content, count = 2 }
    local paced = h.client(env.sb, { max_rps = 1 })
    assert(paced:download(task.id, env.dir .. "/r.mp4"))
    assert.equals(3, #h.api_requests(env.sb, "^/v1" .. content .. "$"))
    local t0 = core.now()
    assert(paced:status(task.id))
    local waited = core.now() - t0
    assert.is_true(waited > 2.5, "waited " .. waited)
  end)
end)

describe("a damaged takes.json", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("is refused naming the file, never read as a billion takes to pay for", function()
    local dir = env.dir .. "/e"
    assert(core.mkdirs(dir))
    h.write(dir .. "/takes.json", cjson.encode { ["animal=fox,seed=1"] = 1e9 })
    local r, err = env.client:experiment(GRID, { dir = dir, yes = true, ffmpeg = false })
    h.failed("invalid_argument", r, err)
    assert.truthy(err.message:find("takes.json", 1, true), err.message)
    assert.equals(0, env.sb:stats().creates)
  end)
end)

describe("the posters' temporary files", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("never follow a link planted where ffmpeg writes", function()
    if not os.execute("command -v ffmpeg >/dev/null 2>&1") then return pending("no ffmpeg") end
    local dir = env.dir .. "/e"
    local spec = { name = "one", base = { prompt = "a posed fox" } }
    assert(env.client:experiment(spec, { dir = dir, ffmpeg = false }))
    local video = cjson.decode(h.read(dir .. "/results.json")).cells[1].video
    local poster = dir .. "/" .. video:gsub("^videos/", "posters/"):gsub("%.mp4$", ".jpg")
    h.write(env.dir .. "/victim", "precious")
    assert(os.execute(("ln -s %s/victim '%s.tmp.jpg'"):format(env.dir, poster)))
    assert(env.client:experiment(spec, { dir = dir }))
    local deadline = core.now() + 15
    while (core.file_size(poster) or 0) == 0 and core.now() < deadline do core.sleep(0.05) end
    assert.equals("precious", h.read(env.dir .. "/victim"))
    assert.is_true((core.file_size(poster) or 0) > 0)
  end)
end)

describe("a batch job saved onto its journal", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("is refused before paying, --force or not (the journal would be replaced and every job paid again)", function()
    local journal = env.dir .. "/run.jsonl"
    h.write(journal, "")
    local s, err = env.client:batch({ { prompt = "a fox", output = journal } },
      { output_dir = env.dir, journal = journal, overwrite = true })
    h.failed("invalid_argument", s, err)
    assert.truthy(err.message:find("is the journal", 1, true), err.message)
    assert.equals(0, env.sb:stats().creates)
  end)
end)

describe("names a download keeps for itself, and the ledger, are no output", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("refuses <file>.part, <file>.part.json and the ledger as an output before paying (generate, batch, download)", function()
    -- a second run saving there would be written over by the first's download, or removed when it finished
    local c = h.client(env.sb, { ledger = env.dir .. "/ledger.jsonl" })
    for _, name in ipairs { "/y.mp4.part.json", "/x.mp4.part", "/ledger.jsonl" } do
      local _, err = c:generate({ prompt = "a fox" }, { output = env.dir .. name })
      assert.equals("invalid_argument", err.kind)
      assert.truthy(err.message:find("nothing was paid for", 1, true), err.message)
    end
    local _, err = c:generate({ prompt = "a fox" }, { output = env.dir .. "/{id}.part" })
    assert.equals("invalid_argument", err.kind)
    _, err = c:batch({ { prompt = "a", output = "z.mp4" }, { prompt = "b", output = "z.mp4.part.json" } },
      { output_dir = env.dir, journal = env.dir .. "/run.jsonl" })
    assert.equals("invalid_argument", err.kind)
    assert.equals(0, env.sb:stats().creates)
    local task = assert(c:create { prompt = "made" })
    assert(c:wait(task.id, { interval = 0.05 }))
    _, err = c:download(task.id, env.dir .. "/w.mp4.part")
    assert.equals("invalid_argument", err.kind)
    assert.is_false(h.exists(env.dir .. "/w.mp4.part"))
  end)
end)
