--- `jimeng doctor`: checks the setup one item at a time and says, for each that fails, how to fix it:
-- the key, the base URL, the proxy, the CA file, a status call to the API (or the sandbox) with its
-- latency, the libcurl loaded, its TLS backend and whether it speaks HTTP/2.
local jimeng = require "jimeng"
local core = require "jimeng.core"

local M = {}

local PROBE_ID = "jimeng-doctor-probe"

-- The libcurl this process loaded (the file, from /proc/self/maps where there is one), and libcurl's own
-- account of its version, TLS backend and HTTP/2 support (curl_version_info).
function M.curl_facts()
  local info = core.curl_info()
  local facts = { version = "libcurl/" .. info.version, tls = info.ssl, http2 = info.features.http2 }
  local f = io.open("/proc/self/maps", "r")
  if f then
    for line in f:lines() do
      local path = line:match("(/%S*/libcurl[^/%s]*%.so[%.%d]*)$")
      if path then facts.path = path break end
    end
    f:close()
  end
  return facts
end

local function strip_credentials(url)
  return (url:gsub("^(%a[%w+.-]*://)[^@/]*@", "%1***@"))
end

--- Runs every check. args: the parsed command line; key, key_err: what the CLI found for the key.
-- Returns {ok=, checks={ {name=, ok=, detail=, fix=} ...}}.
function M.run(args, key, key_err)
  local checks = {}
  local function add(name, ok, detail, fix)
    checks[#checks + 1] = { name = name, ok = ok, detail = detail, fix = not ok and fix or nil }
  end

  -- the key
  local source = args.api_key_file and ("--api-key-file " .. args.api_key_file) or args.api_key and "--api-key" or
    "JIMENG_API_KEY"
  local env_key = os.getenv("JIMENG_API_KEY")
  if key_err then
    add("API key", false, key_err.message, "give a readable file holding the key, or export JIMENG_API_KEY=sk-...")
    key = nil
  elseif key or (env_key and env_key ~= "") then
    local k = key or env_key
    add("API key", true, ("from %s (%d character%s, not shown)"):format(source, #k, #k == 1 and "" or "s"))
  else
    add("API key", false, "none: JIMENG_API_KEY is not set and no --api-key-file was given",
      "export JIMENG_API_KEY=sk-... (your tokenops.ai key; for the sandbox any word, e.g. sandbox)")
  end

  -- the base URL, the proxy, the CA: all decided by jimeng.new
  local client, err = jimeng.new { api_key = key, base_url = args.base_url, max_retries = 0, timeout = 10,
    connect_timeout = 5, cainfo = args.cainfo, proxy = args.proxy, no_proxy = args.no_proxy,
    http_version = args["http1.1"] and "1.1" or args.http2 and "2" or nil,
    max_rps = args.max_rps, max_tasks = args.max_tasks, budget = args.budget }
  local base = args.base_url or os.getenv("JIMENG_BASE_URL") or "https://api.tokenops.ai/v1"
  if not client then
    local field = err.field or ""
    if field == "base_url" then
      add("base URL", false, err.message, "export JIMENG_BASE_URL=https://api.tokenops.ai/v1 (or the URL " ..
        "jimeng sandbox prints)")
    else
      add("base URL", true, base)
      local name = (field == "cainfo" or field == "capath") and "CA file" or field == "proxy" and "proxy" or field
      add(name, false, err.message, name == "CA file" and
        "point --cainfo (or CURL_CA_BUNDLE) at a readable PEM file holding your CA's certificate" or
        name == "proxy" and "give the proxy as http://user:password@host:port (or unset https_proxy)" or
        name == "budget" and "--budget process, local or a file path (mode 0600, yours), or unset JIMENG_BUDGET" or
        (err.hint or "see jimeng --help"))
    end
  else
    local u = core.parse_url(client.base_url)
    local scheme = u and u.scheme:lower() or "?"
    add("base URL", true, ("%s (host %s, %s)"):format(client.base_url, client.base_host,
      client.base_loopback and "loopback" or scheme == "https" and "TLS verified" or "plain http allowed"))

    -- the proxy libcurl will use for this URL
    local proxy, from = client.proxy, "--proxy"
    if proxy == nil then
      local vars = scheme == "https" and { "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY" } or
        { "http_proxy", "all_proxy", "ALL_PROXY" }
      for _, v in ipairs(vars) do
        local val = os.getenv(v)
        if val and val ~= "" then proxy, from = val, v break end
      end
    end
    if client.base_loopback then
      add("proxy", true, "none: a loopback API is never reached through a proxy")
    elseif proxy and proxy ~= "" then
      local bypass = core.noproxy_match and client.no_proxy and core.noproxy_match(client.base_host, client.no_proxy)
      add("proxy", true, bypass and ("%s (from %s) is bypassed for %s by no_proxy"):format(strip_credentials(proxy),
        from, client.base_host) or ("%s (from %s)"):format(strip_credentials(proxy), from))
    else
      add("proxy", true, "none")
    end

    -- the CA
    if scheme ~= "https" then
      add("CA file", true, "not used: plain http (" .. (client.base_loopback and "loopback" or "allowed") .. ")")
    elseif client.cainfo or client.capath then
      add("CA file", true, (client.cainfo and ("cainfo %s"):format(client.cainfo) or "") ..
        (client.capath and (" capath %s"):format(client.capath) or ""))
    else
      local bundle
      for _, p in ipairs { "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem" } do
        local f = io.open(p, "rb")
        if f then f:close() bundle = p break end
      end
      if bundle then
        add("CA file", true, "libcurl's default trust (" .. bundle .. ")")
      else
        add("CA file", false, "no CA bundle found at the usual places", "apt-get install ca-certificates, or pass " ..
          "--cainfo FILE")
      end
    end

    -- a status call: the API answers, and says what it thinks of the key
    if key or (env_key and env_key ~= "") then
      local t0 = core.now()
      local task, serr = client:status(PROBE_ID)
      local ms = (core.now() - t0) * 1000
      if task or (serr and (serr.kind == "not_found" or serr.kind == "invalid_argument" and serr.status)) then
        add("API", true, ("answered in %.0f ms (HTTP %s for a made-up task id: the key was accepted)"):format(ms,
          task and 200 or tostring(serr.status)))
      elseif serr.kind == "auth" then
        add("API", false, ("answered in %.0f ms: the key was refused (HTTP %s): %s"):format(ms, tostring(serr.status),
          serr.message), "check JIMENG_API_KEY: it must be a key of your tokenops.ai account (a sandbox started " ..
          "with --api-key takes only that one)")
      else
        add("API", false, ("%s: %s (after %.0f ms)"):format(serr.kind, serr.message, ms),
          serr.kind == "network" and ("nothing answers at %s: is the URL right, is the server (or jimeng sandbox) " ..
            "running, does a proxy need setting?"):format(client.base_url) or serr.hint or
            require("jimeng.errors").hint(serr.kind) or "see the message")
      end
    else
      add("API", false, "not called: there is no key to call it with", "set the key first (above)")
    end
    local share = require "jimeng.share"
    local held = share.stats(client)
    local asked = core.now() -- a Redis budget's thread may not have had its first answer yet: a moment for it
    while held and held.up == false and held.why == "not reached yet" and core.now() - asked < 2 do
      core.sleep(0.05)
      held = share.stats(client)
    end
    add("budget", not (held and held.up == false), share.describe(client),
      "start the budget's Redis, or check --budget's host and port (meanwhile a safe local share is used)")
    client:close()
  end

  -- libcurl
  local facts = M.curl_facts()
  add("libcurl", true, facts.version .. (facts.path and (" (" .. facts.path .. ")") or ""))
  add("TLS backend", facts.tls ~= nil, facts.tls or "none: this libcurl cannot speak https",
    "install Debian's libcurl4 (OpenSSL) and rebuild: make clean all")
  add("HTTP/2", facts.http2, facts.http2 and "supported"
    or "not supported by this libcurl (no nghttp2): HTTP/1.1 is used", "a libcurl built with nghttp2 " ..
    "(Debian's libcurl4 is); only needed for many calls on few connections")

  local all = true
  for _, c in ipairs(checks) do if not c.ok and c.name ~= "HTTP/2" then all = false end end
  return { ok = all, checks = checks }
end

--- The report as text lines: "ok   name  detail" and, under a failure, "     fix: ...".
function M.text(report)
  local lines = {}
  for _, c in ipairs(report.checks) do
    lines[#lines + 1] = ("%-4s  %-11s %s"):format(c.ok and "ok" or "FAIL", c.name, c.detail)
    if c.fix then lines[#lines + 1] = ("      %-11s fix: %s"):format("", c.fix) end
  end
  return table.concat(lines, "\n")
end

return M
