-- The jimeng command, run as a user runs it: a subprocess against the sandbox.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"
local core = require "jimeng.core"

local lua = proc.lua

describe("the jimeng command", function()
  local sb, dir, env
  setup(function()
    sb = h.sandbox { queue_seconds = 0.05, process_seconds = 0.1 }
    dir = h.tmpdir()
    env = ("JIMENG_API_KEY=cli-key JIMENG_BASE_URL=%s"):format(sb.url)
  end)
  teardown(function()
    sb:stop()
    h.cleanup()
  end)

  -- Runs `jimeng <args>`; returns the exit code, stdout and stderr.
  local function jimeng(args, extra_env)
    local errfile = dir .. "/stderr"
    local p = io.popen(("%scd %s && %s %s %s %s/bin/jimeng %s 2>%s; echo \"exit=$?\""):format(
      proc.own_env, dir, env, extra_env or "", lua, proc.root, args, errfile))
    local out = p:read("*a")
    p:close()
    local code = tonumber(out:match("exit=(%d+)%s*$"))
    return code, (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
  end

  it("with COLUMNS set and no terminal (cron, ssh -T, CI), prints nothing of its own look-up of the height", function()
    -- setsid: no controlling terminal, as under cron; LINES unset: the height is asked of stty (to fit a row)
    assert(core.mkdirs(dir .. "/state/jimeng"))
    h.write(dir .. "/state/jimeng/ledger.jsonl", '{"ev":"created","ref":"r1","id":"123","at":1796545299,' ..
      '"output":"/tmp/x.mp4","params":{"prompt":"a fox"}}\n')
    local code, out, err = jimeng("list -n 2 </dev/null", "XDG_STATE_HOME=" .. dir .. "/state COLUMNS=100 setsid -w")
    assert.truthy(out:find("123", 1, true), out)
    assert.equals(0, code, err)
    assert.falsy(err:find("/dev/tty", 1, true), err)
  end)

  it("reads a negative number after an option as its value (--seed -1), and names the command in its hints", function()
    local code, out, err = jimeng("create 'negative seed' --seed -1")
    assert.equals(0, code, err)
    local creates = h.api_requests(sb, "^/v1/videos$")
    assert.equals(-1, creates[#creates].body.seed)
    assert.truthy(out:find("^%d+"))
    code, out, err = jimeng("create 'bad frames' --frames 100")
    assert.equals(2, code)
    assert.equals("", out)
    assert.truthy(err:find("see jimeng create --help", 1, true), err)
  end)

  it("generate saves the video, prints its path, and shows each status on stderr", function()
    local code, out, err = jimeng("generate '千军万马奔腾在草原上' --seconds 5 --size 1280x720 --seed 7 -o horses.mp4 --interval 0.05")
    assert.equals(0, code, err)
    assert.equals("horses.mp4\n", out)
    assert.equals(h.fixture(), h.read(dir .. "/horses.mp4"))
    assert.truthy(err:find("in_queue"))
    assert.truthy(err:find("completed"))
    assert.truthy(err:find("downloaded 59.7 KiB", 1, true))
    assert.falsy(err:find("\r", 1, true), "carriage returns in a non-terminal stderr")
    local creates = h.api_requests(sb, "^/v1/videos$")
    local body = creates[#creates].body
    assert.equals(121, body.frames)
    assert.equals("16:9", body.aspect_ratio)
    assert.equals(7, body.seed)
  end)

  it("generate --json prints one JSON object with the path, the size and the task", function()
    local code, out = jimeng("generate 'a paper boat' --json -q --interval 0.05 -o boat.mp4")
    assert.equals(0, code)
    local r = cjson.decode(out)
    assert.equals("boat.mp4", r.path)
    assert.equals(#h.fixture(), r.bytes)
    assert.equals("completed", r.task.status)
    assert.is_string(r.task.id)
  end)

  it("create, status, wait and download work one step at a time", function()
    local code, id = jimeng("create 'step by step' --image https://example.com/a.jpg")
    assert.equals(0, code)
    id = id:match("^(%d+)\n$")
    assert.is_string(id)
    local scode, sout = jimeng("status " .. id .. " --json")
    assert.equals(0, scode)
    assert.equals(id, cjson.decode(sout).id)
    local wcode, wout = jimeng("wait " .. id .. " --interval 0.05")
    assert.equals(0, wcode)
    assert.equals(id .. "\tcompleted\n", wout)
    local dcode, dout = jimeng("download " .. id .. " -o step.mp4")
    assert.equals(0, dcode)
    assert.equals("step.mp4\n", dout)
    assert.equals(h.fixture(), h.read(dir .. "/step.mp4"))
  end)

  it("a failed task exits 1 with the server's reason and what to do", function()
    local _, id = jimeng("create 'doomed sandbox:fail'")
    local code, _, err = jimeng("wait " .. id:match("%d+") .. " --interval 0.05")
    assert.equals(1, code)
    assert.truthy(err:find("task_failed"))
    assert.truthy(err:find("what to do:"))
  end)

  it("invalid input exits 2 with the field's message and a hint, and calls no API", function()
    local before = #sb:log()
    local code, out, err = jimeng("generate 'x' --seconds 7")
    assert.equals(2, code)
    assert.equals("", out)
    assert.truthy(err:find("seconds must be 5 or 10"))
    assert.truthy(err:find("what to do:"))
    assert.equals(before, #sb:log())
  end)

  it("usage errors exit 2: no command, an unknown command, a missing argument", function()
    local code, out = jimeng("")
    assert.equals(2, code)
    assert.truthy(out:find("Usage: jimeng"))
    assert.equals(2, (jimeng("teleport")))
    local mcode, _, merr = jimeng("status")
    assert.equals(2, mcode)
    assert.truthy(merr:find("missing argument"))
  end)

  it("an API error exits 3 and --json puts the error on stdout", function()
    local code, out, err = jimeng("status 12345678901234567890 --json")
    assert.equals(3, code)
    local e = cjson.decode(out).error
    assert.equals("not_found", e.kind)
    assert.equals(404, e.status)
    assert.truthy(err:find("check the task id"))
  end)

  it("a wrong key exits 3 and says to set JIMENG_API_KEY; the key is never printed", function()
    local strict = h.sandbox { api_key = "the-only-good-key" }
    local code, out, err = jimeng(("create x --base-url %s --api-key sk-wrong-key-0123456789"):format(strict.url))
    strict:stop()
    assert.equals(3, code)
    assert.truthy(err:find("JIMENG_API_KEY"))
    assert.falsy((out .. err):find("sk-wrong-key-0123456789", 1, true))
  end)

  it("--help lists the commands and examples, and exits 0", function()
    local code, out = jimeng("--help")
    assert.equals(0, code)
    for _, cmd in ipairs { "generate", "create", "status", "wait", "download", "detect", "recognize", "omnihuman", "batch", "sandbox" } do
      assert.truthy(out:find("\n%s+" .. cmd), cmd)
    end
    assert.truthy(out:find("Examples:"))
    local gcode, gout = jimeng("generate --help")
    assert.equals(0, gcode)
    assert.truthy(gout:find("--seconds"))
  end)

  it("detect lists the masks, recognize tells whether a person is there", function()
    local code, out = jimeng("detect 'https://example.com/p.jpg?subjects=2'")
    assert.equals(0, code)
    local masks = {}
    for line in out:gmatch("[^\n]+") do masks[#masks + 1] = line end
    assert.equals(2, #masks)
    local rcode, rout = jimeng("recognize 'https://example.com/p.jpg?subjects=0' --json")
    assert.equals(0, rcode)
    assert.is_false(cjson.decode(rout).has_subject)
  end)

  it("omnihuman with --subject and -o makes the talking-head video", function()
    local code, out, err = jimeng("omnihuman --image 'https://example.com/p.jpg?subjects=2' --audio https://example.com/a.mp3 " ..
      "--subject 2 --resolution 720 -o talk.mp4 --interval 0.05")
    assert.equals(0, code, err)
    assert.equals("talk.mp4\n", out)
    assert.equals(h.fixture(), h.read(dir .. "/talk.mp4"))
    local creates = h.api_requests(sb, "^/v1/videos$")
    local body = creates[#creates].body
    assert.equals(720, body.output_resolution)
    assert.truthy(body.mask_urls[1]:find("/1%.png"))
  end)

  it("sandbox starts a local API and prints how to use it", function()
    local out = dir .. "/sandbox.out"
    local pid = io.popen(("%s%s %s/bin/jimeng sandbox --queue-seconds 0 --process-seconds 0 >%s 2>&1 & echo $!")
      :format(proc.own_env, lua, proc.root, out)):read("*l")
    local url
    for _ = 1, 100 do
      url = (h.read(out) or ""):match("JIMENG_BASE_URL=(%S+)")
      if url then break end
      require("jimeng.core").sleep(0.05)
    end
    assert.is_string(url)
    local code, gout = jimeng(("generate 'from the cli sandbox' -o cli-sb.mp4 --interval 0.05 --base-url %s"):format(url))
    os.execute("kill " .. pid)
    assert.equals(0, code)
    assert.equals("cli-sb.mp4\n", gout)
  end)

  it("sandbox prints its own dialect, tokenops and new-api alike: its export line works after the other's", function()
    local function start(flags, name)
      local out = dir .. "/" .. name .. ".out"
      local pid = io.popen(("%s%s %s/bin/jimeng sandbox --queue-seconds 0 --process-seconds 0 %s >%s 2>&1 & echo $!")
        :format(proc.own_env, lua, proc.root, flags, out)):read("*l")
      local line
      for _ = 1, 100 do
        line = (h.read(out) or ""):match("\n?%s*(export JIMENG_BASE_URL=[^\n]+)")
        if line then break end
        require("jimeng.core").sleep(0.05)
      end
      return pid, assert(line, h.read(out)), h.read(out)
    end
    local pid1, new_api, text1 = start("--dialect new-api", "sb-new-api")
    local pid2, tokenops, text2 = start("", "sb-tokenops")
    assert.equals(" JIMENG_DIALECT=new-api", new_api:sub(-23))
    assert.equals(" JIMENG_DIALECT=tokenops", tokenops:sub(-24))
    assert.truthy(text1:find("\nJIMENG_DIALECT=new-api\n", 1, true), text1)
    assert.truthy(text2:find("\nJIMENG_DIALECT=tokenops\n", 1, true), text2)
    -- one shell, the new-api sandbox first, then the tokenops one: the create reaches the second and is made
    local p = io.popen(("%scd %s && %s && %s && %s %s/bin/jimeng create 'after new-api' 2>&1; echo \"exit=$?\"")
      :format(proc.own_env, dir, new_api, tokenops, lua, proc.root))
    local got = p:read("*a")
    p:close()
    os.execute("kill " .. pid1 .. " " .. pid2)
    assert.truthy(got:find("exit=0", 1, true), got)
  end)
end)
