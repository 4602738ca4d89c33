-- The ledger of paid creates (jimeng.ledger) and the commands on it (list, show, resume), output templates
-- and "already saved": through the library and the jimeng command, against the sandbox, creates counted there.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"
local core = require "jimeng.core"
local jimeng = require "jimeng"
local ledger = require "jimeng.ledger"

local lua = proc.lua

local lsupport = require "spec.support.ledger"
local records, wait_for = lsupport.records, lsupport.wait_for

describe("the ledger", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, client = false, reset = true,
    dir = "each" }

  -- `jimeng <args>` in env.dir with the ledger in env.dir/state: exit code, stdout, stderr.
  local function jimeng_cmd(args, extra_env) return lsupport.jimeng(env, args, extra_env) end

  -- `jimeng <args>` started in the background; returns its pid.
  local function jimeng_bg(args)
    local cmd = ("cd %s && XDG_STATE_HOME=%s/state JIMENG_LEDGER= JIMENG_API_KEY=ledger-secret-key JIMENG_BASE_URL=%s " ..
      "exec %s %s/bin/jimeng %s"):format(env.dir, env.dir, env.sb.url, lua, proc.root, args)
    return io.popen(("%ssh -c '%s >>%s/bg.log 2>&1 & echo $!'"):format(proc.own_env, cmd:gsub("'", "'\\''"), env.dir))
      :read("*l")
  end

  local function ledger_file() return env.dir .. "/state/jimeng/ledger.jsonl" end

  it("records a generate: sent (parameters, base URL, output, never the key), its id, completed, saved", function()
    local path = env.dir .. "/ledger.jsonl"
    local c = h.client(env.sb, { ledger = path, api_key = "sk-ledger-never-written" })
    local r = assert(c:generate({ prompt = "a kite over the sea", seed = 7, images = { "https://cdn.example/a.jpg?sig=s3cret" } },
      { output = env.dir .. "/kite.mp4" }))
    local recs = records(path)
    local evs = {}
    for i, rec in ipairs(recs) do evs[i] = rec.ev end
    assert.same({ "sending", "created", "completed", "saved" }, evs)
    local sending, created, saved = recs[1], recs[2], recs[4]
    assert.equals("a kite over the sea", sending.params.prompt)
    assert.equals(7, sending.params.seed)
    assert.equals("https://cdn.example/a.jpg", sending.params.images[1]) -- a URL's query (a signature) is not kept
    assert.equals(env.sb.url, sending.base_url)
    assert.equals(core.canonical_path(env.dir .. "/kite.mp4"), sending.output)
    assert.is_nil(sending.id) -- not known when it was sent
    assert.equals(sending.ref, created.ref)
    assert.equals(r.task.id, created.id)
    assert.equals(core.canonical_path(r.path), saved.path)
    assert.equals(#h.fixture(), saved.bytes)
    local text = h.read(path)
    local _, mode = proc.run("stat -c %a " .. path)
    assert.equals("600", mode:match("%d+")) -- prompts are private: the owner's only
    assert.falsy(text:find("sk-ledger-never-written", 1, true))
    assert.falsy(text:find("s3cret", 1, true))
    local entries, by_id = ledger.read(path, cjson)
    assert.equals(1, #entries)
    assert.equals("saved", by_id[r.task.id].state)
    c:close()
  end)

  it("is written by none with ledger=false or JIMENG_LEDGER=false", function()
    local c = h.client(env.sb, { ledger = false })
    assert(c:create { prompt = "no ledger" })
    c:close()
    local code = jimeng_cmd("create 'no ledger either'", "JIMENG_LEDGER=false")
    assert.equals(0, code)
    assert.is_nil(h.read(ledger_file()))
    local _, err = jimeng.new { ledger = 3 }
    assert.equals("invalid_argument", err.kind)
  end)

  it("asked for where it cannot be: refused before sending; its default place unmakeable: the create goes on", function()
    local c = h.client(env.sb, { ledger = "/proc/no-such-dir/ledger.jsonl" })
    local _, err = c:create { prompt = "no place for the ledger" }
    assert.equals("io", err.kind)
    assert.is_false(err.created)
    assert.truthy(err.message:find("ledger=false", 1, true), err.message)
    assert.equals(0, env.sb:stats().creates)
    c:close()
    -- a ledger that cannot take the line at the moment of hand-over: the request never leaves
    assert(core.mkdirs(env.dir .. "/a-directory"))
    c = h.client(env.sb, { ledger = env.dir .. "/a-directory" })
    _, err = c:create { prompt = "the ledger is a directory" }
    assert.equals("io", err.kind)
    assert.is_false(err.created)
    assert.truthy(err.message:find("cannot write the ledger before sending", 1, true), err.message)
    assert.equals(0, env.sb:stats().creates)
    assert.equals(0, #h.api_requests(env.sb, "^/v1/videos$"))
    c:close()
    local code, out, stderr = jimeng_cmd("create 'a service without a home'", "XDG_STATE_HOME=/proc/no-such-dir")
    assert.equals(0, code, stderr)
    assert.truthy(out:find("^%d+"))
    code, _, stderr = jimeng_cmd("create 'an explicit ledger'", "JIMENG_LEDGER=/proc/no-such-dir/l.jsonl")
    assert.equals(3, code, stderr)
    assert.equals(1, env.sb:stats().creates)
  end)

  it("takes the records of two processes creating at once: every line whole, every task with its id", function()
    local path = env.dir .. "/shared.jsonl"
    local script = env.dir .. "/creator.lua"
    h.write(script, ([[
local jimeng = require "jimeng"
local c = assert(jimeng.new { api_key = "k", base_url = %q, ledger = %q })
for i = 1, 15 do assert(c:create { prompt = arg[1] .. " " .. i }) end
]]):format(env.sb.url, path))
    local p1 = io.popen(("%s%s %s proc-a 2>&1"):format(proc.own_env, lua, script))
    local p2 = io.popen(("%s%s %s proc-b 2>&1"):format(proc.own_env, lua, script))
    local o1, o2 = p1:read("*a"), p2:read("*a")
    assert.is_true(p1:close() ~= nil, o1)
    assert.is_true(p2:close() ~= nil, o2)
    local recs = records(path) -- raises on a line that is not JSON
    assert.equals(60, #recs)
    local entries = assert(ledger.read(path, cjson))
    assert.equals(30, #entries)
    local made = env.sb:tasks()
    for _, e in ipairs(entries) do
      assert.equals("created", e.state)
      assert.truthy(made[e.id], e.id)
    end
    assert.equals(30, env.sb:stats().creates)
  end)

  it("killed between send and answer: the create is in the ledger as sent, id unknown; resume says so and pays nothing", function()
    env.sb:faults { path = "^/v1/videos$", method = "POST", fault = "stall", seconds = 1.5, count = 1 }
    local pid = jimeng_bg("generate 'killed while sending' -o lost.mp4")
    local sending = wait_for(ledger_file(), "sending")
    assert.equals("killed while sending", sending.params.prompt)
    local deadline = core.now() + 5
    while #h.api_requests(env.sb, "^/v1/videos$") == 0 and core.now() < deadline do core.sleep(0.02) end
    os.execute("kill -9 " .. pid) -- the server has the request, and is stalling before it answers
    core.sleep(2) -- the sandbox makes the task after its stall: it may well be billed
    assert.equals(1, env.sb:stats().creates)
    local _
    local code, out = jimeng_cmd("list")
    assert.equals(0, code)
    assert.truthy(out:find("%(id unknown%)%s+sent, id unknown, may be billed"), out)
    local err
    code, _, err = jimeng_cmd("resume")
    assert.equals(0, code, err)
    assert.truthy(err:find("no list of tasks", 1, true), err)
    assert.equals(1, env.sb:stats().creates)
    assert.equals(0, #h.api_requests(env.sb, "/content$"))
    code, out = jimeng_cmd("show " .. sending.ref)
    assert.equals(0, code)
    assert.truthy(out:find("may exist and be billed", 1, true), out)
  end)

  it("an empty ledger and nothing to resume: their lists are [] in --json, never {}", function()
    local code, out, err = jimeng_cmd("list --json")
    assert.equals(0, code, err)
    assert.truthy(out:find('"tasks":[]', 1, true), out)
    code, out, err = jimeng_cmd("resume --json")
    assert.equals(0, code, err)
    assert.truthy(out:find('"tasks":[]', 1, true), out)
  end)

  it("killed after the answer: the id is in the ledger, and resume saves the video where it was meant, paying nothing", function()
    local pid = jimeng_bg("generate 'sandbox:slow=2 killed while waiting' -o kite.mp4 --interval 0.1")
    local created = wait_for(ledger_file(), "created")
    local _
    os.execute("kill -9 " .. pid)
    assert.equals(1, env.sb:stats().creates)
    assert.equals(core.canonical_path(env.dir .. "/kite.mp4"), created.output)
    local code, out, err = jimeng_cmd("list --json")
    assert.equals(0, code, err)
    local listed = cjson.decode(out).tasks[1]
    assert.equals(created.id, listed.id)
    assert.equals("created", listed.state)
    -- the same generate again would pay twice for one file: refused, pointing at resume
    code, _, err = jimeng_cmd("generate 'sandbox:slow=2 killed while waiting' -o kite.mp4")
    assert.equals(2, code)
    assert.truthy(err:find("jimeng resume", 1, true), err)
    assert.equals(1, env.sb:stats().creates)
    code, out, err = jimeng_cmd("resume --interval 0.1")
    assert.equals(0, code, err)
    assert.equals(core.canonical_path(env.dir .. "/kite.mp4"), out:match("[^\n]+"))
    assert.equals(h.fixture(), h.read(env.dir .. "/kite.mp4"))
    assert.equals(1, env.sb:stats().creates)
    code, out = jimeng_cmd("list")
    assert.equals(0, code)
    assert.truthy(out:find(created.id .. "  saved", 1, true), out)
    code, _, err = jimeng_cmd("resume")
    assert.equals(0, code)
    assert.truthy(err:find("nothing to resume", 1, true), err)
    code, out = jimeng_cmd("show " .. created.id .. " --json")
    assert.equals(0, code)
    local shown = cjson.decode(out)
    assert.equals("saved", shown.state)
    assert.equals(core.canonical_path(env.dir .. "/kite.mp4"), shown.path)
    code, _, err = jimeng_cmd("show 123456")
    assert.equals(2, code)
    assert.truthy(err:find("not in the ledger", 1, true), err)
  end)

  it("resume saves a task created without a path into --output-dir, and reports a failed one", function()
    local code, out = jimeng_cmd("create 'plain create'")
    assert.equals(0, code)
    local id = out:match("%d+")
    code = jimeng_cmd("create 'sandbox:fail doomed'")
    assert.equals(0, code)
    -- a task of another API (a sandbox since stopped) is named, not asked for here
    assert(core.append_durable(ledger_file(), '{"ev":"created","ref":"elsewhere","id":"555","at":1,' ..
      '"base_url":"http://127.0.0.1:1/v1"}\n', true))
    local err
    code, out, err = jimeng_cmd("resume -o later/ --interval 0.05")
    assert.equals(1, code, err) -- one task failed: the exit code of a failed task
    assert.equals("later/jimeng_video_" .. id .. ".mp4", out:match("[^\n]+"))
    assert.truthy(err:find("1 task was made at http://127.0.0.1:1/v1", 1, true), err)
    assert.equals(0, #h.api_requests(env.sb, "/555"))
    assert.equals(h.fixture(), h.read(env.dir .. "/later/jimeng_video_" .. id .. ".mp4"))
    code, out = jimeng_cmd("list")
    assert.equals(0, code)
    assert.truthy(out:find("failed", 1, true), out)
    assert.equals(2, env.sb:stats().creates)
  end)
end)

describe("output templates", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.02, process_seconds = 0.05 }, reset = true, dir = "each" }

  it("fill in the prompt, seed, model, date and id, make the directory, and keep the rules", function()
    local c = h.client(env.sb, { ledger = env.dir .. "/l.jsonl" })
    local r = assert(c:generate({ prompt = "千军万马 / galloping: on the steppe", seed = 42 },
      { output = env.dir .. "/{date}/{prompt:.8}-{seed}-{model}-{id}.{ext}" }))
    local expect = ("%s/%s/千军万马___g-42-jimeng-video-3.0-pro-%s.mp4"):format(env.dir, os.date("%Y-%m-%d"), r.task.id)
    assert.equals(expect, r.path)
    assert.equals(h.fixture(), h.read(expect))
    -- {n}: the first free number
    local a = assert(c:generate({ prompt = "take" }, { output = env.dir .. "/take-{n}.mp4" }))
    local b = assert(c:generate({ prompt = "take" }, { output = env.dir .. "/take-{n}.mp4" }))
    assert.equals(env.dir .. "/take-1.mp4", a.path)
    assert.equals(env.dir .. "/take-2.mp4", b.path)
    -- braces: {{ and }} are braces, and a prompt's own braces are only text
    local lit = assert(c:generate({ prompt = "a {fox}" }, { output = env.dir .. "/{{x}}-{prompt}-{id}.mp4" }))
    assert.equals(("%s/{x}-a_{fox}-%s.mp4"):format(env.dir, lit.task.id), lit.path)
    local before = env.sb:stats().creates
    local _, err = c:generate({ prompt = "typo" }, { output = env.dir .. "/{promt}.mp4" })
    assert.equals("invalid_argument", err.kind)
    assert.truthy(err.message:find("did you mean {prompt}", 1, true), err.message)
    _, err = c:generate({ prompt = "id dir" }, { output = env.dir .. "/{id}/video.mp4" })
    assert.equals("invalid_argument", err.kind)
    _, err = c:generate({ prompt = "brace" }, { output = env.dir .. "/{prompt.mp4" })
    assert.equals("invalid_argument", err.kind)
    assert.equals(before, env.sb:stats().creates) -- nothing was paid for
    c:close()
  end)

  it("{n} moves past a number the ledger keeps for a paid task not saved yet, and {prompt} fits a file name", function()
    local c = h.client(env.sb, { ledger = env.dir .. "/l.jsonl", max_retries = 0 })
    env.sb:faults { path = "/content$", fault = "status", status = 503, count = 1 }
    local r, err = c:generate({ prompt = "take" }, { output = env.dir .. "/take-{n}.mp4" })
    assert.is_nil(r)
    assert.truthy(err.task_id) -- paid for, not saved: take-1.mp4 is its path
    assert.is_false(h.exists(env.dir .. "/take-1.mp4"))
    local b = assert(c:generate({ prompt = "take" }, { output = env.dir .. "/take-{n}.mp4" }))
    assert.equals(env.dir .. "/take-2.mp4", b.path)
    assert.equals(2, env.sb:stats().creates)
    -- a prompt of 300 Chinese characters (900 bytes) still makes a file name
    local long = string.rep("马", 300)
    local l = assert(c:generate({ prompt = long }, { output = env.dir .. "/{prompt}-{id}.mp4" }))
    assert.equals(("%s/%s-%s.mp4"):format(env.dir, string.rep("马", 40), l.task.id), l.path)
    assert.equals(h.fixture(), h.read(l.path))
    c:close()
  end)
end)

describe("batch output templates", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.02, process_seconds = 0.05 }, reset = true, dir = "each" }

  it("fill in each job's number, prompt and the run's date; {id} is refused before the first create", function()
    local c = h.client(env.sb, { ledger = env.dir .. "/l.jsonl" })
    local s = assert(c:batch({ { prompt = "a fox at dawn", output = "{n}-{prompt:.5}.{ext}" },
      { prompt = "a boat", seed = 3, output = "{n}-{prompt:.5}-{seed}.{ext}" } },
      { output_dir = env.dir .. "/run-{date}" }))
    assert.equals(2, s.saved)
    local dir = env.dir .. "/run-" .. os.date("%Y-%m-%d")
    assert.equals(h.fixture(), h.read(dir .. "/1-a_fox.mp4"))
    assert.equals(h.fixture(), h.read(dir .. "/2-a_boa-3.mp4"))
    -- the ledger knows where each was meant to go
    local entries = assert(ledger.read(env.dir .. "/l.jsonl", cjson))
    assert.equals(2, #entries)
    for _, e in ipairs(entries) do
      local name = e.params.prompt == "a fox at dawn" and "/1-a_fox.mp4" or "/2-a_boa-3.mp4"
      assert.equals(core.canonical_path(dir .. name), e.output)
      assert.equals(core.canonical_path(dir .. name), e.path)
    end
    local before = env.sb:stats().creates
    local _, err = c:batch({ { prompt = "no id here", output = "{id}.mp4" } }, { output_dir = env.dir })
    assert.equals("invalid_argument", err.kind)
    assert.truthy(err.message:find("{id} has no meaning here", 1, true), err.message)
    _, err = c:batch({ { prompt = "no prompt dir" } }, { output_dir = env.dir .. "/{prompt}" })
    assert.equals("invalid_argument", err.kind)
    assert.equals(before, env.sb:stats().creates)
    c:close()
  end)
end)

describe("jimeng download", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.02, process_seconds = 0.05, video_bytes = 200000 },
    client = false, reset = true, dir = "each" }

  local function jimeng_cmd(args)
    local errfile = env.dir .. "/stderr"
    local p = io.popen(("%scd %s && XDG_STATE_HOME=%s/state JIMENG_LEDGER= JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s " ..
      "%s/bin/jimeng %s 2>%s; echo \"exit=$?\""):format(proc.own_env, env.dir, env.dir, env.sb.url, lua, proc.root,
      args, errfile))
    local out = p:read("*a")
    p:close()
    return tonumber(out:match("exit=(%d+)%s*$")), (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
  end

  it("onto the file the ledger saw saved as that task's video: already saved, exit 0; another file: refused", function()
    local code, out = jimeng_cmd("create 'saved once'")
    local _
    assert.equals(0, code)
    local id = out:match("%d+")
    assert.equals(0, (jimeng_cmd("wait " .. id .. " --interval 0.05")))
    local err
    code, _, err = jimeng_cmd("download " .. id .. " -o '{id}.mp4'")
    assert.equals(0, code, err)
    local gets = #h.api_requests(env.sb, "/content$")
    code, out, err = jimeng_cmd("download " .. id .. " -o " .. id .. ".mp4")
    assert.equals(0, code, err)
    assert.truthy(err:find("already saved", 1, true), err)
    assert.equals(id .. ".mp4\n", out)
    assert.equals(gets, #h.api_requests(env.sb, "/content$")) -- nothing fetched
    -- the same bytes, but another file (copied over it): the ledger's binding is to the file, not its size
    assert(proc.run(("cd %s && cp %s.mp4 copy.mp4 && mv copy.mp4 %s.mp4"):format(env.dir, id, id)))
    code, _, err = jimeng_cmd("download " .. id .. " -o " .. id .. ".mp4")
    assert.equals(2, code)
    assert.truthy(err:find("exists", 1, true), err)
  end)

  it("that continues an earlier one says from where (bytes and percent)", function()
    local code, out = jimeng_cmd("create 'resumed later'")
    local _
    assert.equals(0, code)
    local id = out:match("%d+")
    assert.equals(0, (jimeng_cmd("wait " .. id .. " --interval 0.05")))
    env.sb:faults { path = "/content$", fault = "reset_mid_body", after_bytes = 50000, count = 3 }
    local err
    code, _, err = jimeng_cmd("download " .. id .. " -o v.mp4")
    assert.equals(3, code, err)
    assert.equals(150000, core.file_size(env.dir .. "/v.mp4.part")) -- 50,000 bytes an attempt, three attempts
    code, _, err = jimeng_cmd("download " .. id .. " -o v.mp4")
    assert.equals(0, code, err)
    assert.truthy(err:find("resuming at 146.5 KiB of 195.3 KiB (75%)", 1, true), err)
  end)
end)

describe("completion of task ids", function()
  local env = h.with_sandbox { client = false, dir = "setup" }

  it("bash offers the ids of the ledger after wait, download, show and status; zsh asks the ledger too", function()
    local state = env.dir .. "/state"
    assert(core.mkdirs(state .. "/jimeng"))
    h.write(state .. "/jimeng/ledger.jsonl", '{"ev":"sending","ref":"r1","at":1}\n{"ev":"created","ref":"r1","id":"7001","at":1}\n' ..
      '{"ev":"created","ref":"r2","id":"7002","at":2}\n')
    -- (the suite's own Lua, unwrapped: this is about the shell, and a wrapper's reports would be in the scripts)
    h.write(env.dir .. "/jimeng", ("#!/bin/sh\nexec %s %s/bin/jimeng \"$@\"\n"):format(proc.plain_lua, proc.root))
    assert(proc.run("chmod +x " .. env.dir .. "/jimeng"))
    local script = env.dir .. "/completion.bash"
    local ok, text = proc.run(("%s %s/bin/jimeng completion bash > %s"):format(proc.plain_lua, proc.root, script),
      proc.own_env)
    assert.is_true(ok, text)
    for _, cmd in ipairs { "wait", "download", "show", "status" } do
      local ran, out = proc.run(("XDG_STATE_HOME=%s PATH=%s:$PATH bash -c 'source %s; COMP_WORDS=(jimeng %s 70); " ..
        "COMP_CWORD=2; _jimeng; echo \"${COMPREPLY[*]}\"'"):format(state, env.dir, script, cmd), proc.own_env)
      assert.is_true(ran, out)
      assert.equals("7002 7001", out:match("[^\n]*"), cmd)
    end
    local _, zsh = proc.run(("%s %s/bin/jimeng completion zsh"):format(proc.plain_lua, proc.root), proc.own_env)
    assert.truthy(zsh:find("list --ids", 1, true))
    assert.truthy(zsh:find("'1:id:_jimeng_ids'", 1, true))
  end)
end)
