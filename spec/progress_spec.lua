-- The command's progress displays, drawn for a terminal that is not there: the texts a user would read.
local progress = require "jimeng.cli.progress"

local function out_stub()
  return { tty = false, quiet = true, progress = function() end, note = function() end }
end

describe("the progress of one task", function()
  it("counts a task's age from its creation, also when it was created before the command (jimeng wait ID)", function()
    local d = progress.task(out_stub(), "12345")
    d.phase = "wait"
    d:polled { id = "12345", status = "processing", created_at = os.time() - 100 }
    local line = d:line(80)
    assert.truthy(line:find("1m4%ds"), line) -- 1m40s (or 1m41s across a second)
    assert.truthy(line:find("(1 poll)", 1, true), line)
  end)
end)

describe("the batch table", function()
  it("counts the jobs not started yet among those waiting", function()
    local t = progress.batch(out_stub())
    for i = 1, 10 do
      local j = t:job { index = i, label = "t" .. i, total = 30 }
      if i <= 2 then j.finished, j.state = true, "saved" else j.state = "processing" end
    end
    local lines = t:lines(50, 6)
    assert.equals("... 2 done, 20 waiting", lines[#lines])
  end)
end)
