-- busted output handler: busted's own terminal output, then one "FAILED file:line name" line per failure or
-- error (CI shows only the tail of a run, and .ci/run repeats these lines at its end), then the plain closing
-- line CI reads, "N passed, N failed" (errors count as failures).
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.utfTerminal")(options)
  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    local lines = {}
    for _, list in ipairs({ handler.failures, handler.errors }) do
      for _, f in ipairs(list) do
        local t = f.element and f.element.trace or f.trace or {}
        local where = t.short_src and (t.short_src .. ":" .. tostring(t.currentline)) or "?"
        local msg = tostring(f.message or ""):gsub("%s+", " "):sub(1, 160)
        lines[#lines + 1] = ("FAILED %s %s: %s"):format(where, f.name or "?", msg)
      end
    end
    if #lines > 0 then io.write("\n", table.concat(lines, "\n"), "\n") end
    io.write(("\n%d passed, %d failed"):format(handler.successesCount, failed))
    if handler.pendingsCount > 0 then io.write((", %d skipped"):format(handler.pendingsCount)) end
    io.write("\n")
    io.flush()
    return nil, true
  end)
  return handler
end
