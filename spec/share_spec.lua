-- One account, many clients (one process): every client with the same key and base URL spends one budget,
-- max_rps and max_tasks, as the sandbox counts them (requests in any one-second window, tasks at once).
local h = require "spec.support.helpers"
local jimeng = require "jimeng"
local core = require "jimeng.core"

-- Creates n tasks spread over the clients and waits for all of them concurrently.
local function run_over(clients, n, prefix)
  return jimeng.run(function()
    local list = {}
    for i = 1, n do
      local c = clients[(i - 1) % #clients + 1]
      list[i] = function()
        local t = assert(c:create { prompt = prefix .. " " .. i })
        return assert(c:wait(t.id, { timeout = 60 }))
      end
    end
    return jimeng.gather(list)
  end)
end

describe("a budget shared by the clients of one process", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.2, process_seconds = 0.6 }, client = false, reset = true }

  it("two clients with the same key and base URL spend one max_rps and one max_tasks between them", function()
    local a = h.client(env.sb, { max_rps = 10, max_tasks = 3 })
    local b = h.client(env.sb, { max_rps = 10, max_tasks = 3 })
    local done = run_over({ a, b }, 12, "shared")
    assert.equals(12, #done)
    assert.equals(12, env.sb:stats().creates)
    local seen = env.sb:budget()
    assert.is_true(seen.busiest_second <= 10, "busiest second: " .. seen.busiest_second)
    assert.is_true(seen.max_in_flight <= 3, "tasks at once: " .. seen.max_in_flight)
    assert.equals(3, seen.max_in_flight) -- and the budget is used, not wasted
    assert.equals(0, a.share:stats().in_flight) -- every slot came back as its task completed
    a:close()
    b:close()
  end)

  it("clients of another key or with budget = \"client\" do not share", function()
    local a = h.client(env.sb, { max_tasks = 1, api_key = "key-one" })
    local b = h.client(env.sb, { max_tasks = 1, api_key = "key-two" })
    local c = h.client(env.sb, { max_tasks = 1, api_key = "key-one", budget = "client" })
    local done = run_over({ a, b, c }, 3, "apart")
    assert.equals(3, #done)
    assert.equals(3, env.sb:budget().max_in_flight)
    a:close()
    b:close()
    c:close()
  end)

  it("a create waits for a slot and sends nothing until one is free; the deadline ends the wait, unpaid", function()
    local a = h.client(env.sb, { max_tasks = 1 })
    local b = h.client(env.sb, { max_tasks = 1 })
    local t = assert(a:create { prompt = "holds the slot" })
    local t0 = core.now()
    local task, err = b:create({ prompt = "waits" }, { deadline = core.now() + 0.3 })
    assert.is_nil(task)
    assert.equals("timeout", err.kind)
    assert.is_false(err.created)
    assert.is_true(core.now() - t0 >= 0.28)
    assert.equals(0, env.sb:creates_for("waits"))
    -- the task completes (seen by a wait): its slot is b's
    assert(a:wait(t.id, { timeout = 30 }))
    assert(b:create { prompt = "waits" })
    assert.equals(1, env.sb:creates_for("waits"))
    a:close()
    b:close()
  end)

  it("a slot comes back when its client is closed or collected, and when a create made nothing", function()
    local b = h.client(env.sb, { max_tasks = 1 })
    local a = h.client(env.sb, { max_tasks = 1 })
    assert(a:create { prompt = "closed" })
    a:close() -- the task is abandoned: its slot is free
    local t = assert(b:create({ prompt = "after close" }, { deadline = core.now() + 2 }))
    assert(b:wait(t.id, { timeout = 30 }))
    do
      local gone = h.client(env.sb, { max_tasks = 1 })
      assert(gone:create { prompt = "collected" })
    end
    collectgarbage()
    collectgarbage()
    t = assert(b:create({ prompt = "after collect" }, { deadline = core.now() + 2 }))
    assert(b:wait(t.id, { timeout = 30 }))
    -- a create the API refused made nothing: its slot is not kept
    env.sb:faults { path = "^/v1/videos$", method = "POST", fault = "status", status = 400, count = 1 }
    local _, err = b:create { prompt = "refused" }
    assert.is_false(err.created)
    assert.equals(0, b.share:stats().in_flight)
    assert(b:create({ prompt = "after refusal" }, { deadline = core.now() + 2 }))
    b:close()
  end)

  it("bad budget options are refused at jimeng.new, nothing opened", function()
    for _, o in ipairs {
      { max_tasks = 0 }, { max_tasks = 1.5 }, { max_tasks = 2000 }, { budget = "procss" },
      { budget = "memcached://127.0.0.1/x" }, { budget = "relative/path" }, { budget_lease = 0 },
    } do
      o.api_key, o.base_url = "k", env.sb.url
      local c, err = jimeng.new(o)
      assert.is_nil(c)
      assert.equals("invalid_argument", err.kind)
    end
    local _, err = jimeng.new { api_key = "k", base_url = env.sb.url, budget = "procss" }
    assert.matches("did you mean process", err.message, 1, true)
  end)

  it("names a budget by a hash of the key and the base URL, never the key", function()
    local id = core.budget_id("sk-secret-key-123", "https://api.example/v1")
    assert.matches("^%x+$", id)
    assert.equals(32, #id)
    assert.not_equals(id, core.budget_id("sk-secret-key-124", "https://api.example/v1"))
    assert.not_equals(id, core.budget_id("sk-secret-key-123", "https://api.example/v2"))
    local c = h.client(env.sb, { api_key = "sk-secret-key-123", max_rps = 5 })
    assert.is_nil(c.share:stats().where:find("secret", 1, true))
    c:close()
  end)
end)
