-- A host event loop drives the engine itself: libcurl's socket and timer wishes come out of engine:watch()
-- (recorded by its callbacks, never calling Lua), engine:socket_action / step_sockets hand back the finished
-- transfers as engine:perform does; a scheduler's call can be cancelled like a trapped signal would end it.
local h = require "spec.support.helpers"
local core = require "jimeng.core"
local runtime = require "jimeng.runtime"

describe("a host loop", function()
  local env = h.with_sandbox { dir = "setup" }

  it("sees libcurl's sockets and timer through engine:watch, and gets each finished transfer back once", function()
    local engine = core.engine { api_key = "k" } -- the key is the engine's: a request gives only its own fields
    local t = assert(engine:request { url = env.sb.url .. "/videos/123", timeout = 10 })
    -- added: libcurl wants its timer at once, no socket yet
    local changes, tmo, in_flight = engine:watch()
    assert.is_nil(changes)
    assert.equals(0, tmo)
    assert.equals(1, in_flight)
    local seen, finished_count, socket_fd = {}, 0, nil
    local deadline = core.now() + 10
    local _, finished = engine:socket_action_timeout()
    while not t:done() and core.now() < deadline do
      changes = engine:watch()
      for fd, what in pairs(changes or {}) do
        seen[#seen + 1] = what
        if what ~= "remove" then socket_fd = fd end
      end
      if finished then finished_count = finished_count + #finished end
      _, finished = engine:step_sockets()
      if not finished then core.sleep(0.005) end
    end
    if finished then finished_count = finished_count + #finished end
    assert.is_true(t:done())
    assert.equals(1, finished_count)
    assert.is_number(socket_fd)
    assert.truthy(#seen > 0)
    assert.equals(404, t:result().status)
    -- the blocking path on the same engine is untouched
    local t2 = assert(engine:request { url = env.sb.url .. "/videos/456", timeout = 10 })
    assert.is_true(runtime.blocking.await(engine, t2, 10))
    assert.equals(404, t2:result().status)
    engine:close()
    assert.is_false(engine:watch())
  end)

  it("refuses a request option it does not know, naming it, and sends nothing", function()
    local engine = core.engine { api_key = "k" }
    local before = env.sb:stats().requests
    local ok, err = pcall(engine.request, engine, { url = env.sb.url .. "/videos/123", timeout = 10, bearer = "k" })
    assert.is_false(ok)
    assert.matches("request has no option bearer", err, 1, true)
    ok, err = pcall(engine.request, engine, { url = env.sb.url .. "/videos/123", timout = 10 })
    assert.is_false(ok)
    assert.matches("no option timout (did you mean timeout?)", err, 1, true)
    ok, err = pcall(engine.request, engine, { env.sb.url .. "/videos/123" })
    assert.is_false(ok)
    assert.matches("request options are named", err, 1, true)
    local _, tmo, in_flight = engine:watch()
    assert.equals(0, in_flight)
    assert.is_nil(tmo)
    assert.equals(before, env.sb:stats().requests)
    engine:close()
  end)

  it("waits in jimeng.run on more sockets than one wait keeps on its stack, and hands back every answer once", function()
    -- 90 slow answers at once over 90 connections: one poll(2) over all of them (more than src/loop.c's 72)
    env.sb:faults { { path = "^/v1/videos/[0-9]+$", method = "GET", fault = "stall", seconds = 0.5, count = 90 } }
    local engine = core.engine { api_key = "k", max_connections = 100 }
    local n, answered, most = 90, 0, 0
    local before = #h.api_requests(env.sb, "^/v1/videos/[0-9]+$")
    runtime.run(function()
      local handles = {}
      for i = 1, n do
        handles[i] = runtime.spawn(function()
          local t = assert(engine:request { url = env.sb.url .. "/videos/" .. i, timeout = 20 })
          local done = runtime.await(engine, t)
          return done and t:result().status
        end)
      end
      handles[n + 1] = runtime.spawn(function() -- how many connections were open at once, seen from outside
        for _ = 1, 40 do
          runtime.sleep(0.02)
          local _, _, in_flight = engine:watch()
          most = math.max(most, in_flight)
        end
      end)
      for i = 1, n do
        if handles[i]:wait() == 404 then answered = answered + 1 end
      end
      handles[n + 1]:wait()
    end)
    assert.equals(n, answered)
    assert.equals(n, most)
    assert.equals(n, #h.api_requests(env.sb, "^/v1/videos/[0-9]+$") - before) -- each sent once
    engine:close()
  end)

  it("reads luv's and libcurl's spellings of socket events", function()
    local engine = core.engine()
    for _, ev in ipairs { "r", "w", "rw", "in", "out", "inout", "err", 1, "" } do
      local running = engine:socket_action(1000, ev) -- a socket libcurl does not know: nothing happens
      assert.equals(0, running)
    end
    engine:close()
  end)

  it("cancels one call of a scheduler: its sleep ends at once with 'cancelled', the others go on", function()
    local sched = runtime.scheduler()
    local slept, other
    local a = sched:spawn(function() slept = { runtime.sleep(30) } end)
    sched:spawn(function() other = runtime.sleep(0.05) end)
    sched:tick(0)
    assert.is_true(sched:cancel(a))
    local t0 = core.now()
    while sched:tick(1000) > 0 do end
    assert.is_true(core.now() - t0 < 5)
    assert.same({ "cancelled" }, slept)
    assert.is_nil(other)
    assert.is_false(sched:cancel(a)) -- done: nothing to cancel
  end)

  it("cancels a download: the transfer stops, the .part stays for the next call to resume", function()
    env.sb:faults { { path = "/content$", fault = "stall_mid_body", after_bytes = 50000, seconds = 20, count = 1 } }
    local task = assert(env.client:create { prompt = "cancel sandbox:bytes=200000" })
    assert(env.client:wait(task.id, { interval = 0.05 }))
    local path = env.dir .. "/cancelled.mp4"
    local sched = runtime.scheduler()
    local res
    local job = sched:spawn(function()
      res = { env.client:download(task.id, path, { on_progress = function() end, progress_interval = 0.05 }) }
    end)
    local deadline = core.now() + 10
    while (core.file_size(path .. ".part") or 0) < 50000 and core.now() < deadline do sched:tick(50) end
    assert.is_true(sched:cancel(job))
    while sched:tick(100) > 0 do end
    assert.is_nil(res[1])
    assert.equals("interrupted", res[2].kind)
    assert.truthy(res[2].message:find("cancelled", 1, true))
    assert.equals(50000, core.file_size(path .. ".part"))
    local info = assert(env.client:download(task.id, path))
    assert.equals(50000, info.resumed_from)
    assert.equals(200000, info.bytes)
  end)
end)
