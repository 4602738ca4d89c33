-- Every command and snippet of the README works as written: its shell lines and Lua blocks are taken out of
-- README.md and run, against a sandbox (JIMENG_API_KEY and JIMENG_BASE_URL point at it), in a directory that
-- looks like the checkout (its files linked in) so that bin/jimeng, examples/ and make work as from the root.
-- `jimeng` itself is the installed form: make install into a temporary prefix, its bin/ on PATH.
-- A block the README marks `<!-- readme-runner: skip (why) -->` is left out; the list is kept short and
-- checked below.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local images = require "spec.support.images"

local lua = proc.lua
local version = (os.getenv("JIMENG_TEST_LUA") or "lua5.4"):find("jit") and "5.1" or
  (os.getenv("JIMENG_TEST_LUA") or "lua5.4"):match("(%d%.%d)$") or "5.4"

-- The words a shell line of the README starts with (output shown in the README starts otherwise).
local COMMANDS = { jimeng = true, ["bin/jimeng"] = true, make = true, export = true, sudo = true, lua5 = true,
  curl = true, python3 = true, nginx = true }

local function first_word(line)
  local w = line:match("^%s*([%w_./%-=]+)%s") or line:match("^%s*([%w_./%-=]+)$")
  if not w then return nil end
  if w:match("^lua5") then return "lua5" end
  if w:match("^%u[%u_]*=") then return "env" end
  return w
end

