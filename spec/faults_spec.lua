-- The fault matrix: every fault, on every call, ends in success after the right retries or in an error
-- of the right kind; no corrupt file at an output path; no paid create repeated; the key never shown.
local h = require "spec.support.helpers"
local jimeng = require "jimeng"

local FAST = { ["retry-after-ms"] = "10" } -- the server's own retry hint, so that retries take no time
local CANARY = "sk-canary-0123456789abcdef"

local STATUS_PATH = "^/v1/videos/[0-9]+$"
local CONTENT_PATH = "^/v1/videos/[0-9]+/content$"
local CREATE_PATH = "^/v1/videos$"

-- Sets the fault on path on the sandbox sb, makes the call once and checks what came back: "ok" (a table), or
-- an error of the kind expect names. Returns how many requests on path the call made, and the error.
local function under_fault(sb, path, fault, call, expect)
  local plan = { path = path }
  for k, v in pairs(fault) do plan[k] = v end
  local before = #h.api_requests(sb, path)
  sb:faults(plan)
  local value, err = call()
  if expect == "ok" then
    assert.is_table(value, err and tostring(err))
  else
    h.failed(expect, value, err)
  end
  return #h.api_requests(sb, path) - before, err
end

describe("JSON calls under faults", function()
  local env = h.with_sandbox()
  local task
  setup(function() task = assert(env.client:create { prompt = "a task to look at" }) end)

  local function hits(path)
    return #h.api_requests(env.sb, path or STATUS_PATH)
  end

  -- client:status of the task under the fault (see under_fault): the status requests it made, and the error.
  local function status_under(fault, expect)
    return under_fault(env.sb, STATUS_PATH, fault, function() return env.client:status(task.id) end, expect)
  end

  it("a 500 twice, then success: the status comes back after two retries", function()
    local before = hits()
    env.sb:faults { path = STATUS_PATH, fault = "status", status = 500, count = 2, headers = FAST }
    local t = assert(env.client:status(task.id))
    assert.equals(task.id, t.id)
    assert.equals(3, hits() - before)
  end)

  it("a 503 every time: a server error with its status after max_retries, still marked retryable", function()
    local n, err = status_under({ fault = "status", status = 503, count = 3, headers = FAST }, "server")
    assert.equals(503, err.status)
    assert.is_true(err.retryable)
    assert.equals(task.id, err.task_id)
    assert.equals(3, n)
  end)

  for _, code in ipairs { 408, 409, 429, 500, 502, 503, 504 } do
    it(("a %d once is retried"):format(code), function()
      assert.equals(2, status_under({ fault = "status", status = code, headers = FAST }, "ok"))
    end)
  end

  it("a 429 with Retry-After: 1 waits a second before the retry", function()
    env.sb:faults { path = STATUS_PATH, fault = "status", status = 429, retry_after = 1 }
    local before = hits()
    assert(env.client:status(task.id))
    local log = h.api_requests(env.sb, STATUS_PATH)
    assert.equals(2, #log - before)
    assert.is_true(log[#log].time - log[#log - 1].time >= 0.9)
  end)

  it("a 429 with Retry-After as an HTTP date waits until then", function()
    env.sb:faults { path = STATUS_PATH, fault = "status", status = 429, retry_after_date = 2 }
    assert(env.client:status(task.id))
    local log = h.api_requests(env.sb, STATUS_PATH)
    assert.is_true(log[#log].time - log[#log - 1].time >= 0.9)
  end)

  it("without a hint, the retry waits the jittered backoff (0.375 to 0.5 s the first time)", function()
    env.sb:faults { path = STATUS_PATH, fault = "status", status = 502 }
    assert(env.client:status(task.id))
    local log = h.api_requests(env.sb, STATUS_PATH)
    local gap = log[#log].time - log[#log - 1].time
    assert.is_true(gap >= 0.35 and gap < 2, "gap " .. gap)
  end)

  it("x-should-retry: false stops a retry the status would allow", function()
    assert.equals(1, status_under({ fault = "status", status = 500, headers = { ["x-should-retry"] = "false" } }, "server"))
  end)

  it("x-should-retry: true makes a retry the status would not", function()
    assert.equals(2, status_under({ fault = "status", status = 400, headers = { ["x-should-retry"] = "true", ["retry-after-ms"] = "10" } }, "ok"))
  end)

  it("a connection reset before the answer is retried", function()
    assert.equals(2, status_under({ fault = "reset_before" }, "ok"))
  end)

  it("malformed JSON is a protocol error, not retried", function()
    assert.equals(1, status_under({ fault = "malformed_json" }, "protocol"))
  end)

  it("a proxy's HTML error page is retried, and reported by its title when it persists", function()
    env.sb:faults { path = STATUS_PATH, fault = "html", status = 502, count = 3 }
    local err = h.failed("server", env.client:status(task.id))
    assert.equals("502 Bad Gateway", err.message)
  end)

  it("a body over the 8 MiB cap is refused as a protocol error", function()
    env.sb:faults { path = STATUS_PATH, fault = "huge", bytes = 9 * 1024 * 1024 }
    local err = h.failed("protocol", env.client:status(task.id))
    assert.truthy(err.message:find("larger than the limit"))
  end)

  it("JSON nested deeper than the decoder's limit is a protocol error", function()
    local deep = { id = "1", status = "completed" }
    local cur = deep
    for _ = 1, 40 do
      cur.x = {}
      cur = cur.x
    end
    env.sb:faults { path = STATUS_PATH, fault = "json", body = deep }
    h.failed("protocol", env.client:status(task.id))
  end)

  it("a stalled server hits the per-request timeout: a timeout error", function()
    local c = h.client(env.sb, { timeout = 0.3, max_retries = 0 })
    env.sb:faults { path = STATUS_PATH, fault = "stall", seconds = 1.5 }
    local err = h.failed("timeout", c:status(task.id))
    assert.is_true(err.retryable)
  end)

  it("an API call follows no redirect", function()
    local n, err = status_under({ fault = "redirect", location = env.sb.root .. "/cdn/elsewhere" }, "http")
    assert.equals(302, err.status)
    assert.equals(1, n)
    assert.equals(0, #h.api_requests(env.sb, "^/cdn/"))
  end)

  it("a 404 is not_found at once", function()
    local before = hits()
    h.failed("not_found", env.client:status("11111111111111111111"))
    assert.equals(1, hits() - before)
  end)

  it("the request id comes from the body when the header is absent; a flat error body gives message and code", function()
    env.sb:faults { path = STATUS_PATH, fault = "json", status = 400,
      body = { message = "quota exceeded", code = 1102, request_id = "body-rid" }, headers = { no_request_id = true } }
    local err = h.failed("invalid_argument", env.client:status(task.id))
    assert.equals("quota exceeded", err.message)
    assert.equals("1102", err.code)
    assert.equals("body-rid", err.request_id)
  end)

  it("one rule for the request id of tasks and errors alike: the body's request_id, else the header", function()
    local body_task = { id = task.id, object = "video", status = "processing", request_id = "task-body-rid" }
    env.sb:faults {
      { path = STATUS_PATH, fault = "json", status = 200, body = body_task },
      { path = STATUS_PATH, fault = "json", status = 400, body = { message = "no", request_id = "err-body-rid" } },
      { path = STATUS_PATH, fault = "json", status = 400, body = { message = "no" } },
    }
    assert.equals("task-body-rid", assert(env.client:status(task.id)).request_id) -- the header also had one
    local _, err = env.client:status(task.id)
    assert.equals("err-body-rid", err.request_id)
    _, err = env.client:status(task.id)
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", err.request_id) -- the sandbox's x-request-id header
  end)

  it("wait keeps polling through a fault that outlasts status's own retries, and completes", function()
    local t = assert(env.client:create { prompt = "patient" })
    env.sb:faults { path = STATUS_PATH, fault = "status", status = 503, count = 4, headers = FAST }
    local done = assert(env.client:wait(t.id, { interval = 0.05, timeout = 10 }))
    assert.equals("completed", done.status)
  end)

  it("wait stops at once on an error that waiting cannot cure", function()
    h.failed("not_found", env.client:wait("11111111111111111111", { interval = 0.05, timeout = 10 }))
  end)

  it("wait takes the server's hint over its own interval", function()
    local t = assert(env.client:create { prompt = "hinted" })
    env.sb:faults { path = STATUS_PATH, fault = "json", status = 200, body = { id = t.id, object = "video", status = "processing" },
      headers = { ["retry-after-ms"] = "600" } }
    local before = #h.api_requests(env.sb, STATUS_PATH)
    assert(env.client:wait(t.id, { interval = 0.02, timeout = 10 }))
    local log = h.api_requests(env.sb, STATUS_PATH)
    assert.is_true(#log - before >= 2)
    local gap = log[before + 2].time - log[before + 1].time
    assert.is_true(gap >= 0.5, ("the poll after the hint came %.2f s later"):format(gap))
  end)

  it("reuses one connection for many calls", function()
    local c = h.client(env.sb)
    local before = env.sb:stats().connections
    for _ = 1, 10 do assert(c:status(task.id)) end
    assert.equals(1, env.sb:stats().connections - before)
  end)
end)

describe("every fault on every call that changes nothing (status, detect, recognize)", function()
  local env = h.with_sandbox { client = { timeout = 0.5 } }
  local task
  setup(function() task = assert(env.client:create { prompt = "matrix" }) end)

  local IMAGE = "https://example.com/portrait.jpg?subjects=2"
  local calls = {
    { "status", STATUS_PATH, function() return env.client:status(task.id) end },
    { "detect", "detection$", function() return env.client:detect(IMAGE) end },
    { "recognize", "recognition$", function() return env.client:recognize(IMAGE) end },
  }
  -- fault plan, then what the user gets: "ok" after retries, or the kind of the error
  local faults = {
    { "a 429 once", { fault = "status", status = 429, headers = FAST }, "ok", 2 },
    { "a 502 once", { fault = "status", status = 502, headers = FAST }, "ok", 2 },
    { "a 500 every time", { fault = "status", status = 500, count = 3, headers = FAST }, "server", 3 },
    { "a reset before the answer", { fault = "reset_before" }, "ok", 2 },
    { "an HTML error page every time", { fault = "html", status = 502, count = 3, headers = FAST }, "server", 3 },
    { "malformed JSON", { fault = "malformed_json" }, "protocol", 1 },
    { "a huge body", { fault = "huge", bytes = 9 * 1024 * 1024 }, "protocol", 1 },
    { "a stall past the timeout, every time", { fault = "stall", seconds = 1, count = 3 }, "timeout", 3 },
    { "a 401", { fault = "status", status = 401 }, "auth", 1 },
  }
  for _, call in ipairs(calls) do
    for _, f in ipairs(faults) do
      it(("%s: %s -> %s after %d request%s"):format(call[1], f[1], f[3], f[4], f[4] == 1 and "" or "s"), function()
        assert.equals(f[4], under_fault(env.sb, call[2], f[2], call[3], f[3]))
      end)
    end
  end
end)

describe("a paid create under faults", function()
  local env = h.with_sandbox { reset = true }

  local function creates() return env.sb:stats().creates end
  local function attempts() return #h.api_requests(env.sb, CREATE_PATH) end

  it("is retried after a 429 (the server refused it) and creates exactly one task", function()
    env.sb:faults { path = CREATE_PATH, fault = "status", status = 429, headers = FAST }
    assert(env.client:create { prompt = "x" })
    assert.equals(2, attempts())
    assert.equals(1, creates())
  end)

  it("is retried after a complete refusal that says x-should-retry: true (a 409: nothing was made)", function()
    env.sb:faults { path = CREATE_PATH, fault = "status", status = 409, headers = { ["x-should-retry"] = "true",
      ["retry-after-ms"] = "10" } }
    assert(env.client:create { prompt = "x" })
    assert.equals(2, attempts())
    assert.equals(1, creates())
  end)

  it("is not retried after a 5xx that says x-should-retry: true: a gateway may say so after the backend made it",
    function()
      env.sb:faults { path = CREATE_PATH, fault = "create_then", answer = "status", status = 502, count = 3,
        headers = { ["x-should-retry"] = "true", ["retry-after-ms"] = "10" } }
      local err = h.failed("unknown_outcome", env.client:create { prompt = "x" })
      assert.is_nil(err.created)
      assert.equals(1, attempts())
      assert.equals(1, creates())
    end)

  for _, code in ipairs { 500, 502, 503, 504 } do
    it(("after a %d is unknown_outcome, not retried: a gateway answers so after the backend got it"):format(code),
      function()
        env.sb:faults { path = CREATE_PATH, fault = "status", status = code, retry_after = 1 }
        local err = h.failed("unknown_outcome", env.client:create { prompt = "x" })
        assert.equals(code, err.status)
        assert.is_nil(err.created)
        assert.truthy(err.message:find("check before creating it again"))
        assert.equals(1, attempts())
      end)
  end

  it("on a kept-alive connection is never re-sent by libcurl itself when that connection dies", function()
    assert(env.client:create { prompt = "warm the connection up" })
    env.sb:faults { path = CREATE_PATH, fault = "reset_before" }
    h.failed("unknown_outcome", env.client:create { prompt = "x" })
    assert.equals(2, attempts())
    assert.equals(1, creates())
  end)

  it("whose connection is reset after the server made the task is unknown_outcome, never retried", function()
    env.sb:faults { path = CREATE_PATH, fault = "reset_after_create" }
    local err = h.failed("unknown_outcome", env.client:create { prompt = "x" })
    assert.is_false(err.retryable)
    assert.truthy(err.message:find("check before creating it again"))
    assert.equals(1, attempts())
    assert.equals(1, creates())
  end)

  it("whose connection is reset after the body was sent is unknown_outcome too", function()
    env.sb:faults { path = CREATE_PATH, fault = "reset_before" }
    h.failed("unknown_outcome", env.client:create { prompt = "x" })
    assert.equals(1, attempts())
  end)

  it("that times out after sending is unknown_outcome, not a second paid request", function()
    local c = h.client(env.sb, { timeout = 0.3 })
    env.sb:faults { path = CREATE_PATH, fault = "stall", seconds = 1 }
    h.failed("unknown_outcome", c:create { prompt = "x" })
    assert.equals(1, attempts())
  end)

  it("that cannot connect at all is retried, and reported as a retryable network error", function()
    local retries = 0
    local closed = assert(jimeng.new { api_key = "k", base_url = "http://127.0.0.1:9/v1", max_retries = 1,
      logger = function(what) if what == "retry" then retries = retries + 1 end end })
    local err = h.failed("network", closed:create { prompt = "x" })
    assert.is_true(err.retryable)
    assert.equals(1, retries)
  end)
end)

describe("a download under faults", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0, process_seconds = 0 }, dir = "setup" }
  local task, SIZE
  setup(function()
    SIZE = 3 * 1024 * 1024 + 17
    task = assert(env.client:create { prompt = "big one sandbox:bytes=" .. SIZE })
    assert(env.client:wait(task.id, { interval = 0.01 }))
  end)

  -- Checks a synthetic video byte by byte at a sample of offsets, and its size.
  local function assert_video(path)
    local data = assert(h.read(path))
    assert.equals(SIZE, #data)
    assert.equals("ftyp", data:sub(5, 8))
    for _, i in ipairs { 56, 100, 65520, 65521, 1048575, 1048576, 1572864, SIZE - 1 } do
      assert.equals(h.synthetic_byte(i), data:byte(i + 1), "byte " .. i)
    end
    local step = 4093
    for i = 56, SIZE - 1, step do
      if data:byte(i + 1) ~= h.synthetic_byte(i) then error("wrong byte at " .. i) end
    end
  end

  local function content_requests() return h.api_requests(env.sb, CONTENT_PATH) end

  it("reset mid-body is resumed within the same call with Range and If-Range", function()
    local path = env.dir .. "/reset.mp4"
    local before = #content_requests()
    env.sb:faults { path = CONTENT_PATH, fault = "reset_mid_body", after_bytes = 1000000 }
    local info = assert(env.client:download(task.id, path))
    assert_video(path)
    assert.equals(SIZE, info.bytes)
    local log = content_requests()
    assert.equals(2, #log - before)
    local retry = log[#log].headers
    assert.truthy(retry.range:match("^bytes=(%d+)%-$"))
    assert.is_true(tonumber(retry.range:match("^bytes=(%d+)%-$")) > 0)
    assert.equals('"syn-' .. SIZE .. '"', retry["if-range"])
    assert.is_false(h.exists(path .. ".part"))
  end)

  it("a short body (fewer bytes than Content-Length) is resumed, never saved as if whole", function()
    local path = env.dir .. "/short.mp4"
    env.sb:faults { path = CONTENT_PATH, fault = "short_body", after_bytes = 2000000 }
    assert(env.client:download(task.id, path))
    assert_video(path)
  end)

  it("when the retries run out: no file at the path, the .part kept, and the next call resumes from it", function()
    local path = env.dir .. "/broken.mp4"
    local c = h.client(env.sb, { max_retries = 1 })
    env.sb:faults { path = CONTENT_PATH, fault = "reset_mid_body", after_bytes = 700000, count = 2 }
    local err = h.download_failed("network", { path }, c:download(task.id, path))
    assert.is_true(err.retryable)
    assert.equals(task.id, err.task_id)
    local partial = #h.read(path .. ".part")
    assert.is_true(partial > 0 and partial < SIZE)
    local again = assert(env.client:download(task.id, path))
    assert.equals(partial, again.resumed_from)
    assert_video(path)
    local log = content_requests()
    assert.equals(("bytes=%d-"):format(partial), log[#log].headers.range)
    assert.equals('"syn-' .. SIZE .. '"', log[#log].headers["if-range"])
    assert.is_false(h.exists(path .. ".part"))
    assert.is_false(h.exists(path .. ".part.etag"))
  end)

  it("a 206 that starts at the wrong offset is thrown away and the download restarts from zero", function()
    local path = env.dir .. "/badrange.mp4"
    h.write(path .. ".part", ("\0"):rep(5000))
    env.sb:faults { path = CONTENT_PATH, fault = "bad_range" }
    assert(env.client:download(task.id, path))
    assert_video(path)
  end)

  it("a server that ignores Range (200) restarts the file from zero", function()
    local path = env.dir .. "/norange.mp4"
    h.write(path .. ".part", ("\0"):rep(5000))
    env.sb:faults { path = CONTENT_PATH, fault = "ignore_range" }
    local info = assert(env.client:download(task.id, path))
    assert.equals(200, info.status)
    assert_video(path)
  end)

  it("resume=false starts over whatever the .part holds", function()
    local path = env.dir .. "/fresh.mp4"
    h.write(path .. ".part", ("\0"):rep(5000))
    local info = assert(env.client:download(task.id, path, { resume = false }))
    assert.equals(200, info.status)
    assert_video(path)
  end)

  it("JSON where a video was expected is an error with the server's message, and no file", function()
    local path = env.dir .. "/json.mp4"
    env.sb:faults { path = CONTENT_PATH, fault = "json", status = 200, body = { error = { message = "video expired" } } }
    local err = h.download_failed("protocol", { path, path .. ".part" }, env.client:download(task.id, path))
    assert.truthy(err.message:find("video expired"))
  end)

  it("an HTML error page is retried, then reported by its title; no file", function()
    local path = env.dir .. "/html.mp4"
    env.sb:faults { path = CONTENT_PATH, fault = "html", status = 502, count = 3 }
    local err = h.download_failed("server", { path }, env.client:download(task.id, path))
    assert.equals("502 Bad Gateway", err.message)
  end)

  it("a stall mid-body is cut by the stall timeout and resumed", function()
    local path = env.dir .. "/stall.mp4"
    local c = h.client(env.sb, { stall_timeout = 1 })
    env.sb:faults { path = CONTENT_PATH, fault = "stall_mid_body", after_bytes = 1500000, seconds = 4 }
    assert(c:download(task.id, path))
    assert_video(path)
  end)

  it("follows a redirect to a storage host, without carrying the API key there", function()
    local cdn = h.sandbox { host = "127.0.0.2" }
    local path = env.dir .. "/cdn.mp4"
    env.sb:faults { path = CONTENT_PATH, fault = "redirect", location = cdn.root .. "/cdn/video.mp4" }
    local info = assert(env.client:download(task.id, path))
    assert.equals(h.fixture(), h.read(path))
    assert.equals(#h.fixture(), info.bytes)
    local got = h.api_requests(cdn, "^/cdn/")
    cdn:stop()
    assert.equals(1, #got)
    assert.is_nil(got[1].headers.authorization)
  end)

  it("keeps the key on a redirect within the same host", function()
    local path = env.dir .. "/samehost.mp4"
    env.sb:faults { path = CONTENT_PATH, fault = "redirect", location = env.sb.root .. "/cdn/video.mp4" }
    assert(env.client:download(task.id, path))
    local got = h.api_requests(env.sb, "^/cdn/")
    assert.equals("Bearer test-key", got[#got].headers.authorization)
  end)

  it("refuses a redirect to a file: URL", function()
    local path = env.dir .. "/file.mp4"
    local before = #content_requests()
    env.sb:faults { path = CONTENT_PATH, fault = "redirect", location = "file:///etc/passwd" }
    local err = h.download_failed("protocol", { path }, env.client:download(task.id, path))
    assert.is_false(err.retryable)
    assert.equals(1, #content_requests() - before)
  end)

  it("gives up after five redirects", function()
    local path = env.dir .. "/loop.mp4"
    env.sb:faults { path = "^/cdn/", fault = "redirect", location = env.sb.root .. "/cdn/again", count = 6 }
    env.sb:faults { path = CONTENT_PATH, fault = "redirect", location = env.sb.root .. "/cdn/again" }
    local err = h.download_failed("protocol", { path }, env.client:download(task.id, path))
    assert.truthy(err.message:find("more than 5 redirects"))
  end)

  it("keeps memory flat: a 64 MiB video does not grow the process by more than a few MiB", function()
    local function hwm_kib()
      local f = io.open("/proc/self/status")
      if not f then return nil end
      local s = f:read("*a")
      f:close()
      return tonumber(s:match("VmHWM:%s*(%d+)"))
    end
    if not hwm_kib() then return pending("no /proc here") end
    local big = 64 * 1024 * 1024
    local t = assert(env.client:create { prompt = "huge sandbox:bytes=" .. big })
    assert(env.client:wait(t.id, { interval = 0.01 }))
    collectgarbage()
    local before = hwm_kib()
    local info = assert(env.client:download(t.id, env.dir .. "/huge.mp4"))
    assert.equals(big, info.bytes)
    local grown = hwm_kib() - before
    assert.is_true(grown < 16 * 1024, ("peak memory grew by %d KiB"):format(grown))
    os.remove(env.dir .. "/huge.mp4")
  end)
end)

describe("security", function()
  local env = h.with_sandbox { client = false }

  it("refuses a plain-http base URL to a remote host, and allows loopback or an explicit opt-in", function()
    local err = h.failed("invalid_argument", jimeng.new { api_key = "k", base_url = "http://example.com/v1" })
    assert.equals("base_url", err.field)
    assert(jimeng.new { api_key = "k", base_url = "http://127.0.0.1:1/v1" })
    assert(jimeng.new { api_key = "k", base_url = "http://localhost:1/v1" })
    assert(jimeng.new { api_key = "k", base_url = "http://example.com/v1", allow_insecure_http = true })
    assert(jimeng.new { api_key = "k", base_url = "https://example.com/v1" })
    local _, ferr = jimeng.new { api_key = "k", base_url = "ftp://example.com/v1" }
    assert.equals("invalid_argument", ferr.kind)
  end)

  it("refuses an API key with CR or LF, which could smuggle a header", function()
    for _, key in ipairs { "sk-1\r\nX-Evil: 1", "sk-1\n", "sk\0x" } do
      local err = h.failed("invalid_argument", jimeng.new { api_key = key, base_url = env.sb.url })
      assert.falsy(tostring(err):find(key, 1, true))
    end
  end)

  it("never shows the API key: not in errors, not in log lines, even when the server echoes it", function()
    local lines = {}
    local c = h.client(env.sb, { api_key = CANARY, logger = function(...)
      local parts = {}
      for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
      lines[#lines + 1] = table.concat(parts, " ")
    end })
    local errs = {}
    local function collect(_, err) if err then errs[#errs + 1] = tostring(err) .. " " .. err.message end end
    env.sb:faults { path = CREATE_PATH, fault = "json", status = 401,
      body = { error = { message = "Incorrect API key provided: " .. CANARY, code = "invalid_api_key" } } }
    collect(c:create { prompt = "x" })
    env.sb:faults { path = STATUS_PATH, fault = "status", status = 500, message = "upstream got key " .. CANARY, count = 3, headers = FAST }
    collect(c:status("12345678901234567890"))
    collect(c:status("12345678901234567890"))
    env.sb:faults { path = CONTENT_PATH, fault = "html", count = 3 }
    collect(c:download("12345678901234567890", os.tmpname()))
    assert.is_true(#errs >= 3)
    assert.is_true(#lines >= 1)
    for _, s in ipairs(errs) do assert.falsy(s:find(CANARY, 1, true), s) end
    for _, s in ipairs(lines) do assert.falsy(s:find(CANARY, 1, true), s) end
    assert.truthy(errs[1]:find("Incorrect API key provided: ***", 1, true))
  end)
end)

describe("TLS", function()
  local env = h.with_sandbox { sandbox = { tls = true }, client = false }

  it("works against a private CA given as cainfo", function()
    assert.truthy(env.sb.url:find("^https://"))
    local c = h.client(env.sb, { cainfo = env.sb.cainfo })
    local t = assert(c:create { prompt = "over tls" })
    assert(c:wait(t.id, { interval = 0.02 }))
  end)

  it("refuses a certificate it cannot verify, at once and with a hint", function()
    local c = h.client(env.sb)
    local before = env.sb:stats().creates
    local err = h.failed("tls", c:create { prompt = "x" })
    assert.is_false(err.created)
    assert.is_false(err.retryable)
    assert.truthy(err.message:find("cainfo"))
    assert.equals(before, env.sb:stats().creates)
  end)
end)
