--- The command's config file and its profiles: where the file is, how it reads, and where each setting of a
-- run comes from (flag > environment > profile > [default] section > built-in default).
--
-- The file ($JIMENG_CONFIG, else $XDG_CONFIG_HOME/jimeng/config, else ~/.config/jimeng/config) is INI-like,
-- read line by line and never run: `key = value`, `[name]` starts a profile, `#` or `;` starts a comment
-- (at the start of a line, or after a space; a value in double quotes keeps them). Keys before any section,
-- or under [default], hold for every profile. A key is the long name of an option of the command
-- (base_url, proxy, model, seconds, aspect_ratio, output_dir...; `-` or `_` alike); any other key is
-- refused with a did-you-mean. The key itself never goes in the file: api_key_file names a file only its
-- owner can read.
local core = require "jimeng.core"
local errors = require "jimeng.errors"

local M = {}

-- Options that name one run's inputs, or that are the key itself: no config key for them.
local NOT_KEYS = {
  api_key = "the key never goes in the config file: api_key_file = PATH (a file only you can read), or " ..
    "JIMENG_API_KEY",
  profile = "a profile is chosen by --profile or JIMENG_PROFILE", help = "not a setting", version = "not a setting",
  image = "an input of one run", audio = "an input of one run", mask = "an input of one run",
  retake = "an input of one run", output = "one run's output file (use output_dir for a default directory)",
  force = "replacing files is said for one run (--force)", yes = "said for one run (--yes)",
  dry_run = "said for one run (--dry-run)", id = "an input of one run", prompt = "an input of one run",
}

-- Commands that read no config file (their options are no keys): the sandbox, the completion script.
M.NO_CONFIG = { sandbox = true, completion = true, list = true, show = true }

