-- One source of truth for the version: src/jimeng.h, read by C, Lua, the Makefile and the rockspec.
local jimeng = require "jimeng"
local core = require "jimeng.core"
local h = require "spec.support.helpers"

describe("the version", function()
  it("is the same string in C, in Lua and in the header it comes from", function()
    local header = h.read("src/jimeng.h")
    local v = header:match('#define JM_VERSION "([^"]+)"')
    assert.is_string(v)
    assert.truthy(v:match("^%d+%.%d+%.%d+$"))
    assert.equals(v, core._VERSION)
    assert.equals(v, jimeng._VERSION)
  end)

  it("is not written anywhere else in the Lua sources or the rockspec", function()
    for _, f in ipairs { "lua/jimeng/init.lua", "lua/jimeng/client.lua", "rockspec/jimeng-scm-1.rockspec" } do
      assert.falsy(h.read(f):find(jimeng._VERSION, 1, true), f)
    end
  end)
end)
