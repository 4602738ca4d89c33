-- Through Debian's nginx as a TLS + HTTP/2 front, with a CA the test makes: a private CA works when given,
-- and each certificate that does not verify is refused at once, with its own reason and hint.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local tls = require "spec.support.tls"
local jimeng = require "jimeng"
local core = require "jimeng.core"

local lua = proc.plain_lua

describe("TLS and HTTP/2 through nginx #host", function()
  if not tls.available then
    it("needs nginx with http_v2 and openssl (apt-get install nginx-light openssl)", function()
      pending("nginx or openssl is not installed")
    end)
    return
  end

  local sb, dir, front, ca
  setup(function()
    sb = h.sandbox { queue_seconds = 0.05, process_seconds = 0.05 }
    dir = h.tmpdir()
    tls.make_ca(dir, {
      good = { san = "DNS:localhost,IP:127.0.0.1" },
      expired = { san = "DNS:localhost,IP:127.0.0.1", past = true }, -- valid 2020-01-01 to 2021-01-02 03:04:05
      wrong = { san = "DNS:wrong.test,DNS:other.test" },
    })
    ca = dir .. "/ca.pem"
    front = tls.nginx_front(dir, sb.url, {
      { name = "good", cert = "good" }, { name = "expired", cert = "expired" }, { name = "wrong", cert = "wrong" },
      { name = "limited", cert = "good", limit_rps = 20 },
    })
  end)
  teardown(function()
    if front then front.stop() end
    if sb then sb:stop() end
    h.cleanup()
  end)

  local function url(name) return ("https://127.0.0.1:%d/v1"):format(front.ports[name]) end

  -- A client whose log lines are kept (a retry would show as a "retry" line).
  local function client(name, extra)
    local lines = {}
    local opts = { api_key = "tls-key", base_url = url(name), poll_interval = 0.05,
      logger = function(...) lines[#lines + 1] = table.concat({ ... }, " ") end }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return assert(jimeng.new(opts)), lines
  end

  -- Runs `jimeng <args>` in a child process with extra environment; returns exit code, stdout, stderr.
  local function cli(args, env)
    local errfile = dir .. "/stderr"
    local p = io.popen(("%scd %s && %s %s %s/bin/jimeng %s 2>%s; echo \"exit=$?\""):format(
      proc.clean_env, dir, env or "", lua, proc.root, args, errfile))
    local out = p:read("*a")
    p:close()
    return tonumber(out:match("exit=(%d+)%s*$")), (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
  end

  local function requests_to_sandbox()
    return #h.api_requests(sb, "^/v1/")
  end

  it("creates, waits for and downloads a video over HTTP/2 with the private CA given as cainfo", function()
    local c = client("good", { cainfo = ca })
    local out = dir .. "/h2.mp4"
    local result = assert(c:generate({ prompt = "over http/2" }, { output = out }))
    assert.equals(h.fixture(), h.read(out))
    assert.equals(#h.fixture(), result.bytes)
    local seen = {}
    for _, e in ipairs(tls.access(front)) do seen[e.uri:match("^/v1/videos") and e.protocol or "other"] = true end
    assert.same({ ["HTTP/2.0"] = true }, seen)
  end)

  it("stays under nginx's own rate limiter (limit_req, 20 r/s) with max_rps = 20 over HTTP/2: not one 429", function()
    local c = client("limited", { cainfo = ca, max_rps = 20 })
    local before = #tls.access(front)
    local done = jimeng.run(function()
      local list = {}
      for i = 1, 20 do
        list[i] = function()
          local t = assert(c:create { prompt = "limited " .. i })
          return assert(c:wait(t.id, { timeout = 60 }))
        end
      end
      return jimeng.gather(list)
    end)
    assert.equals(20, #done)
    local statuses, n = {}, 0
    for i, e in ipairs(tls.access(front)) do
      if i > before then
        statuses[e.status] = (statuses[e.status] or 0) + 1
        n = n + 1
      end
    end
    assert.is_nil(statuses[429], ("nginx refused %s of %d requests"):format(tostring(statuses[429]), n))
    assert.is_true(n >= 40, n .. " requests") -- 20 creates and their polls: the limiter was exercised
  end)

  it("speaks HTTP/1.1 when told (http_version = \"1.1\")", function()
    local c = client("good", { cainfo = ca, http_version = "1.1" })
    local task = assert(c:create { prompt = "over http/1.1" })
    assert(c:status(task.id))
    -- nginx logs each request as it ends, so the poll's line is found by its path, not its place
    -- (and writes it after the answer has left: the client may read the answer first)
    local poll
    local t0 = core.now()
    repeat
      for _, e in ipairs(tls.access(front)) do
        if e.uri == "/v1/videos/" .. task.id then poll = e end
      end
      if not poll then core.sleep(0.05) end
    until poll or core.now() - t0 > 2
    assert.is_table(poll, "the status poll is not in nginx's log")
    assert.equals("HTTP/1.1", poll.protocol)
  end)

  it("refuses an unknown CA at once: kind tls, the cainfo hint, no request, no retry", function()
    local c, lines = client("good")
    local before = requests_to_sandbox()
    local err = h.failed("tls", c:create { prompt = "x" })
    assert.is_false(err.retryable)
    assert.truthy(err.message:find("does not trust", 1, true), err.message)
    assert.truthy(err.message:find("pass cainfo= (CLI --cainfo) or set CURL_CA_BUNDLE", 1, true), err.message)
    h.failed("tls", c:status("some-task"))
    assert.same({}, lines) -- not one retry, for the paid create nor for the status
    assert.equals(before, requests_to_sandbox())
  end)

  it("refuses an expired certificate, saying when it expired", function()
    local c, lines = client("expired", { cainfo = ca })
    local before = requests_to_sandbox()
    local err = h.failed("tls", c:create { prompt = "x" })
    assert.is_false(err.retryable)
    assert.truthy(err.message:find("expired on 2021-01-02 03:04:05 GMT", 1, true), err.message)
    assert.falsy(err.message:find("cainfo", 1, true), err.message)
    assert.same({}, lines)
    assert.equals(before, requests_to_sandbox())
  end)

  it("refuses a certificate for another host, naming the names it carries", function()
    local c, lines = client("wrong", { cainfo = ca })
    local before = requests_to_sandbox()
    local err = h.failed("tls", c:status("t-1"))
    assert.truthy(err.message:find("the certificate is for wrong.test, other.test, not 127.0.0.1", 1, true), err.message)
    assert.same({}, lines)
    assert.equals(before, requests_to_sandbox())
  end)

  it("takes the CA from CURL_CA_BUNDLE or SSL_CERT_FILE as curl does, and from --cainfo", function()
    local task = assert(client("good", { cainfo = ca }):create { prompt = "for the cli" })
    local args = ("status %s --json --api-key k --base-url %s"):format(task.id, url("good"))
    local code, out, err = cli(args, "SSL_CERT_FILE= CURL_CA_BUNDLE=" .. ca)
    local _
    assert.equals(0, code, err)
    assert.equals(task.id, require("cjson").decode(out).id)
    code, _, err = cli(args, "CURL_CA_BUNDLE= SSL_CERT_FILE=" .. ca)
    assert.equals(0, code, err)
    code, _, err = cli(args .. " --cainfo " .. ca, "SSL_CERT_FILE= CURL_CA_BUNDLE=")
    assert.equals(0, code, err)
    -- without any, the message and the hint say what to pass
    code, _, err = cli(args, "SSL_CERT_FILE= CURL_CA_BUNDLE=")
    assert.equals(3, code, err)
    assert.truthy(err:find("jimeng: tls:", 1, true), err)
    assert.truthy(err:find("--cainfo", 1, true), err)
  end)

  it("checks cainfo and capath at jimeng.new: a missing, unreadable or non-PEM file is invalid_argument", function()
    h.write(dir .. "/not-a-cert.pem", "hello\n")
    for _, bad in ipairs { dir .. "/missing.pem", dir .. "/not-a-cert.pem", dir } do
      local err = h.failed("invalid_argument", jimeng.new { api_key = "k", base_url = url("good"), cainfo = bad })
      assert.equals("cainfo", err.field)
      assert.truthy(err.message:find(bad, 1, true))
    end
    local c, err = jimeng.new { api_key = "k", base_url = url("good"), capath = dir .. "/missing" }
    assert.is_nil(c)
    assert.equals("capath", err.field)
    assert(jimeng.new { api_key = "k", base_url = url("good"), capath = dir })
    -- from the environment, the variable is named
    local code, _, stderr = cli("status t-1 --api-key k --base-url " .. url("good"), "CURL_CA_BUNDLE=" .. dir .. "/missing.pem")
    assert.equals(2, code)
    assert.truthy(stderr:find("CURL_CA_BUNDLE", 1, true), stderr)
  end)

  it("2,000 status polls at once share a few HTTP/2 connections, not one each", function()
    local c = client("good", { cainfo = ca })
    local task = assert(c:create { prompt = "polled" })
    local n, failed = 2000, 0
    jimeng.run(function()
      local calls = {}
      for i = 1, n do calls[i] = function() return c:status(task.id) end end
      local results = jimeng.gather(calls)
      for i = 1, n do if not results[i] then failed = failed + 1 end end
    end)
    assert.equals(0, failed)
    -- nginx writes a request's log line after its answer is sent: the last answers can come back before their
    -- lines are written, so the log is read until it holds them all (or 5 s have passed)
    local conns, polls
    local t0 = core.now()
    repeat
      conns, polls = {}, 0
      for _, e in ipairs(tls.access(front)) do
        if e.uri == "/v1/videos/" .. task.id then
          polls = polls + 1
          conns[e.connection] = true
          assert.equals("HTTP/2.0", e.protocol)
        end
      end
      if polls < n then core.sleep(0.05) end
    until polls >= n or core.now() - t0 > 5
    local count = 0
    for _ in pairs(conns) do count = count + 1 end
    assert.equals(n, polls)
    -- nginx allows 128 streams per connection, so 2,000 at once need 16; the engine opens at most 64 per host
    assert.is_true(count <= 64, ("nginx saw %d connections for %d polls"):format(count, n))
  end)
end)
