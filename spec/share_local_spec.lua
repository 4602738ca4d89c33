-- One account, many processes: every process of a machine that names the same budget file (budget =
-- "local" or a path) spends one max_rps and one max_tasks, as the sandbox counts them; a holder killed with
-- SIGKILL gives its task slots back once their lease has passed.
local h = require "spec.support.helpers"
local p = require "spec.support.process"
local jimeng = require "jimeng"
local core = require "jimeng.core"

-- A child: n videos made (create, wait, download) at once under the shared budget, then "saved <n>".
local WORKER = [[
local jimeng = require "jimeng"
local url, budget, n, prefix, dir = arg[1], arg[2], tonumber(arg[3]), arg[4], arg[5]
local c = assert(jimeng.new { api_key = "shared-key", base_url = url, poll_interval = 0.05, max_rps = 20,
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
io.write("saved ", #saved, "\n")
]]

-- A child that creates `n` tasks, says "held", and waits for them (polling: its leases are renewed).
local HOLDER = [[
local jimeng = require "jimeng"
local url, budget, n = arg[1], arg[2], tonumber(arg[3])
local c = assert(jimeng.new { api_key = "shared-key", base_url = url, poll_interval = 0.1, max_tasks = n,
  budget = budget, budget_lease = 1 })
local ids = {}
for i = 1, n do ids[i] = assert(c:create { prompt = "held " .. i }).id end
io.write("held\n")
io.flush()
for _, id in ipairs(ids) do c:wait(id, { timeout = 600 }) end
]]

local function script(dir, name, text)
  local path = dir .. "/" .. name
  h.write(path, text)
  return path
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

describe("a budget shared by the processes of one machine", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.2, process_seconds = 1 }, client = false, reset = true }

  -- #timing: a rate measured at the server in one-second windows means nothing 20-50 times slower
  it("#timing three processes share max_rps = 20 and max_tasks = 5: no second above 20, never 6 tasks at once, every "
    .. "video saved", function()
    local dir = h.tmpdir()
    local worker = script(dir, "worker.lua", WORKER)
    local budget = dir .. "/budget"
    local cmds = {}
    for i = 1, 3 do
      cmds[i] = ("%s %s %s %s 7 proc%d %s"):format(p.lua, q(worker), q(env.sb.url), q(budget), i, q(dir))
    end
    local ok, out = p.run("( " .. table.concat(cmds, " & ") .. " & wait )", p.own_env)
    assert(ok, out)
    local _, saves = out:gsub("saved 7", "")
    assert.equals(3, saves, out)
    for i = 1, 3 do
      for j = 1, 7 do assert.is_true(h.exists(("%s/proc%d-%d.mp4"):format(dir, i, j))) end
    end
    assert.equals(21, env.sb:stats().creates)
    local seen = env.sb:budget()
    assert.is_true(seen.busiest_second <= 20, "busiest second: " .. seen.busiest_second)
    assert.is_true(seen.max_in_flight <= 5, "tasks at once: " .. seen.max_in_flight)
    assert.equals(5, seen.max_in_flight) -- the budget is used, not wasted
    assert.equals(0, env.sb:stats().rate_limited)
    -- the file is this user's alone, and names the account only by a hash
    local ok2, mode = p.run("stat -c %a " .. q(budget))
    assert(ok2, mode)
    assert.equals("600", mode:match("%d+"))
    assert.is_nil(h.read(budget):find("shared-key", 1, true))
  end)

  it("a holder killed with SIGKILL gives its slots back once the lease has passed, not before", function()
    env.sb:config { queue_seconds = 0.1, process_seconds = 60 }
    local dir = h.tmpdir()
    local holder = script(dir, "holder.lua", HOLDER)
    local budget = dir .. "/budget"
    local outf = dir .. "/holder.out"
    local pp = io.popen(("%s %s %s %s %s 2 > %s 2>&1 & echo $!"):format(p.own_env, p.lua, q(holder), q(env.sb.url),
      q(budget), q(outf)))
    local pid = tonumber(pp:read("*l"))
    pp:close()
    local t0 = core.now()
    while not (h.read(outf) or ""):find("held") and core.now() - t0 < 20 do jimeng.sleep(0.05) end
    assert.matches("held", h.read(outf) or "")
    local c = h.client(env.sb, { api_key = "shared-key", max_tasks = 2, budget = budget, budget_lease = 1 })
    -- alive, and well past its lease: the holder keeps its slots (it renews them while it polls)
    jimeng.sleep(2.5)
    local task, err = c:create({ prompt = "while held" }, { deadline = core.now() + 0.5 })
    assert.is_nil(task)
    assert.equals("timeout", err.kind)
    assert.equals(0, env.sb:creates_for("while held"))
    assert.equals(2, c.share:stats().in_flight)
    -- killed: its two slots come back after the lease (1 s), not at once
    assert(p.run("kill -9 " .. pid))
    local killed = core.now()
    assert(c:create({ prompt = "after kill 1" }, { deadline = core.now() + 5 }))
    local waited = core.now() - killed
    assert.is_true(waited >= 0.4 and waited < 2.5, "waited " .. waited)
    assert(c:create({ prompt = "after kill 2" }, { deadline = core.now() + 1 }))
    assert.equals(2, c.share:stats().in_flight) -- both ours now
    c:close()
  end)

  it("two `jimeng batch` runs with --max-tasks 2 --budget FILE never have 3 tasks at once; doctor shows the budget",
    function()
    env.sb:config { queue_seconds = 0.1, process_seconds = 0.5 }
    local dir = h.tmpdir()
    local budget = dir .. "/budget"
    local cmds = {}
    for i = 1, 2 do
      local lines = {}
      for j = 1, 4 do lines[j] = ('{"prompt": "batch %d job %d", "label": "b%d-%d"}'):format(i, j, i, j) end
      h.write(("%s/jobs%d.jsonl"):format(dir, i), table.concat(lines, "\n") .. "\n")
      cmds[i] = ("%s %s/bin/jimeng batch %s --journal %s -o %s -j 4 --interval 0.05 -q --max-tasks 2 --budget %s")
        :format(p.lua, p.root, q(("%s/jobs%d.jsonl"):format(dir, i)), q(("%s/run%d.jsonl"):format(dir, i)), q(dir),
          q(budget))
    end
    local ok, out = p.run(("export JIMENG_API_KEY=batch-key JIMENG_BASE_URL=%s; ( %s & %s & wait )"):format(
      q(env.sb.url), cmds[1], cmds[2]), p.own_env)
    assert(ok, out)
    for i = 1, 2 do
      for j = 1, 4 do assert.is_true(h.exists(("%s/b%d-%d.mp4"):format(dir, i, j)), out) end
    end
    assert.equals(8, env.sb:stats().creates)
    assert.equals(2, env.sb:budget().max_in_flight)
    local dok, report = p.run(("JIMENG_API_KEY=batch-key JIMENG_BASE_URL=%s %s %s/bin/jimeng doctor --max-tasks 2 "
      .. "--budget %s"):format(q(env.sb.url), p.lua, p.root, q(budget)), p.own_env)
    assert(dok, report)
    assert.matches("budget +" .. budget:gsub("%p", "%%%0") .. ", shared by every process", report)
    assert.matches("max_tasks 2: 0 in flight", report, 1, true)
  end)

  it("\"local\" is a file of this user in $XDG_RUNTIME_DIR, else /tmp; a file of another shape is refused", function()
    local c = h.client(env.sb, { api_key = "local-key", budget = "local", max_rps = 5 })
    local where = c.share:stats().where
    local rt = os.getenv("XDG_RUNTIME_DIR")
    assert.matches("jimeng%-budget%-", where)
    if not (rt and where:sub(1, #rt) == rt) then assert.equals("/tmp/", where:sub(1, 5)) end
    c:close()
    os.remove(where)
    local dir = h.tmpdir()
    h.write(dir .. "/notabudget", "hello")
    local c2, err = jimeng.new { api_key = "k", base_url = env.sb.url, budget = dir .. "/notabudget" }
    assert.is_nil(c2)
    assert.equals("invalid_argument", err.kind)
    assert.matches("mode 0600", err.message)
    assert(p.run("chmod 600 " .. q(dir .. "/notabudget")))
    c2, err = jimeng.new { api_key = "k", base_url = env.sb.url, budget = dir .. "/notabudget" }
    assert.is_nil(c2)
    assert.matches("not a budget file", err.message)
    assert(p.run("ln -s " .. q(dir .. "/notabudget") .. " " .. q(dir .. "/link")))
    c2, err = jimeng.new { api_key = "k", base_url = env.sb.url, budget = dir .. "/link" }
    assert.is_nil(c2)
    assert.matches("cannot open", err.message)
    -- another account's file
    local a = assert(jimeng.new { api_key = "one", base_url = env.sb.url, budget = dir .. "/b" })
    a:close()
    c2, err = jimeng.new { api_key = "two", base_url = env.sb.url, budget = dir .. "/b" }
    assert.is_nil(c2)
    assert.matches("another account", err.message)
  end)
end)
