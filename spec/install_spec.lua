-- The command as a user installs it, run from where it was installed: `make install PREFIX=~/.local` (any
-- prefix) and `luarocks make --tree=T`, each into a temporary directory, then `jimeng --version` and a generate
-- against the sandbox with LUA_PATH and LUA_CPATH unset, from /; and the man page and the completions found
-- where man, bash and zsh look. #host: it proves other programs (make, luarocks, man, bash, zsh) and its children
-- are not the sanitized build, so make asan, make valgrind and CI's 5.1-5.3 runs leave it out.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"

local lua = proc.plain_lua
local version = lua:find("jit") and "5.1" or lua:match("(%d%.%d)$") or "5.4"
local v_ = (version:gsub("%.", "_"))

-- A shell for the installed command: nothing of this checkout or of the suite (paths, build) in it.
local function installed_env(home)
  return proc.clean_env .. "unset LUA_PATH LUA_CPATH JIMENG_BUILD JIMENG_SANDBOX MANPATH " ..
    ("LUA_PATH_%s LUA_CPATH_%s; "):format(v_, v_) ..
    ("export HOME='%s'; cd / && "):format(home)
end

-- What a default interpreter finds of jimeng by itself: nothing, else the proofs below prove nothing.
local function on_default_path()
  local _, out = proc.run(proc.clean_env .. "unset LUA_PATH LUA_CPATH; " .. lua ..
    [[ -e 'for t in package.path:gmatch("[^;]+") do local f = t:gsub("%?", "jimeng/cli"); local h = io.open(f); ]] ..
    [[if h then h:close(); io.write(f); os.exit(0) end end; io.write("none")']])
  return out ~= "none" and out or nil
end

describe("the installed command #host", function()
  local sb, home, prefix, tree, elsewhere
  setup(function()
    elsewhere = on_default_path()
    sb = h.sandbox {}
    home = h.tmpdir()
    prefix = home .. "/.local" -- the README's PREFIX=~/.local, HOME being this directory
    local ok, out = proc.run(("make -s install LUA=%s PREFIX=%s"):format(lua, prefix))
    assert(ok, out)
    tree = h.tmpdir() .. "/rocks"
    -- the README's `luarocks make`, in a copy of the checkout: luarocks' builtin backend compiles in place, and
    -- a jimeng/core.so left in this checkout would be found by `./?.so` by every later spec, whatever its Lua
    local src = h.tmpdir()
    ok, out = proc.run(("cp -R rockspec src lua bin %s/ && cd %s && luarocks --lua-version %s make --deps-mode=none " ..
      "--tree=%s rockspec/jimeng-scm-1.rockspec"):format(src, src, version, tree))
    assert(ok, out)
  end)
  teardown(function()
    if sb then sb:stop() end
    h.cleanup()
  end)

  local function check(name, command)
    it(name .. ": --version, and a generate against the sandbox, with LUA_PATH and LUA_CPATH unset", function()
      if elsewhere then return pending("a jimeng is on Lua's default path (" .. elsewhere .. "): remove it") end
      local cmd = command()
      local ok, out = proc.run(installed_env(home) .. cmd .. " --version")
      assert.is_true(ok, out)
      assert.equals("jimeng " .. core._VERSION, out:match("^(%S+ %S+)"), out)
      local dir = h.tmpdir()
      local prompt = "installed by " .. name
      ok, out = proc.run(installed_env(home) .. ("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s generate '%s' " ..
        "-o boat.mp4 --interval 0.05 -q"):format(dir, sb.url, cmd, prompt))
      assert.is_true(ok, out)
      assert.equals(h.fixture(), h.read(dir .. "/boat.mp4"))
      assert.equals(1, sb:creates_for(prompt))
    end)
  end

  check("make install PREFIX=~/.local", function() return prefix .. "/bin/jimeng" end)
  check("make install, through a symbolic link to it", function()
    local link = h.tmpdir() .. "/jimeng"
    assert(proc.run(("ln -s %s/bin/jimeng %s"):format(prefix, link)))
    return link
  end)
  check("make install, by name on PATH", function() return ("PATH=%s/bin:$PATH jimeng"):format(prefix) end)
  check("luarocks make --tree", function() return tree .. "/bin/jimeng" end)

  it("make install and make uninstall take a prefix with a space in it, and leave the checkout as it was", function()
    if elsewhere then return pending("a jimeng is on Lua's default path (" .. elsewhere .. "): remove it") end
    local spaced = home .. "/pre fix"
    local ok, out = proc.run(("make -s install LUA=%s PREFIX='%s'"):format(lua, spaced))
    assert(ok, out)
    assert.is_false(h.exists(proc.root .. "/fix"), "a word of the prefix became a directory of the checkout")
    ok, out = proc.run(installed_env(home) .. ("'%s/bin/jimeng' --version"):format(spaced))
    assert.is_true(ok, out)
    assert.equals("jimeng " .. core._VERSION, out:match("^(%S+ %S+)"), out)
    local dir = h.tmpdir()
    ok, out = proc.run(installed_env(home) .. ("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s '%s/bin/jimeng' generate " ..
      "'spaced prefix' -o boat.mp4 --interval 0.05 -q"):format(dir, sb.url, spaced))
    assert.is_true(ok, out)
    assert.equals(h.fixture(), h.read(dir .. "/boat.mp4"))
    ok, out = proc.run(("make -s uninstall PREFIX='%s'"):format(spaced))
    assert(ok, out)
    assert.is_false(h.exists(spaced .. "/bin/jimeng"))
    assert.is_false(h.exists(("%s/share/lua/%s/jimeng"):format(spaced, version)))
  end)

  it("the launcher make install wrote names the directories it installed to", function()
    local launcher = h.read(prefix .. "/bin/jimeng")
    assert.equals("#!/usr/bin/env " .. lua .. "\n", launcher:match("^[^\n]*\n"))
    assert.truthy(launcher:find(("lmod = [==[%s/share/lua/%s]==]"):format(prefix, version), 1, true), launcher)
    assert.truthy(launcher:find(("cmod = [==[%s/lib/lua/%s]==]"):format(prefix, version), 1, true), launcher)
  end)

  it("man finds the page: by the prefix's bin/ on PATH (manpath), by MANPATH and by man -M", function()
    if not proc.run("command -v man") then return pending("man is not installed (apt-get install man-db)") end
    local page = prefix .. "/share/man/man1/jimeng.1"
    for _, how in ipairs { ("PATH=%s/bin:$PATH man -w jimeng"):format(prefix),
      ("MANPATH=%s/share/man man -w jimeng"):format(prefix), ("man -M %s/share/man -w jimeng"):format(prefix) } do
      local ok, out = proc.run(installed_env(home) .. how)
      assert.is_true(ok, how .. ": " .. out)
      assert.equals(page, out:match("^(%S+)"), how)
    end
    local ok, out = proc.run(installed_env(home) .. ("PATH=%s/bin:$PATH MANWIDTH=80 man -P cat jimeng"):format(prefix))
    assert.is_true(ok, out)
    assert.truthy(out:find("jimeng generate", 1, true), out)
  end)

  it("bash-completion loads the completion of ~/.local by itself", function()
    local lib = "/usr/share/bash-completion/bash_completion"
    if not h.exists(lib) then return pending("bash-completion is not installed (apt-get install bash-completion)") end
    local ok, out = proc.run(installed_env(home) .. ("PATH=%s/bin:$PATH bash -c '. %s; __load_completion jimeng; " ..
      "complete -p jimeng'"):format(prefix, lib))
    assert.is_true(ok, out)
    assert.truthy(out:find("-F _jimeng jimeng", 1, true), out)
  end)

  it("zsh registers _jimeng from the prefix's site-functions once it is on fpath", function()
    if not proc.run("command -v zsh") then return pending("zsh is not installed (apt-get install zsh)") end
    local ok, out = proc.run(installed_env(home) .. ("zsh -f -c 'fpath=(%s/share/zsh/site-functions $fpath); " ..
      "autoload -Uz compinit; compinit -u -d %s/zcompdump; print ${_comps[jimeng]}'"):format(prefix, home))
    assert.is_true(ok, out)
    assert.equals("_jimeng", out:match("(%S+)%s*$"), out)
  end)

  it("the default prefix (/usr/local) puts the page and the completions where man, bash and zsh look unasked", function()
    local function var(name)
      local ok, out = proc.run(("make -s --no-print-directory PREFIX=/usr/local --eval 'print-var: ; @echo $(%s)' " ..
        "print-var"):format(name))
      assert(ok, out)
      return out:match("^(%S+)")
    end
    assert.equals("/usr/local/share/man/man1", var("MAN_DIR"))
    assert.equals("/usr/local/share/bash-completion/completions", var("BASH_COMPLETION_DIR"))
    local zdir = var("ZSH_COMPLETION_DIR")
    if proc.run("command -v zsh") then
      local _, fpath = proc.run("zsh -f -c 'print -l $fpath'")
      assert.truthy(("\n" .. fpath):find("\n" .. zdir .. "\n", 1, true), zdir .. " not in zsh's fpath:\n" .. fpath)
    end
    if proc.run("command -v manpath") then
      local _, mp = proc.run("unset MANPATH; manpath 2>/dev/null")
      assert.truthy((":" .. mp:gsub("%s+$", "") .. ":"):find(":/usr/local/share/man:", 1, true), mp)
    end
  end)
end)

describe("the one list of Debian packages (deps/debian-packages)", function()
  local function words(text)
    local out = {}
    for w in text:gmatch("%S+") do out[#out + 1] = w end
    return out
  end
  local listed = {}
  for line in io.lines("deps/debian-packages") do
    for _, w in ipairs(words(line:gsub("#.*", ""))) do listed[#listed + 1] = w end
  end

  it("is what make deps installs, what .ci/run installs, and what the README shows", function()
    assert.truthy(#listed > 20, #listed)
    local ok, out = proc.run("make -s --no-print-directory --eval 'print-var: ; @echo $(DEBIAN_PACKAGES)' print-var")
    assert.is_true(ok, out)
    assert.same(listed, words(out))
    local ci = h.read(".ci/run")
    assert.truthy(ci:find("< <(sed -e 's/#.*//' deps/debian-packages", 1, true), "the CI reads the list")
    assert.falsy(ci:find("PACKAGES=(", 1, true), "the CI has no list of its own")
    local readme = h.read("README.md")
    local shown = readme:match("`make deps` installs, of `deps/debian%-packages`[^\n]*\n`([^`]*)`")
    assert.is_string(shown, "the README shows the list after `make deps` installs, ...")
    assert.same(listed, words(shown))
  end)

  it("holds what the suite's programs come from: zsh, tmux, man-db, bash-completion, nginx, neovim, squid", function()
    local set = {}
    for _, p in ipairs(listed) do set[p] = true end
    for _, p in ipairs { "zsh", "tmux", "man-db", "bash-completion", "nginx-light", "libnginx-mod-http-lua", "neovim",
      "squid", "chromium", "luarocks", "lua-busted", "lua5.1", "lua5.2", "lua5.3", "lua5.4", "luajit2", "valgrind" } do
      assert.is_true(set[p] or false, p)
    end
  end)
end)
