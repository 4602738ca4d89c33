--- Prompt experiments: a grid of variations run as one resumable, budgeted batch, seen in a gallery.
-- A spec (a Lua table, a Lua file returning one, or a JSON file) names `base` parameters, `vary` axes
-- (any create parameter), prompt templates with `vars`, and explicit extra `cells`. Its cells are the
-- product of the axes; each becomes a batch job whose label is the cell's id (made of its axis values,
-- plus the take number), all sharing one journal in the experiment's directory. So a run killed at any
-- point continues where it stopped, adding a value to an axis pays only for the new cells, and
-- `retake` adds a take of one cell while keeping the earlier ones.
--
-- Files in the experiment's directory: journal.jsonl (the batch journal), takes.json (takes per cell),
-- videos/ID~HASH.mp4 (HASH: of the cell's id and exact request, so changed parameters make a new file),
-- posters/*.jpg (first frames, when ffmpeg is installed), index.html (the gallery) and results.json (the
-- same data for scripts), both rewritten atomically after every job event, and written only once batch
-- has passed its checks and holds the journal's lock. What a run pays for is read from the journal.
local batch = require "jimeng.batch"
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local gallery = require "jimeng.gallery"
local jtext = require "jimeng.text"
local workflows = require "jimeng.workflows"

local M = {}

-- The options of experiment, checked by the workflows' one check of each option (as generate's are).
local RUN_OPTIONS = { dir = true, rows = true, cols = true, dry_run = true, max_videos = true, yes = true, retake = true,
  concurrency = true, recreate_unknown = true, overwrite = true, interval = true, timeout = true, ffmpeg = true,
  poster_timeout = true, on_event = true, on_plan = true }

local SPEC_KEYS = { name = true, base = true, vary = true, vars = true, cells = true, order = true,
  rows = true, cols = true }
local TAKE_SEP = " take "

local invalid = errors.invalid

local canonical = gallery.canonical
M.canonical = canonical

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do c[k] = v end
  return c
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

--- How one axis value reads in a cell id: itself when short and plain, else a slug and a hash.
local function value_id(json, v)
  local s = type(v) == "string" and v or canonical(json, v)
  if #s <= 24 and s:match("^[%w%-_.:]+$") then return s end
  if #s <= 24 and s:match("^[%w%-_.: ]+$") and not s:match("^ ") and not s:match(" $") then return (s:gsub(" ", "-")) end
  local slug = s:sub(1, 24):gsub("[^%w]+", "-"):gsub("^%-+", ""):gsub("%-+$", ""):lower()
  return slug .. "~" .. core.fingerprint(s):sub(1, 6)
end

-- Axes are shown in this order unless the spec gives `order`: the template's variables, then these.
local PRIORITY = { "prompt", "model", "req_key", "image", "images", "image_urls", "aspect_ratio", "size",
  "seconds", "frames", "camera_move", "seed" }

-- The directory each loaded spec was read from: its local image paths are relative to it.
local spec_dirs = setmetatable({}, { __mode = "k" })
local IMAGE_KEYS = { image = true, images = true, image_urls = true }

--- A local image path of a spec, relative to the spec's directory; URLs, data: URLs and absolute paths as they are.
local function resolve_images(v, base_dir)
  if not base_dir then return v end
  if type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do out[k] = resolve_images(x, base_dir) end
    return out
  end
  if type(v) ~= "string" or v == "" or v:match("^/") or v:match("^%a[%w+.-]*:") then return v end
  return base_dir .. "/" .. v
end

--- Reads a spec: a Lua file returning a table, or a JSON file (by its extension or its first character).
-- Local image paths in it are read relative to the spec file's directory.
function M.load(path, json)
  local f, why = io.open(path, "rb")
  if not f then return invalid("cannot read the experiment spec: " .. tostring(why), "spec") end
  local text = f:read("*a")
  f:close()
  if not text then return invalid("cannot read the experiment spec: " .. path .. " is a directory", "spec") end
  text, why = jtext.without_bom(text, path)
  if not text then return invalid(why, "spec") end
  local ok, spec
  if path:match("%.json$") or text:match("^%s*{") then
    ok, spec = pcall(json.decode, text)
    if not ok or type(spec) ~= "table" then return invalid(path .. " is not a JSON object: " .. tostring(spec), "spec") end
  else
    local chunk, lerr = (loadstring or load)(text, "@" .. path) -- luacheck: ignore 113
    if not chunk then return invalid("cannot load " .. path .. ": " .. tostring(lerr), "spec") end
    ok, spec = pcall(chunk)
    if not ok then return invalid(path .. " raised an error: " .. tostring(spec), "spec") end
    if type(spec) ~= "table" then return invalid(path .. " must return a table (the experiment spec)", "spec") end
  end
  if spec.name == nil then spec.name = path:match("([^/]+)%.[^./]*$") or path:match("([^/]+)$") end
  spec_dirs[spec] = path:match("^(.*)/[^/]*$")
  if spec_dirs[spec] == "" then spec_dirs[spec] = "/" end
  return spec
end

local function placeholders(s)
  local names = {}
  for name in s:gmatch("{([%w_]+)}") do names[#names + 1] = name end
  return names
end

local function render(template, values)
  return (template:gsub("{([%w_]+)}", function(name)
    if values[name] ~= nil then return tostring(values[name]) end
  end))
end

local function seconds_of(body)
  if body.frames == 241 then return 10 end
  if body.frames == 121 then return 5 end
  return nil
end

--- Expands a spec into its cells, each validated: plan | nil, err (the cell and field named).
-- plan: {name=, axes={{name=, values=, var=bool}}, cells={...}, shared={...}, varying={...}, rows=, cols=}
-- A cell: {id=, axes={name=value}, params={...}, body={...}, seconds=, extra=bool, index=}.
function M.plan(spec, json)
  if type(spec) ~= "table" then return invalid("the experiment spec must be a table", "spec") end
  for k in pairs(spec) do
    if not SPEC_KEYS[k] then
      return invalid(("the experiment spec has an unknown key %q (known: base, vary, vars, cells, name, order, rows, cols)")
        :format(tostring(k)), tostring(k))
    end
  end
  local base = spec.base or {}
  if type(base) ~= "table" then return invalid("base must be a table of create parameters", "base") end

  -- the axes: every var of the prompt template, then every varied parameter
  local axes, by_name = {}, {}
  local function add_axis(name, values, var, where)
    if type(values) ~= "table" or #values == 0 then
      return invalid(("%s.%s must be a non-empty list of values"):format(where, name), where .. "." .. name)
    end
    if by_name[name] then return invalid(("%s is both a var and a varied parameter"):format(name), where .. "." .. name) end
    local seen = {}
    for _, v in ipairs(values) do
      local key = canonical(json, v)
      if seen[key] then return invalid(("%s.%s lists %s twice"):format(where, name, key), where .. "." .. name) end
      seen[key] = true
    end
    local axis = { name = name, values = values, var = var }
    axes[#axes + 1], by_name[name] = axis, axis
    return true
  end
  for _, name in ipairs(sorted_keys(spec.vars or {})) do
    local ok, err = add_axis(name, spec.vars[name], true, "vars")
    if not ok then return nil, err end
  end
  for _, name in ipairs(sorted_keys(spec.vary or {})) do
    local ok, err = add_axis(name, spec.vary[name], false, "vary")
    if not ok then return nil, err end
  end

  -- display order: the spec's `order`, else vars, then PRIORITY, then the rest by name
  local rank = {}
  for i, name in ipairs(spec.order or {}) do
    if not by_name[name] then return invalid(("order names %q, which is not an axis"):format(tostring(name)), "order") end
    rank[name] = i
  end
  for i, name in ipairs(PRIORITY) do rank[name] = rank[name] or (1000 + i) end
  table.sort(axes, function(a, b)
    local ra = rank[a.name] or (a.var and 500 or 2000)
    local rb = rank[b.name] or (b.var and 500 or 2000)
    if ra ~= rb then return ra < rb end
    return a.name < b.name
  end)
  -- ids name the axes in a fixed order (by name), so that reordering the display never changes them
  local id_axes = {}
  for i, a in ipairs(axes) do id_axes[i] = a end
  table.sort(id_axes, function(a, b) return a.name < b.name end)

  local cells, ids = {}, {}
  local function add_cell(id, values, params, extra)
    if ids[id] then return invalid(("two cells have the id %q"):format(id), "cells") end
    if id:find("%c") then
      return invalid(("the cell id %s holds control characters"):format(jtext.printable(id)), "cells")
    end
    if id:find(TAKE_SEP .. "%d+$") then -- the label of another cell's take would be this cell's
      return invalid(('the cell id "%s" ends like the label of a take ("%s"): give it another id'):format(id,
        id:match(TAKE_SEP .. "%d+$")), "cells")
    end
    ids[id] = true
    if type(params.prompt) == "string" then
      for _, name in ipairs(placeholders(params.prompt)) do
        if values[name] == nil then
          return invalid(("cell %s: the prompt names {%s}, which vars does not define"):format(id, name), "prompt")
        end
      end
      params.prompt = render(params.prompt, values)
    end
    for k in pairs(IMAGE_KEYS) do
      if params[k] ~= nil then params[k] = resolve_images(params[k], spec_dirs[spec]) end
    end
    local body, why, class, field = core.normalize(params)
    if not body then
      local e = errors.from_core(why, class, field)
      e.message = ("cell %s: %s"):format(id, e.message)
      return nil, e
    end
    cells[#cells + 1] = { id = id, index = #cells + 1, axes = values, params = params, body = body,
      seconds = seconds_of(body), extra = extra or nil }
    return true
  end

  -- the product of the axes, the first axis varying slowest
  -- (with explicit cells and no axes, the grid is exactly those cells: no hidden cell of base alone)
  local function walk(i, values)
    if i == 1 and #axes == 0 and type(spec.cells) == "table" and #spec.cells > 0 then return true end
    if i > #axes then
      local params, parts = copy(base), {}
      for _, a in ipairs(axes) do
        if not a.var then params[a.name] = values[a.name] end
      end
      for _, a in ipairs(id_axes) do parts[#parts + 1] = a.name .. "=" .. value_id(json, values[a.name]) end
      return add_cell(#parts > 0 and table.concat(parts, ",") or "base", copy(values), params)
    end
    for _, v in ipairs(axes[i].values) do
      values[axes[i].name] = v
      local ok, err = walk(i + 1, values)
      if not ok then return nil, err end
    end
    values[axes[i].name] = nil
    return true
  end
  local ok, err = walk(1, {})
  if not ok then return nil, err end

  -- explicit extra cells: base plus their own parameters (a template's vars may be given among them)
  for i, extra in ipairs(spec.cells or {}) do
    if type(extra) ~= "table" then return invalid(("cells[%d] must be a table of parameters"):format(i), "cells") end
    local params, values = copy(base), {}
    for k, v in pairs(extra) do
      if k ~= "id" then
        if by_name[k] and by_name[k].var then values[k] = v else params[k] = v end
      end
    end
    local id = extra.id and tostring(extra.id) or ("cell-" .. core.fingerprint(canonical(json, extra)):sub(1, 8))
    ok, err = add_cell(id, values, params, true)
    if not ok then return nil, err end
  end
  if #cells == 0 then return invalid("the experiment has no cells: give base, vary or cells", "spec") end

  -- what is the same in every cell is shown once; what differs, per cell
  local shared, varying = {}, {}
  local first = cells[1].params
  local names = {}
  for _, c in ipairs(cells) do for k in pairs(c.params) do names[k] = true end end
  for k in pairs(names) do
    local same = first[k] ~= nil
    for _, c in ipairs(cells) do
      if c.params[k] == nil or canonical(json, c.params[k]) ~= canonical(json, first[k]) then same = false end
    end
    if same then shared[k] = first[k] else varying[#varying + 1] = k end
  end
  table.sort(varying)
  local template = type(base.prompt) == "string" and #placeholders(base.prompt) > 0 and base.prompt or nil

  local plan = { name = tostring(spec.name or "experiment"), axes = axes, cells = cells, shared = shared,
    varying = varying, template = template, rows = spec.rows, cols = spec.cols }
  return plan
end

-- Files

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

--- Writes a file atomically: a temporary file beside it (no link followed), then rename(2) onto it.
local write_atomic = core.write_atomic
M.write_atomic = write_atomic

local function shell_quote(s)
  s = tostring(s)
  if s ~= "" and s:match("^[%w%-_./:=@,+]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
M.shell_quote = shell_quote

-- Other programs (ffmpeg) run without LD_PRELOAD: a sanitizer preloaded into this process (make asan) is not theirs.

--- The duration in seconds of an MP4 file, from its movie header (mvhd), or nil.
function M.mp4_duration(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local function u(s, i, n)
    local v = 0
    for k = i, i + n - 1 do v = v * 256 + s:byte(k) end
    return v
  end
  -- walks the boxes between from and to, returning the offset and size of the first of type `want`
  local function find(from, to, want)
    local pos = from
    while pos + 8 <= to do
      f:seek("set", pos)
      local h = f:read(16)
      if not h or #h < 8 then return nil end
      local size, kind, header = u(h, 1, 4), h:sub(5, 8), 8
      if size == 1 and #h >= 16 then size, header = u(h, 9, 8), 16 end
      if size == 0 then size = to - pos end
      if size < header then return nil end
      if kind == want then return pos + header, size - header end
      pos = pos + size
    end
  end
  local total = f:seek("end")
  local duration
  local moov, moov_size = find(0, total, "moov")
  if moov then
    local mvhd = find(moov, moov + moov_size, "mvhd")
    if mvhd then
      f:seek("set", mvhd)
      local b = f:read(32) or ""
      if #b >= 20 and b:byte(1) == 0 then
        local scale, units = u(b, 13, 4), u(b, 17, 4)
        if scale > 0 then duration = units / scale end
      elseif #b >= 32 and b:byte(1) == 1 then
        local scale, units = u(b, 21, 4), u(b, 25, 8)
        if scale > 0 then duration = units / scale end
      end
    end
  end
  f:close()
  return duration
end

local ffmpeg_found
local function find_ffmpeg(opt)
  if opt == false then return nil end
  if type(opt) == "string" then return opt end
  if ffmpeg_found == nil then
    local p = io.popen("unset LD_PRELOAD; command -v ffmpeg 2>/dev/null")
    local out = p and p:read("*l")
    if p then p:close() end
    ffmpeg_found = out and out ~= "" and out or false
  end
  return ffmpeg_found or nil
end

--- Starts making the first frame of a video as a JPEG with ffmpeg, in the background and within a time
-- limit (coreutils' timeout): a slow or stuck ffmpeg never holds up the run. The poster appears, renamed
-- into place whole, when it is done.
local function start_poster(ffmpeg, video, poster, limit)
  -- the temporary file is made by mktemp (O_EXCL, a fresh random name): ffmpeg -y never writes through a
  -- link planted where a fixed name would be
  local cmd = ("(t=$(mktemp %s) && timeout -k 2 %d %s -nostdin -loglevel error -y -i %s -frames:v 1 -q:v 3 -f mjpeg \"$t\""
    .. " && test -s \"$t\" && mv -f \"$t\" %s; rm -f \"$t\") </dev/null >/dev/null 2>&1 &"):format(
    shell_quote(poster .. ".tmp.XXXXXX"), math.max(1, math.floor(limit)), shell_quote(ffmpeg), shell_quote(video),
    shell_quote(poster))
  os.execute("unset LD_PRELOAD; " .. cmd)
end

-- Commands and parameters for the gallery's copy buttons

local FLAGS = { seconds = "--seconds", frames = "--frames", size = "--size", aspect_ratio = "--aspect-ratio",
  model = "--model", req_key = "--req-key", seed = "--seed" }

--- The `jimeng generate` command that makes one cell, shell-quoted; nil and the reason when a
-- parameter has no option on the command line.
function M.command(params, output)
  if type(params.prompt) ~= "string" then return nil, "no prompt" end
  local words = { "jimeng", "generate", shell_quote(params.prompt) }
  for _, k in ipairs(sorted_keys(params)) do
    local v = params[k]
    if k == "prompt" then -- luacheck: ignore 542 (the positional argument above)
    elseif FLAGS[k] then
      words[#words + 1] = FLAGS[k] .. " " .. shell_quote(v)
    elseif k == "image" or k == "images" or k == "image_urls" then
      for _, img in ipairs(type(v) == "table" and v or { v }) do words[#words + 1] = "--image " .. shell_quote(img) end
    elseif k == "camera_move" then
      if v then words[#words + 1] = "--camera-move" end
    else
      return nil, ("%s has no option in jimeng generate"):format(k)
    end
  end
  if output then words[#words + 1] = "-o " .. shell_quote(output) end
  if params.prompt:sub(1, 1) == "-" then -- an option to the parser: after `--`, the prompt is a prompt
    table.remove(words, 3)
    words[#words + 1] = "-- " .. shell_quote(params.prompt)
  end
  return table.concat(words, " ")
end

-- Running

local function read_json(path, json)
  local text = read_file(path)
  if not text then return nil end
  local ok, v = pcall(json.decode, text)
  if ok and type(v) == "table" then return v end
end

-- The files an experiment rewrites in its directory, and how each says it is one an experiment wrote (the
-- gallery's title; results.json's cells; takes and retakes: numbers by cell id).
local function numbers(v)
  if type(v) ~= "table" then return false end
  for _, n in pairs(v) do
    if type(n) ~= "number" then return false end
  end
  return true
end
local OWN_FILES = {
  { "index.html", function(text) return text:find("jimeng experiment</title>", 1, true) ~= nil end },
  { "results.json", function(_, v) return type(v) == "table" and type(v.cells) == "table" end },
  { "takes.json", function(_, v) return numbers(v) end },
  { "retake.json", function(_, v) return numbers(v) end },
}

-- A file of the user's where this experiment would write one of its own: without a journal of an experiment
-- in dir, an index.html, results.json, takes.json or retake.json there that no experiment wrote is refused
-- (never replaced) unless overwrite. -> true | nil, err
local function check_own_files(dir, journal_path, json, overwrite)
  if overwrite or (core.file_size(journal_path) or 0) > 0 then return true end
  for _, f in ipairs(OWN_FILES) do
    local path = dir .. "/" .. f[1]
    local text = core.file_size(path) and read_file(path)
    if core.file_size(path) and not (text and f[2](text, read_json(path, json))) then
      return invalid(("%s exists and no experiment made it (%s has no experiment's journal): move it away, " ..
        "choose another directory, or pass overwrite=true (CLI --force) to replace it (nothing was paid for)"):format(
        path, dir), "dir")
    end
  end
  return true
end

local function file_name(id)
  return (id:gsub("[^%w%-_.~=,]", "_"):gsub("^%.", "_"))
end

--- The file stem of a cell: its id as a file name, and a short hash of its id and its exact request body.
-- So it is the same whatever the order of the cells, two ids that clean up alike (a/b, a_b) never share a
-- file, and a cell whose parameters changed is a new cell, in a new file, never shown under the old ones.
local function file_stem(cell, json)
  return file_name(cell.id) .. "~" .. core.fingerprint(cell.id .. "\0" .. canonical(json, cell.body)):sub(1, 8)
end
M.file_stem = file_stem

--- The takes of each cell: every cell has take 1; retakes add more (kept in takes.json).
local function expand_takes(plan, takes_count, json)
  local takes = {}
  for _, cell in ipairs(plan.cells) do
    local base = file_stem(cell, json)
    for n = 1, math.max(1, tonumber(takes_count[cell.id]) or 1) do
      local stem = n == 1 and base or (base .. "-take" .. n)
      takes[#takes + 1] = { cell = cell, take = n, label = n == 1 and cell.id or (cell.id .. TAKE_SEP .. n),
        video = "videos/" .. stem .. ".mp4", poster = "posters/" .. stem .. ".jpg", status = "pending" }
    end
  end
  return takes
end

local function jobs_of(takes)
  local jobs = {}
  for i, t in ipairs(takes) do
    local job = copy(t.cell.params)
    job.label, job.output = t.label, t.video
    jobs[i] = job
  end
  return jobs
end

--- Runs (or with opts.dry_run, only plans) an experiment. client: a jimeng client; spec: a table or a
-- path. opts: dir (required), rows, cols, dry_run, max_videos (default 20), yes, retake (a cell id or a
-- list), concurrency, recreate_unknown, overwrite, interval, timeout, ffmpeg (a path, or false for no
-- posters), poster_timeout (seconds, default 10), on_event(ev) (the batch's events, with ev.take),
-- on_plan(plan, report).
-- Returns a report: {name=, dir=, gallery=, results=, cells=, takes={...}, to_pay=, to_pay_seconds=,
-- made=, skipped=, failed=, unknown=, errors=, interrupted=, paid=, paid_seconds=, dry_run=} | nil, err.
-- What a run pays for is read from the batch journal (batch.plan), the identity batch itself uses.
function M.run(client, spec, opts)
  local valid, oerr = workflows.check_options(opts, RUN_OPTIONS, "experiment")
  if not valid then return nil, oerr end
  opts = opts or {}
  local json = client.json
  if type(spec) == "string" then
    local err
    spec, err = M.load(spec, json)
    if not spec then return nil, err end
  end
  local plan, perr = M.plan(spec, json)
  if not plan then return nil, perr end
  local dir = opts.dir
  if type(dir) ~= "string" or dir == "" then return invalid("the experiment needs a directory (dir)", "dir") end
  if dir:find("[{}]") then -- its journal lives there: a name that changed with the date would lose it
    return invalid("the experiment's directory is its identity (its journal lives there): it takes no " ..
      "template; got " .. dir, "dir")
  end
  dir = dir:gsub("/+$", "")
  local rows, cols = opts.rows or plan.rows, opts.cols or plan.cols
  if rows ~= nil and rows == cols then
    return invalid(("rows and cols are both %s: pick two axes"):format(tostring(rows)), "cols")
  end
  for _, pick in ipairs { { "rows", rows }, { "cols", cols } } do
    if pick[2] ~= nil then
      local found = false
      for _, a in ipairs(plan.axes) do found = found or a.name == pick[2] end
      if not found then
        local names = {}
        for i, a in ipairs(plan.axes) do names[i] = a.name end
        return invalid(("--%s %s is not an axis of this experiment (axes: %s)"):format(pick[1], tostring(pick[2]),
          #names > 0 and table.concat(names, ", ") or "none"), pick[1])
      end
    end
  end
  local journal_path = dir .. "/journal.jsonl"
  local plan_opts = { journal = journal_path, output_dir = dir, recreate_unknown = opts.recreate_unknown }

  -- takes: one per cell, plus the retakes asked for now and before
  local takes_path = dir .. "/takes.json"
  local takes_count = read_json(takes_path, json) or {}
  for id, n in pairs(takes_count) do -- a hand-edited or damaged takes.json must not become a thousand videos
    if type(n) ~= "number" or not (n >= 1 and n <= 1000) or n ~= math.floor(n) then -- luacheck: ignore 581
      return invalid(("%s gives cell %s %s takes (a whole number from 1 to 1000 expected): fix or remove it"):format(
        takes_path, jtext.printable(id), jtext.printable(tostring(n))), "retake")
    end
  end
  local retake = opts.retake
  if type(retake) == "string" then retake = { retake } end
  local ids = {}
  for _, c in ipairs(plan.cells) do ids[c.id] = true end
  for _, id in ipairs(retake or {}) do
    if not ids[id] then
      local list = {}
      for i = 1, math.min(#plan.cells, 6) do list[i] = plan.cells[i].id end
      return invalid(("--retake %s: no such cell (cells: %s%s)"):format(id, table.concat(list, " "),
        #plan.cells > 6 and " ..." or ""), "retake")
    end
  end
  local takes = expand_takes(plan, takes_count, json)
  local retake_changed = false
  -- the retakes decided by runs that did not end with every take finished (retake.json): cell id -> take
  local pending_path = dir .. "/retake.json"
  local pending = read_json(pending_path, json) or {}
  local pending_before = next(pending) ~= nil
  if retake then
    -- a retake adds a take only when the cell's last take is finished (saved or failed) and was not itself
    -- decided by a retake whose run has not ended complete: a rerun of the same --retake command after an
    -- interruption (or an error) finishes that run instead of paying for one more take
    local states, serr = batch.plan(client, jobs_of(takes), plan_opts)
    if not states then return nil, serr end
    local state_of = {}
    for _, st in ipairs(states) do state_of[st.label] = st.state end
    local done_ids = {}
    for _, id in ipairs(retake) do
      if not done_ids[id] then
        done_ids[id] = true
        local n = math.floor(math.max(1, tonumber(takes_count[id]) or 1)) -- JSON gives 2.0 on some builds
        local last = state_of[n == 1 and id or (id .. TAKE_SEP .. n)]
        if tonumber(pending[id]) == n then -- luacheck: ignore 542 (decided before: this run finishes it)
        elseif last == "saved" or last == "failed" then
          takes_count[id], retake_changed = n + 1, true
          pending[id] = n + 1
        else
          pending[id], retake_changed = n, true
        end
      end
    end
    takes = expand_takes(plan, takes_count, json)
  end

  -- what was made before, and what this run would pay for: from the journal, as batch will see it
  local states, serr = batch.plan(client, jobs_of(takes), plan_opts)
  if not states then return nil, serr end
  local results_path, gallery_path = dir .. "/results.json", dir .. "/index.html"
  local previous = {}
  for _, r in ipairs((read_json(results_path, json) or {}).cells or {}) do
    if type(r) == "table" and r.label and r.task_id then previous[r.label] = r end
  end
  local to_pay, to_pay_seconds = 0, 0
  for i, t in ipairs(takes) do
    local st = states[i]
    t.state, t.task_id = st.state, st.task_id
    if st.state == "saved" and st.path:sub(1, #dir + 1) == dir .. "/" then t.video = st.path:sub(#dir + 2) end
    local p = previous[t.label]
    if p and t.task_id and p.task_id == t.task_id then -- details of this very task only
      for _, k in ipairs { "error", "created_at", "generation_seconds" } do t[k] = p[k] end
    end
    t.status = (st.state == "saved" or st.state == "failed" or st.state == "unknown") and st.state or "pending"
    if st.state == "failed" and not t.error then t.error = { kind = "task_failed", message = "the task failed" } end
    if st.create then
      t.new = true
      to_pay = to_pay + 1
      to_pay_seconds = to_pay_seconds + (t.cell.seconds or 0)
    end
  end

  local report = { name = plan.name, dir = dir, gallery = gallery_path, results = results_path, plan = plan,
    cells = #plan.cells, takes = takes, to_pay = to_pay, to_pay_seconds = to_pay_seconds, dry_run = opts.dry_run,
    made = 0, skipped = 0, failed = 0, unknown = 0, errors = 0, interrupted = 0, paid = 0, paid_seconds = 0,
    rows = rows, cols = cols }
  if opts.on_plan then opts.on_plan(plan, report) end
  if opts.dry_run then return report end
  local max = opts.max_videos or 20
  if to_pay > max and not opts.yes then
    local e = errors.new { kind = "invalid_argument", field = "max_videos",
      message = ("this run would pay for %d video%s (%d s), above the limit of %d (nothing was paid for)"):format(
        to_pay, to_pay == 1 and "" or "s", to_pay_seconds, max),
      hint = "see what it would make with --dry-run, then pass --yes (yes=true) or raise --max-videos" }
    return nil, e
  end

  local own_ok, own_err = check_own_files(dir, journal_path, json, opts.overwrite)
  if not own_ok then return nil, own_err end

  -- only directories before batch has checked everything and holds the journal's lock: a refused run
  -- (another run on the journal, a file in the way) leaves the gallery and takes.json as they were
  for _, sub in ipairs { "", "/videos", "/posters" } do
    local ok, why = core.mkdirs(dir .. sub)
    if not ok then return nil, errors.new { kind = "io", message = "cannot make " .. dir .. sub .. ": " .. tostring(why) } end
  end

  local ffmpeg = find_ffmpeg(opts.ffmpeg)
  local poster_timeout = opts.poster_timeout or 10
  local by_label = {}
  for _, t in ipairs(takes) do
    by_label[t.label] = t
    t.command = M.command(t.cell.params, t.video:match("[^/]+$"))
  end
  local live = true
  local function publish()
    for _, t in ipairs(takes) do
      if t.status == "saved" and not t.has_poster and t.poster_until then
        t.has_poster = (core.file_size(dir .. "/" .. t.poster) or 0) > 0
      end
    end
    local data = gallery.data(plan, takes, { json = json, live = live, rows = rows, cols = cols, report = report,
      canonical = function(v) return canonical(json, v) end })
    local ok, why = write_atomic(results_path, gallery.results_json(data, json))
    if ok then ok, why = write_atomic(gallery_path, gallery.html(data, json)) end
    if not ok then return nil, errors.new { kind = "io", message = "cannot write the gallery: " .. tostring(why) } end
    return true
  end
  local function finish_video(t)
    local path = dir .. "/" .. t.video
    t.duration = M.mp4_duration(path)
    local poster = dir .. "/" .. t.poster
    t.has_poster = (core.file_size(poster) or 0) > 0
    if ffmpeg and not t.has_poster and not t.poster_until then
      start_poster(ffmpeg, path, poster, poster_timeout)
      t.poster_until = core.now() + poster_timeout + 3
    end
  end

  local publish_error
  local summary, berr = client:batch(jobs_of(takes), {
    journal = journal_path, output_dir = dir, concurrency = opts.concurrency, overwrite = opts.overwrite,
    recreate_unknown = opts.recreate_unknown, interval = opts.interval, timeout = opts.timeout,
    on_start = function()
      if retake_changed then -- the retake is decided: journaled before it is paid for
        for _, f in ipairs { { pending_path, pending }, { takes_path, takes_count } } do
          local ok, why = write_atomic(f[1], json.encode(f[2]))
          if not ok then
            return nil, errors.new { kind = "io", message = "cannot write " .. f[1] .. ": " .. tostring(why) }
          end
        end
      end
      for _, t in ipairs(takes) do
        if t.status == "saved" then finish_video(t) end
      end
      return publish()
    end,
    on_event = function(ev)
      local t = by_label[ev.job.label]
      local changed = true
      if ev.type == "created" then
        t.task_id, t.status, t.created_at, t.t0 = ev.task.id, "in_queue", os.time(), core.now()
        report.paid, report.paid_seconds = report.paid + 1, report.paid_seconds + (t.cell.seconds or 0)
      elseif ev.type == "status" then
        changed = t.status ~= ev.task.status
        t.status, t.task_id = ev.task.status, ev.task.id or t.task_id
        if ev.task.status == "completed" then
          t.generation_seconds = t.t0 and (core.now() - t.t0) or (t.created_at and os.time() - t.created_at) or nil
        end
      elseif ev.type == "saved" or ev.type == "skipped" then
        t.status, t.task_id = "saved", ev.job.task_id or t.task_id
        t.error = nil
        local path = ev.job.path
        if path and path:sub(1, #dir + 1) == dir .. "/" then t.video = path:sub(#dir + 2) end
        finish_video(t)
        report[ev.type == "saved" and "made" or "skipped"] = report[ev.type == "saved" and "made" or "skipped"] + 1
      elseif ev.type == "failed" or ev.type == "unknown" or ev.type == "error" or ev.type == "interrupted" then
        t.status, t.task_id = ev.type, ev.job.task_id or t.task_id
        local e = ev.job.error
        t.error = e and { kind = e.kind, message = e.message } or nil
        report[ev.type == "error" and "errors" or ev.type] = report[ev.type == "error" and "errors" or ev.type] + 1
      else
        changed = false
      end
      if changed then
        local pok, perr2 = publish()
        if not pok then publish_error = perr2 end
      end
      if opts.on_event then
        ev.take = t
        opts.on_event(ev)
      end
    end,
  })
  -- refused before it started (the lock, a file in the way): nothing was touched, the gallery included
  if not summary then return nil, berr end
  live = false
  -- a take that did not reach an end is not shown as running forever
  for _, t in ipairs(takes) do
    if t.status == "pending" or t.status == "in_queue" or t.status == "processing" or t.status == "completed" then
      t.status = "interrupted"
      t.error = t.error or { kind = "interrupted", message = "the run stopped before this video was made: run again" }
    end
  end
  -- the posters still being made: waited for (each within its time limit), unless the run was interrupted
  if summary.interrupted == 0 then
    while true do
      local waiting = false
      for _, t in ipairs(takes) do
        if t.status == "saved" and t.poster_until and core.now() < t.poster_until
          and (core.file_size(dir .. "/" .. t.poster) or 0) == 0 then waiting = true end
      end
      if not waiting then break end
      core.sleep(0.05)
    end
  end
  local ok, werr = publish()
  if not ok then return nil, werr end
  if publish_error then return nil, publish_error end
  if (pending_before or retake_changed) and report.interrupted == 0 and report.errors == 0 and report.unknown == 0 then
    -- every take finished: the retakes decided are done, and the same --retake command now adds one more
    ok, werr = write_atomic(pending_path, "{}")
    if not ok then
      return nil, errors.new { kind = "io", message = "cannot write " .. pending_path .. ": " .. tostring(werr) }
    end
  end
  return report
end

return M
