--- Text from a server, a file or a spec made safe for a terminal: the one place that decides how.
local M = {}

local NAMES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\27"] = "\\e" }

--- s with its control characters written out (C0, DEL, and the C1 controls U+0080-U+009F of UTF-8: a
-- terminal would obey them, ESC ]0;... retitling it, ESC [2J clearing it). Other values are tostring'd.
function M.printable(s)
  s = tostring(s)
  if not s:find("[%c\127\194]") then return s end
  s = s:gsub("[%c\127]", function(c) return NAMES[c] or ("\\x%02x"):format(c:byte()) end)
  return (s:gsub("\194([\128-\159])", function(c) return ("\\u%04x"):format(c:byte()) end))
end

return M
