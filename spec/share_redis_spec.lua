-- One account, many machines: a budget in Redis (budget = "redis://host:port/prefix"), shared by every client
-- that names it. redis-server from Debian on loopback, started here, killed with SIGKILL and started again
-- (empty) in the middle of a run: no second above max_rps, never more than max_tasks at once, nothing paid
-- twice, every video saved, and the outage said once by each process.
local h = require "spec.support.helpers"
local p = require "spec.support.process"
local jimeng = require "jimeng"
local core = require "jimeng.core"

local redis = p.run("command -v redis-server")

local WORKER = [[
local jimeng = require "jimeng"
local url, budget, n, prefix, dir = arg[1], arg[2], tonumber(arg[3]), arg[4], arg[5]
local c = assert(jimeng.new { api_key = "redis-key", base_url = url, poll_interval = 0.05, max_rps = 20,
  max_tasks = 5, budget = budget })
local saved = jimeng.run(function()
  local list = {}
  for i = 1, n do
    list[i] = function()
      return assert(c:generate({ prompt = prefix .. " " .. i }, { output = dir .. "/" .. prefix .. "-" .. i .. ".mp4" }))
    end
  end
  return jimeng.gather(list)
end)
local count = 0
for i = 1, n do if saved[i] then count = count + 1 end end
io.write("saved ", count, "\n")
]]

