-- A status poll allocates only what it needs (issue 27): its answer is read in C straight into the task
-- (core.status_task) when it has the vendor page's shape, else decoded whole as before; a result's headers
-- become Lua strings when read. Neither may change what a caller sees: the same task, the same error, the
-- same header values, and a result or task kept by its caller never changes under it.
local h = require "spec.support.helpers"
local core = require "jimeng.core"
local jimeng = require "jimeng"

local json = jimeng.json -- the client's own decoder (depth 32, strict numbers)

-- What the client made of a body before: decoded whole, then core.task, the request id from the body.
local function slow(body)
  local ok, decoded = pcall(json.decode, body)
  if not ok or type(decoded) ~= "table" then return nil, "undecodable" end
  local task, why = core.task(decoded, body)
  if not task then return nil, why end
  if type(decoded.request_id) == "string" then task.request_id = decoded.request_id end
  return task
end

local function same(a, b)
  for k, v in pairs(a) do
    if b[k] ~= v or math.type and math.type(v) ~= math.type(b[k]) then return false, k end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, k end
  end
  return true
end

-- Reads body both ways: the fast reader answers only what the slow path reads the same.
local function check(body)
  local fast = core.status_task(body)
  if fast == nil then return false end
  local want = slow(body)
  assert(want, "the fast reader answered a body the client refuses: " .. body)
  local ok, key = same(fast, want)
  assert(ok, ("field %s differs for %s"):format(tostring(key), body))
  return true
end

local SEEDS = {
  -- the vendor page's answers
  [[{"id": "10762451179911711518", "object": "video", "created_at": 1762776961, "status": "in_queue"}]],
  [[{"id": "10762451179911711518", "object": "video", "status": "completed"}]],
  [[{"id":"1","status":"failed","error":"content policy","request_id":"rid-1"}]],
  [[{"id":"1","status":"FAILED","error":null,"fail_reason":"timeout"}]],
  [[{"id":"1","status":"processing","progress":40.5,"created_at":1.5}]],
  [[{"id":123456789012345678901,"status":"succeeded","progress":100}]],
  [[{"id":-7,"status":"queued","extra":{"a":[1,2,{"b":null}],"c":"\u00e9\n"},"flag":true}]],
  [[ {"status":"brand_new","id":"x","progress":null,"created_at":1e3} ]],
}

