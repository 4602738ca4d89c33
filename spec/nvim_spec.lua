-- Inside Neovim (headless): :JimengGenerate never freezes the editor, and the result arrives.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"

local nvim = proc.run("command -v nvim")

describe("inside Neovim (examples/nvim) #host", function()
  if not nvim then
    it("needs Neovim (apt-get install neovim)", function() pending("neovim is not installed") end)
    return
  end

  local sb, dir
  setup(function()
    local ok, out = proc.run("make -s LUA=luajit")
    assert(ok, out)
    sb = h.sandbox { queue_seconds = 0.2, process_seconds = 0.2 }
    dir = h.tmpdir()
  end)
  teardown(function()
    sb:stop()
    h.cleanup()
  end)

  it("keeps the editor's timers ticking while :JimengGenerate creates, waits and downloads, then reports the file", function()
    local outfile = dir .. "/outcome.json"
    local ok, out = proc.run(("JIMENG_ROOT=%s JIMENG_API_KEY=nvim-key JIMENG_BASE_URL=%s JIMENG_OUTPUT_DIR=%s " ..
      "JIMENG_NVIM_OUT=%s timeout 60 nvim --headless -u NONE -i NONE -n -c 'luafile spec/nvim/generate.lua'")
      :format(proc.root, sb.url, dir, outfile))
    assert.is_true(ok, out)
    local outcome = require("cjson").decode((assert(h.read(outfile), "no outcome: " .. out)))
    assert.is_true(outcome.done, "no result arrived")
    assert.equals(1, #outcome.notes)
    local path = outcome.notes[1].msg:match("^jimeng: saved (%S+)")
    assert.is_string(path, outcome.notes[1].msg)
    assert.equals(h.fixture(), h.read(path))
    -- the command returned at once, and the editor's own timer kept running all along
    assert.is_true(outcome.command_returned_ms < 200, "the command blocked for " .. outcome.command_returned_ms .. " ms")
    assert.is_true(outcome.elapsed_ms > 1500)
    assert.is_true(outcome.ticks >= outcome.elapsed_ms / 20 / 2, ("only %d ticks in %d ms"):format(outcome.ticks, outcome.elapsed_ms))
    assert.is_true(outcome.worst_gap_ms < 250, "the editor froze for " .. outcome.worst_gap_ms .. " ms")
    local statuses = table.concat(outcome.echoes, "\n")
    assert.truthy(statuses:find("in_queue"))
    assert.truthy(statuses:find("completed"))
  end)
end)
