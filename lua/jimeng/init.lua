--- jimeng: a client for the Jimeng video-generation API (tokenops.ai).
-- @module jimeng
local core = require "jimeng.core"
local cjson = require "cjson"
local Client = require "jimeng.client"
local errors = require "jimeng.errors"
local runtime = require "jimeng.runtime"

local M = {}

M._VERSION = core._VERSION

-- A private lua-cjson instance: its settings never leak into, or come from, other users of cjson.
local json = cjson.new()
json.decode_max_depth(32)
json.encode_max_depth(32)
json.decode_invalid_numbers(false)
M.json = json

--- Makes a client. Every option is optional: api_key (env JIMENG_API_KEY), base_url (env
-- JIMENG_BASE_URL or https://api.tokenops.ai/v1), timeout, connect_timeout, max_retries, poll_interval,
-- wait_timeout, stall_timeout, allow_insecure_http, cainfo (env CURL_CA_BUNDLE, SSL_CERT_FILE), capath (env
-- SSL_CERT_DIR), proxy (env https_proxy, http_proxy, all_proxy), no_proxy (env no_proxy), http_version
-- ("auto" | "1.1" | "2"), logger, trace (jimeng.trace). Returns client | nil, err.
function M.new(opts)
  return Client.new(opts, json)
end

--- The JSON body `create` would send for params, and its warnings; no network. body, warnings | nil, err
function M.normalize(params)
  local body, warnings, class, field = core.normalize(params)
  if not body then return nil, errors.from_core(warnings, class, field) end
  return body, warnings
end

--- Neovim only: the plugin's settings (output_dir, seconds, ratio, interval, client, open_cmd, notify); see
-- jimeng.plugin. Here because plugin managers call require("<plugin name>").setup(opts); loading it costs a
-- plain Lua program nothing.
function M.setup(opts)
  return require("jimeng.plugin").setup(opts)
end

M.run = runtime.run
M.spawn = runtime.spawn
M.gather = runtime.gather
M.sleep = runtime.sleep
M.error = errors.new
M.errors = errors -- errors.KINDS: kind -> {retryable=, exit=, hint=}
M.is_error = errors.is

--- client:experiment(spec, opts) -> report | nil, err: a grid of variations as one resumable, budgeted
-- batch with a gallery (see jimeng.experiment). Client stays free of it: the method lives here.
function Client:experiment(spec, opts)
  return require("jimeng.experiment").run(self, spec, opts)
end

-- The module-level calls use a default client made from the environment on first use.
local default_client
local function default()
  if not default_client then
    local c, err = M.new()
    if not c then return nil, err end
    default_client = c
  end
  return default_client
end

for _, name in ipairs { "create", "status", "wait", "download", "generate", "detect", "recognize", "omnihuman", "batch",
  "experiment" } do
  if Client[name] then
    M[name] = function(...)
      local c, err = default()
      if not c then return nil, err end
      return c[name](c, ...)
    end
  end
end

return M
