-- The README's Neovim installs, as far as an offline machine can check them: the native-package lines run as
-- written (HOME in a temporary directory, the clone taken from this checkout), then `:help jimeng` in a
-- Neovim started as the user starts it; the lazy.nvim and packer block runs as written in Neovim with the
-- managers' calls recorded, and the plugin is set up as each of them would.
-- #host: drives nvim, git and make.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"

-- The README's fenced blocks: { lang =, text = }.
local function readme_blocks()
  local out, lang, body = {}, nil, nil
  for l in (h.read(proc.root .. "/README.md") .. "\n"):gmatch("(.-)\n") do
    if body then
      if l:match("^```") then
        out[#out + 1] = { lang = lang, text = table.concat(body, "\n") .. "\n" }
        body = nil
      else
        body[#body + 1] = l
      end
    elseif l:match("^```") then
      lang, body = l:match("^```(%w*)"), {}
    end
  end
  return out
end

local function contains(list, x)
  for _, v in ipairs(list) do
    if v == x then return true end
  end
  return false
end

local function readme_block(lang, needle)
  for _, b in ipairs(readme_blocks()) do
    if b.lang == lang and b.text:find(needle, 1, true) then return b.text end
  end
  error("README.md has no " .. lang .. " block with " .. needle)
end

describe("#host the README's Neovim installs", function()
  if not proc.run("command -v nvim") then
    it("needs Neovim (apt-get install neovim)", function() pending("neovim is not installed") end)
    return
  end

  teardown(function() h.cleanup() end)

  it("native package: the README's lines install it, and :help jimeng is its manual", function()
    if not proc.run(("git -C %s rev-parse --git-dir"):format(proc.root)) then
      pending("needs git (apt-get install git) and a git checkout: the README's `git clone` is run from it")
      return
    end
    -- the README's lines, cloning this checkout (its last commit) where they clone the repository
    local lines = readme_block("sh", "pack/plugins/start/jimeng")
    assert.truthy(lines:find("git clone https://github.com/OWNER/jimeng ", 1, true), lines)
    assert.truthy(lines:find("helptags", 1, true), lines)
    local home = h.tmpdir()
    local script = home .. "/install.sh"
    h.write(script, "set -e\n" .. lines:gsub("https://github%.com/OWNER/jimeng", proc.root))
    local env = ("HOME=%s; export HOME; unset XDG_DATA_HOME XDG_CONFIG_HOME XDG_STATE_HOME XDG_CACHE_HOME; "):format(home)
    local ok, out = proc.run(("cd %s && %s bash %s"):format(home, env, script))
    assert.is_true(ok, out)
    local plugin = home .. "/.local/share/nvim/site/pack/plugins/start/jimeng"
    assert.truthy(h.read(plugin .. "/doc/tags"), "the help tags were not written")

    -- a Neovim as the user starts it: no -u, their HOME; :help jimeng, then every tag and link of the file
    local outfile = home .. "/help.json"
    ok, out = proc.run(("cd %s && %s JIMENG_NVIM_OUT=%s timeout 60 nvim --headless -i NONE -n -c 'luafile %s/spec/nvim/help.lua'")
      :format(home, env, outfile, proc.root))
    assert.is_true(ok, out)
    local r = cjson.decode((assert(h.read(outfile), out)))
    assert.is_true(r.help_ok, tostring(r.help_err))
    assert.equals(plugin .. "/doc/jimeng.txt", r.file)
    assert.equals("help", r.filetype)
    assert.truthy(r.line:find("*jimeng*", 1, true), r.line)
    for _, tag in ipairs { "jimeng-setup", "jimeng-commands", "jimeng-health", "jimeng-events", "jimeng-examples",
      ":JimengGenerate", ":JimengResume", ":JimengCancel", "JimengProgress", "jimeng.setup()" } do
      assert.truthy(contains(r.tags, tag), "doc/jimeng.txt defines no *" .. tag .. "*")
    end
    assert.same({}, r.bad_tags)
    assert.same({}, r.bad_links)
    assert.truthy(#r.links >= 10, #r.links .. " links")
    -- and the plugin is there as installed: its commands, its core from the clone's own build
    assert.equals(6, r.commands)
    assert.is_true(r.core_loads)
    assert.equals(plugin .. "/build/luajit/jimeng/core.so", r.core)
  end)

  it("lazy.nvim and packer: the README's block is Lua that gives each manager this repository's layout", function()
    local dir = h.tmpdir()
    local pack = h.tmpdir()
    assert(proc.run(("mkdir -p %s/pack/plugins/start && ln -s %s %s/pack/plugins/start/jimeng"):format(pack, proc.root, pack)))
    local block = dir .. "/managers.lua"
    h.write(block, readme_block("lua", 'require("lazy")'))
    local outfile = dir .. "/managers.json"
    local ok, out = proc.run(("cd %s && make -s LUA=luajit && JIMENG_PACK=%s JIMENG_BLOCK=%s JIMENG_NVIM_OUT=%s timeout 60 " ..
      "nvim --headless -u spec/nvim/init.lua -i NONE -n -c 'luafile spec/nvim/managers.lua'"):format(proc.root, pack, block, outfile))
    assert.is_true(ok, out)
    local r = cjson.decode((assert(h.read(outfile), out)))
    assert.is_true(r.parses, tostring(r.parse_error))
    assert.is_true(r.runs, tostring(r.run_error))
    -- both name the repository as owner/name, whose name is the plugin's main module (lazy.nvim's `main`)
    assert.truthy(r.lazy ~= cjson.null and r.lazy.repo:match("^[%w_.-]+/jimeng$"), out)
    assert.truthy(r.packer ~= cjson.null and r.packer.repo == r.lazy.repo, out)
    assert.is_true(r.lazy_main)
    -- the build step is a shell command run in the plugin's directory (not ":cmd"), the one that builds the core
    assert.equals("make LUA=luajit", r.lazy.build)
    assert.equals(r.lazy.build, r.packer.run)
    assert.is_true(r.lazy_setup, "require('jimeng').setup(opts) refused the README's opts")
    assert.truthy(r.output_dir_after_lazy:find("/Videos/jimeng$"), r.output_dir_after_lazy)
    assert.equals("function", r.packer.config)
    assert.is_true(r.packer_config)
    assert.equals(cjson.null, r.output_dir_after_packer) -- setup{} again: the defaults
    -- what both load from the plugin's directory: plugin/ at start-up (the commands), lua/ for require, doc/
    -- for their helptags step
    assert.equals(2, r.commands)
    for _, f in ipairs { "plugin/jimeng.lua", "lua/jimeng/init.lua", "lua/jimeng/plugin.lua", "lua/jimeng/health.lua",
      "doc/jimeng.txt" } do
      assert.truthy(h.read(proc.root .. "/" .. f), f .. " is missing")
    end
  end)
end)