-- A child that creates `n` tasks, says "held", and waits for them (its budget's thread renews the leases).
local HOLDER = [[
local jimeng = require "jimeng"
local url, budget, n = arg[1], arg[2], tonumber(arg[3])
local c = assert(jimeng.new { api_key = "holder-key", base_url = url, poll_interval = 0.1, max_tasks = n,
  budget = budget, budget_lease = 1 })
local ids = {}
for i = 1, n do ids[i] = assert(c:create { prompt = "held " .. i }).id end
io.write("held\n")
io.flush()
for _, id in ipairs(ids) do c:wait(id, { timeout = 600 }) end
]]

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

describe("a budget in Redis", function()
  if not redis then
    it("needs redis-server (apt-get install redis-server)", function() pending("redis-server is not installed") end)
    return
  end
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.2, process_seconds = 1 }, client = false, reset = true }
  local port, dir

  local function start_redis()
    local pp = io.popen(("%sexec redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no "
      .. "> %s/redis.log 2>&1 & echo $!"):format(p.clean_env, port, dir))
    local pid = tonumber(pp:read("*l"))
    pp:close()
    local t0 = core.now()
    repeat
      local ok = p.run(("redis-cli -p %d ping"):format(port))
      if ok then return pid end
      core.sleep(0.05)
    until core.now() - t0 > 5
    error("redis-server did not start: " .. tostring(h.read(dir .. "/redis.log")))
  end

  local redis_pid
  setup(function()
    dir = h.tmpdir()
    port = p.free_port()
    redis_pid = start_redis()
  end)
  teardown(function()
    if redis_pid then p.run("kill -9 " .. redis_pid) end
  end)

  -- #timing: a rate measured at the server in one-second windows means nothing 20-50 times slower
  it("#timing three processes share max_rps = 20 and max_tasks = 5 through Redis, which is killed and restarted "
    .. "mid-run: no overrun, nothing paid twice, every video saved, the outage said once", function()
    local worker = dir .. "/worker.lua"
    h.write(worker, WORKER)
    local budget = ("redis://127.0.0.1:%d/spec"):format(port)
    local parts = {}
    for i = 1, 3 do
      parts[i] = ("%s %s %s %s 7 r%d %s > %s/out%d 2>&1"):format(p.lua, q(worker), q(env.sb.url), q(budget), i,
        q(dir), dir, i)
    end
    local run = io.popen(p.own_env .. "( " .. table.concat(parts, " & ") .. " & wait ); echo finished")
    jimeng.sleep(2)
    assert(p.run("kill -9 " .. redis_pid))
    jimeng.sleep(1.5)
    redis_pid = start_redis()
    local finished = run:read("*a")
    run:close()
    assert.matches("finished", finished)
    for i = 1, 3 do
      local out = h.read(("%s/out%d"):format(dir, i)) or ""
      assert.matches("saved 7", out, 1, true)
      local _, said = out:gsub("cannot be reached", "")
      assert.equals(1, said, out)
      for j = 1, 7 do assert.is_true(h.exists(("%s/r%d-%d.mp4"):format(dir, i, j))) end
    end
    local stats = env.sb:stats()
    assert.equals(21, stats.creates)
    for prompt, n in pairs(stats.creates_by_prompt) do assert.equals(1, n, prompt) end
    local seen = env.sb:budget()
    assert.is_true(seen.busiest_second <= 20, "busiest second: " .. seen.busiest_second)
    assert.is_true(seen.max_in_flight <= 5, "tasks at once: " .. seen.max_in_flight)
    assert.equals(0, stats.rate_limited)
  end)

  it("two clients of one process on one Redis budget: each request gets its token in time", function()
    -- (the scheduler's one wait over both engines wakes for a paced queue's token: a token leased from Redis
    -- is good for 50 ms only, and a queue not woken for it starved until its deadline)
    local budget = ("redis://127.0.0.1:%d/two"):format(port)
    local a = h.client(env.sb, { api_key = "two-key", max_rps = 10, max_tasks = 3, budget = budget })
    local b = h.client(env.sb, { api_key = "two-key", max_rps = 10, max_tasks = 3, budget = budget })
    local done, errs = jimeng.run(function()
      local list = {}
      for i = 1, 8 do
        local c = i % 2 == 0 and a or b
        list[i] = function()
          local t = assert(c:create { prompt = "two " .. i })
          return assert(c:wait(t.id, { timeout = 20 }))
        end
      end
      return jimeng.gather(list)
    end)
    for i = 1, 8 do assert.is_table(done[i], tostring(errs[i])) end
    local seen = env.sb:budget()
    assert.is_true(seen.busiest_second <= 10, "busiest second: " .. seen.busiest_second)
    assert.is_true(seen.max_in_flight <= 3, "tasks at once: " .. seen.max_in_flight)
    a:close()
    b:close()
  end)

  -- #timing: a wait measured in seconds of rate
  it("#timing redirect hops of a download take their tokens from the Redis budget too", function()
    local task = assert(h.client(env.sb):create { prompt = "a redirected fox" })
    local budget = ("redis://127.0.0.1:%d/hops"):format(port)
    local paced = h.client(env.sb, { api_key = "hops-key", max_rps = 1, budget = budget })
    assert(paced:wait(task.id, { interval = 0.05 }))
    local content = "/videos/" .. task.id .. "/content"
    env.sb:faults { path = "^/v1" .. content .. "$", fault = "redirect", location = env.sb.url .. content, count = 2 }
    jimeng.sleep(1.2) -- the bucket full again (burst 1)
    assert(paced:download(task.id, dir .. "/hops.mp4"))
    assert.equals(3, #h.api_requests(env.sb, "^/v1" .. content .. "$"))
    -- the download took one token and its two hops owe two: the next request waits for the third
    local t0 = core.now()
    assert(paced:status(task.id))
    local waited = core.now() - t0
    assert.is_true(waited > 2.5, "waited " .. waited)
    paced:close()
  end)

  it("a holder killed with SIGKILL gives its slots back once the lease has passed, not before", function()
    env.sb:config { queue_seconds = 0.1, process_seconds = 60 }
    local holder, outf = dir .. "/holder.lua", dir .. "/holder.out"
    h.write(holder, HOLDER)
    local budget = ("redis://127.0.0.1:%d/held"):format(port)
    local pp = io.popen(("%s%s %s %s %s 2 > %s 2>&1 & echo $!"):format(p.own_env, p.lua, q(holder), q(env.sb.url),
      q(budget), q(outf)))
    local pid = tonumber(pp:read("*l"))
    pp:close()
    local t0 = core.now()
    while not (h.read(outf) or ""):find("held") and core.now() - t0 < 20 do jimeng.sleep(0.05) end
    assert.matches("held", h.read(outf) or "")
    local c = h.client(env.sb, { api_key = "holder-key", max_tasks = 2, budget = budget, budget_lease = 1 })
    jimeng.sleep(2.5) -- alive and well past its lease: its slots are kept
    local task, err = c:create({ prompt = "while held" }, { deadline = core.now() + 0.5 })
    assert.is_nil(task)
    assert.equals("timeout", err.kind)
    assert.equals(0, env.sb:creates_for("while held"))
    assert(p.run("kill -9 " .. pid))
    local killed = core.now()
    assert(c:create({ prompt = "after kill 1" }, { deadline = core.now() + 5 }))
    local waited = core.now() - killed
    assert.is_true(waited >= 0.3 and waited < 2.5, "waited " .. waited)
    assert(c:create({ prompt = "after kill 2" }, { deadline = core.now() + 2 }))
    c:close()
  end)

  it("a Redis never reached: a create waits for a slot it cannot be sure of, and the deadline ends it unpaid",
    function()
    local logged = {}
    local c = h.client(env.sb, { api_key = "redis-key", max_tasks = 2, budget = ("redis://127.0.0.1:%d/x"):format(
      p.free_port()), logger = function(kind, text) logged[#logged + 1] = kind .. ": " .. text end })
    local task, err = c:create({ prompt = "no redis" }, { deadline = core.now() + 1 })
    assert.is_nil(task)
    assert.equals("timeout", err.kind)
    assert.is_false(err.created)
    assert.equals(0, env.sb:creates_for("no redis"))
    assert.equals(1, #logged)
    assert.matches("cannot be reached", logged[1])
    assert.is_false(c.share:stats().up)
    c:close()
    -- and jimeng doctor says so, with its fix; with Redis up, where and how full
    local ok, report = p.run(("JIMENG_API_KEY=redis-key JIMENG_BASE_URL=%s %s %s/bin/jimeng doctor --max-tasks 2 "
      .. "--budget redis://127.0.0.1:%d/x"):format(q(env.sb.url), p.lua, p.root, p.free_port()), p.own_env)
    assert.is_false(ok)
    assert.matches("FAIL +budget +redis://127%.0%.0%.1:%d+/x %(unreachable: [^)]+; a safe local share meanwhile%)", report)
    ok, report = p.run(("JIMENG_API_KEY=redis-key JIMENG_BASE_URL=%s %s %s/bin/jimeng doctor --max-tasks 2 "
      .. "--budget redis://127.0.0.1:%d/x"):format(q(env.sb.url), p.lua, p.root, port), p.own_env)
    assert(ok, report)
    assert.matches("ok +budget +redis://127%.0%.0%.1:%d+/x, shared by every client of it %(1 process now%)", report)
    assert.matches("max_tasks 2: 0 in flight", report, 1, true)
  end)

  it("a Redis never reached, and no max_tasks: the command says so once and goes on at the safe share's rate",
    function()
    local out = dir .. "/never.mp4"
    local ok, report = p.run(("cd %s && JIMENG_API_KEY=redis-key JIMENG_BASE_URL=%s timeout 120 %s %s/bin/jimeng " ..
      "generate 'never " ..
      "reached' -o %s --interval 0.05 --max-rps 20 --budget redis://127.0.0.1:%d/x"):format(q(dir), q(env.sb.url),
      p.lua, p.root, q(out), p.free_port()), p.own_env)
    assert(ok, report)
    local _, said = report:gsub("cannot be reached", "")
    assert.equals(1, said, report)
    assert.is_nil(report:find("no more tasks than", 1, true), report) -- no task limit was set: none is kept
    assert.equals(h.fixture(), h.read(out))
    assert.equals(1, env.sb:creates_for("never reached"))
  end)

  it("refuses a redis:// URL it cannot read, nothing opened", function()
    for _, b in ipairs { "redis://", "redis://host:99999/x", "redis://h/x y" } do
      local c, err = jimeng.new { api_key = "k", base_url = env.sb.url, budget = b }
      assert.is_nil(c)
      assert.equals("invalid_argument", err.kind)
    end
  end)
end)
