--- Text from a server, a file or a spec made safe for a terminal: the one place that decides how.
local M = {}

local NAMES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\t", ["\27"] = "\\e" } -- a tab moves, it commands nothing

--- s with its control characters written out (C0, DEL, and the C1 controls U+0080-U+009F of UTF-8: a
-- terminal would obey them, ESC ]0;... retitling it, ESC [2J clearing it). Other values are tostring'd.
function M.printable(s)
  s = tostring(s)
  if not s:find("[%c\127\194]") then return s end
  s = s:gsub("[%c\127]", function(c) return NAMES[c] or ("\\x%02x"):format(c:byte()) end)
  return (s:gsub("\194([\128-\159])", function(c) return ("\\u%04x"):format(c:byte()) end))
end

--- printable, line by line: the text's own line breaks kept (a multi-line note, a list of mask URLs).
function M.printable_lines(s)
  s = tostring(s)
  if not s:find("[%c\127\194]") then return s end
  local out = {}
  for line in (s .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = M.printable(line) end
  return table.concat(out, "\n")
end

--- The text of a file without its UTF-8 byte order mark (editors on Windows write one; JSON allows a
-- reader to skip it), or nil and why for a UTF-16 file (its BOM named: it must be saved as UTF-8).
function M.without_bom(s, what)
  if s:sub(1, 3) == "\239\187\191" then return s:sub(4) end
  if s:sub(1, 2) == "\255\254" or s:sub(1, 2) == "\254\255" then
    return nil, what .. " starts with a UTF-16 byte order mark (FF FE or FE FF): save it as UTF-8"
  end
  return s
end

return M
