-- Base URLs as libcurl reads them, and proxies as users have them: Debian's squid with basic auth and a deny
-- rule, set by option or by the standard environment variables; loopback is never proxied.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local tls = require "spec.support.tls"
local core = require "jimeng.core"
local jimeng = require "jimeng"

local lua = proc.plain_lua
local PROBE = "/videos/" .. require("jimeng.dialect").PROBE_ID

describe("base URLs, read by libcurl's URL parser", function()
  local env = h.with_sandbox { client = false }

  it("refuses user names and passwords in the base URL, which hide the host libcurl connects to", function()
    for _, url in ipairs { "http://localhost:x@10.88.0.1:8000/v1", "http://127.0.0.1:1@host/v1",
      "https://user:pw@api.tokenops.ai/v1", "https://user@api.tokenops.ai/v1" } do
      local c, err = jimeng.new { api_key = "k", base_url = url }
      assert.is_nil(c, url)
      assert.equals("invalid_argument", err.kind)
      assert.equals("base_url", err.field)
      assert.truthy(err.message:find("user name or password", 1, true), err.message)
    end
  end)

  it("accepts every loopback spelling libcurl connects to as loopback, and nothing else", function()
    local port = env.sb.url:match(":(%d+)/v1$")
    for _, url in ipairs { "http://[::1]:%s/v1", "http://127.1.2.3:%s/v1", "http://LOCALHOST:%s/v1", "http://127.1:%s/v1",
      "http://0x7f.0.0.1:%s/v1", "http://2130706433:%s/v1", "http://[0:0::1]:%s/v1", "http://localhost.:%s/v1" } do
      assert(jimeng.new { api_key = "k", base_url = url:format(port) })
    end
    -- what libcurl connects to is what was checked: 127.1 is 127.0.0.1, and the sandbox answers there
    local c = assert(jimeng.new { api_key = "k", base_url = ("http://127.1:%s/v1/"):format(port) })
    assert.equals(("http://127.0.0.1:%s/v1"):format(port), c.base_url)
    assert(c:create { prompt = "through a normalized loopback URL" })
    local _, nf = assert(jimeng.new { api_key = "k", base_url = ("http://LOCALHOST:%s/v1"):format(port) }):status("x-1")
    assert.equals("not_found", nf.kind) -- the sandbox answered
    for _, url in ipairs { "http://example.com/v1", "http://10.88.0.1:8000/v1", "http://127.0.0.1.example.com/v1",
      "http://localhost.example.com/v1", "http://[::2]/v1" } do
      local c2, err = jimeng.new { api_key = "k", base_url = url }
      assert.is_nil(c2, url)
      assert.equals("base_url", err.field)
      assert.truthy(err.message:find("plain http to a non-loopback host", 1, true), err.message)
    end
    assert(jimeng.new { api_key = "k", base_url = "http://example.com/v1", allow_insecure_http = true })
  end)

  it("refuses a host libcurl would normalize into one it cannot parse again (found by the URL fuzzer)", function()
    local c, err = jimeng.new { api_key = "k", base_url = "http://0x%7f.0./v1" }
    assert.is_nil(c)
    assert.equals("base_url", err.field)
  end)

  it("refuses a query or fragment in the base URL, which would swallow the API paths", function()
    for _, url in ipairs { "https://api.tokenops.ai/v1?x=1", "https://api.tokenops.ai/v1#top" } do
      local c, err = jimeng.new { api_key = "k", base_url = url }
      assert.is_nil(c)
      assert.equals("base_url", err.field)
    end
  end)

  it("names the Location of a redirect answered to a JSON call", function()
    env.sb:faults { path = "^/v1/videos/r-1$", fault = "redirect", status = 308, location = "https://moved.example/v2/videos/r-1" }
    local c = assert(jimeng.new { api_key = "k", base_url = env.sb.url })
    local t, err = c:status("r-1")
    assert.is_nil(t)
    assert.equals(308, err.status)
    assert.truthy(err.message:find("https://moved.example/v2/videos/r-1", 1, true), err.message)
  end)
end)

local squid_ok = proc.run("test -x /usr/sbin/squid && test -x /usr/lib/squid/basic_ncsa_auth && command -v openssl")

