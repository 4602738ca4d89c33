-- A client-wide request budget: many waiting tasks pace their polls under max_rps (or under the rate the API
-- allows, learnt from its 429s), and a new task's first poll waits out the usual queue time.
local h = require "spec.support.helpers"
local jimeng = require "jimeng"

local STATUS_PATH = "^/v1/videos/[0-9]+$"

-- The most requests the sandbox's log holds in any one-second window.
local function busiest_second(log)
  local times = {}
  for _, e in ipairs(log) do times[#times + 1] = e.time end
  table.sort(times)
  local most, j = 0, 1
  for i = 1, #times do
    while times[i] - times[j] >= 1 do j = j + 1 end
    most = math.max(most, i - j + 1)
  end
  return most
end

-- Creates n tasks and waits for all of them concurrently; returns the tasks.
local function wait_many(client, n, prefix)
  return jimeng.run(function()
    local list = {}
    for i = 1, n do
      list[i] = function()
        local t = assert(client:create { prompt = prefix .. " " .. i })
        return assert(client:wait(t.id, { timeout = 60 }))
      end
    end
    return jimeng.gather(list)
  end)
end

describe("the request budget", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.2, process_seconds = 1 }, client = false, reset = true }

  it("with max_rps known, never sends more than max_rps in any one-second window: not one 429", function()
    env.sb:config { max_rps = 25, queue_seconds = 0.2, process_seconds = 1 }
    local client = h.client(env.sb, { max_rps = 25, poll_interval = 0.05 })
    local done = wait_many(client, 20, "paced")
    assert.equals(20, #done)
    assert.equals(0, env.sb:stats().rate_limited)
    assert.is_true(busiest_second(env.sb:log()) <= 25, "busiest second: " .. busiest_second(env.sb:log()))
    -- and uses what it is allowed: 20 tasks polling every 0.05 s ask for far more
    assert.is_true(busiest_second(env.sb:log()) >= 23, "busiest second: " .. busiest_second(env.sb:log()))
  end)

  it("a queue that fills while the server is slow does not leave in a burst: still not one 429", function()
    env.sb:config { max_rps = 20, queue_seconds = 0.2, process_seconds = 2 }
    env.sb:faults { path = STATUS_PATH, fault = "stall", seconds = 1.5, count = 8 }
    local client = h.client(env.sb, { max_rps = 20, poll_interval = 0.05, max_connections = 8 })
    local done = wait_many(client, 30, "slow server")
    assert.equals(30, #done)
    assert.equals(0, env.sb:stats().rate_limited)
    assert.is_true(busiest_second(env.sb:log()) <= 20, "busiest second: " .. busiest_second(env.sb:log()))
  end)

  it("burst is checked at jimeng.new", function()
    for _, v in ipairs { 0, 1.5, -1, 0 / 0, 11 } do
      local c, err = jimeng.new { api_key = "k", base_url = env.sb.url, max_rps = 10, burst = v }
      assert.is_nil(c)
      assert.equals("burst", err.field)
    end
    assert(jimeng.new { api_key = "k", base_url = env.sb.url, max_rps = 10, burst = 3 }):close()
  end)

  it("with the limit unknown, learns it from the 429s and stops getting them", function()
    env.sb:config { max_rps = 30, queue_seconds = 0.5, process_seconds = 4 }
    local client = h.client(env.sb, { poll_interval = 0.05, max_retries = 5 })
    local t0 = os.time()
    local done = wait_many(client, 30, "learning")
    assert.equals(30, #done)
    local log = env.sb:log()
    local last = log[#log].time
    local late, all = 0, 0
    for _, e in ipairs(log) do
      if e.rate_limited then
        all = all + 1
        if e.time > last - 2 then late = late + 1 end
      end
    end
    assert.is_true(all > 0, "the sandbox never refused: the test proves nothing")
    assert.is_true(late <= 1, ("%d refusals in the last 2 s (of %d)"):format(late, all))
    assert.is_true(os.time() - t0 < 30)
  end)

  -- the seconds from the create to the first poll of the last task in the sandbox's log
  local function first_poll_delay()
    local created, first
    for _, e in ipairs(env.sb:log()) do
      if e.path == "/v1/videos" then created, first = e.time, nil end
      if created and not first and e.path:match(STATUS_PATH) then first = e.time end
    end
    return first - created
  end

  local ways = {
    generate = function(client, prompt, path) return client:generate({ prompt = prompt }, { output = path }) end,
    ["create, then wait"] = function(client, prompt)
      local t = assert(client:create { prompt = prompt })
      return client:wait(t.id)
    end,
  }
  for name, make in pairs(ways) do
    it("a new task's first poll waits out the queue time the client has seen, then polls at the interval (" ..
      name .. ")", function()
      env.sb:config { queue_seconds = 0.6, process_seconds = 0.2 }
      local client = h.client(env.sb, { poll_interval = 0.05 })
      local dir = h.tmpdir()
      assert(make(client, "teaches the queue time", dir .. "/a.mp4"))
      env.sb:reset()
      env.sb:config { queue_seconds = 0.6, process_seconds = 0.2 }
      local r = assert(make(client, "uses it", dir .. "/b.mp4"))
      local delay = first_poll_delay()
      assert.is_true(delay >= 0.3, ("first poll %.2f s after the create"):format(delay))
      assert.equals("completed", (r.task or r).status)
      -- a task this client did not create (another client's, or a wait again) is polled at once
      env.sb:reset()
      local other = assert(h.client(env.sb):create { prompt = "made elsewhere" })
      assert(client:wait(other.id))
      assert.is_true(first_poll_delay() < 0.3, ("first poll %.2f s after the create"):format(first_poll_delay()))
      h.cleanup()
    end)
  end

  it("max_rps is checked at jimeng.new", function()
    for _, v in ipairs { 0, -1, 0 / 0, math.huge } do
      local c, err = jimeng.new { api_key = "k", base_url = env.sb.url, max_rps = v }
      assert.is_nil(c)
      assert.equals("max_rps", err.field)
    end
  end)
end)
