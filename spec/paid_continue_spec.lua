-- A command that stops after it paid (a download that fails, a full disk, a deleted directory, a signal) says
-- the task is paid for and how to save it without paying again, on stderr and in --json alike: never "run the
-- command again", which pays for a second task. Money is counted at the sandbox (its creates).
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"
local cjson = require "cjson"

local lua = proc.lua

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
    local saved, out = proc.run(("%scd %s && export JIMENG_LEDGER=off JIMENG_API_KEY=k JIMENG_BASE_URL=%s && " ..
      "jimeng() { %s %s/bin/jimeng \"$@\"; } && { %s; }"):format(proc.own_env, env.dir, env.sb.url, lua, proc.root, command), "")
    assert.is_true(saved, out)
    assert.equals(9000, #h.read(env.dir .. "/my fox.mp4"))
    assert.equals(1, env.sb:stats().creates)
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
