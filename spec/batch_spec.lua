-- Batches: a concurrency cap, a journal, and reruns after a crash that never re-create or re-download.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"
local cjson = require "cjson"
local jimeng = require "jimeng"

local lua = proc.lua

describe("jimeng.batch", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.2 }, client = { poll_interval = 0.05 },
    reset = { queue_seconds = 0.05, process_seconds = 0.2 }, dir = "each" }

  it("saves one file per job, and a second run with the journal creates and downloads nothing", function()
    local jobs = {}
    for i = 1, 6 do jobs[i] = { prompt = "batch job " .. i, label = i == 2 and "second" or nil } end
    local journal = env.dir .. "/run.jsonl"
    local s = assert(env.client:batch(jobs, { journal = journal, output_dir = env.dir, concurrency = 3 }))
    assert.equals(6, s.saved)
    assert.equals(env.dir .. "/second.mp4", s.jobs[2].path)
    for i = 1, 6 do assert.equals(h.fixture(), h.read(s.jobs[i].path)) end
    local requests = #env.sb:log()
    local again = assert(env.client:batch(jobs, { journal = journal, output_dir = env.dir, concurrency = 3 }))
    assert.equals(6, again.skipped)
    assert.equals(0, again.saved)
    assert.equals(requests, #env.sb:log())
    assert.equals(6, env.sb:stats().creates)
  end)

  it("never has more jobs in flight than the cap", function()
    local jobs = {}
    for i = 1, 9 do jobs[i] = { prompt = "capped " .. i } end
    local in_flight, most = 0, 0
    assert(env.client:batch(jobs, { output_dir = env.dir, concurrency = 2, on_event = function(ev)
      if ev.type == "created" then
        in_flight = in_flight + 1
        most = math.max(most, in_flight)
      elseif ev.type == "saved" or ev.type == "error" then
        in_flight = in_flight - 1
      end
    end }))
    assert.equals(2, most)
  end)

  it("backs off on 429: fewer jobs in flight, then every job still created exactly once", function()
    local jobs = {}
    for i = 1, 6 do jobs[i] = { prompt = "throttled " .. i } end
    env.sb:faults { path = "^/v1/videos$", fault = "status", status = 429, count = 6, headers = { ["retry-after-ms"] = "10" } }
    local backoffs = 0
    local c = h.client(env.sb, { poll_interval = 0.05, max_retries = 0 })
    local s = assert(c:batch(jobs, { output_dir = env.dir, concurrency = 4, on_event = function(ev)
      if ev.type == "backoff" then backoffs = backoffs + 1 end
    end }))
    assert.equals(6, s.saved)
    assert.is_true(backoffs >= 1)
    for p, n in pairs(env.sb:stats().creates_by_prompt) do assert.equals(1, n, p) end
  end)

  it("reports a failed task, and a rerun does not pay for it again", function()
    local jobs = { { prompt = "fine" }, { prompt = "broken sandbox:fail" } }
    local journal = env.dir .. "/run.jsonl"
    local s = assert(env.client:batch(jobs, { journal = journal, output_dir = env.dir }))
    assert.equals(1, s.saved)
    assert.equals(1, s.failed)
    assert.equals("task_failed", s.jobs[2].error.kind)
    local again = assert(env.client:batch(jobs, { journal = journal, output_dir = env.dir }))
    assert.equals(1, again.skipped)
    assert.equals(1, again.failed)
    assert.equals(2, env.sb:stats().creates)
  end)

  it("refuses the whole batch before any request when one job is invalid", function()
    local err = h.failed("invalid_argument", env.client:batch({ { prompt = "ok" }, { prompt = "bad", seconds = 7 } }, { output_dir = env.dir }))
    assert.truthy(err.message:find("job 2"))
    assert.equals(0, #env.sb:log())
  end)

  it("survives a torn last journal line, and writes the next record on a line of its own", function()
    local jobs = { { prompt = "torn 1" }, { prompt = "torn 2" } }
    local journal = env.dir .. "/torn.jsonl"
    assert(env.client:batch({ jobs[1] }, { journal = journal, output_dir = env.dir }))
    local f = assert(io.open(journal, "a"))
    f:write('{"event":"created","job":"abc') -- the crash hit mid-write
    f:close()
    local s = assert(env.client:batch(jobs, { journal = journal, output_dir = env.dir }))
    assert.equals(1, s.skipped)
    assert.equals(1, s.saved)
    local whole, torn = 0, {}
    for line in h.read(journal):gmatch("[^\n]+") do
      if pcall(cjson.decode, line) then whole = whole + 1 else torn[#torn + 1] = line end
    end
    assert.same({ '{"event":"created","job":"abc' }, torn) -- only the torn line is unreadable
    assert.is_true(whole >= 6)
  end)

  it("tells, from the journal and without a request, which jobs a run would pay for", function()
    local batch = require "jimeng.batch"
    local journal = env.dir .. "/run.jsonl"
    local jobs = { { prompt = "plan saved" }, { prompt = "plan moved" }, { prompt = "sandbox:fail plan failed" },
      { prompt = "plan sent" }, { prompt = "plan new" } }
    assert(env.client:batch({ jobs[1], jobs[2], jobs[3] }, { journal = journal, output_dir = env.dir }))
    local before = assert(batch.plan(env.client, jobs, { journal = journal, output_dir = env.dir }))
    assert(os.rename(before[2].path, env.dir .. "/elsewhere.mp4")) -- its file moved away: downloaded again, not paid
    -- a create handed to the wire with no answer recorded (the process died then)
    local f = assert(io.open(journal, "a"))
    f:write(cjson.encode { event = "sending", job = before[4].key }, "\n")
    f:close()
    local requests = #env.sb:log()
    local p = assert(batch.plan(env.client, jobs, { journal = journal, output_dir = env.dir }))
    local states, pays = {}, {}
    for i, j in ipairs(p) do states[i], pays[i] = j.state, j.create end
    assert.same({ "saved", "created", "failed", "unknown", "new" }, states)
    assert.same({ false, false, false, false, true }, pays)
    assert.is_string(p[2].task_id)
    assert.is_true(assert(batch.plan(env.client, jobs, { journal = journal, output_dir = env.dir, recreate_unknown = true }))[4].create)
    -- the same label with another body is another job
    assert.equals("new", assert(batch.plan(env.client, { { prompt = "plan saved", seed = 2 } },
      { journal = journal, output_dir = env.dir }))[1].state)
    assert.equals(requests, #env.sb:log())
    -- and the run does what the plan said: one create, for the new job
    local s = assert(env.client:batch(jobs, { journal = journal, output_dir = env.dir }))
    assert.equals(4, env.sb:stats().creates)
    assert.equals("saved", s.jobs[5].status)
    assert.equals("saved", s.jobs[2].status)
  end)

  it("asks on_start once every check has passed, and its refusal stops the run before any create", function()
    local jobs = { { prompt = "start a" }, { prompt = "start b", label = "b" } }
    h.write(env.dir .. "/b.mp4", "not ours")
    local started = 0
    local _, err = env.client:batch(jobs, { journal = env.dir .. "/j.jsonl", output_dir = env.dir,
      on_start = function() started = started + 1; return true end })
    assert.truthy(err.message:find("did not make it", 1, true), err.message)
    assert.equals(0, started)
    os.remove(env.dir .. "/b.mp4")
    local _, serr = env.client:batch(jobs, { journal = env.dir .. "/j.jsonl", output_dir = env.dir,
      on_start = function() started = started + 1; return nil, jimeng.error { kind = "io", message = "no room" } end })
    assert.equals("no room", serr.message)
    assert.equals(1, started)
    assert.equals(0, env.sb:stats().creates)
    -- the lock was released: the next run goes on
    local s = assert(env.client:batch(jobs, { journal = env.dir .. "/j.jsonl", output_dir = env.dir }))
    assert.equals(2, s.saved)
  end)

  it("reads jobs from a JSON-lines file, with labels and output names", function()
    local path = env.dir .. "/jobs.jsonl"
    h.write(path, '{"prompt": "from a file", "label": "first"}\n\n{"prompt": "named", "output": "custom.mp4", "seconds": 10}\n')
    local s = assert(jimeng.new { api_key = "k", base_url = env.sb.url, poll_interval = 0.05 }):batch(path, { output_dir = env.dir })
    assert.equals(2, s.saved)
    assert.equals(env.dir .. "/first.mp4", s.jobs[1].path)
    assert.equals(env.dir .. "/custom.mp4", s.jobs[2].path)
    local _, err = env.client:batch(env.dir .. "/nope.jsonl")
    assert.equals("invalid_argument", err.kind) -- a jobs file that cannot be read is the user's input
    h.write(env.dir .. "/bad.jsonl", '{"prompt": "ok"}\nnot json\n')
    local _, berr = env.client:batch(env.dir .. "/bad.jsonl")
    assert.truthy(berr.message:find("line 2"))
  end)

  it("killed with SIGKILL at random points, then rerun: 30 videos, each task created once, no .part left", function()
    env.sb:config { queue_seconds = 0.2, process_seconds = 0.6 }
    local jobs_file = env.dir .. "/jobs.jsonl"
    local lines = {}
    for i = 1, 30 do lines[i] = cjson.encode { prompt = ("crash test job %02d"):format(i), label = ("job%02d"):format(i) } end
    h.write(jobs_file, table.concat(lines, "\n") .. "\n")
    local out_dir = env.dir .. "/videos"
    assert(proc.run("mkdir -p " .. out_dir))
    local cmd = ("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng batch jobs.jsonl --journal run.jsonl " ..
      "-o videos -j 8 --interval 0.05"):format(env.dir, env.sb.url, lua, proc.root)
    math.randomseed(os.time())
    for round = 1, 3 do
      local pid = io.popen(("%ssh -c '%s >>%s/batch.log 2>&1 & echo $!'"):format(proc.own_env, cmd:gsub("'", "'\\''"), env.dir))
        :read("*l")
      core.sleep(0.3 + math.random() * 1.5)
      os.execute("kill -9 " .. pid .. " 2>/dev/null")
      core.sleep(0.1)
      assert.is_string(pid, "round " .. round)
    end
    local ok, out = proc.run(cmd .. " --json -q", proc.own_env)
    local summary = cjson.decode(out:match("{.*}"))
    -- never paid twice: whatever the kills hit, no prompt was created more than once
    local counts = env.sb:stats().creates_by_prompt
    for p, n in pairs(counts) do assert.equals(1, n, p) end
    if summary.unknown > 0 then
      -- a kill landed while a create was in flight: those jobs are reported, not re-created blindly
      assert.is_false(ok)
      for _, j in ipairs(summary.jobs) do
        if j.status == "unknown" then assert.equals("unknown_outcome", j.error.kind) end
      end
      ok, out = proc.run(cmd .. " --json -q --recreate-unknown", proc.own_env)
      summary = cjson.decode(out:match("{.*}"))
    else
      assert.equals(30, env.sb:stats().creates)
    end
    assert.is_true(ok, out)
    assert.equals(30, summary.saved + summary.skipped)
    for i = 1, 30 do
      assert.equals(h.fixture(), h.read(("%s/job%02d.mp4"):format(out_dir, i)), "job " .. i)
    end
    local leftovers = io.popen("ls " .. out_dir):read("*a")
    assert.falsy(leftovers:find("%.part"), leftovers)
  end)
end)
