-- The module installs where Lua looks for it, by make install and by luarocks, and loads from there.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local run = proc.run

local lua = proc.plain_lua
local version = lua:find("jit") and "5.1" or lua:match("(%d%.%d)$") or "5.4"

-- Loads jimeng from an install tree in a fresh interpreter, with nothing from this checkout on the path.
local function load_from(tree)
  return run(("cd / && LUA_PATH='%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua;;' LUA_CPATH='%s/lib/lua/%s/?.so;;' " ..
    "%s -e 'local j = require \"jimeng\"; local b = assert(j.normalize{prompt=\"x\"}); " ..
    "local found; for t in package.cpath:gmatch(\"[^;]+\") do local f = t:gsub(\"%%?\", \"jimeng/core\"); " ..
    "local h = io.open(f); if h and not found then h:close(); found = f end end; " ..
    "io.write(j._VERSION, \" \", b.model, \" \", found)'")
    :format(tree, version, tree, version, tree, version, lua))
end

describe("installing", function()
  after_each(h.cleanup)

  it("make install puts the Lua files and core.so under PREFIX, and the module loads from there", function()
    local dest = h.tmpdir()
    local ok, out = run(("make -s install LUA=%s DESTDIR=%s PREFIX=/usr"):format(lua, dest))
    assert.is_true(ok, out)
    assert.is_true(h.exists(dest .. "/usr/lib/lua/" .. version .. "/jimeng/core.so"))
    assert.is_true(h.exists(dest .. "/usr/share/lua/" .. version .. "/jimeng/init.lua"))
    local lok, lout = load_from(dest .. "/usr")
    assert.is_true(lok, lout)
    assert.truthy(lout:find("jimeng-video-3.0-pro " .. dest .. "/usr/lib/lua/", 1, true), lout)
  end)

  it("luarocks make with the builtin rockspec builds and installs every module", function()
    local tree = h.tmpdir()
    local ok, out = run(("make -s rock LUA_VERSION=%s ROCK_TREE=%s"):format(version, tree))
    assert.is_true(ok, out)
    local lok, lout = load_from(tree)
    assert.is_true(lok, lout)
    -- every Lua module of the tree is listed in the rockspec
    local spec = h.read("rockspec/jimeng-scm-1.rockspec")
    local p = io.popen("ls lua/jimeng")
    for f in p:lines() do
      local name = f:match("^(.-)%.lua$")
      if name and name ~= "init" then
        assert.truthy(spec:find('["jimeng.' .. name .. '"]', 1, true), "rockspec misses jimeng." .. name)
      end
    end
    p:close()
  end)
end)
