-- A command that stops after it paid (a download that fails, a full disk, a deleted directory, a signal) says
-- the task is paid for and how to save it without paying again, on stderr and in --json alike: never "run the
-- command again", which pays for a second task. Money is counted at the sandbox (its creates).
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"
local cjson = require "cjson"

local lua = proc.lua

-- Runs a command line as printed (`jimeng ...`) in env's directory, `jimeng` being this checkout's, with the
-- directory's ledger (ledger: "off" for none). -> ok, output
local function paste(env, command, ledger)
  return proc.run(("%scd %s && export JIMENG_LEDGER=%s JIMENG_API_KEY=k JIMENG_BASE_URL=%s && " ..
    "jimeng() { %s %s/bin/jimeng \"$@\"; } && { %s; }"):format(proc.own_env, env.dir,
    ledger or (env.dir .. "/ledger.jsonl"), env.sb.url, lua, proc.root, command), "")
end

describe("an error after a paid create", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  -- Runs `jimeng ARGS` in the spec's directory with its own ledger; -> exit code, stdout, stderr.
  local function jimeng(args)
    local errfile = env.dir .. "/stderr"
    local p = io.popen(("%scd %s && JIMENG_LEDGER=%s/ledger.jsonl JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng " ..
      "%s 2>%s; echo \"exit=$?\""):format(proc.own_env, env.dir, env.dir, env.sb.url, lua, proc.root, args, errfile))
    local out = p:read("*a")
    p:close()
    return tonumber(out:match("exit=(%d+)%s*$")), (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
  end

  -- Asserts the what-to-do of a paid task: it is paid for, the commands that save it, never "run ... again".
  local function says_paid(text, id)
    assert.truthy(text:find(("task %s exists (it is paid for): do not create it again"):format(id), 1, true), text)
    assert.truthy(text:find("continue with:\njimeng resume\n", 1, true), text)
    assert.truthy(text:find(("jimeng wait %s && jimeng download %s -o "):format(id, id), 1, true), text)
    assert.falsy(text:find("run the command again", 1, true), text)
    assert.falsy(text:find("run again", 1, true), text)
  end

  -- The error of --json: what_to_do whole (its commands in it) and the commands to copy in `continue`.
  local function json_says_paid(out, id, kind)
    local e = cjson.decode(out).error
    assert.equals(kind, e.kind)
    assert.equals(id, e.task_id)
    assert.is_true(e.created)
    assert.truthy(e.what_to_do:find("(it is paid for)", 1, true), out)
    assert.truthy(e.what_to_do:find("continue with: jimeng resume (or, for this task alone: jimeng wait " .. id ..
      " && jimeng download " .. id .. " -o ", 1, true), out)
    assert.equals("jimeng resume", e.continue[1])
    assert.truthy(e.continue[2]:find("^jimeng wait " .. id), out)
    return e
  end

  for _, case in ipairs {
    { what = "a download cut mid-body, its retries spent", kind = "network",
      fault = { path = "/content$", method = "GET", count = 3, fault = "reset_mid_body", after_bytes = 1000 } },
    { what = "a 502 HTML page for the video", kind = "server",
      fault = { path = "/content$", method = "GET", count = 3, fault = "html", status = 502 } },
    { what = "a 503 for the video", kind = "server",
      fault = { path = "/content$", method = "GET", count = 3, fault = "status", status = 503 } },
    { what = "a protocol error (the video sent compressed)", kind = "protocol",
      fault = { path = "/content$", method = "GET", count = 1, fault = "gzip" } },
  } do
    it(case.what .. ": says it is paid for and how to save it; that saves it and pays nothing more", function()
      env.sb:faults(case.fault)
      local code, _, err = jimeng("generate 'a fox sandbox:bytes=9000' --interval 0.05 -o a.mp4")
      assert.equals(3, code, err)
      local id = err:match("created task (%d+)")
      assert.truthy(id, err)
      assert.truthy(err:find("jimeng: " .. case.kind .. ":", 1, true), err)
      says_paid(err, id)
      assert.truthy(err:find("jimeng download " .. id .. " -o a.mp4\n", 1, true), err)
      assert.equals(1, env.sb:stats().creates)
      -- the same in --json
      env.sb:faults(case.fault)
      local out
      code, out, err = jimeng("generate 'an owl sandbox:bytes=9000' --interval 0.05 -o b.mp4 --json")
      assert.equals(3, code, err)
      local id2 = err:match("created task (%d+)")
      json_says_paid(out, id2, case.kind)
      assert.equals(2, env.sb:stats().creates)
      -- what it says to do saves both, and pays for nothing more
      code, _, err = jimeng("resume")
      assert.equals(0, code, err)
      assert.equals(9000, #h.read(env.dir .. "/a.mp4"))
      assert.equals(9000, #h.read(env.dir .. "/b.mp4"))
      assert.equals(2, env.sb:stats().creates)
    end)
  end

  it("the command for this task alone saves it too (the ledger turned off: it is the only one)", function()
    env.sb:faults { path = "/content$", method = "GET", count = 3, fault = "reset_mid_body", after_bytes = 1000 }
    local ok, err = proc.run(("%scd %s && JIMENG_LEDGER=off JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng " ..
      "generate 'a fox sandbox:bytes=9000' --interval 0.05 -o 'my fox.mp4'"):format(proc.own_env, env.dir, env.sb.url, lua,
      proc.root), "")
    assert.is_false(ok)
    local id = err:match("created task (%d+)")
    assert.truthy(err:find("continue with:\njimeng wait " .. id .. " && jimeng download " .. id .. " -o 'my fox.mp4'\n",
      1, true), err)
    assert.falsy(err:find("run the command again", 1, true), err)
    -- the line as printed, pasted into a shell where `jimeng` is this checkout's command
    local command = err:match("continue with:\n([^\n]+)\n")
    local saved, out = paste(env, command, "off")
    assert.is_true(saved, out)
    assert.equals(9000, #h.read(env.dir .. "/my fox.mp4"))
    assert.equals(1, env.sb:stats().creates)
  end)

  it("generate --force whose download fails: the commands it prints carry --force, and they save it", function()
    h.write(env.dir .. "/old.mp4", "the old video")
    env.sb:faults { path = "/content$", method = "GET", count = 3, fault = "reset_mid_body", after_bytes = 1000 }
    local code, out, err = jimeng("generate 'a forced fox sandbox:bytes=9000' --interval 0.05 -o old.mp4 --force --json")
    assert.equals(3, code, err)
    assert.equals("the old video", h.read(env.dir .. "/old.mp4")) -- kept: the new one is not whole
    local e = cjson.decode(out).error
    assert.equals("jimeng resume --force", e.continue[1])
    assert.truthy(e.continue[2]:find(" -o old.mp4 --force", 1, true), e.continue[2])
    assert.truthy(err:find("continue with:\njimeng resume --force\n", 1, true), err)
    for _, command in ipairs(e.continue) do -- each, as printed, replaces the old file and pays nothing more
      h.write(env.dir .. "/old.mp4", "the old video")
      local ok, rout = paste(env, command)
      assert.is_true(ok, command .. "\n" .. rout)
      assert.equals(9000, #h.read(env.dir .. "/old.mp4"), command)
    end
    assert.equals(1, env.sb:stats().creates)
  end)

  -- A batch of two jobs without a journal whose downloads all fail (3 attempts each, then it gives up: 6 faults
  -- end both and leave none for what follows): both paid for, none saved. -> exit code, stdout, stderr
  local function failed_batch(jobs, args)
    env.sb:faults { path = "/content$", method = "GET", count = 6, fault = "status", status = 503 }
    h.write(env.dir .. "/jobs.jsonl", jobs)
    local code, out, err = jimeng("batch jobs.jsonl -o vids --interval 0.05" .. args)
    assert.equals(3, code, err)
    assert.equals(2, env.sb:stats().creates)
    return code, out, err
  end

  it("a batch without a journal run again after its paid tasks were left unsaved: refused before it pays, " ..
    "naming jimeng resume", function()
    failed_batch('{"prompt":"a fox","label":"fox"}\n{"prompt":"an owl","label":"owl"}\n', "")
    local code, _, err = jimeng("batch jobs.jsonl -o vids --interval 0.05")
    assert.equals(2, code, err)
    assert.truthy(err:find("paid for and not saved yet", 1, true), err)
    assert.truthy(err:find("jimeng resume", 1, true), err)
    assert.truthy(err:find("nothing was paid for", 1, true), err)
    assert.equals(2, env.sb:stats().creates)
    code, _, err = jimeng("resume")
    assert.equals(0, code, err)
    assert.equals(h.fixture(), h.read(env.dir .. "/vids/fox.mp4"))
    assert.equals(2, env.sb:stats().creates)
  end)

  it("the output's directory removed while the task is made: an io error that says how to save it", function()
    env.sb:config { queue_seconds = 0.05, process_seconds = proc.scaled(1.5) }
    assert(os.execute("mkdir " .. env.dir .. "/sub"))
    local errfile = env.dir .. "/stderr"
    os.execute(("%scd %s && JIMENG_LEDGER=%s/ledger.jsonl JIMENG_API_KEY=k JIMENG_BASE_URL=%s sh -c '%s %s/bin/jimeng " ..
      "generate \"a fox\" --interval 0.1 -o sub/a.mp4 --json >%s/out 2>%s; echo $? >%s/code' >/dev/null 2>&1 &"):format(
      proc.own_env, env.dir, env.dir, env.sb.url, lua, proc.root, env.dir, errfile, env.dir))
    local deadline = core.now() + 15
    while not (h.read(errfile) or ""):find("created task %d+") and core.now() < deadline do core.sleep(0.02) end
    assert(os.execute("rm -rf " .. env.dir .. "/sub"))
    while not (h.read(env.dir .. "/code") or ""):find("%d") and core.now() < deadline + 15 do core.sleep(0.05) end
    local err = h.read(errfile)
    assert.equals("3", h.read(env.dir .. "/code"):match("%d+"), err)
    local id = err:match("created task (%d+)")
    assert.truthy(err:find("jimeng: io:", 1, true), err)
    says_paid(err, id)
    json_says_paid(h.read(env.dir .. "/out"), id, "io")
    assert.equals(1, env.sb:stats().creates)
  end)

  it("a batch without a journal whose downloads fail: names the tasks paid for and jimeng resume, never the same " ..
    "command", function()
    local _, out, err = failed_batch('{"prompt":"a fox"}\n{"prompt":"an owl"}\n', " --json")
    assert.equals(6, #h.api_requests(env.sb, "/content$"))
    local r = cjson.decode(out)
    assert.equals(2, r.errors)
    assert.equals(2, #r.paid_task_ids)
    assert.equals("jimeng resume", r.continue[1])
    assert.truthy(r.what_to_do:find("2 tasks paid for and not saved", 1, true), out)
    assert.truthy(err:find("do not run the same command again", 1, true), err)
    assert.truthy(err:find("continue with:\njimeng resume\n", 1, true), err)
    for _, id in ipairs(r.paid_task_ids) do assert.truthy(err:find("jimeng wait " .. id .. " && jimeng download " .. id, 1,
      true), err) end
    local code
    code, out, err = jimeng("resume")
    assert.truthy(out:find("2 saved", 1, true) or err:find("2 saved", 1, true), out .. err)
    assert.equals(0, code, err)
    for _, j in ipairs(r.jobs) do assert.truthy(h.exists(env.dir .. "/" .. j.path), j.path) end
    assert.equals(2, env.sb:stats().creates)
  end)

  it("an error that paid for nothing still says what to do in --json", function()
    local code, out = jimeng("generate 'x' --seconds 7 --json")
    assert.equals(2, code)
    local e = cjson.decode(out).error
    assert.equals("invalid_argument", e.kind)
    assert.truthy(e.what_to_do:find("jimeng generate --help", 1, true), out)
    assert.is_nil(e.continue)
    assert.equals(0, env.sb:stats().creates)
  end)
end)

describe("a signal, with --json: the commands that continue, and what was paid for", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 30 }, client = false, dir = "each" }

  -- Starts `jimeng ARGS` in the background with its own ledger (stdout to out, stderr to err, its exit code to
  -- code); -> its shell's pid (jimeng is its child: pkill -P signals it).
  local function start(args)
    os.remove(env.dir .. "/code")
    local cmd = ("cd %s && JIMENG_LEDGER=%s/ledger.jsonl JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng %s"):format(
      env.dir, env.dir, env.sb.url, lua, proc.root, args)
    local p = io.popen(("%ssh -c '%s >%s/out 2>%s/err; echo $? >%s/code' >/dev/null 2>&1 & echo $!"):format(proc.own_env,
      cmd:gsub("'", "'\\''"), env.dir, env.dir, env.dir))
    local pid = p:read("*l")
    p:close()
    return pid
  end
  local function signal(sig, pid) os.execute(proc.clean_env .. "pkill -" .. sig .. " -P " .. pid) end
  local function wait_until(pred, seconds)
    local deadline = core.now() + (seconds or 15)
    while not pred() and core.now() < deadline do core.sleep(0.02) end
    return pred()
  end
  local function ended()
    assert.truthy(wait_until(function() return (h.read(env.dir .. "/code") or ""):find("%d") end), h.read(env.dir .. "/err"))
    return h.read(env.dir .. "/code"):match("%d+"), h.read(env.dir .. "/err") or "", h.read(env.dir .. "/out") or ""
  end
  local function creates() return env.sb:stats().creates end

  for _, sig in ipairs { "INT", "TERM" } do
    it(("generate and download --json after SIG%s: what_to_do holds the commands, continue lists them"):format(sig),
      function()
        env.sb:reset()
        env.sb:config { queue_seconds = 0.05, process_seconds = 30 }
        local pid = start("generate 'a json fox' --interval 0.1 -o fox.mp4 --json")
        assert.truthy(wait_until(function() return creates() == 1 end))
        local id = next(env.sb:tasks())
        assert.truthy(wait_until(function() return (h.read(env.dir .. "/err") or ""):find("created task") end))
        signal(sig, pid)
        local code, err, out = ended()
        assert.equals("130", code, err)
        local e = cjson.decode(out).error
        assert.equals("interrupted", e.kind)
        assert.equals(id, e.task_id)
        assert.same({ "jimeng resume", ("jimeng wait %s && jimeng download %s -o fox.mp4"):format(id, id) }, e.continue)
        assert.truthy(e.what_to_do:find(("task %s exists (it is paid for): do not create it again; continue with: " ..
          "jimeng resume (or, for this task alone: jimeng wait %s && jimeng download %s -o fox.mp4)"):format(id, id, id),
          1, true), out)
        -- download: its own command
        env.sb:faults { path = "/content$", method = "GET", fault = "stall", seconds = 10, count = 1 }
        env.sb:finish()
        pid = start("download " .. id .. " -o 'my fox.mp4' --json")
        assert.truthy(wait_until(function() return #h.api_requests(env.sb, "/content$") > 0 end))
        core.sleep(0.2)
        signal(sig, pid)
        code, err, out = ended()
        assert.equals("130", code, err)
        e = cjson.decode(out).error
        assert.same({ ("jimeng download %s -o 'my fox.mp4'"):format(id) }, e.continue)
        assert.truthy(e.what_to_do:find(("continue with: jimeng download %s -o 'my fox.mp4'"):format(id), 1, true), out)
        assert.equals(1, creates())
      end)
  end

  -- The ids of the sandbox's tasks, sorted; and a list sorted.
  local function sorted(list)
    table.sort(list)
    return list
  end
  local function task_ids()
    local ids = {}
    for id in pairs(env.sb:tasks()) do ids[#ids + 1] = id end
    return sorted(ids)
  end

  -- A batch of two jobs, stopped by a signal once both are created: its --json summary, stderr and stdout.
  local function stopped_batch(jobs, args, sig)
    env.sb:reset()
    env.sb:config { queue_seconds = 0.05, process_seconds = 30 }
    h.write(env.dir .. "/jobs.jsonl", jobs)
    local pid = start("batch jobs.jsonl -o vids " .. args .. " --json")
    assert.truthy(wait_until(function() return creates() == 2 end))
    assert.truthy(wait_until(function() return select(2, (h.read(env.dir .. "/err") or ""):gsub("created task", "")) == 2 end))
    signal(sig, pid)
    local code, err, out = ended()
    assert.equals("130", code, err)
    return cjson.decode(out), err, out
  end

  it("batch --json after SIGTERM, without a journal: the tasks it paid for, and jimeng resume saves them", function()
    local r, err, out = stopped_batch('{"prompt":"a term fox"}\n{"prompt":"a term owl"}\n', "--interval 0.1", "TERM")
    assert.equals(2, r.interrupted)
    assert.equals(2, r.paid)
    assert.same(task_ids(), sorted(r.paid_task_ids))
    assert.equals("jimeng resume", r.continue[1])
    assert.equals(3, #r.continue) -- and each task alone
    assert.truthy(r.what_to_do:find("2 tasks paid for and not saved", 1, true), out)
    assert.truthy(r.what_to_do:find("continue with: jimeng resume", 1, true), out)
    assert.truthy(err:find("continue with:\njimeng resume\n", 1, true), err)
    env.sb:finish()
    local ok, rout = paste(env, r.continue[1])
    assert.is_true(ok, rout)
    for _, j in ipairs(r.jobs) do assert.truthy(h.exists(env.dir .. "/" .. j.path), j.path) end
    assert.equals(2, creates())
  end)

  it("batch --json after SIGINT, with a journal: the same command, whole, continues it and pays nothing more", function()
    local r, _, out = stopped_batch('{"prompt":"an int fox"}\n{"prompt":"an int owl"}\n',
      "--journal j.jsonl --interval 0.1", "INT")
    assert.same(task_ids(), sorted(r.paid_task_ids))
    assert.same({ "jimeng batch jobs.jsonl -o vids --journal j.jsonl --interval 0.1 --json" }, r.continue)
    assert.truthy(r.what_to_do:find("run the same command again to continue", 1, true), out)
    env.sb:finish()
    local ok, rout = paste(env, r.continue[1])
    assert.is_true(ok, rout)
    assert.equals(2, cjson.decode(rout:match("(%b{})%s*$")).skipped + cjson.decode(rout:match("(%b{})%s*$")).saved)
    assert.equals(2, creates())
  end)

  it("experiment --json after SIGTERM: the tasks it paid for and the command that continues it", function()
    env.sb:reset()
    env.sb:config { queue_seconds = 0.05, process_seconds = 30 }
    h.write(env.dir .. "/grid.json", cjson.encode { name = "g", base = { prompt = "a {animal}", seconds = 5 },
      vars = { animal = { "fox", "owl" } } })
    local pid = start("experiment grid.json -o g --interval 0.1 --no-posters --json")
    assert.truthy(wait_until(function() return creates() == 2 end))
    assert.truthy(wait_until(function() return select(2, (h.read(env.dir .. "/err") or ""):gsub("created task", "")) == 2 end))
    signal("TERM", pid)
    local code, err, out = ended()
    assert.equals("130", code, err)
    local r = cjson.decode(out)
    assert.equals(2, r.paid)
    assert.same(task_ids(), sorted(r.paid_task_ids))
    assert.same({ "jimeng experiment grid.json -o g --interval 0.1 --no-posters --json" }, r.continue)
    assert.truthy(r.what_to_do:find("2 tasks paid for and not saved", 1, true), out)
    env.sb:finish()
    local ok, rout = paste(env, r.continue[1])
    assert.is_true(ok, rout)
    assert.equals(2, creates())
  end)
end)