-- A name other than localhost that this machine resolves to loopback from /etc/hosts (no DNS query leaves it).
local function local_name()
  for line in (h.read("/etc/hosts") or ""):gmatch("[^\n]+") do
    local addr, names = line:match("^%s*(%S+)%s+([^#]+)")
    if addr and (addr:match("^127%.") or addr == "::1") then
      for name in names:gmatch("%S+") do
        if not name:lower():find("localhost", 1, true) and name:match("^[%w.-]+$") then return name end
      end
    end
  end
  return nil
end

describe("through Debian's squid #host", function()
  if not squid_ok then
    it("needs squid (apt-get install squid)", function() pending("squid is not installed") end)
    return
  end

  local sb, dir, port, squid, sbport, front, here
  local USER, PASS = "jimeng", "s3cret"

  setup(function()
    sb = h.sandbox()
    sbport = sb.url:match(":(%d+)/v1$")
    dir = h.tmpdir()
    port = proc.free_port()
    here = local_name()
    local ok, hash = proc.run("openssl passwd -apr1 " .. PASS)
    assert(ok, hash)
    h.write(dir .. "/htpasswd", USER .. ":" .. hash:match("%S+") .. "\n")
    -- only the proxy knows api.test and denied.test: a request that reaches them went through it
    h.write(dir .. "/hosts", "127.0.0.1 api.test denied.test" .. (here and (" " .. here) or "") .. "\n")
    h.write(dir .. "/squid.conf", table.concat({
      "http_port 127.0.0.1:" .. port,
      "pid_filename " .. dir .. "/squid.pid",
      "cache_log " .. dir .. "/cache.log",
      "logformat jm %>Hs %rm %ru %un",
      "access_log stdio:" .. dir .. "/access.log jm",
      "cache deny all", "coredump_dir " .. dir, "pinger_enable off",
      "hosts_file " .. dir .. "/hosts",
      "auth_param basic program /usr/lib/squid/basic_ncsa_auth " .. dir .. "/htpasswd",
      "auth_param basic realm jimeng-test",
      "acl authed proxy_auth REQUIRED",
      "acl denied dstdomain denied.test",
      "http_access deny !authed", "http_access deny denied", "http_access allow authed", "http_access deny all",
      "visible_hostname jimeng-test", "shutdown_lifetime 0 seconds", "",
    }, "\n"))
    -- squid started as root drops to its own user, which must read the config and write the logs
    assert(proc.run("chmod -R a+rwX " .. dir))
    squid = io.popen(("%sexec /usr/sbin/squid -N -f %s/squid.conf > %s/stdout 2>&1"):format(proc.clean_env, dir, dir), "r")
    local deadline = core.now() + 15
    while not proc.run(("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", %d), 1)'"):format(port)) do
      if core.now() > deadline then
        error("squid did not start: " .. tostring(h.read(dir .. "/cache.log")) .. tostring(h.read(dir .. "/stdout")))
      end
      core.sleep(0.1)
    end
    if tls.available then
      local tdir = dir .. "/tls"
      assert(proc.run("mkdir -p " .. tdir))
      tls.make_ca(tdir, { front = { san = "DNS:api.test,DNS:denied.test" } })
      front = tls.nginx_front(tdir, sb.url, { { name = "front", cert = "front" } })
    end
  end)
  teardown(function()
    if squid then
      proc.run(("kill $(cat %s/squid.pid) 2>/dev/null"):format(dir))
      squid:close()
    end
    if front then front.stop() end
    if sb then sb:stop() end
    h.cleanup()
  end)

  local function proxy_url(with_credentials)
    return ("http://%s127.0.0.1:%d"):format(with_credentials and (USER .. ":" .. PASS .. "@") or "", port)
  end

  -- squid's access log: {status=, method=, url=, user=} per request it handled
  local function squid_log(pattern)
    local out = {}
    for line in (h.read(dir .. "/access.log") or ""):gmatch("[^\n]+") do
      local s, m, u, user = line:match("^(%d+) (%S+) (%S+) (%S+)")
      -- the free call asking the gateway which it is (once per base URL and process) is not counted
      if s and (not pattern or u:find(pattern, 1, true)) and not u:find(PROBE, 1, true) then
        out[#out + 1] = { status = tonumber(s), method = m, url = u, user = user }
      end
    end
    return out
  end

  -- squid writes its log a moment after answering: wait until `n` lines match (or return what there is)
  local function squid_log_settled(pattern, n)
    local deadline = core.now() + 3
    local got = squid_log(pattern)
    while #got < n and core.now() < deadline do
      core.sleep(0.05)
      got = squid_log(pattern)
    end
    core.sleep(0.2) -- and no more come after
    return squid_log(pattern)
  end

  local function client(base_url, extra)
    local lines = {}
    local opts = { api_key = "proxy-key", base_url = base_url, allow_insecure_http = true, poll_interval = 0.05,
      logger = function(...) lines[#lines + 1] = table.concat({ ... }, " ") end }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return assert(jimeng.new(opts)), lines
  end

  -- Runs a Lua snippet in a child process with the given environment; returns ok and its output.
  local function child(env, code)
    return proc.run(("cd %s && env -u http_proxy -u https_proxy -u all_proxy -u no_proxy -u HTTPS_PROXY -u ALL_PROXY " ..
      "-u NO_PROXY %s %s -e %q"):format(proc.root, env, lua, code))
  end

  it("reaches a host only the proxy can resolve, with proxy= and credentials in its URL", function()
    local c = client(("http://api.test:%s/v1"):format(sbport), { proxy = proxy_url(true) })
    local task = assert(c:create { prompt = "through squid" })
    assert(c:wait(task.id))
    local seen = squid_log_settled("api.test:" .. sbport .. "/v1/videos/" .. task.id, 1)
    assert.is_true(#seen >= 1)
    assert.equals(USER, seen[1].user)
    assert.equals(200, seen[1].status)
  end)

  it("tunnels https through the proxy (CONNECT) to a TLS front with a private CA", function()
    if not front then return pending("nginx is not installed") end
    local c = client(("https://api.test:%d/v1"):format(front.ports.front), { proxy = proxy_url(true), cainfo = dir .. "/tls/ca.pem" })
    local task = assert(c:create { prompt = "through a tunnel" })
    assert(c:status(task.id))
    c:close() -- squid logs a tunnel when it closes
    local seen = squid_log_settled("api.test:" .. front.ports.front, 1)
    assert.equals("CONNECT", seen[1].method)
    assert.equals(USER, seen[1].user)
  end)

  it("a proxy that wants credentials (407) is kind proxy, names the proxy, and is not retried", function()
    local host = ("http://api.test:%s/v1"):format(sbport)
    local c, lines = client(host, { proxy = proxy_url(false) })
    local err = h.failed("proxy", c:status("no-creds-1"))
    assert.is_false(err.retryable)
    assert.truthy(err.message:find(("the proxy at 127.0.0.1:%d refused: 407 Proxy Authentication Required; " ..
      "set credentials in the proxy URL"):format(port), 1, true), err.message)
    local created, cerr = c:create { prompt = "never paid" }
    assert.is_nil(created)
    assert.equals("proxy", cerr.kind) -- not unknown_outcome: the proxy answered, the API never saw it
    assert.same({}, lines)
    assert.equals(1, #squid_log_settled("/v1/videos/no-creds-1", 1))
    if front then -- and the same over https, where the proxy refuses the CONNECT
      local s = client(("https://api.test:%d/v1"):format(front.ports.front), { proxy = proxy_url(false), cainfo = dir .. "/tls/ca.pem" })
      local _, terr = s:status("no-creds-2")
      assert.equals("proxy", terr.kind)
      assert.truthy(terr.message:find("407 Proxy Authentication Required", 1, true), terr.message)
    end
  end)

  it("a proxy's deny rule (403 to CONNECT) is kind proxy with the status, not retried, never unknown_outcome", function()
    if not front then return pending("nginx is not installed") end
    local before = #h.api_requests(sb, "^/v1/")
    local c, lines = client(("https://denied.test:%d/v1"):format(front.ports.front),
      { proxy = proxy_url(true), cainfo = dir .. "/tls/ca.pem" })
    local err = h.failed("proxy", c:create { prompt = "denied" })
    assert.is_false(err.retryable)
    assert.truthy(err.message:find(("the proxy at 127.0.0.1:%d refused: 403 Forbidden"):format(port), 1, true), err.message)
    local _, serr = c:status("denied-1")
    assert.equals("proxy", serr.kind)
    assert.same({}, lines)
    assert.equals(2, #squid_log_settled("denied.test", 2)) -- one CONNECT per call: no retries
    assert.equals(before, #h.api_requests(sb, "^/v1/"))
  end)

  it("uses the standard environment variables (http_proxy, https_proxy) in a child process", function()
    local creates = #squid_log("api.test:" .. sbport .. "/v1/videos")
    local ok, out = child(("http_proxy=%s"):format(proxy_url(true)), ([[
      local c = assert(require("jimeng").new { api_key = "env-key", base_url = "http://api.test:%s/v1", allow_insecure_http = true })
      print(assert(c:create { prompt = "from the environment" }).id)]]):format(sbport))
    assert(ok, out)
    local id = out:match("(%S+)%s*$")
    assert(id)
    assert.equals(creates + 1, #squid_log_settled("api.test:" .. sbport .. "/v1/videos", creates + 1))
    if front then
      local tunnels = #squid_log("api.test:" .. front.ports.front)
      ok, out = child(("https_proxy=%s"):format(proxy_url(true)), ([[
        local c = assert(require("jimeng").new { api_key = "env-key", base_url = "https://api.test:%d/v1", cainfo = %q })
        print(assert(c:status(%q)).status)]]):format(front.ports.front, dir .. "/tls/ca.pem", id))
      assert(ok, out)
      assert.equals("completed", out:match("(%S+)%s*$"))
      assert.equals(tunnels + 1, #squid_log_settled("api.test:" .. front.ports.front, tunnels + 1))
    end
  end)

  it("honours no_proxy, from the option and from the environment", function()
    if not here then return pending("/etc/hosts names no loopback host besides localhost") end
    local base = ("http://%s:%s/v1"):format(here, sbport)
    -- without it, the request goes through the proxy
    local c = client(base, { proxy = proxy_url(true) })
    assert(c:create { prompt = "proxied" })
    assert.equals(1, #squid_log_settled(here .. ":" .. sbport, 1))
    -- with it, straight to the host
    local direct = client(base, { proxy = proxy_url(true), no_proxy = "example.org, ." .. here })
    local before = #h.api_requests(sb, "^/v1/videos$")
    assert(direct:create { prompt = "direct" })
    assert.equals(before + 1, #h.api_requests(sb, "^/v1/videos$"))
    local ok, out = child(("http_proxy=%s no_proxy=%s"):format(proxy_url(true), here), ([[
      local c = assert(require("jimeng").new { api_key = "k", base_url = %q, allow_insecure_http = true })
      print(assert(c:create { prompt = "direct by env" }).id)]]):format(base))
    assert(ok, out)
    assert.equals(1, #squid_log_settled(here .. ":" .. sbport, 1))
  end)

  it("names a proxy that cannot be reached", function()
    local closed = proc.free_port()
    local c = client(("http://api.test:%s/v1"):format(sbport), { proxy = ("http://127.0.0.1:%d"):format(closed), max_retries = 0 })
    local err = h.failed("network", c:status("unreachable-1"))
    assert.truthy(err.message:find(("cannot reach the proxy at 127.0.0.1:%d"):format(closed), 1, true), err.message)
  end)

  it("never sends a loopback base URL through the proxy, even with http_proxy set or proxy= given", function()
    local before = #squid_log()
    -- credentials left out: a request that reached squid would fail with 407
    local ok, out = child(("http_proxy=%s all_proxy=%s"):format(proxy_url(false), proxy_url(false)), ([[
      local c = assert(require("jimeng").new { api_key = "k", base_url = %q })
      print(assert(c:create { prompt = "loopback" }).id)]]):format(sb.url))
    assert(ok, out)
    local c = client(sb.url, { proxy = proxy_url(false) })
    assert(c:create { prompt = "loopback with proxy=" })
    assert(client(sb.url:gsub("127%.0%.0%.1", "localhost"), { proxy = proxy_url(false) }):create { prompt = "localhost" })
    core.sleep(0.3)
    assert.equals(before, #squid_log())
  end)
end)