--- The README's blocks: {lang="sh"|"lua", text=, line=, skip=why|nil}.
local function blocks(text)
  local out, lines = {}, {}
  for l in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  local i, skip = 1, nil
  while i <= #lines do
    local l = lines[i]
    local why = l:match("^<!%-%- readme%-runner: skip %((.-)%) %-%->$")
    if why then
      skip = why
      i = i + 1
    elseif l:match("^```") then
      local lang = l:match("^```(%w*)")
      local body, start = {}, i
      i = i + 1
      while i <= #lines and not lines[i]:match("^```") do
        body[#body + 1] = lines[i]
        i = i + 1
      end
      i = i + 1
      if lang == "sh" or lang == "lua" then
        out[#out + 1] = { lang = lang, text = table.concat(body, "\n"), line = start, skip = skip }
      end
      skip = nil
    elseif l:match("^    %S") and (i == 1 or lines[i - 1]:match("^%s*$") or lines[i - 1]:match("^<!%-%-")) then
      local body, start = {}, i
      while i <= #lines and (lines[i]:match("^    ") or (lines[i]:match("^%s*$") and lines[i + 1] and
          lines[i + 1]:match("^    %S"))) do
        body[#body + 1] = lines[i]:sub(5)
        i = i + 1
      end
      -- an indented block is a shell block when its lines are commands (not output shown)
      local cmd = COMMANDS[first_word(body[1]) or ""] or first_word(body[1]) == "env"
      if cmd then
        out[#out + 1] = { lang = "sh", text = table.concat(body, "\n"), line = start, skip = skip }
      end
      skip = nil
    else
      if not l:match("^%s*$") then skip = nil end
      i = i + 1
    end
  end
  return out
end

-- A shell block as a script: `jimeng sandbox` (which serves until Ctrl-C) runs for 3 s and must print its URL.
local function script(text)
  local out = { "set -e" }
  for line in (text .. "\n"):gmatch("(.-)\n") do
    if line:match("^jimeng sandbox%s*$") or line:match("^jimeng sandbox%s+#") then
      line = "(timeout -s INT 3 jimeng sandbox > sandbox.out 2>&1 || true); grep -q 'JIMENG_BASE_URL=http' sandbox.out"
    end
    out[#out + 1] = line
  end
  return table.concat(out, "\n") .. "\n"
end

describe("the README, run as written", function()
  local sb, dir, prefix, env, sh_env
  setup(function()
    sb = h.sandbox { queue_seconds = 0.05, process_seconds = 0.1 }
    -- the installed form of the command, on PATH
    local function install(lua_name)
      local p = h.tmpdir()
      local ok, out = proc.run(("make -s install LUA=%s PREFIX=%s"):format(lua_name, p))
      assert(ok, out)
      return p
    end
    prefix = install(os.getenv("JIMENG_TEST_LUA") or "lua5.4")
    local common = {
      proc.own_env,
      ("export JIMENG_API_KEY=sandbox JIMENG_BASE_URL=%s;"):format(sb.url),
      "unset JIMENG_BUILD;",
      ("export XDG_RUNTIME_DIR=%s;"):format(prefix), -- a budget = "local" file goes there, removed with it
    }
    -- the Lua blocks: the Lua under test, its modules found where its install put them
    env = table.concat(common, " ") .. " " .. table.concat({
      ("export PATH=%s/bin:$PATH;"):format(prefix),
      ("export LUA_PATH='%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua;;';"):format(prefix, version, prefix, version),
      ("export LUA_CPATH='%s/lib/lua/%s/?.so;;';"):format(prefix, version),
    }, " ")
    -- the shell lines: a reader's shell, whatever Lua the suite runs on. Their commands name lua5.4 (make's
    -- default), so the command on PATH is installed for it and the checkout is built for it ("after make");
    -- no LUA_PATH or LUA_CPATH (the README sets them where it needs them), and no LUA=... from the make that
    -- runs the suite (a `make` of the README would build for the suite's Lua instead)
    local sh_prefix = version == "5.4" and prefix or install("lua5.4")
    local ok, out = proc.run("make -s LUA=lua5.4")
    assert(ok, out)
    sh_env = table.concat(common, " ") .. " " .. table.concat({
      "unset LUA LUA_VERSION LUA_PATH LUA_CPATH;",
      ("export PATH=%s/bin:$PATH;"):format(sh_prefix),
    }, " ")
  end)
  teardown(function()
    sb:stop()
    h.cleanup()
  end)

  -- A fresh directory for each block, as a newcomer's checkout: the checkout's files linked in, and what the
  -- README's examples name (a photo, a jobs file).
  before_each(function()
    dir = h.tmpdir()
    local p = io.popen("ls -A " .. proc.root)
    for f in p:lines() do
      if f ~= ".git" then os.execute(("ln -s %s/%s %s/%s"):format(proc.root, f, dir, f)) end
    end
    p:close()
    images.jpeg(dir .. "/cat.jpg", 1280, 720)
    h.write(dir .. "/jobs.jsonl", '{"prompt": "a fox at dawn", "label": "fox"}\n{"prompt": "a boat at dusk", "seconds": 10}\n')
  end)

  local readme = h.read("README.md")
  local all = blocks(readme)

  it("finds the README's shell lines and Lua blocks, and skips only the few it marks, each with its reason", function()
    local sh, lua_blocks, skipped = 0, 0, 0
    for _, b in ipairs(all) do
      if b.skip then
        skipped = skipped + 1
        assert.truthy(#b.skip > 10, "a skip gives its reason (README.md:" .. b.line .. ")")
      elseif b.lang == "sh" then
        sh = sh + 1
      else
        lua_blocks = lua_blocks + 1
      end
    end
    assert.truthy(sh >= 4, "shell blocks: " .. sh)
    assert.truthy(lua_blocks >= 5, "Lua blocks: " .. lua_blocks)
    assert.truthy(skipped <= 8, "the skip list stays short: " .. skipped)
  end)

  for _, b in ipairs(all) do
    if not b.skip then
      it(("README.md:%d (%s) runs"):format(b.line, b.lang), function()
        local path
        if b.lang == "sh" then
          path = ("%s/block%d.sh"):format(dir, b.line)
          h.write(path, script(b.text))
          -- a newcomer's ledger: empty, in the block's own directory
          local ok, out = proc.run(("cd %s && XDG_STATE_HOME=%s/.state bash %s"):format(dir, dir, path), sh_env)
          assert.is_true(ok, ("README.md:%d\n%s\n---\n%s"):format(b.line, b.text, out))
        else
          -- a snippet that uses `client` or `jimeng` without making them gets them as the README's first Lua
          -- block makes them
          local prelude = {}
          if not b.text:find("local jimeng%s*=") then prelude[#prelude + 1] = 'local jimeng = require "jimeng"' end
          if b.text:find("client[:.]") and not b.text:find("local client") then
            prelude[#prelude + 1] = 'local client = assert(jimeng.new { api_key = os.getenv("JIMENG_API_KEY") })'
          end
          path = ("%s/block%d.lua"):format(dir, b.line)
          h.write(path, table.concat(prelude, " ") .. " " .. b.text .. "\n")
          local ok, out = proc.run(("cd %s && XDG_STATE_HOME=%s/.state %s %s"):format(dir, dir, lua, path), env)
          assert.is_true(ok, ("README.md:%d\n%s\n---\n%s"):format(b.line, b.text, out))
        end
      end)
    end
  end
end)
