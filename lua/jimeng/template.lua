--- Output names as templates: `-o "{date}/{prompt:.20}-{id}.{ext}"`. Fields in braces are replaced; `{{` and
-- `}}` are literal braces. The fields:
--   {id}      the task's id (known only after the create: allowed in the file name, not in a directory)
--   {seed}    the seed asked for ("random" when none or -1)
--   {prompt}  the prompt; {prompt:.N} its first N characters; made filename-safe (see M.safe), and at most
--             M.PROMPT_BYTES bytes of it
--   {model}   the model asked for (the default model when none)
--   {n}       the first number from 1 that makes a path no file has yet (batch: the job's number)
--   {date}    the local date, YYYY-MM-DD; {time} the local time, HHMMSS
--   {ext}     mp4
-- A path without braces is a path; one that ends in / is a directory. Anything else in braces is refused
-- before anything is paid for.
local core = require "jimeng.core"
local errors = require "jimeng.errors"

local M = {}

M.FIELDS = { "id", "seed", "prompt", "model", "n", "date", "time", "ext" }
local KNOWN = {}
for _, f in ipairs(M.FIELDS) do KNOWN[f] = true end

M.DEFAULT_MODEL = "jimeng-video-3.0-pro"

--- Whether s is a template (holds a field in braces).
function M.is_template(s)
  return type(s) == "string" and s:find("{", 1, true) ~= nil
end

--- A value as text, an integral number without a fraction (JSON decoders give 42 back as 42.0 on Lua 5.3+):
-- for templates and for what `jimeng show` prints.
function M.value_text(v)
  if type(v) == "number" and v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return ("%.0f"):format(v) end
  return tostring(v)
end

--- Text made safe as one file name component: no / or \, no control characters, no characters that
-- other systems refuse (: * ? " < > |); runs of spaces become one _; no leading dot or dash; never empty.
function M.safe(s)
  s = M.value_text(s):gsub("[%c/\\:%*%?\"<>|]", "_"):gsub("%s+", "_"):gsub("^[.%-]+", "")
  if s == "" then s = "_" end
  return s
end

-- The first n characters (UTF-8) of s, and at most max_bytes bytes of them (a character is never cut).
local function first_chars(s, n, max_bytes)
  local out, count, bytes = {}, 0, 0
  for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do
    if count >= n or bytes + #ch > max_bytes then break end
    count, bytes = count + 1, bytes + #ch
    out[count] = ch
  end
  return table.concat(out)
end

-- The most bytes of prompt a file name takes: with an id, a date and the extension it stays well under the
-- 255 bytes a file name may have (a long prompt, or one in Chinese at 3 bytes a character, would not).
M.PROMPT_BYTES = 120

--- Parses a template into parts: strings and {field=, width=}. -> parts | nil, err (invalid_argument)
function M.parse(template, what)
  what = what or "output"
  local parts, i, n = {}, 1, #template
  local literal = {}
  while i <= n do
    local c = template:sub(i, i)
    if c == "{" and template:sub(i + 1, i + 1) == "{" then
      literal[#literal + 1] = "{"
      i = i + 2
    elseif c == "}" and template:sub(i + 1, i + 1) == "}" then
      literal[#literal + 1] = "}"
      i = i + 2
    elseif c == "{" then
      local close = template:find("}", i, true)
      if not close then
        return errors.invalid(("%s template %q has a { without its }: write {{ for a brace (nothing was paid for)")
          :format(what, template), what)
      end
      local body = template:sub(i + 1, close - 1)
      local name, width = body:match("^(%a+):%.(%d+)$")
      if not name then name = body end
      if not KNOWN[name] or (width and name ~= "prompt") then
        local near = core.nearest(name, M.FIELDS)
        return errors.invalid(("%s template %q: unknown field {%s}%s (fields: {%s}, {prompt:.N}; nothing was paid " ..
          "for)"):format(what, template, body, near and near ~= name and (": did you mean {%s}?"):format(near) or "",
          table.concat(M.FIELDS, "}, {")), what)
      end
      if #literal > 0 then parts[#parts + 1] = table.concat(literal); literal = {} end
      parts[#parts + 1] = { field = name, width = width and tonumber(width) }
      i = close + 1
    elseif c == "}" then
      return errors.invalid(("%s template %q has a } without its {: write }} for a brace (nothing was paid for)")
        :format(what, template), what)
    else
      literal[#literal + 1] = c
      i = i + 1
    end
  end
  if #literal > 0 then parts[#parts + 1] = table.concat(literal) end
  return parts
end

-- The value of a field, or nil when it is not known yet ({id} before the create).
local function value(part, v)
  local f = part.field
  if f == "prompt" then
    local p = type(v.prompt) == "string" and v.prompt or ""
    return M.safe(first_chars(p, part.width or math.huge, M.PROMPT_BYTES)) -- safe never lengthens
  elseif f == "seed" then
    local s = v.seed
    if s == nil or tonumber(s) == -1 then return "random" end
    return M.safe(M.value_text(s))
  elseif f == "model" then
    return M.safe(v.model or M.DEFAULT_MODEL)
  elseif f == "date" then
    return os.date("%Y-%m-%d", v.time)
  elseif f == "time" then
    return os.date("%H%M%S", v.time)
  elseif f == "ext" then
    return v.ext or "mp4"
  elseif f == "id" then
    return v.id and M.safe(v.id)
  elseif f == "n" then
    return v.n and tostring(v.n)
  end
end

--- Fills in the parts with the values known (v: id, seed, prompt, model, n, time, ext); a field not known
-- stays a field. -> parts
function M.fill(parts, v)
  local out = {}
  for _, p in ipairs(parts) do
    local s = p
    if type(p) == "table" then s = value(p, v) or p end
    if type(s) == "string" and type(out[#out]) == "string" then out[#out] = out[#out] .. s else out[#out + 1] = s end
  end
  return out
end

--- Whether the parts still hold `field`.
function M.has(parts, field)
  for _, p in ipairs(parts) do
    if type(p) == "table" and p.field == field then return true end
  end
  return false
end

--- The parts as text, fields left as {name}: for messages and the ledger (never parsed again).
function M.text(parts)
  local out = {}
  for i, p in ipairs(parts) do
    out[i] = type(p) == "table" and ("{" .. p.field .. (p.width and (":." .. p.width) or "") .. "}") or p
  end
  return table.concat(out)
end

--- Whether a field not filled in yet stands in a directory (a / follows it).
function M.field_in_dir(parts)
  local field = false
  for _, p in ipairs(parts) do
    if type(p) == "table" then
      field = true
    elseif field and p:find("/", 1, true) then
      return true
    end
  end
  return false
end

--- The path of parts once v fills in the rest ({n}: the first free number when v.n is not given: no file
-- there, no .part, and not taken(path) when given: a path the ledger keeps for a paid task not saved yet).
-- -> path | nil, err (a field still unknown)
function M.finish(parts, v, what, taken)
  parts = M.fill(parts, v or {})
  if M.has(parts, "n") then
    for n = 1, 100000 do
      local try = M.fill(parts, { n = n })
      local path = M.has(try, "id") and nil or M.text(try)
      if path and not core.file_size(path) and not core.file_id(path) and not core.file_size(path .. ".part")
        and not (taken and taken(path)) then
        parts = try
        break
      end
    end
  end
  if M.has(parts, "id") or M.has(parts, "n") then
    return errors.invalid(("%s template %q: {id} is not known here (nothing was paid for)"):format(what or "output",
      M.text(parts)), what or "output")
  end
  return M.text(parts)
end

--- The path a template makes with every field known (v as for fill). only: a set of the fields allowed here
-- (others refused). -> path | nil, err
function M.expand(template, v, what, only)
  local parts, err = M.parse(template, what)
  if not parts then return nil, err end
  for _, p in ipairs(only and parts or {}) do
    if type(p) == "table" and not only[p.field] then
      local allowed = {}
      for f in pairs(only) do allowed[#allowed + 1] = "{" .. f .. "}" end
      table.sort(allowed)
      return errors.invalid(("%s template %q: {%s} has no meaning here (here: %s; nothing was paid for)"):format(
        what or "output", template, p.field, table.concat(allowed, ", ")), what or "output")
    end
  end
  return M.finish(parts, v, what)
end

return M
