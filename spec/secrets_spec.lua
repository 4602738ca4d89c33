-- The key never shows, and numbers and text are checked at the door. A server that echoes the
-- Authorization header back into every field it can (the sandbox's echo_auth fault) is the adversary.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"
local jimeng = require "jimeng"

local lua = proc.lua
local CANARY = "sk-canary-0123456789abcdef-SECRET"
local STATUS_PATH = "^/v1/videos/[0-9]+$"
local CREATE_PATH = "^/v1/videos$"

-- Every string reachable from v (tables walked), concatenated: where a key could hide.
local function all_text(v, seen)
  seen = seen or {}
  if type(v) == "string" then return v end
  if type(v) ~= "table" or seen[v] then return "" end
  seen[v] = true
  local out = {}
  for k, x in pairs(v) do out[#out + 1] = all_text(k, seen) .. "=" .. all_text(x, seen) end
  return table.concat(out, " ")
end

local function no_key(text)
  assert.falsy(text:find(CANARY, 1, true), "the key leaked: " .. text)
  assert.falsy(text:find(CANARY:sub(1, 12), 1, true), "half the key leaked: " .. text)
end

describe("a server that echoes the key", function()
  local logged = {}
  local env = h.with_sandbox { dir = "setup", client = { api_key = CANARY, max_retries = 1,
    logger = function(...) logged[#logged + 1] = table.concat({ ... }, " ", 1, select("#", ...)) end } }

  it("in an error's message, code, type and request id: none of them, nor tostring(err), shows it", function()
    local task = assert(env.client:create { prompt = "echo me" })
    env.sb:faults { path = STATUS_PATH, fault = "echo_auth", status = 400 }
    local _, err = env.client:status(task.id)
    assert.equals("invalid_argument", err.kind)
    no_key(all_text(err) .. tostring(err))
    assert.truthy(tostring(err):find("***", 1, true))
  end)

  it("in a failed task's error and request id: the task and the task_failed error are clean", function()
    local task = assert(env.client:create { prompt = "echo my task" })
    env.sb:faults { path = STATUS_PATH, fault = "echo_auth", answer = "task" }
    local err = h.failed("task_failed", env.client:wait(task.id, { interval = 0.02 }))
    no_key(all_text(err) .. tostring(err))
  end)

  it("in the status itself (raw_status) and the unknown-status warning, through wait's callback and the logger",
    function()
      local task = assert(env.client:create { prompt = "echo in the status" })
      env.sb:faults { path = STATUS_PATH, fault = "echo_auth", answer = "task", status_value = "weird: {auth}" }
      local seen = {}
      assert(env.client:wait(task.id, { interval = 0.02, on_status = function(t) seen[#seen + 1] = t end }))
      no_key(all_text(seen) .. table.concat(logged, "\n"))
    end)

  it("cut short by the server (its last characters missing): what is left is scrubbed too", function()
    local task = assert(env.client:create { prompt = "echo truncated" })
    env.sb:faults { path = STATUS_PATH, fault = "json", status = 400,
      body = { error = { message = "bad key " .. CANARY:sub(1, -3), code = "bad" } } }
    local _, err = env.client:status(task.id)
    no_key(all_text(err) .. tostring(err))
  end)

  it("in a plain-text body where a cut at 300 characters would split it: scrubbed before it is cut", function()
    local task = assert(env.client:create { prompt = "echo as text" })
    env.sb:faults { path = STATUS_PATH, fault = "echo_auth", answer = "text", status = 400 }
    local _, err = env.client:status(task.id)
    no_key(all_text(err) .. tostring(err))
  end)

  it("in the retry lines of the logger", function()
    local task = assert(env.client:create { prompt = "echo while retrying" })
    env.sb:faults { path = STATUS_PATH, fault = "echo_auth", status = 503, count = 2,
      headers = { ["retry-after-ms"] = "5" } }
    env.client:status(task.id)
    assert.is_true(#logged > 0)
    no_key(table.concat(logged, "\n"))
  end)

  it("through the CLI: status text, --json, and the error lines", function()
    local task = assert(env.client:create { prompt = "echo to the command" })
    for _, args in ipairs { "status " .. task.id, "status " .. task.id .. " --json" } do
      env.sb:faults { path = STATUS_PATH, fault = "echo_auth", answer = "task" }
      local ok, out = proc.run(("cd %s && JIMENG_API_KEY=%s JIMENG_BASE_URL=%s %s %s/bin/jimeng %s"):format(env.dir, CANARY,
        env.sb.url, lua, proc.root, args), proc.own_env)
      assert.is_true(ok, out)
      no_key(out)
      env.sb:faults { path = STATUS_PATH, fault = "echo_auth", status = 400 }
      local _, eout = proc.run(("cd %s && JIMENG_API_KEY=%s JIMENG_BASE_URL=%s %s %s/bin/jimeng %s"):format(env.dir, CANARY,
        env.sb.url, lua, proc.root, args), proc.own_env)
      no_key(eout)
    end
  end)

  it("the CLI reads the key from --api-key-file or stdin, and warns that --api-key shows in ps", function()
    h.write(env.dir .. "/key", CANARY .. "\n")
    local ok, out = proc.run(("cd %s && JIMENG_BASE_URL=%s %s %s/bin/jimeng create 'key from a file' --api-key-file key")
      :format(env.dir, env.sb.url, lua, proc.root), proc.own_env)
    assert.is_true(ok, out)
    local log = h.api_requests(env.sb, CREATE_PATH)
    assert.equals("Bearer " .. CANARY, log[#log].headers.authorization)
    ok, out = proc.run(("cd %s && echo %s | JIMENG_BASE_URL=%s %s %s/bin/jimeng create 'key from stdin' --api-key-file -")
      :format(env.dir, CANARY, env.sb.url, lua, proc.root), proc.own_env)
    assert.is_true(ok, out)
    ok, out = proc.run(("cd %s && JIMENG_BASE_URL=%s %s %s/bin/jimeng create 'key in argv' --api-key %s")
      :format(env.dir, env.sb.url, lua, proc.root, CANARY), proc.own_env)
    assert.is_true(ok, out)
    assert.truthy(out:find("process list", 1, true), out)
  end)
end)

describe("numbers and text checked at the door", function()
  local env = h.with_sandbox { dir = "setup", reset = true }

  it("NaN, infinities and absurd values are refused for every timing option, with the field named", function()
    for _, k in ipairs { "timeout", "connect_timeout", "poll_interval", "wait_timeout", "stall_timeout" } do
      for _, v in ipairs { 0 / 0, math.huge, -math.huge, -1, 0, 1e-9 } do
        local c, err = jimeng.new { api_key = "k", base_url = env.sb.url, [k] = v }
        assert.is_nil(c, k .. "=" .. tostring(v))
        assert.equals("invalid_argument", err.kind)
        assert.equals(k, err.field)
      end
    end
    for _, v in ipairs { 0 / 0, math.huge, -1, 2.5 } do
      assert.is_nil((jimeng.new { api_key = "k", base_url = env.sb.url, max_retries = v }))
      assert.is_nil((jimeng.new { api_key = "k", base_url = env.sb.url, max_connections = v }))
    end
    local _, err = env.client:wait("123", { interval = 0 / 0 })
    assert.equals("interval", err.field)
    assert.equals(0, #h.api_requests(env.sb))
  end)

  it("a NUL byte in any string parameter is refused: C would cut the paid request short", function()
    for _, params in ipairs {
      { prompt = "a cat\0 and a hidden dog" },
      { prompt = "x", images = { "https://example.com/a.jpg\0.png" } },
      { prompt = "x", image = "https://example.com/a\0b.jpg" },
      { prompt = "x", model = "jimeng-video-3.0-pro\0" },
    } do
      h.failed("invalid_argument", env.client:create(params))
    end
    assert.equals(0, env.sb:stats().creates)
  end)

  it("an --image that is a FIFO is refused at once, not waited on", function()
    local fifo = env.dir .. "/pipe.jpg"
    assert(proc.run("mkfifo " .. fifo))
    local t, err = env.client:create { prompt = "x", images = { fifo } }
    assert.is_nil(t)
    assert.truthy(err.message:find("not a regular file", 1, true), err.message)
  end)

  it("`jimeng batch /tmp` says the jobs file is not a file, without a traceback", function()
    local ok, out = proc.run(("JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng batch /tmp"):format(env.sb.url, lua,
      proc.root), proc.own_env)
    assert.is_false(ok)
    assert.truthy(out:find("not a readable file", 1, true), out)
    assert.falsy(out:find("traceback", 1, true), out)
  end)

  it("a status answer about another task is refused, not taken for the one asked", function()
    local task = assert(env.client:create { prompt = "mine" })
    env.sb:faults { path = STATUS_PATH, fault = "other_id" }
    local err = h.failed("protocol", env.client:status(task.id))
    assert.truthy(err.message:find(task.id, 1, true))
  end)

  it("an unknown status keeps wait waiting (with a warning) until the task completes", function()
    local task = assert(env.client:create { prompt = "strange statuses" })
    env.sb:faults { path = STATUS_PATH, fault = "answer_status", status_value = "warp_drive", count = 2 }
    local seen = {}
    local done = assert(env.client:wait(task.id, { interval = 0.02, on_status = function(t) seen[#seen + 1] = t.status end }))
    assert.equals("completed", done.status)
    assert.equals("unknown", seen[1])
  end)

  it("retry-after-ms: 1 on every status answer does not drive a storm of polls", function()
    local c = h.client(env.sb, { poll_interval = 0.2 })
    env.sb:config { queue_seconds = 0.5, process_seconds = 0.5 }
    local task = assert(c:create { prompt = "hinted" })
    env.sb:faults { path = STATUS_PATH, fault = "headers", headers = { ["retry-after-ms"] = "1" }, count = 1000 }
    assert(c:wait(task.id))
    local polls = #h.api_requests(env.sb, STATUS_PATH)
    assert.is_true(polls <= 8, polls .. " polls for a task of one second at a 0.2 s interval")
  end)

  it("invalid UTF-8 from the server still gives valid JSON from the CLI", function()
    local task = assert(env.client:create { prompt = "bytes" })
    local raw = '{"id":"' .. task.id .. '","status":"failed","error":"bad \255\254 bytes"}'
    env.sb:faults { path = STATUS_PATH, fault = "json", body_hex = (raw:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) }
    local _, out = proc.run(("JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng status %s --json"):format(env.sb.url, lua,
      proc.root, task.id), proc.own_env)
    local decoded = cjson.decode(out:match("{.*}"))
    assert.truthy(decoded.error:find("bad", 1, true))
  end)
end)