describe("a status answer read straight into its task", function()
  it("reads the vendor page's answers itself, each as decoding and core.task do", function()
    for i = 1, #SEEDS do assert.is_true(check(SEEDS[i]), SEEDS[i]) end
  end)

  it("leaves to the decoder every answer it cannot read the same: escapes, objects, duplicates, broken JSON", function()
    local others = {
      [[{"id":"1","status":"in\u005fqueue"}]], -- an escaped status
      [[{"id":"1","status":"failed","error":{"message":"m"}}]], -- an error object
      [[{"id":"1","id":"2","status":"completed"}]], -- a field twice: the decoder keeps the last
      [[{"\u0069d":"1","status":"completed"}]], -- an escaped key
      [[{"id":"1","status":"completed"]], [[{"id":"1","status":"completed"} x]], [[{"id":"1","status":01}]],
      [[{"id":1.5,"status":"completed"}]], [[{"id":"","status":"completed"}]], [[{"id":"1"}]], [[{}]], "[]", "",
      [[{"id":"1","status":"completed","progress":"40%"}]],
    }
    for _, body in ipairs(others) do
      assert.is_nil(core.status_task(body), body)
    end
    -- nesting: the decoder's limit (32 levels, the answer's own object one of them) is the reader's
    local function nested(n) return '{"id":"1","status":"completed","x":' .. ("["):rep(n) .. ("]"):rep(n) .. "}" end
    assert.is_true(check(nested(31)))
    assert.is_nil(core.status_task(nested(32)))
    assert.is_false(pcall(json.decode, nested(32)))
    -- what the client makes of them is unchanged: the slow path reads the first three
    assert.equals("in_queue", slow(others[1]).status)
    assert.equals("m", slow(others[2]).error)
    assert.equals("2", slow(others[3]).id)
  end)

  it("never answers differently from the decoder, over 20,000 mutated answers", function()
    math.randomseed(27)
    local alphabet = { '"', "{", "}", "[", "]", ",", ":", "\\", "0", "1", "-", ".", "e", "u", "n", "t", " ", "\0",
      "\n", "id", "status", "null", "error", "é" }
    local read = 0
    for _ = 1, 20000 do
      local body = SEEDS[math.random(#SEEDS)]
      for _ = 1, math.random(1, 3) do
        local at = math.random(1, #body)
        local op = math.random(3)
        if op == 1 then
          body = body:sub(1, at - 1) .. body:sub(at + 1)
        elseif op == 2 then
          body = body:sub(1, at - 1) .. alphabet[math.random(#alphabet)] .. body:sub(at)
        else
          body = body:sub(1, at - 1) .. alphabet[math.random(#alphabet)] .. body:sub(at + 1)
        end
      end
      if check(body) then read = read + 1 end
    end
    assert.truthy(read > 1000, "the fast reader read only " .. read) -- it is exercised, not bypassed
  end)
end)

describe("a status poll", function()
  local env = h.with_sandbox()
  local STATUS_PATH = "^/v1/videos/[0-9]+$"

  it("gives the same task whether its answer is read in C or decoded whole", function()
    local task = assert(env.client:create { prompt = "read twice" })
    local plain = ('{"id":"%s","object":"video","status":"processing","progress":40,"fail_reason":"none yet",' ..
      '"request_id":"rid-plain"}'):format(task.id)
    local escaped = plain:gsub('"processing"', '"process\\u0069ng"')
    assert.is_table(core.status_task(plain))
    assert.is_nil(core.status_task(escaped))
    local got = {}
    for i, body in ipairs { plain, escaped } do
      env.sb:faults { path = STATUS_PATH, fault = "json", status = 200, body_hex = (body:gsub(".", function(c)
        return ("%02x"):format(c:byte())
      end)) }
      got[i] = assert(env.client:status(task.id))
    end
    for _, t in ipairs(got) do
      assert.equals(task.id, t.id)
      assert.equals("processing", t.status)
      assert.equals(40, t.progress)
      assert.equals("none yet", t.error)
      assert.equals("rid-plain", t.request_id)
      assert.same({}, t.warnings)
    end
    assert.same(got[1], got[2])
  end)

  it("hands back a new task each time: one kept by the caller never changes", function()
    local task = assert(env.client:create { prompt = "kept" })
    local first = assert(env.client:status(task.id))
    local copy = {}
    for k, v in pairs(first) do copy[k] = v end
    env.sb:faults { path = STATUS_PATH, fault = "answer_status", status_value = "processing" }
    local second = assert(env.client:status(task.id))
    assert.are_not.equal(first, second)
    assert.equals("processing", second.status)
    assert.same(copy, first)
    assert.are_not.equal(first.request_id, second.request_id) -- each answer its own x-request-id
  end)
end)

describe("a transfer's result", function()
  local env = h.with_sandbox()

  local function fetch(engine, url)
    local t = assert(engine:request { url = url, timeout = 10 })
    while not t:done() do engine:wait(100) end
    return t:result()
  end

  it("reads its headers when asked, by their lower-case names, and keeps them as they were", function()
    local engine = core.engine { api_key = "k" }
    local task = assert(env.client:create { prompt = "headers" })
    local url = env.sb.url .. "/videos/" .. task.id
    local r = fetch(engine, url)
    assert.equals(200, r.status)
    local rid = r.headers["x-request-id"]
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", rid)
    assert.equals("application/json", r.headers["content-type"])
    assert.is_nil(r.headers["Content-Type"]) -- the names are lower case, as they always were
    assert.is_nil(r.headers.server) -- a header the Lua layer never reads is never made a string
    assert.is_nil(r.headers["retry-after"])
    assert.equals(r.headers, r.headers) -- one table per result
    local plain = core.headers(r.headers) -- all of them as a plain table, for pairs
    assert.same({ ["x-request-id"] = rid, ["content-type"] = "application/json" }, plain)
    assert.equals(plain, core.headers(plain))
    -- what -v shows is there too, read from the transfer
    assert.is_number(r.total_time)
    assert.equals("1.1", r.http_version)
    assert.is_number(r.num_connects)
    assert.truthy(r.request_size > 0)
    assert.equals(#r.body, r.content_length)
    -- a later poll on the same engine changes nothing in the result kept
    local r2 = fetch(engine, url)
    assert.are_not.equal(rid, r2.headers["x-request-id"])
    assert.equals(rid, r.headers["x-request-id"])
    assert.same({ ["x-request-id"] = rid, ["content-type"] = "application/json" }, core.headers(r.headers))
    engine:close()
    assert.equals(rid, r.headers["x-request-id"]) -- even once its engine is closed
  end)

  it("joins a header that comes twice, as HTTP allows", function()
    local engine = core.engine { api_key = "k" }
    env.sb:faults { path = "^/v1/videos/[0-9]+$", fault = "status", status = 503, count = 1,
      headers = { ["x-should-retry"] = "false", ["X-Should-Retry"] = "true" } }
    local r = fetch(engine, env.sb.url .. "/videos/123")
    assert.equals(503, r.status)
    local v = r.headers["x-should-retry"]
    assert.truthy(v == "false, true" or v == "true, false", v) -- in the order sent (the plan's: a Lua table's)
    assert.equals(v, core.headers(r.headers)["x-should-retry"])
    engine:close()
  end)
end)