-- The environment variables that set an option when its flag is absent (read by jimeng.new or the CLI):
-- a profile's value is used only when none of them is set.
M.ENV = {
  base_url = { "JIMENG_BASE_URL" }, api_key_file = { "JIMENG_API_KEY" }, cainfo = { "CURL_CA_BUNDLE", "SSL_CERT_FILE" },
  capath = { "SSL_CERT_DIR" }, proxy = { "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "http_proxy" },
  no_proxy = { "no_proxy", "NO_PROXY" }, dialect = { "JIMENG_DIALECT" },
}

-- Keys whose value is a path: ~/ is the home directory, and a relative path is relative to the config file.
local PATH_KEYS = { api_key_file = true, cainfo = true, capath = true }

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local function invalid(message, field)
  return nil, errors.new { kind = "invalid_argument", field = field or "config", message = message }
end

--- The config file's path, and whether it was named by JIMENG_CONFIG (then it must exist).
function M.path()
  local named = getenv("JIMENG_CONFIG")
  if named then return named, true end
  local base = getenv("XDG_CONFIG_HOME") or ((getenv("HOME") or "") .. "/.config")
  return base .. "/jimeng/config", false
end

--- Every key the file may hold, and the option each stands for: {key = option} over all the commands.
function M.keys(parser)
  local keys = {}
  for _, cmd in ipairs(parser._commands) do
    for _, o in ipairs(M.NO_CONFIG[cmd._name] and {} or cmd._options) do
      local target = o._target or o:_get_default_target()
      if target and not NOT_KEYS[target] and target ~= "verbose" then keys[target] = keys[target] or o end
    end
  end
  return keys
end

local function expand(value, dir)
  if value:sub(1, 2) == "~/" then return (getenv("HOME") or "") .. value:sub(2) end
  if value:sub(1, 1) ~= "/" and dir then return dir .. "/" .. value end
  return value
end

--- Reads the file at path. -> {sections = {name = {key = {value=, line=}}}, names = {...}, path=} | nil, err
-- (a file that does not exist is an empty config unless `must_exist`).
function M.load(path, parser, must_exist)
  local f, why = io.open(path, "r")
  if f then -- a directory opens, then fails every read ("Is a directory"): said as a config error, never raised
    local head, rerr = f:read(0)
    if head == nil and rerr then
      f:close()
      f, why, must_exist = nil, rerr, true
    end
  end
  if not f then
    if must_exist or not (why or ""):find("No such file", 1, true) then
      return invalid(("cannot read the config file %s (JIMENG_CONFIG): %s"):format(path, tostring(why)))
    end
    return { sections = { default = {} }, names = {}, path = path, absent = true }
  end
  local keys = M.keys(parser)
  local names = {}
  for k in pairs(keys) do names[#names + 1] = k end
  table.sort(names)
  local dir = path:match("^(.*)/[^/]*$") or "."
  local cfg = { sections = { default = {} }, names = {}, path = path }
  local section, n = "default", 0
  for line in f:lines() do
    n = n + 1
    local where = ("%s:%d: "):format(path, n)
    local text = line:match("^%s*(.-)%s*$")
    if text == "" or text:match("^[#;]") then -- luacheck: ignore 542
      -- a comment or a blank line
    elseif text:match("^%[") then
      local name = text:match("^%[%s*([%w_%-%.]+)%s*%]$")
      if not name then
        f:close()
        return invalid(where .. "a profile is [name] (letters, digits, - _ .); got " .. text)
      end
      section = name
      if not cfg.sections[name] then
        cfg.sections[name] = {}
        if name ~= "default" then cfg.names[#cfg.names + 1] = name end
      end
    else
      local key, value = text:match("^([%w_%-%.]+)%s*=%s*(.-)$")
      if not key then
        f:close()
        return invalid(where .. "expected key = value; got " .. text)
      end
      key = key:gsub("%-", "_")
      local quoted = value:match('^"(.*)"%s*$') or value:match('^"(.*)"%s+[#;]')
      if quoted then
        value = quoted -- "a value # with a hash" keeps it all
      else
        value = value:gsub("%s+[#;].*$", "") -- a comment after the value: a # or ; after a space
      end
      if not keys[key] then
        f:close()
        if NOT_KEYS[key] then return invalid(where .. key .. " cannot be set in the config file: " .. NOT_KEYS[key], key) end
        local near = core.nearest(key, names)
        return invalid(("%sunknown key %q%s (keys: %s)"):format(where, key,
          near and (": did you mean %q?"):format(near) or "", table.concat(names, ", ")), key)
      end
      local sec = cfg.sections[section]
      if sec[key] then
        f:close()
        return invalid(("%s%s is set twice in [%s] (lines %d and %d)"):format(where, key, section, sec[key].line, n), key)
      end
      if PATH_KEYS[key] then value = expand(value, dir) elseif value:sub(1, 2) == "~/" then value = expand(value) end
      sec[key] = { value = value, line = n }
    end
  end
  f:close()
  return cfg
end

-- A config value as the option's own value: a number for an option that converts, true/false for a flag.
local function convert(o, key, value, where)
  if (o._maxargs or 0) == 0 then
    if o._action == "count" or (o._maxcount or 1) > 1 then
      local nv = tonumber(value)
      if not nv then return invalid(where .. key .. " takes a number; got " .. value, key) end
      return nv
    end
    local v = value:lower()
    if v == "true" or v == "yes" or v == "1" or v == "on" then return true end
    if v == "false" or v == "no" or v == "0" or v == "off" then return false end
    return invalid(where .. key .. " takes true or false; got " .. value, key)
  end
  if type(o._convert) == "function" then
    local cv = o._convert(value)
    if cv == nil then return invalid(where .. key .. " takes a number; got " .. value, key) end
    return cv
  end
  if type(o._choices) == "table" then
    local ok = false
    for _, c in ipairs(o._choices) do if c == value then ok = true end end
    if not ok then
      return invalid(("%s%s takes one of %s; got %s"):format(where, key, table.concat(o._choices, ", "), value), key)
    end
  end
  return value
end

--- The profile asked for (--profile, else JIMENG_PROFILE) and where that came from.
function M.profile_name(args)
  if args.profile then return args.profile, "flag --profile" end
  local env = getenv("JIMENG_PROFILE")
  if env then return env, "env JIMENG_PROFILE" end
  return nil
end

--- Applies the config to a parsed command line. listed: the option targets the command reads (only those
-- are set). Sets args[key] where no flag and no environment variable said it; returns the run's
-- settings = {path=, profile=, profile_from=, sources = {key = {value=, from=}}, key_file_checked=} | nil, err.
function M.apply(args, listed, parser)
  local path, named = M.path()
  local cfg, err = M.load(path, parser, named)
  if not cfg then return nil, err end
  local profile, profile_from = M.profile_name(args)
  if profile and profile ~= "default" and not cfg.sections[profile] then
    local near = core.nearest(profile, cfg.names)
    return invalid(("no profile %q in %s%s%s"):format(profile, path, cfg.absent and " (the file does not exist)" or "",
      near and (": did you mean %q?"):format(near) or (#cfg.names > 0 and (" (profiles: " ..
      table.concat(cfg.names, ", ") .. ")") or "")), "profile")
  end
  local run = { path = path, absent = cfg.absent, profile = profile or "default", profile_from = profile_from or "default",
    sources = {}, profiles = cfg.names }
  local keys = M.keys(parser)
  local layers = { { cfg.sections.default, "[default]" } }
  if profile and profile ~= "default" then table.insert(layers, 1, { cfg.sections[profile], "[" .. profile .. "]" }) end
  local seen = {}
  for _, layer in ipairs(layers) do
    for key, entry in pairs(layer[1]) do
      if not seen[key] then
        seen[key] = true
        local from = ("config %s line %d"):format(layer[2], entry.line)
        local value, cerr = convert(keys[key], key, entry.value, ("%s:%d: "):format(path, entry.line))
        if value == nil then return nil, cerr end
        local src = { value = value, from = from, config = true }
        local env
        for _, var in ipairs(M.ENV[key] or {}) do
          if getenv(var) then env = var break end
        end
        local flagged = (listed[key] and args[key] ~= nil) or (key == "api_key_file" and listed.api_key and
          args.api_key ~= nil)
        if flagged then
          src = { value = args[key], from = "flag", overrides = from }
        elseif env then
          src = { value = key ~= "api_key_file" and getenv(env) or nil, from = "env " .. env, overrides = from }
        elseif listed[key] then
          args[key] = value
        elseif key == "output_dir" and listed.output then
          run.output_dir = value -- generate and download: the directory of their default file name
        end
        run.sources[key] = src
      end
    end
  end
  -- the profile's key file: refused when every user can read it (said by the command that would use it;
  -- config show and doctor report it)
  local kf = run.sources.api_key_file
  if kf and kf.config and args.api_key_file == kf.value then
    local mode = core.file_mode(kf.value)
    if not mode then
      run.key_file_error = select(2, invalid(("api_key_file %s (%s) cannot be read"):format(kf.value, kf.from),
        "api_key_file"))
    elseif mode % 8 >= 4 then
      run.key_file_error = select(2, invalid(("api_key_file %s is readable by every user of this machine: " ..
        "chmod 600 %s (%s)"):format(kf.value, kf.value, kf.from), "api_key_file"))
    end
  end
  return run
end

-- Built-in defaults shown by `config show` (the rest are the library's: jimeng.new and the normalizer).
M.DEFAULTS = {
  base_url = "https://api.tokenops.ai/v1", model = "jimeng-video-3.0-pro", seconds = "5", aspect_ratio = "16:9",
  output_dir = ".", proxy = "(none)", no_proxy = "(loopback only)", cainfo = "(libcurl's default trust)",
}

-- The settings `config show` always lists, in this order (then any other key the config sets).
M.SHOWN = { "base_url", "api_key_file", "proxy", "no_proxy", "cainfo", "dialect", "model", "seconds", "aspect_ratio",
  "output_dir" }

local function strip_credentials(url)
  return (tostring(url):gsub("^(%a[%w+.-]*://)[^@/]*@", "%1***@"))
end

--- What `jimeng config show` reports: each setting with its value and where it came from (the key itself
-- never: only where it comes from). args: the parsed line (flags), run: what M.apply returned, parser, listed:
-- the options the command takes (only those are read from args).
function M.report(args, run, parser, listed)
  local keys = M.keys(parser)
  local rows = {}
  local function row(name, value, from) rows[#rows + 1] = { name = name, value = value, from = from } end
  row("config file", run.path .. (run.absent and " (absent)" or ""), getenv("JIMENG_CONFIG") and "env JIMENG_CONFIG"
    or getenv("XDG_CONFIG_HOME") and "env XDG_CONFIG_HOME" or "default")
  row("profile", run.profile, run.profile_from)
  -- the key: where it comes from, never what it is
  local key_from, key_value
  if run.key_file_error then
    key_value, key_from = "refused: " .. run.key_file_error.message, run.sources.api_key_file.from
  elseif args.api_key_file then
    key_value = "read from " .. args.api_key_file
    key_from = run.sources.api_key_file and run.sources.api_key_file.config and run.sources.api_key_file.from or
      "flag --api-key-file"
  elseif args.api_key then
    key_value, key_from = "(given, not shown)", "flag --api-key"
  elseif getenv("JIMENG_API_KEY") then
    key_value, key_from = "(set, not shown)", "env JIMENG_API_KEY"
  else
    key_value, key_from = "(none)", "default"
  end
  row("api key", key_value, key_from)
  local done = { api_key_file = true }
  local order = {}
  for _, k in ipairs(M.SHOWN) do if keys[k] then order[#order + 1] = k end end
  local extra = {}
  for k in pairs(run.sources) do extra[#extra + 1] = k end
  table.sort(extra)
  for _, k in ipairs(extra) do order[#order + 1] = k end
  for _, k in ipairs(order) do
    if not done[k] then
      done[k] = true
      local src = run.sources[k]
      local value, from
      if listed[k] and args[k] ~= nil and not (src and src.config) then
        value, from = args[k], "flag --" .. k:gsub("_", "-")
      elseif src then
        value, from = src.value, src.from
      else
        for _, var in ipairs(M.ENV[k] or {}) do
          if getenv(var) then value, from = getenv(var), "env " .. var break end
        end
        if value == nil then value, from = M.DEFAULTS[k] or "(library default)", "default" end
      end
      if k == "output_dir" and run.output_dir then value = run.output_dir end
      if k == "proxy" then value = strip_credentials(value) end
      if src and src.overrides and from ~= "default" then from = from .. ", over " .. src.overrides end
      row(k, tostring(value), from)
    end
  end
  return rows
end

--- The report as aligned text lines.
function M.text(rows)
  local w = 0
  for _, r in ipairs(rows) do w = math.max(w, #r.name) end
  local lines = {}
  for _, r in ipairs(rows) do
    lines[#lines + 1] = ("%-" .. w .. "s  %s  (%s)"):format(r.name, r.value, r.from)
  end
  return table.concat(lines, "\n")
end

return M
