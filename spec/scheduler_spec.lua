-- jimeng.run: many tasks from plain coroutines on one thread, each waiting without blocking the others.
local h = require "spec.support.helpers"
local jimeng = require "jimeng"
local core = require "jimeng.core"

describe("jimeng.run", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 1, process_seconds = 1 }, client = { poll_interval = 0.25 },
    dir = "setup", reset = true }

  it("runs 200 tasks of 2 s concurrently: every create is logged before any task completes, and all 200 videos are whole", function()
    env.sb:config { queue_seconds = 1, process_seconds = 1 }
    local n = 200
    local values, errs = jimeng.run(function()
      local list = {}
      for i = 1, n do
        list[i] = function() return env.client:generate({ prompt = "variation " .. i }, { output = env.dir .. "/many-" .. i .. ".mp4" }) end
      end
      return jimeng.gather(list)
    end)
    assert.same({}, errs)
    local fixture = h.fixture()
    local ids = {}
    for i = 1, n do
      assert.equals(env.dir .. "/many-" .. i .. ".mp4", values[i].path)
      assert.equals(fixture, h.read(values[i].path))
      ids[values[i].task.id] = true
    end
    local last_create, first_completed = 0, math.huge
    local creates = 0
    for _, e in ipairs(env.sb:log()) do
      if e.method == "POST" and e.path == "/v1/videos" then
        creates = creates + 1
        last_create = math.max(last_create, e.time)
      elseif e.task_status == "completed" then
        first_completed = math.min(first_completed, e.time)
      end
    end
    assert.equals(n, creates)
    assert.is_true(last_create < first_completed, "a task completed before every create was sent")
    local distinct = 0
    for _ in pairs(ids) do distinct = distinct + 1 end
    assert.equals(n, distinct)
  end)

  -- #timing: its deadlines are set for the speed of the module, not of memcheck
  it("#timing lets the others finish when one task fails and one times out in the middle", function()
    local values, errs = jimeng.run(function()
      local list = {}
      for i = 1, 8 do
        local prompt = i == 3 and "doomed sandbox:fail" or i == 5 and "endless sandbox:slow=60" or ("fine " .. i)
        list[i] = function()
          return env.client:generate({ prompt = prompt }, { output = env.dir .. "/mixed-" .. i .. ".mp4", timeout = 4 })
        end
      end
      return jimeng.gather(list)
    end)
    assert.equals("task_failed", errs[3].kind)
    assert.truthy(errs[3].message:find("sandbox: the generation failed"))
    assert.is_string(errs[3].task_id)
    assert.equals("timeout", errs[5].kind)
    assert.equals("processing", errs[5].task.status)
    for i = 1, 8 do
      if i ~= 3 and i ~= 5 then
        assert.is_nil(errs[i])
        assert.equals(h.fixture(), h.read(values[i].path))
      end
    end
  end)

  it("returns an error raised inside one coroutine for that coroutine alone", function()
    local values, errs = jimeng.run(function()
      return jimeng.gather {
        function() error("boom in one") end,
        function() return assert(env.client:create { prompt = "survivor" }).id end,
      }
    end)
    assert.truthy(tostring(errs[1]):find("boom in one"))
    assert.is_string(values[2])
  end)

  it("reports each status transition once to on_status, for every task", function()
    -- each stage lasts until every task has been seen in it (a loaded machine cannot make one pass unseen)
    env.sb:config { queue_seconds = 120, process_seconds = 120 }
    local seen = {}
    local function all_in(status)
      for i = 1, 5 do
        if seen[i][#seen[i]] ~= status then return false end
      end
      return true
    end
    local _, errs = jimeng.run(function()
      local list = {}
      for i = 1, 5 do
        seen[i] = {}
        list[i] = function()
          local t = assert(env.client:create { prompt = "watched " .. i })
          return assert(env.client:wait(t.id, { interval = 0.1, timeout = 60,
            on_status = function(task) table.insert(seen[i], task.status) end }))
        end
      end
      list[6] = function() -- the stages' ends
        local deadline = core.now() + 30
        while not all_in("in_queue") and core.now() < deadline do jimeng.sleep(0.05) end
        jimeng.sleep(0.3) -- a few more polls each: a status seen again is not reported again
        env.sb:finish("queue")
        while not all_in("processing") and core.now() < deadline do jimeng.sleep(0.05) end
        jimeng.sleep(0.3)
        env.sb:finish()
        return true
      end
      return jimeng.gather(list)
    end)
    assert.same({}, errs)
    for i = 1, 5 do assert.same({ "in_queue", "processing", "completed" }, seen[i]) end
  end)

  it("runs the tasks of several clients concurrently in one scheduler", function()
    local other = h.client(env.sb, { poll_interval = 0.25, api_key = "second-key" })
    local values, errs = jimeng.run(function()
      return jimeng.gather {
        function() return env.client:generate({ prompt = "first client" }, { output = env.dir .. "/first.mp4" }) end,
        function() return other:generate({ prompt = "second client" }, { output = env.dir .. "/second.mp4" }) end,
      }
    end)
    assert.same({}, errs)
    assert.equals(h.fixture(), h.read(values[1].path))
    assert.equals(h.fixture(), h.read(values[2].path))
    local keys, last_create, first_completed = {}, 0, math.huge
    for _, e in ipairs(env.sb:log()) do
      if e.path == "/v1/videos" then
        keys[e.headers.authorization] = true
        last_create = math.max(last_create, e.time)
      elseif e.task_status == "completed" then
        first_completed = math.min(first_completed, e.time)
      end
    end
    assert.is_true(keys["Bearer test-key"] and keys["Bearer second-key"])
    assert.is_true(last_create < first_completed, "the second client waited for the first")
  end)

  it("sleeps in a coroutine without holding up the others", function()
    local order = {}
    jimeng.run(function()
      local a = jimeng.spawn(function()
        jimeng.sleep(0.3)
        order[#order + 1] = "slow"
      end)
      local b = jimeng.spawn(function()
        jimeng.sleep(0.05)
        order[#order + 1] = "quick"
      end)
      a:wait()
      b:wait()
    end)
    assert.same({ "quick", "slow" }, order)
  end)

  it("returns exactly the values the function returns, nils and their number included", function()
    assert.equals(1, select("#", jimeng.run(function() return "x" end)))
    assert.equals(0, select("#", jimeng.run(function() jimeng.sleep(0.01) end)))
    local n, a, b, c = (function(...) return select("#", ...), ... end)(jimeng.run(function()
      jimeng.sleep(0.01)
      return 1, nil, 3
    end))
    assert.same({ 3, 1, nil, 3 }, { n, a, b, c })
  end)

  it("returns what the function returns, and raises what it raises", function()
    assert.same({ 1, "two" }, { jimeng.run(function(a) return a, "two" end, 1) })
    assert.has_error(function() jimeng.run(function() error("outer", 0) end) end, "outer")
  end)

  it("blocks and works outside any scheduler: wait polls until the task completes", function()
    local t = assert(env.client:create { prompt = "plain script" })
    local done = assert(env.client:wait(t.id, { interval = 0.1 }))
    assert.equals("completed", done.status)
  end)
end)
