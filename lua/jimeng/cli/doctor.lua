--- `jimeng doctor`: checks the setup one item at a time and says, for each that fails, how to fix it:
-- the key, the base URL, the proxy, the CA file, a status call to the API (or the sandbox) with its
-- latency, the gateway family it answers as (and the dialect to use), the libcurl loaded, its TLS backend and
-- whether it speaks HTTP/2.
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

--- The gateway family, from what it answers to a free status call (lua/jimeng/dialect.lua identify), and
-- whether the client's dialect suits it.
function M.gateway(client, add)
  local found, gerr = require("jimeng.dialect").identify(client)
  if not found then
    add("gateway", false, "cannot tell: " .. gerr.message, "see the API check above")
    return
  end
  local using = client.dialect
  local suits = using == "auto" or using == found.dialect
  add("gateway", suits, ("%s (%s); dialect %s%s"):format(found.family, found.evidence, using,
    suits and (using == "auto" and (" (resolves to " .. found.dialect .. ")") or "") or ": not this gateway's"),
    ("use --dialect %s (or export JIMENG_DIALECT=%s, or dialect = %q in jimeng.new)"):format(found.dialect,
      found.dialect, found.dialect))
end

--- Whether a TCP connection to the proxy's host and port opens (a connect, no request: nothing is sent
-- to it). -> true, ms | false, why
function M.reach_proxy(proxy, timeout)
  local u = core.parse_url(proxy:find("://", 1, true) and proxy or ("http://" .. proxy))
  if not u or not u.host then return false, "cannot read the proxy URL" end
  local scheme = u.scheme:lower()
  local port = tonumber(u.port) or (scheme == "https" and 443 or 1080) -- libcurl's default proxy ports
  local host = u.host:find(":", 1, true) and not u.host:find("^%[") and ("[" .. u.host .. "]") or u.host
  local engine = core.engine { proxy = "", connect_timeout = timeout }
  local t0 = core.now()
  local t = engine:request { kind = "probe", url = ("http://%s:%d/"):format(host, port), timeout = timeout }
  while not t:done() do
    engine:perform()
    if not t:done() then engine:poll(100) end
  end
  local r = t:result()
  engine:close()
  if r.ok or r.connected then return true, (core.now() - t0) * 1000, port end
  return false, (r.curl_error or r.class or "no connection"), port
end

--- Runs every check. args: the parsed command line; key, key_err: what the CLI found for the key;
-- extra: {run = the config's settings (jimeng.cli.config.apply), config_error = why the config could not be
-- read, trace = a client trace for -v}.
-- Returns {ok=, checks={ {name=, ok=, detail=, fix=} ...}}.
function M.run(args, key, key_err, extra)
  extra = extra or {}
  local checks = {}
  local function add(name, ok, detail, fix)
    checks[#checks + 1] = { name = name, ok = ok, detail = detail, fix = not ok and fix or nil }
  end
  local run = extra.run
  if extra.config_error then
    add("config", false, extra.config_error.message, "fix that line of the config file (jimeng config show " ..
      "says where each setting comes from); the checks below ignore the file")
  elseif run then
    add("config", true, ("%s%s, profile %s (%s)"):format(run.path, run.absent and " (absent)" or "", run.profile,
      run.profile_from))
  end
  local function origin(k)
    local src = run and run.sources[k]
    if src and src.config then return " (from " .. src.from .. ")" end
    if args[k] then return " (from flag --" .. k:gsub("_", "-") .. ")" end
    return ""
  end

  -- the key
  local kf = run and run.sources.api_key_file
  local source = args.api_key_file and (kf and kf.config and ("api_key_file " .. args.api_key_file .. ", " .. kf.from)
    or ("--api-key-file " .. args.api_key_file)) or args.api_key and "--api-key" or "JIMENG_API_KEY"
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
    connect_timeout = 5, cainfo = args.cainfo, proxy = args.proxy, no_proxy = args.no_proxy, dialect = args.dialect,
    http_version = args["http1.1"] and "1.1" or args.http2 and "2" or nil, trace = extra.trace,
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
    add("base URL", true, ("%s (host %s, %s)%s"):format(client.base_url, client.base_host,
      client.base_loopback and "loopback" or scheme == "https" and "TLS verified" or "plain http allowed",
      origin("base_url")))

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
    local src = run and run.sources.proxy
    if src and src.config and from == "--proxy" then from = src.from end
    local proxy_dead -- the proxy the API goes through does not answer: the API check is not made
    if client.base_loopback then
      add("proxy", true, "none: a loopback API is never reached through a proxy")
    elseif proxy and proxy ~= "" then
      local bypass = core.noproxy_match and client.no_proxy and core.noproxy_match(client.base_host, client.no_proxy)
      if bypass then
        add("proxy", true, ("%s (from %s) is bypassed for %s by no_proxy"):format(strip_credentials(proxy),
          from, client.base_host))
      else
        -- the first hop first: a dead proxy is the proxy's fault, not the API's nor its URL's
        local up, info, port = M.reach_proxy(proxy, 5)
        if up then
          add("proxy", true, ("%s (from %s): connects in %.0f ms"):format(strip_credentials(proxy), from, info))
        else
          proxy_dead = true
          add("proxy", false, ("%s (from %s): nothing answers on port %s: %s"):format(strip_credentials(proxy), from,
            tostring(port), info), ("start the proxy, or fix its address, or go without it (%s)"):format(
            from:match("^config") and "remove proxy from the config file" or from == "--proxy" and "drop --proxy" or
            ("unset " .. from)))
        end
      end
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
    if proxy_dead then
      add("API", false, "not called: the proxy it goes through does not answer", "fix the proxy first (above)")
    elseif key or (env_key and env_key ~= "") then
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
      M.gateway(client, add)
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

--- The report as text lines: "ok   name  detail" and, under a failure, "     fix: ...". paint(style, text):
-- colors (or nil); width: on a terminal, its width: the details wrapped at words in their column.
function M.text(report, paint, width)
  local wrap = require("jimeng.cli.progress").wrap
  local lines = {}
  local narrow = width and width < 60 -- no columns: each check's words wrapped over the whole width
  local function put(head, text)
    if width and #head + #text >= width then -- continuations under the detail, in its column
      text = wrap(text, width - 1 - 18):gsub("\n%s*", "\n" .. (" "):rep(18))
    end
    lines[#lines + 1] = head .. text
  end
  for _, c in ipairs(report.checks) do
    local word = c.ok and "ok" or "FAIL"
    local painted = paint and paint(c.ok and "green" or "red", word) or word
    if narrow then
      lines[#lines + 1] = painted .. wrap(("%s %s: %s"):format(word, c.name, c.detail), width - 1):sub(#word + 1)
      if c.fix then lines[#lines + 1] = wrap("  fix: " .. c.fix, width - 1) end
    else
      put(("%s%s  %-11s "):format(painted, (" "):rep(4 - #word), c.name), c.detail)
      if c.fix then put(("      %-11s "):format(""), "fix: " .. c.fix) end
    end
  end
  return table.concat(lines, "\n")
end

return M
