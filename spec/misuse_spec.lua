-- Odd input never ends in a raw traceback: a config path that is a directory, a ledger line with an odd time,
-- the calls of a closed client, the Lua API called with the wrong arguments; invisible prompts are refused
-- before they are paid for. Money is counted at the sandbox (its creates).
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"
local jimeng = require "jimeng"

local lua = proc.lua

-- Runs `jimeng ARGS` in dir with the environment assignments env; -> exit code, stdout, stderr.
local function cli(dir, args, env)
  local errfile = dir .. "/stderr"
  local p = io.popen(("%scd %s && %s %s %s/bin/jimeng %s 2>%s; echo \"exit=$?\""):format(proc.own_env, dir, env or "",
    lua, proc.root, args, errfile))
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("exit=(%d+)%s*$")), (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
end

local function no_traceback(text)
  assert.falsy(text:find("traceback", 1, true), text)
  assert.falsy(text:find("%.lua:%d+:"), text)
end

describe("a config file that is a directory", function()
  local env = h.with_sandbox { client = false, dir = "each" }

  it("is a config error naming the path, for JIMENG_CONFIG and for the default place; nothing is sent", function()
    assert(os.execute("mkdir -p " .. env.dir .. "/cfg " .. env.dir .. "/home/.config/jimeng/config"))
    local base = ("JIMENG_API_KEY=k JIMENG_BASE_URL=%s "):format(env.sb.url)
    for _, case in ipairs {
      { env = base .. "JIMENG_CONFIG=" .. env.dir .. "/cfg", path = env.dir .. "/cfg" },
      { env = "unset XDG_CONFIG_HOME; " .. base .. "HOME=" .. env.dir .. "/home",
        path = env.dir .. "/home/.config/jimeng/config" },
    } do
      for _, args in ipairs { "status 123", "generate 'a fox'", "config show" } do
        local code, out, err = cli(env.dir, args, case.env)
        assert.equals(2, code, err)
        assert.equals("", out)
        no_traceback(err)
        assert.truthy(err:find("jimeng: invalid_argument: cannot read the config file " .. case.path, 1, true), err)
        assert.truthy(err:find("Is a directory", 1, true), err)
      end
      local code, out = cli(env.dir, "status 123 --json", case.env)
      assert.equals(2, code)
      assert.equals("invalid_argument", cjson.decode(out).error.kind)
    end
    assert.equals(0, #h.api_requests(env.sb, "^/v1/"))
  end)
end)

describe("a ledger line with an odd time or odd fields", function()
  local env = h.with_sandbox { client = false, dir = "each" }

  it("list and show the entry with its time unknown (or whole seconds), never crash; --json stays JSON", function()
    local ledger = env.dir .. "/ledger.jsonl"
    h.write(ledger, table.concat({
      '{"ev":"sending","ref":"r1","at":1.5,"params":{"prompt":"half a second"},"output":"/tmp/a.mp4"}',
      '{"ev":"created","ref":"r1","id":"111","at":"x"}',
      '{"ev":"sending","ref":"r2","at":1e400,"params":"not a table","output":5}',
      '{"ev":"created","ref":"r2","id":"222","at":-5}',
      '{"ev":"saved","id":"222","path":7,"bytes":1.5,"at":{}}',
      '{"ev":"sending","ref":"r3","at":"x","params":{"prompt":{"a":1}}}',
      '{"ev":"created","ref":"r3","id":"333","at":1e400}',
    }, "\n") .. "\n")
    local e = "JIMENG_LEDGER=" .. ledger
    local code, out, err = cli(env.dir, "list", e)
    assert.equals(0, code, err)
    no_traceback(err)
    assert.truthy(out:find("1970-01-01 00:00  111", 1, true), out) -- 1.5 is second 1
    assert.truthy(out:find("\n?  222", 1, true), out) -- 1e400: unknown
    assert.truthy(out:find("?  333", 1, true), out)
    assert.falsy(out:find("table: ", 1, true), out)
    code, out, err = cli(env.dir, "list --json", e)
    assert.equals(0, code, err)
    local tasks = cjson.decode(out).tasks
    assert.equals(3, #tasks)
    assert.is_nil(tasks[1].created_at) -- 333: at 1e400 is no time
    assert.equals(1, tasks[3].created_at)
    for _, id in ipairs { "111", "222", "333" } do
      code, out, err = cli(env.dir, "show " .. id, e)
      assert.equals(0, code, err)
      no_traceback(err)
      assert.truthy(out:find("id:        " .. id, 1, true), out)
      code, out, err = cli(env.dir, "show " .. id .. " --json", e)
      assert.equals(0, code, err)
      assert.equals(id, cjson.decode(out).id)
    end
    code, out = cli(env.dir, "show 222", e)
    assert.equals(0, code)
    assert.truthy(out:find("created:   ?", 1, true), out)
  end)
end)

describe("a closed client", function()
  local env = h.with_sandbox { client = false, reset = true }

  it("create, generate, detect, recognize and omnihuman return a typed interrupted error, send nothing, pay nothing",
    function()
      local dir = h.tmpdir()
      -- auto dialect: the first call of a base URL would ask the gateway which it is (a request of its own)
      local c = assert(jimeng.new { api_key = "k", base_url = env.sb.url, ledger = false, dialect = "auto" })
      c:close()
      local calls = {
        function() return c:create { prompt = "a fox" } end,
        function() return c:generate({ prompt = "a fox" }, { output = dir .. "/fox.mp4" }) end,
        function() return c:detect("https://example.com/a.jpg") end,
        function() return c:recognize("https://example.com/a.jpg") end,
        function() return c:omnihuman { image = "https://example.com/a.jpg", audio = "https://example.com/a.mp3" } end,
        function() return c:status("123") end,
      }
      for i, call in ipairs(calls) do
        local ok, v, err = pcall(call)
        assert.is_true(ok, tostring(v))
        assert.is_nil(v, i)
        assert.is_true(jimeng.is_error(err), tostring(err))
        assert.equals("interrupted", err.kind)
        assert.truthy(err.message:find("closed", 1, true), err.message)
      end
      assert.is_false(h.exists(dir .. "/fox.mp4"))
      assert.equals(0, #h.api_requests(env.sb, "^/v1/"))
      assert.equals(0, env.sb:stats().creates)
    end)
end)

describe("the Lua API called with the wrong arguments", function()
  it("jimeng.gather raises naming itself and its argument, and starts nothing", function()
    local ran = false
    for _, bad in ipairs { { nil, "list must be an array of functions or handles; got a nil" },
      { "x", "got a string" }, { { 1 }, "list[1] must be a function or a handle" },
      { { function() ran = true end, "f" }, "list[2] must be a function or a handle" } } do
      local ok, why = pcall(jimeng.gather, bad[1])
      assert.is_false(ok)
      assert.truthy(tostring(why):find("jimeng.gather(list): ", 1, true), tostring(why))
      assert.truthy(tostring(why):find(bad[2], 1, true), tostring(why))
    end
    assert.is_false(ran)
    local values = jimeng.gather { function() return 1 end }
    assert.same({ 1 }, values)
  end)

  it("jimeng.batch.plan without a client raises naming itself and its argument", function()
    local batch = require "jimeng.batch"
    for _, bad in ipairs { false, "x", 5 } do
      local ok, why = pcall(batch.plan, bad or nil, { { prompt = "a fox" } })
      assert.is_false(ok)
      assert.truthy(tostring(why):find("jimeng.batch.plan(client, jobs, opts): client must be a client of jimeng.new",
        1, true), tostring(why))
    end
  end)
end)

describe("a prompt that shows nothing", function()
  local env = h.with_sandbox { reset = true, dir = "each" }

  local INVISIBLE = {
    "\239\187\191", -- U+FEFF, a byte order mark alone
    "\226\128\139", -- U+200B zero width space
    "\226\128\168", -- U+2028 line separator
    "\226\128\169 \226\128\140", -- U+2029, a space, U+200C
    "\226\129\160\226\128\141", -- U+2060 word joiner, U+200D
    "\225\160\142", -- U+180E
    "\194\133\225\154\128\226\128\131\226\128\175\226\129\159", -- U+0085, U+1680, U+2003, U+202F, U+205F
    " \t\227\128\128\194\160", -- the white space refused before: still refused
  }

  it("only white space or invisible format characters: refused before anything is sent (Lua, generate, batch)",
    function()
      for _, p in ipairs(INVISIBLE) do
        local t, err = env.client:create { prompt = p }
        h.failed("invalid_argument", t, err)
        assert.equals("prompt", err.field)
        assert.truthy(err.message:find("only white space or invisible characters", 1, true), err.message)
        t, err = env.client:create { images = { "https://example.com/a.jpg" }, content = { { type = "text", text = p } } }
        h.failed("invalid_argument", t, err)
        local s
        s, err = env.client:batch({ { prompt = "a fox" }, { prompt = p } }, { output_dir = env.dir })
        h.failed("invalid_argument", s, err)
      end
      for _, p in ipairs { "\239\187\191", "\226\128\139", "\226\128\168" } do
        local code, _, err = cli(env.dir, "generate '" .. p .. "'", ("JIMENG_API_KEY=k JIMENG_BASE_URL=%s"):format(env.sb.url))
        assert.equals(2, code, err)
        assert.truthy(err:find("prompt is only white space or invisible characters", 1, true), err)
      end
      assert.equals(0, env.sb:stats().creates)
    end)

  it("a byte order mark in front is no part of the prompt: the API gets the prompt without it", function()
    local body = assert(jimeng.normalize { prompt = "\239\187\191a fox at dawn" })
    assert.equals("a fox at dawn", body.prompt)
    local task = assert(env.client:create { prompt = "\239\187\191a fox at dawn" })
    assert.equals("a fox at dawn", env.sb:create_entry(task.id).body.prompt)
    -- only the first: one inside, or a second, is the user's text and is sent as it is
    body = assert(jimeng.normalize { prompt = "a\226\128\139fox" })
    assert.equals("a\226\128\139fox", body.prompt)
    assert.equals(1, env.sb:stats().creates)
  end)
end)

describe("experiment --no-posters", function()
  local env = h.with_sandbox { client = false, reset = true, dir = "each" }

  it("runs no ffmpeg and writes no poster; without it, the ffmpeg on PATH makes them", function()
    -- an ffmpeg of the spec's own, first on PATH: it says it ran, and writes a poster
    assert(os.execute("mkdir " .. env.dir .. "/bin"))
    h.write(env.dir .. "/bin/ffmpeg", ("#!/bin/sh\necho ran >> %s/ffmpeg.ran\nfor a; do last=$a; done\n" ..
      "printf jpeg > \"$last\"\n"):format(env.dir))
    assert(os.execute("chmod +x " .. env.dir .. "/bin/ffmpeg"))
    h.write(env.dir .. "/grid.json", cjson.encode { name = "g", base = { prompt = "a {animal}", seconds = 5 },
      vars = { animal = { "fox", "owl" } } })
    local run_env = ("PATH=%s/bin:$PATH JIMENG_API_KEY=k JIMENG_BASE_URL=%s"):format(env.dir, env.sb.url)
    local code, _, err = cli(env.dir, "experiment grid.json -o plain --interval 0.05 --no-posters", run_env)
    assert.equals(0, code, err)
    assert.is_nil(h.read(env.dir .. "/ffmpeg.ran"))
    local p = io.popen("ls " .. env.dir .. "/plain/posters")
    assert.equals("", p:read("*a"))
    p:close()
    assert.falsy(h.read(env.dir .. "/plain/index.html"):find("poster=", 1, true))
    code, _, err = cli(env.dir, "experiment grid.json -o framed --interval 0.05", run_env)
    assert.equals(0, code, err)
    assert.truthy(h.read(env.dir .. "/ffmpeg.ran"), "the fake ffmpeg never ran: the spec proves nothing")
    assert.equals("jpeg", h.read(env.dir .. "/framed/posters/" .. cjson.decode(h.read(env.dir .. "/framed/results.json"))
      .cells[1].poster:match("[^/]+$")))
  end)
end)

describe("burst and max_rps", function()
  local env = h.with_sandbox { client = false }

  it("burst is from 1 to max_rps rounded down, and 1 under max_rps 2: max_rps 0.5 takes burst 1, as its default", function()
    local function new(opts)
      opts.api_key, opts.base_url, opts.ledger = "k", env.sb.url, false
      return jimeng.new(opts)
    end
    assert(new { max_rps = 0.5 }):close()
    assert(new { max_rps = 0.5, burst = 1 }):close()
    assert(new { max_rps = 1.9, burst = 1 }):close()
    assert(new { max_rps = 2.7, burst = 2 }):close()
    for _, case in ipairs { { 0.5, 2, "from 1 to 1 " }, { 1.9, 2, "from 1 to 1 " }, { 2.7, 3, "from 1 to 2 " },
      { 10, 0, "from 1 to 10 " }, { 10, 1.5, "from 1 to 10 " } } do
      local c, err = new { max_rps = case[1], burst = case[2] }
      h.failed("invalid_argument", c, err)
      assert.equals("burst", err.field)
      assert.truthy(err.message:find("burst must be a whole number of requests " .. case[3], 1, true), err.message)
      assert.falsy(err.message:find("to 0", 1, true), err.message)
    end
  end)
end)
