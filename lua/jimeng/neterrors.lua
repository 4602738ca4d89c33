--- Network failures explained: a refusing proxy, a certificate that does not verify, an unreachable proxy.
-- explain(r, client) reads the engine's result of a failed transfer (or of a 407 answered by a proxy) and
-- says what happened, what to do, and whether another try can change it.
local runtime = require "jimeng.runtime"

local M = {}

local REASONS = {
  [400] = "Bad Request", [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
  [407] = "Proxy Authentication Required", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

local MONTHS = { Jan = "01", Feb = "02", Mar = "03", Apr = "04", May = "05", Jun = "06", Jul = "07", Aug = "08",
  Sep = "09", Oct = "10", Nov = "11", Dec = "12" }

-- "Jan  2 03:04:05 2020 GMT" (OpenSSL's print of a certificate time) -> "2020-01-02 03:04:05 GMT"
local function cert_date(s)
  local mon, d, t, y = s:match("^(%a%a%a)%s+(%d+)%s+([%d:]+)%s+(%d%d%d%d)")
  if not MONTHS[mon or ""] then return s end
  return ("%s-%s-%02d %s GMT"):format(y, MONTHS[mon], tonumber(d), t)
end

-- "DNS:a.test, IP Address:127.0.0.1" or "CN = a.test" -> "a.test, 127.0.0.1"
local function cert_names(s)
  if s:find("CN%s*=") then return s:match("CN%s*=%s*([^,/]+)") or s end
  local names = {}
  for item in s:gmatch("[^,]+") do
    names[#names + 1] = item:gsub("^%s*[%w ]+:", ""):gsub("^%s+", ""):gsub("%s+$", "")
  end
  return table.concat(names, ", ")
end

local function host_of(url)
  return url and (url:match("^%a[%w+.-]*://[^/]*@([^/]+)") or url:match("^%a[%w+.-]*://([^/]+)")) or "the server"
end

-- Reads the server's certificate with a handshake that sends no request (kind = "probe": jm_configure_kind in
-- src/configure.c).
local function probe(r, client)
  if not (client and client.engine and r.url) then return nil end
  local ok, t = pcall(client.engine.request, client.engine, {
    kind = "probe", url = r.url, timeout = client.connect_timeout,
  })
  if not ok or not t then return nil end
  runtime.await(client.engine, t)
  return t:result()
end

--- Whether a failure cannot change by trying again: a proxy's refusal, a certificate that does not verify.
function M.final(r)
  if r.status == 407 then return true end
  local ps = r.proxy_status
  if ps and ps >= 400 and ps < 500 then return true end
  return r.tls_reason ~= nil
end

local function proxy_refusal(r, status)
  local where = r.proxy or "?"
  local what = ("%d %s"):format(status, REASONS[status] or "")
  local hint
  if status == 407 then
    hint = "set credentials in the proxy URL (http://user:password@host:port)"
  elseif status == 403 then
    hint = "the proxy's rules deny this destination: ask its administrator, or add the host to no_proxy"
  else
    hint = "check the proxy setting (proxy=, --proxy, https_proxy/http_proxy) and no_proxy"
  end
  return {
    kind = "proxy", retryable = false, hint = hint, status = status,
    message = ("the proxy at %s refused: %s; %s"):format(where, what:gsub("%s+$", ""), hint),
  }
end

--- explain(r, client) -> {kind=, message=, hint=, retryable=} | nil when there is nothing network-specific to say.
function M.explain(r, client)
  if r.ok then
    if r.status == 407 then return proxy_refusal(r, 407) end -- a plain-http request the proxy refused
    return nil
  end
  local ps = r.proxy_status
  if ps and ps >= 400 and ps < 500 then return proxy_refusal(r, ps) end
  if ps and ps >= 500 then
    return {
      kind = "network", retryable = true, hint = "the proxy could not reach the API: try again later",
      message = ("the proxy at %s could not open a tunnel to %s: %d %s"):format(r.proxy or "?", host_of(r.url), ps,
        REASONS[ps] or ""),
    }
  end
  if r.tls_reason then
    local host = host_of(r.url)
    local e = { kind = "tls", retryable = false }
    if r.tls_reason == "unknown_issuer" then
      e.hint = "pass cainfo= (CLI --cainfo) or set CURL_CA_BUNDLE to the CA's PEM file"
      e.message = ("the certificate of %s is signed by a CA this machine does not trust (%s); %s"):format(host,
        r.curl_error, e.hint)
    elseif r.tls_reason == "expired" then
      local p = probe(r, client)
      local date = p and p.cert_expire and cert_date(p.cert_expire)
      e.hint = date and ("the server's certificate expired on " .. date) or "the server's certificate has expired"
      e.message = ("the certificate of %s is not valid: %s; its operator must renew it"):format(host, e.hint)
    elseif r.tls_reason == "wrong_host" then
      local p = probe(r, client)
      local names = p and p.cert_names and cert_names(p.cert_names)
      local bare = host:gsub(":%d+$", "")
      e.hint = names and ("the certificate is for " .. names .. ", not " .. bare)
        or ("the certificate is not for " .. bare)
      e.message = ("%s (%s); use a base URL with a name the certificate carries"):format(e.hint, r.curl_error)
    else
      e.hint = "check cainfo/capath and the server's TLS setup"
      e.message = ("the certificate of %s does not verify (%s); %s"):format(host, r.curl_error, e.hint)
    end
    return e
  end
  if r.proxy_used and (r.curl_code == 5 or r.curl_code == 7) then
    local hint = "check the proxy setting (proxy=, --proxy, https_proxy/http_proxy, all_proxy) and no_proxy"
    return {
      kind = "network", retryable = true, hint = hint,
      message = ("cannot reach the proxy at %s (%s); %s"):format(r.proxy or "?", r.curl_error, hint),
    }
  end
  return nil
end

return M
