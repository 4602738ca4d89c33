--- :checkhealth jimeng: the module loads, libcurl and its TLS backend, the API key, the base URL answers
-- (asked only with a key: without one nothing is looked up or sent), the sandbox can be started. Neovim finds
-- this file as lua/jimeng/health.lua and calls check().
local M = {}

-- vim.health (0.9: start/ok/warn/error; 0.8: report_*), else 0.7's require("health").
local function reporter()
  local h = vim.health
  if h and h.start then return h.start, h.ok, h.warn, h.error, h.info end
  if h and h.report_start then return h.report_start, h.report_ok, h.report_warn, h.report_error, h.report_info end
  h = require "health"
  return h.report_start, h.report_ok, h.report_warn, h.report_error, h.report_info
end

-- The base URL is reachable when it answers a status poll of a task that cannot exist: a 404 (or any HTTP
-- answer) proves the route, a 401 says the key is refused. Nothing is paid for, nothing retried.
local PROBE_ID = "jimeng-checkhealth-probe"

local probe, sandbox -- below check()

function M.check()
  local start, ok, warn, err, note = reporter()
  start("jimeng: the module")
  local loaded, core = pcall(require, "jimeng.core")
  if not loaded then
    err("the C core does not load: " .. tostring(core), {
      "build it for Neovim's LuaJIT in the plugin's directory: make LUA=luajit (lazy.nvim: build = \"make LUA=luajit\")",
    })
    return
  end
  local lib_ok, jimeng = pcall(require, "jimeng")
  if not lib_ok then
    err("require('jimeng') fails: " .. tostring(jimeng), { "lua-cjson for LuaJIT/5.1 is needed: apt-get install lua-cjson" })
    return
  end
  ok(("jimeng %s loads (core: %s)"):format(jimeng._VERSION, package.searchpath and
    package.searchpath("jimeng.core", package.cpath) or "on package.cpath"))
  local info = core.curl_info()
  if info.ssl then
    ok(("libcurl %s, TLS backend %s%s"):format(info.version, info.ssl, info.features.http2 and ", HTTP/2" or ""))
  else
    warn(("libcurl %s has no TLS backend: only http:// base URLs (a local sandbox) work"):format(info.version))
  end

  start("jimeng: the API")
  local cfg = package.loaded["jimeng.plugin"] and package.loaded["jimeng.plugin"].config or {}
  local opts = vim.deepcopy(cfg.client or {})
  opts.max_retries, opts.timeout, opts.connect_timeout = 0, 5, 3
  local client, cerr = jimeng.new(opts)
  if not client then
    err("no client: " .. tostring(cerr))
    return
  end
  if client.api_key and client.api_key ~= "" then
    ok(("an API key is set (%d characters, from %s)"):format(#client.api_key,
      (cfg.client and cfg.client.api_key) and "setup{client = {api_key = ...}}" or "$JIMENG_API_KEY"))
    probe(client, ok, warn, err)
  else
    err("no API key", { "export JIMENG_API_KEY=... before starting Neovim, or setup{client = {api_key = ...}}" })
    -- without a key nothing is sent, nor is the host looked up: a check is no reason to reach the network
    note(("%s is not tried without a key"):format(client.base_url))
  end
  client:close()
  sandbox(start, ok, warn)
end

-- Whether the base URL answers (a status poll of a task that cannot exist), with the client's key.
probe = function(client, ok, warn, err)
  local _, serr = client:status(PROBE_ID)
  local kind = serr and serr.kind
  if kind == "not_found" or (serr and serr.status and serr.status >= 400 and serr.status < 500 and kind ~= "auth") then
    ok(("%s answers (HTTP %s for a task that does not exist)"):format(client.base_url, tostring(serr.status or 404)))
  elseif kind == "auth" then
    warn(("%s answers, but refuses the key (HTTP %s)"):format(client.base_url, tostring(serr.status or 401)))
  elseif not serr then
    ok(client.base_url .. " answers")
  else
    err(("%s is not reachable: %s"):format(client.base_url, serr.message or tostring(serr)),
      { "check JIMENG_BASE_URL, the network and any proxy (https_proxy, no_proxy)" })
  end
end

-- Whether the local sandbox can be started.
sandbox = function(start, ok, warn)
  start("jimeng: the sandbox (a local API for trying it out)")
  local sb_ok, sb = pcall(require, "jimeng.sandbox")
  local path = sb_ok and sb.server_path()
  if not path then
    warn("sandbox/server.py not found (set JIMENG_SANDBOX to its path)")
  elseif vim.fn.executable("python3") ~= 1 then
    warn("python3 is not installed: the sandbox (" .. path .. ") cannot run")
  else
    ok("available: python3 " .. path .. " --port 0 (then JIMENG_BASE_URL=http://127.0.0.1:PORT/v1)")
  end
end

return M
