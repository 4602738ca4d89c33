-- What a new user's trial of the ledger found (issue 26): an unmakeable ledger said, numbers as numbers, the
-- directories of a download's template, fields the ledger cannot fill, a live generate left alone by resume,
-- resume --force, what resume leaves said, list fitted to the terminal. Against the sandbox, creates counted.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"
local core = require "jimeng.core"

local lua = proc.lua
local _

local lsupport = require "spec.support.ledger"
local wait_for = lsupport.wait_for

describe("the ledger, as a new user tried it", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, client = false, reset = true,
    dir = "each" }

  -- `jimeng <args>` in env.dir with the ledger in env.dir/state: exit code, stdout, stderr.
  local function jimeng_cmd(args, extra_env) return lsupport.jimeng(env, args, extra_env) end

  -- `jimeng <args>` started in the background; its output and then "exit=N" go to bg.log. -> its pid
  local function jimeng_bg(args)
    local cmd = ("cd %s || exit; XDG_STATE_HOME=%s/state JIMENG_LEDGER= JIMENG_API_KEY=ledger-secret-key JIMENG_BASE_URL=%s " ..
      "%s %s/bin/jimeng %s >>bg.log 2>&1 & echo $! >bg.pid; wait $!; echo exit=$? >>bg.log"):format(env.dir, env.dir,
      env.sb.url, lua, proc.root, args)
    os.execute(("%ssh -c '%s' >/dev/null 2>&1 &"):format(proc.own_env, (cmd:gsub("'", "'\\''"))))
    local deadline = core.now() + 5
    while core.now() < deadline and not (h.read(env.dir .. "/bg.pid") or ""):find("%d") do core.sleep(0.02) end
    return (h.read(env.dir .. "/bg.pid") or ""):match("%d+")
  end

  local function ledger_file() return env.dir .. "/state/jimeng/ledger.jsonl" end

  it("whose default place cannot be made: generate says so before the create; list and resume say it cannot be read",
    function()
      assert(core.mkdirs(env.dir .. "/state"))
      h.write(env.dir .. "/state/jimeng", "a file where the ledger's directory should be\n")
      local code, _, err = jimeng_cmd("generate 'no place for the ledger' -o v.mp4 --interval 0.05")
      assert.equals(0, code, err)
      assert.equals(1, env.sb:stats().creates)
      local _, warnings = err:gsub("no ledger: cannot make its directory", "")
      assert.equals(1, warnings, err)
      assert.truthy(err:find("no ledger", 1, true) < err:find("created task", 1, true), err)
      for _, cmd in ipairs { "resume", "list" } do
        code, _, err = jimeng_cmd(cmd)
        assert.is_not.equals(0, code, cmd .. ": " .. err)
        assert.truthy(err:find("cannot read the ledger", 1, true), err)
        assert.falsy(err:find("nothing to resume", 1, true), err)
      end
      assert.equals(1, env.sb:stats().creates)
    end)

  it("keeps numbers as numbers: the CLI's seed and a batch job's; {seed} and show print 42, not 42.0", function()
    local code, out, err = jimeng_cmd("create 'a seeded fox' --seed 42")
    assert.equals(0, code, err)
    local id = out:match("%d+")
    local sending = wait_for(ledger_file(), "sending")
    assert.equals("number", type(sending.params.seed))
    code, out, err = jimeng_cmd("show " .. id)
    assert.equals(0, code, err)
    assert.truthy(out:find("seed=42 ", 1, true) or out:find("seed=42\n", 1, true), out)
    assert.falsy(out:find("42.0", 1, true), out)
    -- a batch job read from JSON lines: {seed} of 42 (a float once decoded on Lua 5.3+)
    h.write(env.dir .. "/jobs.jsonl", '{"prompt":"a seeded boat","seed":42,"output":"boat-{seed}.mp4"}\n')
    code, _, err = jimeng_cmd("batch jobs.jsonl -o out/ --interval 0.05")
    assert.equals(0, code, err)
    assert.equals(h.fixture(), h.read(env.dir .. "/out/boat-42.mp4"))
  end)

  it("download and batch make the directories a template names; a plain path's directory must exist", function()
    local code, out = jimeng_cmd("create 'dated'")
    assert.equals(0, code)
    local id = out:match("%d+")
    assert.equals(0, (jimeng_cmd("wait " .. id .. " --interval 0.05")))
    local err
    code, out, err = jimeng_cmd("download " .. id .. " -o '{date}/{n}.mp4'")
    assert.equals(0, code, err)
    local dated = os.date("%Y-%m-%d") .. "/1.mp4"
    assert.equals(dated .. "\n", out)
    assert.equals(h.fixture(), h.read(env.dir .. "/" .. dated))
    code, _, err = jimeng_cmd("download " .. id .. " -o no-such-dir/plain.mp4")
    assert.equals(3, code, err) -- as before: an io error
    assert.truthy(err:find("does not exist", 1, true), err)
    -- a batch job's own template with a directory
    h.write(env.dir .. "/jobs.jsonl", '{"prompt":"a batch in a dated dir","output":"{date}/job-{n}.mp4"}\n')
    code, _, err = jimeng_cmd("batch jobs.jsonl -o runs/ --interval 0.05")
    assert.equals(0, code, err)
    assert.equals(h.fixture(), h.read(env.dir .. "/runs/" .. os.date("%Y-%m-%d") .. "/job-1.mp4"))
  end)

  it("download of a task the ledger never saw refuses a field it cannot fill, before fetching anything", function()
    local code, out = jimeng_cmd("create 'unledgered'", "JIMENG_LEDGER=false")
    assert.equals(0, code)
    local id = out:match("%d+")
    assert.equals(0, (jimeng_cmd("wait " .. id .. " --interval 0.05")))
    local err
    code, _, err = jimeng_cmd("download " .. id .. " -o '{prompt:.5}-{seed}.mp4'")
    assert.equals(2, code, err)
    assert.truthy(err:find("{prompt} cannot be filled in", 1, true), err)
    assert.truthy(err:find("never saw task " .. id .. " created", 1, true), err)
    assert.equals(0, #h.api_requests(env.sb, "/content$"))
    assert.is_nil(core.file_size(env.dir .. "/_-random.mp4"))
    -- {id} and {date} it can fill
    code, _, err = jimeng_cmd("download " .. id .. " -o '{id}.mp4'")
    assert.equals(0, code, err)
  end)

  it("resume leaves a task a live generate is saving to it: the generate saves it, nothing fails", function()
    local pid = jimeng_bg("generate 'sandbox:slow=1.5 live' -o live.mp4 --interval 0.1")
    assert.is_string(pid)
    local created = wait_for(ledger_file(), "created")
    local code, _, err = jimeng_cmd("resume --interval 0.05")
    assert.equals(0, code, err)
    assert.truthy(err:find("being saved by another process", 1, true), err)
    assert.falsy(err:find("every task paid for is saved", 1, true), err)
    local deadline = core.now() + 15
    while core.now() < deadline and not (h.read(env.dir .. "/bg.log") or ""):find("exit=") do core.sleep(0.05) end
    local log = h.read(env.dir .. "/bg.log") or ""
    assert.truthy(log:find("exit=0", 1, true), log)
    assert.falsy(log:find("another download", 1, true), log)
    assert.equals(h.fixture(), h.read(env.dir .. "/live.mp4"))
    assert.equals(1, env.sb:stats().creates)
    -- done, the task is the ledger's saved one: resume has nothing left
    code, _, err = jimeng_cmd("resume")
    assert.equals(0, code, err)
    assert.truthy(err:find("every task paid for is saved", 1, true), err)
    assert.equals(created.id, cjson.decode((select(2, jimeng_cmd("list --json")))).tasks[1].id)
  end)

  it("resume --force replaces a file in the way; without it the task is refused and the hint is right", function()
    local pid = jimeng_bg("generate 'sandbox:slow=2 in the way' -o kite.mp4 --interval 0.1")
    wait_for(ledger_file(), "created")
    os.execute("kill -9 " .. pid)
    local deadline = core.now() + 5
    while core.now() < deadline and not (h.read(env.dir .. "/bg.log") or ""):find("exit=") do core.sleep(0.02) end
    h.write(env.dir .. "/kite.mp4", "not the video\n")
    local code, _, err = jimeng_cmd("resume --interval 0.05")
    assert.is_not.equals(0, code, err)
    assert.truthy(err:find("exists", 1, true), err)
    assert.truthy(err:find("--force", 1, true), err)
    code, _, err = jimeng_cmd("resume --force --interval 0.05")
    assert.equals(0, code, err)
    assert.equals(h.fixture(), h.read(env.dir .. "/kite.mp4"))
    assert.equals(1, env.sb:stats().creates)
  end)

  it("resume with only a task of another API left says what is left, not that every task is saved", function()
    assert(core.mkdirs(env.dir .. "/state/jimeng"))
    assert(core.append_durable(ledger_file(), '{"ev":"created","ref":"elsewhere","id":"555","at":1,' ..
      '"base_url":"http://127.0.0.1:1/v1"}\n', true))
    local code, _, err = jimeng_cmd("resume")
    assert.equals(0, code, err)
    assert.truthy(err:find("1 task was made at http://127.0.0.1:1/v1", 1, true), err)
    assert.falsy(err:find("every task paid for is saved", 1, true), err)
    assert.truthy(err:find("not saved: 1 made at another API", 1, true), err)
  end)

  it("list fits its lines to $COLUMNS: a long path loses its middle, keeping its file name", function()
    local long = "a-rather-long-directory-name-for-the-videos/of-this-project/and-one-more-level"
    assert(core.mkdirs(env.dir .. "/" .. long))
    local code, _, err = jimeng_cmd(("generate 'a heron standing in the reeds at dawn, mist on the water' " ..
      "-o %s/heron-at-dawn.mp4 --interval 0.05"):format(long))
    assert.equals(0, code, err)
    for _, w in ipairs { 60, 80, 100, 120 } do
      local out
      code, out, err = jimeng_cmd("list", "COLUMNS=" .. w)
      assert.equals(0, code, err)
      for line in out:gmatch("[^\n]+") do
        assert.truthy(#line < w, ("%d columns: %q"):format(w, line))
        if w >= 80 then assert.truthy(line:find("~[^ ]*/heron%-at%-dawn%.mp4"), line) end
        if w >= 100 then assert.truthy(line:find("a_heron") or line:find("a heron", 1, true), line) end
        assert.truthy(line:find(" saved ", 1, true), line)
      end
    end
  end)
end)
