-- The sandbox as a hostile and limited server: every fault, limit and counter the other specs lean on,
-- proved with plain HTTP requests (libcurl through jimeng.core, or raw sockets from Python where the
-- bytes on the wire, a FIN or a reset, are the point), against the real server/server.py on loopback.
local h = require "spec.support.helpers"
local P = require "spec.support.process"
local core = require "jimeng.core"
local cjson = require "cjson"

local KEY = "sk-canary-0123456789abcdef"
local AUTH = "Bearer " .. KEY
local CREATE = "^/v1/videos$"
local STATUS = "^/v1/videos/[0-9]+$"
local CONTENT = "^/v1/videos/[0-9]+/content$"

-- ---- plain HTTP through libcurl ----

local engine = core.engine()

local function drive(transfers)
  local pending = true
  while pending do
    engine:perform()
    pending = false
    for _, t in ipairs(transfers) do
      if not t:done() then pending = true end
    end
    if pending then engine:poll(20) end
  end
end

--- Starts a request through libcurl: opts.method, opts.body (a table is sent as JSON), opts.headers (an
-- array), opts.auth (the whole Authorization value; default AUTH), opts.accept_encoding.
local function request_headers(opts)
  local headers = { "Authorization: " .. (opts.auth or AUTH) }
  for _, v in ipairs(opts.headers or {}) do headers[#headers + 1] = v end
  local body = opts.body
  if type(body) == "table" then
    body = cjson.encode(body)
    headers[#headers + 1] = "Content-Type: application/json"
  end
  return headers, body
end

local function start(url, opts)
  opts = opts or {}
  local headers, body = request_headers(opts)
  return assert(engine:request { url = url, method = opts.method or (body and "POST" or "GET"), body = body,
    headers = headers, timeout = 10, max_body = 64 * 1024 * 1024, accept_encoding = opts.accept_encoding })
end

--- One request through libcurl: the engine's result (its headers are only those the client reads).
local function curl(url, opts)
  local t = start(url, opts)
  drive { t }
  return t:result()
end

local function json_of(r)
  local ok, v = pcall(cjson.decode, r.body)
  assert(ok, "not JSON: " .. tostring(r.body))
  return v
end

local function video_body(prompt)
  return { model = "jimeng-video-3.0-pro", req_key = "jimeng_ti2v_v30_pro", prompt = prompt }
end

--- Creates a video task by a plain POST of the vendor page's body; returns its id.
local function create(sb, prompt)
  return json_of(curl(sb.url .. "/videos", { body = video_body(prompt) })).id
end

--- For the describe block that calls it: a sandbox (h.with_sandbox, no client) and a task created on it by
-- prompt in setup. Returns the table setup fills in: sb, and the task's id.
local function with_task(prompt)
  local env = h.with_sandbox { client = false }
  setup(function() env.id = create(env.sb, prompt) end)
  return env
end

--- Polls a task's status (plain GETs) until it is completed; returns the last answer.
local function until_completed(sb, id)
  local deadline = os.time() + 10
  while true do
    local v = json_of(curl(sb.url .. "/videos/" .. id))
    if v.status == "completed" or os.time() > deadline then return v end
    P.run("sleep 0.02")
  end
end

-- The synthetic video of `size` bytes (default n): an MP4 by its boxes (ftyp, an empty moov, an mdat with a
-- 64-bit size), then byte i = ((i % 65521) * 7 + 13 + seed) % 256. Its bytes from..n-1.
local function synthetic(n, seed, from, size)
  local head = h.synthetic_head(size or n)
  local out = {}
  for i = from or 0, n - 1 do
    out[#out + 1] = i < #head and head:sub(i + 1, i + 1) or string.char(((i % 65521) * 7 + 13 + (seed or 0)) % 256)
  end
  return table.concat(out)
end

--- Asserts two byte strings equal, naming the first difference (never printing megabytes of binary).
local function same_bytes(expected, actual)
  assert.is_string(actual)
  if expected == actual then return end
  local i = 1
  while i <= #expected and expected:byte(i) == actual:byte(i) do i = i + 1 end
  error(("bodies differ: %d bytes expected, %d got, first difference at offset %d"):format(#expected, #actual, i - 1), 2)
end

-- ---- raw sockets, from Python: what exactly went over the wire, and how the connection ended ----

local RAW = [==[
import json, os, signal, socket, sys, time, urllib.parse

def target(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port, (u.path or "/") + ("?" + u.query if u.query else "")

def request(url, method="GET", headers=(), body=b""):
    host, port, path = target(url)
    s = socket.create_connection((host, port), timeout=5)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {'[' + host + ']' if ':' in host else host}:{port}",
             "Connection: close", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    data, end = b"", "fin"
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            end = "reset"
            break
        except socket.timeout:
            end = "timeout"
            break
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    head = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return {"status_line": head[0], "headers": hdrs, "body_hex": rest.hex(), "ended": end}

def stats(root):
    return json.loads(bytes.fromhex(request(root + "/_sandbox/stats")["body_hex"]))

cmd = sys.argv[1]
if cmd == "request":
    url, method, headers, body = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5].encode()
    print(json.dumps(request(url, method, headers, body)))
elif cmd == "connections":  # opens n connections and holds them while asking the stats
    root, n = sys.argv[2], int(sys.argv[3])
    host, port, _ = target(root)
    base = stats(root)
    socks = [socket.create_connection((host, port), timeout=5) for _ in range(n)]
    held = stats(root)
    for s in socks:
        s.close()
    deadline = time.time() + 10
    after = stats(root)
    while after["open_connections"] != base["open_connections"] and time.time() < deadline:
        time.sleep(0.02)
        after = stats(root)
    print(json.dumps({"base": base, "held": held, "after": after}))
elif cmd == "backlog":  # how many connections the kernel queues for a server that does not accept
    root, pid = sys.argv[2], int(float(sys.argv[3]))
    host, port, _ = target(root)
    socks = []
    os.kill(pid, signal.SIGSTOP)
    try:
        while len(socks) < 64:
            s = socket.socket(socket.AF_INET)
            s.settimeout(0.2)
            try:
                s.connect((host, port))
            except OSError:  # the queue is full: the kernel drops the SYN
                s.close()
                break
            socks.append(s)
    finally:
        os.kill(pid, signal.SIGCONT)
        for s in socks:
            s.close()
    print(json.dumps({"queued": len(socks)}))
]==]

local HEX = {} -- "3f" -> "?"
for b = 0, 255 do HEX[("%02x"):format(b)] = string.char(b) end

local raw_path
local function raw(args)
  if not raw_path then
    raw_path = h.tmpdir() .. "/raw.py"
    h.write(raw_path, RAW)
  end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = "'" .. tostring(a):gsub("'", "'\\''") .. "'" end
  local ok, out = P.run("python3 " .. raw_path .. " " .. table.concat(quoted, " "))
  assert(ok, out)
  return cjson.decode(out)
end

--- One request on a socket of its own (Connection: close), options as for curl: what came back, all of
-- it: {status=, status_line=, headers= (every one, by lower-case name), body=, ended="fin"|"reset"|"timeout"}.
local function request(url, opts)
  opts = opts or {}
  local headers, body = request_headers(opts)
  local r = raw { "request", url, opts.method or (body and "POST" or "GET"), cjson.encode(headers), body or "" }
  r.body = r.body_hex:gsub("%x%x", HEX)
  r.status = tonumber(r.status_line:match("^HTTP/%d%.%d (%d+)"))
  return r
end

local function exists(path)
  return (P.run("test -e '" .. path .. "'"))
end

--- Whether a process runs (a zombie, dead but not yet waited for by its parent, does not).
local function alive(pid)
  local f = io.open(("/proc/%d/stat"):format(pid), "r")
  if not f then return false end
  local st = f:read("*a")
  f:close()
  return st:match("%) (%a)") ~= "Z"
end

--- The wall clock, as the sandbox's log times it.
local function now()
  local _, out = P.run("date +%s.%N")
  return tonumber(out)
end

--- Waits (up to 10 s) for a condition that another process makes true.
local function eventually(fn)
  for _ = 1, 500 do
    if fn() then return true end
    P.run("sleep 0.02")
  end
  return fn()
end

describe("the sandbox's listen backlog", function()
  it("--backlog 5 queues about that many connections while the server does not accept; 512 queues them all", function()
    local small = h.sandbox { backlog = 5 }
    local queued = raw { "backlog", small.root, ("%d"):format(small:stats().pid) }.queued
    small:stop()
    assert.is_true(queued >= 5 and queued <= 7, "queued " .. queued) -- Linux queues backlog + 1
    local default = h.sandbox()
    local all = raw { "backlog", default.root, ("%d"):format(default:stats().pid) }.queued
    default:stop()
    assert.equals(64, all)
  end)
end)

describe("the sandbox's connection accounting", function()
  local env = h.with_sandbox { client = false }

  it("counts connections open now and the peak, from accept to close", function()
    env.sb:reset()
    local r = raw { "connections", env.sb.root, 5 }
    assert.equals(r.base.open_connections + 5, r.held.open_connections)
    assert.equals(r.held.open_connections, r.held.max_open_connections)
    assert.equals(r.base.open_connections, r.after.open_connections)
    assert.equals(r.held.max_open_connections, r.after.max_open_connections)
  end)

  it("a reset starts the peak again from the connections open now", function()
    raw { "connections", env.sb.root, 8 }
    local before = env.sb:stats()
    assert.is_true(before.max_open_connections >= before.open_connections + 8)
    env.sb:reset()
    local s = env.sb:stats()
    assert.equals(s.open_connections, s.max_open_connections)
  end)
end)

describe("the sandbox's rate limit", function()
  local function burst(sb, n)
    local ts = {}
    for i = 1, n do ts[i] = start(sb.url .. "/videos/1000" .. i) end
    drive(ts)
    local out = {}
    for i, t in ipairs(ts) do out[i] = t:result() end
    return out
  end

  local function count(results, status)
    local n = 0
    for _, r in ipairs(results) do
      if r.status == status then n = n + 1 end
    end
    return n
  end

  it("--max-rps 5: ten requests at once, five served and five answered 429 with Retry-After: 1", function()
    local sb = h.sandbox { max_rps = 5 }
    local results = burst(sb, 10)
    local stats = sb:stats() -- the control plane is never limited
    local log = sb:log()
    sb:stop()
    assert.equals(5, count(results, 404)) -- served: no such task
    assert.equals(5, count(results, 429))
    for _, r in ipairs(results) do
      if r.status == 429 then
        assert.equals("1", r.headers["retry-after"])
        local e = json_of(r).error
        assert.equals("rate_limit_error", e.type)
        assert.equals("50429", e.code)
        assert.truthy(e.message:find("rate limit"))
      end
    end
    assert.equals(5, stats.rate_limited)
    assert.equals(10, #log)
    for _, e in ipairs(log) do
      assert.is_number(e.time)
      assert.equals(e.status == 429, e.rate_limited == true)
    end
  end)

  it("the window slides: a request is served once the oldest of the last N is a second old, not at a boundary", function()
    local sb = h.sandbox { max_rps = 2 }
    local function at(t)
      local wait = t - now()
      if wait > 0 then P.run(("sleep %.3f"):format(wait)) end
      return curl(sb.url .. "/videos/1").status
    end
    local function last_time() local log = sb:log() return log[#log].time end
    local got = { at(0) } -- A, served
    local a = last_time()
    got[2] = at(a + 0.7) -- B, served
    local b = last_time()
    got[3] = at(0) -- C, the third in a second: refused
    -- between A's first second and B's: A has left the window, B has not
    got[4] = at((a + b) / 2 + 1) -- D, served
    got[5] = at(0) -- E: B and D are in the window, refused (a window restarted each second would serve it)
    got[6] = at(b + 1.25) -- F: B has left the window, served
    local log = sb:log()
    sb:stop()
    assert.same({ 404, 404, 429, 404, 429, 404 }, got)
    -- and in the log, no one-second window holds more than two served requests
    for i, e in ipairs(log) do
      local n = 0
      for j = 1, i do
        if log[j].status ~= 429 and log[j].time > e.time - 1 then n = n + 1 end
      end
      assert.is_true(n <= 2)
    end
  end)

  it("/_sandbox/config {max_rps} sets and lifts the limit while running", function()
    local sb = h.sandbox()
    sb:max_rps(3)
    local limited = burst(sb, 6)
    sb:max_rps(0)
    local free = burst(sb, 6)
    sb:stop()
    assert.equals(3, count(limited, 429))
    assert.equals(0, count(free, 429))
  end)
end)

describe("hostile answers to a create that did create the task", function()
  local env = h.with_sandbox { client = false }

  local checks = {
    malformed = function(r, id)
      assert.equals(200, r.status)
      assert.equals(('{"id": "%s", "status": '):format(id), r.body)
    end,
    unknown_status = function(r, id)
      assert.equals(200, r.status)
      local v = json_of(r)
      assert.equals(id, v.id)
      assert.equals("warp_drive", v.status)
    end,
    no_id = function(r)
      assert.equals(200, r.status)
      local v = json_of(r)
      assert.is_nil(v.id)
      assert.equals("in_queue", v.status)
    end,
    html = function(r)
      assert.equals(200, r.status)
      assert.truthy(r.headers["content-type"]:find("text/html", 1, true))
      assert.truthy(r.body:find("<html>", 1, true))
    end,
    empty = function(r)
      assert.equals(200, r.status)
      assert.equals("", r.body)
    end,
    bignum = function(r, id)
      assert.equals(200, r.status)
      assert.truthy(r.body:find('"created_at": 1e400', 1, true))
      assert.truthy(r.body:find(id, 1, true))
    end,
  }
  for _, answer in ipairs { "malformed", "unknown_status", "no_id", "html", "empty", "bignum" } do
    it(("answer=%s: the task is made, counted, logged with its id, and completes"):format(answer), function()
      local prompt = "create_then " .. answer
      env.sb:faults { path = CREATE, fault = "create_then", answer = answer, headers = { ["retry-after-ms"] = #answer } }
      local creates = env.sb:stats().creates
      local r = curl(env.sb.url .. "/videos", { body = video_body(prompt) })
      local log = h.api_requests(env.sb, CREATE)
      local id = log[#log].task_id
      assert.is_string(id)
      assert.equals("create_then", log[#log].fault)
      checks[answer](r, id)
      assert.equals(tostring(#answer), r.headers["retry-after-ms"])
      assert.equals(creates + 1, env.sb:stats().creates)
      assert.equals(1, env.sb:creates_for(prompt))
      assert.equals(prompt, env.sb:task(id).body.prompt)
      assert.equals(id, env.sb:create_entry(id).task_id)
      assert.equals("completed", until_completed(env.sb, id).status)
    end)
  end

  it("answer=status: a gateway's 504 page after the backend made the task", function()
    env.sb:faults { path = CREATE, fault = "create_then", answer = "status", status = 504 }
    local r = curl(env.sb.url .. "/videos", { body = video_body("behind a gateway") })
    assert.equals(504, r.status)
    assert.truthy(r.headers["content-type"]:find("text/html", 1, true))
    assert.truthy(r.body:find("<title>504 Gateway Timeout</title>", 1, true))
    local log = h.api_requests(env.sb, CREATE)
    assert.equals("completed", until_completed(env.sb, log[#log].task_id).status)
    assert.equals(1, env.sb:creates_for("behind a gateway"))
  end)

  it("answer=status with format=json: a 502 in the API's error shape", function()
    env.sb:faults { path = CREATE, fault = "create_then", answer = "status", status = 502, format = "json" }
    local r = curl(env.sb.url .. "/videos", { body = video_body("behind a json gateway") })
    assert.equals(502, r.status)
    assert.equals("502", json_of(r).error.code)
    assert.equals(1, env.sb:creates_for("behind a json gateway"))
  end)

  it("answer=cut: a 200 promising more than it sends, half the body, then a TCP reset", function()
    env.sb:faults { path = CREATE, fault = "create_then", answer = "cut", headers = { ["x-should-retry"] = "true" } }
    local r = request(env.sb.url .. "/videos", { body = video_body("cut short") })
    assert.equals("HTTP/1.1 200 OK", r.status_line)
    assert.equals("true", r.headers["x-should-retry"])
    local promised = tonumber(r.headers["content-length"])
    assert.equals(math.floor(promised / 2), #r.body)
    assert.equals("reset", r.ended)
    local log = h.api_requests(env.sb, CREATE)
    local opening = ('{"id": "%s"'):format(log[#log].task_id)
    assert.equals(opening, r.body:sub(1, #opening))
    assert.equals("completed", until_completed(env.sb, log[#log].task_id).status)
    assert.equals(1, env.sb:creates_for("cut short"))
  end)

  it("a plan with an unknown answer or fault name is refused, not silently ignored", function()
    assert.has_error(function() env.sb:faults { fault = "create_then", answer = "warp" } end)
    assert.has_error(function() env.sb:faults { fault = "creat_then" } end)
  end)
end)

describe("content faults", function()
  local SIZE = 100000
  local env = with_task("content sandbox:bytes=" .. SIZE)
  setup(function() until_completed(env.sb, env.id) end)

  local function url() return env.sb.url .. "/videos/" .. env.id .. "/content" end

  it("without a fault: the whole synthetic body, with an ETag (the baseline the faults change)", function()
    local r = curl(url())
    assert.equals(200, r.status)
    same_bytes(synthetic(SIZE), r.body)
    assert.equals('"syn-100000"', r.headers.etag)
  end)

  it("no_validators: no ETag, no Last-Modified, and Range still honoured", function()
    env.sb:faults { path = CONTENT, fault = "no_validators", count = 2 }
    local whole = request(url()) -- every header, not only those the client reads
    assert.equals(200, whole.status)
    assert.is_nil(whole.headers.etag)
    assert.is_nil(whole.headers["last-modified"])
    local part = curl(url(), { headers = { "Range: bytes=1000-" } })
    assert.equals(206, part.status)
    assert.is_nil(part.headers.etag)
    assert.equals("bytes 1000-99999/100000", part.headers["content-range"])
    same_bytes(synthetic(SIZE, 0, 1000), part.body)
  end)

  it("no_validators: an If-Range has nothing to match, so the whole body comes back", function()
    env.sb:faults { path = CONTENT, fault = "no_validators" }
    local r = curl(url(), { headers = { "Range: bytes=1000-", 'If-Range: "syn-100000"' } })
    assert.equals(200, r.status)
    assert.equals(SIZE, #r.body)
  end)

  it("other_etag: a 206 whose ETag is neither the If-Range sent nor the real one", function()
    env.sb:faults { path = CONTENT, fault = "other_etag" }
    local r = curl(url(), { headers = { "Range: bytes=5000-", 'If-Range: "syn-100000"' } })
    assert.equals(206, r.status)
    assert.equals("bytes 5000-99999/100000", r.headers["content-range"])
    assert.is_string(r.headers.etag)
    assert.are_not.equal('"syn-100000"', r.headers.etag)
    assert.equals(SIZE - 5000, #r.body)
  end)

  it("http10_close: HTTP/1.0, no Content-Length, after_bytes of the body, then a clean close (FIN)", function()
    env.sb:faults { path = CONTENT, fault = "http10_close", after_bytes = 3000 }
    local r = request(url())
    assert.equals("HTTP/1.0 200 OK", r.status_line)
    assert.is_nil(r.headers["content-length"])
    assert.equals("fin", r.ended)
    same_bytes(synthetic(3000, 0, 0, SIZE), r.body)
  end)

  it("http10_close: by default half the body; a Range is answered 206 with its Content-Range", function()
    env.sb:faults { path = CONTENT, fault = "http10_close", count = 2 }
    local whole = request(url())
    assert.equals(math.floor(SIZE / 2), #whole.body)
    assert.equals("fin", whole.ended)
    local part = request(url(), { headers = { "Range: bytes=90000-" } })
    assert.equals("HTTP/1.0 206 Partial Content", part.status_line)
    assert.equals("bytes 90000-99999/100000", part.headers["content-range"])
    same_bytes(synthetic(SIZE, 0, 90000):sub(1, 5000), part.body)
  end)

  it("gzip: the whole video gzip-compressed with Content-Encoding: gzip, though nothing asked for it", function()
    env.sb:faults { path = CONTENT, fault = "gzip", count = 2 }
    local r = request(url(), { headers = { "Range: bytes=10-" } }) -- no Accept-Encoding at all
    assert.equals(200, r.status)
    assert.equals("gzip", r.headers["content-encoding"])
    assert.equals("\31\139", r.body:sub(1, 2))
    assert.equals(#r.body, tonumber(r.headers["content-length"]))
    local decoded = curl(url(), { accept_encoding = true }) -- libcurl inflates: it is the video
    same_bytes(synthetic(SIZE), decoded.body)
  end)

  it("octet_json: a 200 labelled application/octet-stream whose body is a JSON error", function()
    env.sb:faults { path = CONTENT, fault = "octet_json" }
    local r = curl(url())
    assert.equals(200, r.status)
    assert.equals("application/octet-stream", r.headers["content-type"])
    assert.is_string(json_of(r).error.message)
  end)

  it("the content faults work on /cdn/ too", function()
    local fixture = h.fixture()
    env.sb:faults { { path = "^/cdn/", fault = "no_validators" }, { path = "^/cdn/", fault = "octet_json" } }
    local r = curl(env.sb.root .. "/cdn/video.mp4")
    same_bytes(fixture, r.body)
    assert.is_nil(r.headers.etag)
    r = curl(env.sb.root .. "/cdn/video.mp4")
    assert.equals("application/octet-stream", r.headers["content-type"])
    same_bytes(fixture, curl(env.sb.root .. "/cdn/video.mp4").body) -- and normal again
  end)

  it("sandbox:seed=N gives two tasks of one size different bytes, each by the formula; tasks show seed and size", function()
    local a = create(env.sb, "seed a sandbox:bytes=70000")
    local b = create(env.sb, "seed b sandbox:bytes=70000 sandbox:seed=7")
    until_completed(env.sb, a)
    until_completed(env.sb, b)
    local ra = curl(env.sb.url .. "/videos/" .. a .. "/content")
    local rb = curl(env.sb.url .. "/videos/" .. b .. "/content")
    same_bytes(synthetic(70000), ra.body)
    same_bytes(synthetic(70000, 7), rb.body)
    assert.is_false(ra.body == rb.body)
    assert.are_not.equal(ra.headers.etag, rb.headers.etag)
    assert.same({ 0, 70000 }, { env.sb:task(a).seed, env.sb:task(a).bytes })
    assert.same({ 7, 70000 }, { env.sb:task(b).seed, env.sb:task(b).bytes })
    local part = curl(env.sb.url .. "/videos/" .. b .. "/content", { headers = { "Range: bytes=65000-" } })
    same_bytes(synthetic(70000, 7, 65000), part.body) -- past the pattern's period, too
  end)
end)

describe("status-answer faults", function()
  local env = with_task("status faults")

  local function status() return curl(env.sb.url .. "/videos/" .. env.id) end

  it("other_id: a well-formed answer for another task", function()
    env.sb:faults { { path = STATUS, fault = "other_id" }, { path = STATUS, fault = "other_id", id = "42" } }
    local v = json_of(status())
    assert.is_string(v.id)
    assert.are_not.equal(env.id, v.id)
    assert.equals("video", v.object)
    assert.equals("42", json_of(status()).id)
    assert.equals(env.id, json_of(status()).id)
  end)

  it("answer_status: the status given, then normal again", function()
    env.sb:faults { path = STATUS, fault = "answer_status", status_value = "warp_drive" }
    local v = json_of(status())
    assert.equals(env.id, v.id)
    assert.equals("warp_drive", v.status)
    assert.truthy(({ in_queue = 1, processing = 1, completed = 1 })[json_of(status()).status])
  end)

  it("headers: the normal answer with the extra headers", function()
    env.sb:faults { path = STATUS, fault = "headers", headers = { ["retry-after-ms"] = "1" } }
    local r = status()
    assert.equals(200, r.status)
    assert.equals("1", r.headers["retry-after-ms"])
    assert.equals(env.id, json_of(r).id)
    assert.is_nil(status().headers["retry-after-ms"])
  end)
end)

describe("echo_auth", function()
  local env = with_task("echo")

  local paths = {
    { "a create", "/v1/videos", video_body("echo create") },
    { "a status", "/v1/videos/ID" },
    { "a download", "/v1/videos/ID/content" },
    { "a detection", "/v1/omnihuman/subject/detection", { model = "OmniHuman_1.5" } },
    { "the storage host", "/cdn/video.mp4" },
  }
  for _, p in ipairs(paths) do
    it(("on %s: the whole Authorization value in the error's message, type, code, request_id and x-request-id"):format(p[1]), function()
      env.sb:faults { path = ".", fault = "echo_auth" }
      local creates = env.sb:stats().creates
      local r = curl(env.sb.root .. p[2]:gsub("ID", env.id), { body = p[3] })
      assert.equals(400, r.status)
      local v = json_of(r)
      assert.truthy(v.error.message:find(AUTH, 1, true))
      assert.equals(AUTH, v.error.type)
      assert.equals(AUTH, v.error.code)
      assert.equals(AUTH, v.request_id)
      assert.equals(AUTH, r.headers["x-request-id"])
      assert.equals(creates, env.sb:stats().creates) -- nothing was made
    end)
  end

  it("takes the status to answer with", function()
    env.sb:faults { path = STATUS, fault = "echo_auth", status = 401 }
    assert.equals(401, curl(env.sb.url .. "/videos/" .. env.id).status)
  end)

  it("answer=task: a 200 failed task whose error and request_id carry the key", function()
    env.sb:faults { path = STATUS, fault = "echo_auth", answer = "task" }
    local r = curl(env.sb.url .. "/videos/" .. env.id)
    assert.equals(200, r.status)
    local v = json_of(r)
    assert.equals(env.id, v.id)
    assert.equals("failed", v.status)
    assert.equals(AUTH, v.error.code)
    assert.truthy(v.error.message:find(AUTH, 1, true))
    assert.equals(AUTH, v.request_id)
    assert.equals(AUTH, r.headers["x-request-id"])
  end)

  it("answer=task with status_value: the status field carries the key too", function()
    env.sb:faults { path = STATUS, fault = "echo_auth", answer = "task", status_value = "failed: {auth}" }
    assert.equals("failed: " .. AUTH, json_of(curl(env.sb.url .. "/videos/" .. env.id)).status)
  end)

  it("answer=text: 1000 characters of text/plain with the key starting at character 290", function()
    env.sb:faults { path = STATUS, fault = "echo_auth", answer = "text" }
    local r = curl(env.sb.url .. "/videos/" .. env.id)
    assert.equals(400, r.status)
    assert.equals("text/plain", r.headers["content-type"])
    assert.equals(1000, #r.body)
    assert.equals(290, (r.body:find(KEY, 1, true)) - 1)
    assert.equals(AUTH, r.body:sub(291 - #"Bearer ", 290 + #KEY))
    assert.is_nil(r.body:sub(1, 300):find(KEY, 1, true)) -- cut at 300, a piece of the key is left
  end)
end)

describe("the sandbox on IPv6", function()
  it("--host ::1 serves on [::1], its URL says so, and the API answers there", function()
    local sb = h.sandbox { host = "::1" }
    local url = sb.url
    local r = curl(url .. "/videos", { body = video_body("over ipv6") })
    local log = sb:log()
    sb:stop()
    assert.truthy(url:match("^http://%[::1%]:%d+/v1$"), url)
    assert.equals(200, r.status)
    assert.is_string(json_of(r).id)
    assert.equals("::1", log[1].host)
  end)
end)

describe("the sandbox's TLS directory (it holds a private key)", function()
  local function tls_sandbox(extra)
    local opts = { tls = true }
    for k, v in pairs(extra or {}) do opts[k] = v end
    local sb = h.sandbox(opts)
    local dir = sb.cainfo:match("^(.*)/[^/]+$")
    assert.is_true(exists(sb.cainfo))
    local tls_engine = core.engine { cainfo = sb.cainfo }
    local t = assert(tls_engine:request { url = sb.root .. "/_sandbox/stats", timeout = 10 })
    while not t:done() do
      tls_engine:perform()
      tls_engine:poll(20)
    end
    tls_engine:close()
    local r = t:result()
    assert.equals(200, r.status, r.curl_error)
    return sb, dir, json_of(r).pid
  end

  it("holds no key file while serving, and is gone after stop (shutdown)", function()
    local sb, dir = tls_sandbox()
    local ok, listing = P.run("ls '" .. dir .. "'")
    assert.is_true(ok)
    assert.equals("cert.pem.crt", listing:match("^%s*(.-)%s*$"))
    sb:stop()
    assert.is_false(exists(dir))
  end)

  for _, sig in ipairs { "TERM", "INT", "HUP" } do
    it(("is gone after SIG%s"):format(sig), function()
      local sb, dir, pid = tls_sandbox()
      assert.is_true((P.run(("kill -%s %d"):format(sig, pid))))
      assert.is_true(eventually(function() return not alive(pid) end))
      sb:stop()
      assert.is_false(exists(dir))
    end)
  end

  it("on IPv6 too: https://[::1] with a certificate for ::1", function()
    local sb, dir = tls_sandbox { host = "::1" }
    assert.truthy(sb.url:match("^https://%[::1%]:%d+/v1$"))
    sb:stop()
    assert.is_false(exists(dir))
  end)

  it("is gone when the parent goes away", function()
    local d = h.tmpdir()
    local out, pidfile = d .. "/out", d .. "/pid"
    -- a parent shell starts the sandbox, waits for its certificate, and exits
    assert.is_true(P.run(("sh -c 'python3 %s/sandbox/server.py --port 0 --tls --exit-with-parent > %s 2>&1 & echo $! > %s; " ..
      "while ! grep -q \"^cert: \" %s; do sleep 0.05; done'"):format(P.root, out, pidfile, out)))
    local pid = tonumber(h.read(pidfile))
    local cert = h.read(out):match("cert: (%S+)")
    local dir = cert:match("^(.*)/[^/]+$")
    assert.is_true(eventually(function() return not alive(pid) end))
    assert.is_false(exists(dir))
  end)
end)

describe("creates_by_prompt", function()
  it("counts the creates of each prompt, so that one payment per job can be proved", function()
    local sb = h.sandbox()
    for _, p in ipairs { "a fox", "a fox", "a boat" } do
      assert.equals(200, curl(sb.url .. "/videos", { body = video_body(p) }).status)
    end
    assert.equals(400, curl(sb.url .. "/videos", { body = { prompt = "refused" } }).status)
    local by = sb:stats().creates_by_prompt
    local fox = sb:creates_for("a fox")
    sb:reset()
    local after = sb:stats().creates_by_prompt
    sb:stop()
    assert.same({ ["a fox"] = 2, ["a boat"] = 1 }, by)
    assert.equals(2, fox)
    assert.same({}, after)
  end)
end)

teardown(function()
  engine:close()
  h.cleanup()
end)
