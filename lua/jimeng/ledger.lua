--- The ledger: every paid create this machine sent, so that a task paid for is never known only to a closed
-- terminal. One file of JSON lines (default $XDG_STATE_HOME/jimeng/ledger.jsonl, else
-- ~/.local/state/jimeng/ledger.jsonl), appended under an flock and fsynced, one record per line, by every
-- process (the library, the command, batch and experiment runs); readers fold the records of a task into
-- one entry. It never holds the key: each line is scrubbed of it, a URL keeps no query or user name, and a
-- local image inlined as data is recorded by its size only.
--
-- The records (field `ev`), all with `at` (seconds since the epoch) and `ref` (this create's own name,
-- made before it is sent: the id is not known yet):
--   sending       written by the engine the moment the request is handed to the wire (every attempt):
--                 params, base_url, output (the path meant, possibly a template), what
--   created       the answer was read: id (written before anything else is done with it), output (resolved)
--   not_created   an attempt provably made nothing (refused, never delivered)
--   unknown       sent, and no answer tells whether the task exists: it may be billed
--   completed / failed   what waiting for it saw (failed: error)
--   saved         downloaded: path (absolute), bytes, file (core.file_id: the file it became)
--   download_failed      path, error
-- Records written for a task this ledger never saw created (jimeng download ID) carry only its id.
local core = require "jimeng.core"
local errors = require "jimeng.errors"

local M = {}

M.FILE = "ledger.jsonl"

local function nonempty(v)
  if v == "" then return nil end
  return v
end

--- Where the ledger is: `opt` (the client's `ledger` option: a path, or false for none), else
-- $JIMENG_LEDGER (a path, or "false"/"off"/"0" for none), else $XDG_STATE_HOME/jimeng/ledger.jsonl, else
-- $HOME/.local/state/jimeng/ledger.jsonl. -> path | false
function M.path(opt)
  if opt == false then return false end
  if type(opt) == "string" then return opt end
  local env = nonempty(os.getenv("JIMENG_LEDGER"))
  if env then
    local off = env:lower()
    if off == "false" or off == "off" or off == "0" or off == "no" then return false end
    return env
  end
  local state = nonempty(os.getenv("XDG_STATE_HOME"))
  if state and state:sub(1, 1) == "/" then return state .. "/jimeng/" .. M.FILE end
  local home = nonempty(os.getenv("HOME"))
  if home then return home .. "/.local/state/jimeng/" .. M.FILE end
  return false
end

local function dir_of(path)
  return path:match("^(.*)/[^/]*$")
end

-- A URL as it may be kept: no user name or password, no query or fragment (signatures and tokens live there).
local function bare_url(s)
  local scheme, rest = s:match("^(%a[%w+.-]*://)(.*)$")
  if not scheme then return s end
  rest = rest:gsub("[?#].*$", "")
  local host, path = rest:match("^([^/]*)(.*)$")
  host = host:gsub("^.*@", "")
  return scheme .. host .. path
end

-- A parameter's value as the ledger keeps it: data inlined as a data: URL by its kind and size, URLs bare.
local function kept(v, depth)
  if type(v) == "string" then
    if v:sub(1, 5) == "data:" then
      return ("%s (%d bytes of data)"):format(v:match("^data:([^;,]*)") or "data", #v)
    end
    if #v > 2000 then return v:sub(1, 2000) .. "..." end
    return bare_url(v)
  end
  if type(v) == "table" and depth < 4 then
    local out = {}
    for k, x in pairs(v) do
      if type(k) == "string" or type(k) == "number" then out[k] = kept(x, depth + 1) end
    end
    return out
  end
  if type(v) == "number" or type(v) == "boolean" then return v end
  return nil
end

--- The parameters of a create as the ledger keeps them (no function, no data, no URL query).
function M.params(params)
  if type(params) ~= "table" then return nil end
  return kept(params, 0)
end

M.bare_url = bare_url

local Ledger = {}
Ledger.__index = Ledger

--- A ledger at `path` (M.path's answer) for a client (its json and key), or nil when path is false.
-- explicit: the path was asked for (the option or JIMENG_LEDGER), not the default place.
function M.open(path, json, secret, explicit)
  if not path then return nil end
  return setmetatable({ path = path, json = json, secret = secret, explicit = explicit or false }, Ledger)
end

--- Whether the ledger's place was asked for (the `ledger` option, or JIMENG_LEDGER), not the default one.
function M.explicit(opt)
  return type(opt) == "string" or (opt == nil and nonempty(os.getenv("JIMENG_LEDGER")) ~= nil)
end

--- The line of a record: JSON, scrubbed of the key, ending in a newline.
function Ledger:line(rec)
  rec.at = rec.at or os.time()
  local ok, text = pcall(self.json.encode, rec)
  if not ok then
    rec.params = nil
    text = self.json.encode(rec)
  end
  return errors.scrub(text, self.secret):gsub("[\r\n]", " ") .. "\n"
end

--- Whether a and b name the same file (its device and inode, however each is spelt; a path not there yet is
-- compared by its canonical spelling).
function M.same_file(a, b)
  if not a or not b then return false end
  local ia, ib = core.file_id(a), core.file_id(b)
  if ia and ib then return ia:match("^%d+:%d+") == ib:match("^%d+:%d+") end
  return (core.canonical_path(a) or a) == (core.canonical_path(b) or b)
end

--- Whether the regular file at path may be appended to as a file of JSON records whose first line has the
-- string field `field` (a ledger's "ev", a journal's "event"): absent or empty, or its first line is such a
-- record. A video, a document, any other file is not one: appending to it would ruin it. what: "a ledger", "a
-- journal", for the message. -> true | nil, why
function M.records_file(path, json, field, what)
  if not core.file_id(path) or (core.file_size(path) or 0) == 0 then return true end -- absent, not a file, empty
  local f = io.open(path, "rb")
  if not f then return true end -- unreadable: the append says why
  local line = f:read("*l")
  f:close()
  local ok, rec = pcall(json.decode, line or "")
  if ok and type(rec) == "table" and type(rec[field]) == "string" then return true end
  return nil, ("%s exists and is not %s: its first line is no record of one (appending would ruin it): choose " ..
    "another path, or move the file away"):format(path, what)
end

--- Makes the ledger's directory (mode 0755, and 0700 for a new state directory would be the XDG advice: the
-- ledger holds prompts, never the key); a file already at its path must be a ledger. -> true | nil, message
function Ledger:ready()
  if self.made then return true end
  local dir = dir_of(self.path)
  if dir and dir ~= "" then
    local ok, why = core.mkdirs(dir)
    if not ok then return nil, why end
  end
  local ok, why = M.records_file(self.path, self.json, "ev", "a ledger")
  if not ok then return nil, "the ledger " .. why, "not_a_ledger" end
  self.made = true
  return true
end

--- Appends a record (under an flock, fsynced). -> true | nil, message
function Ledger:append(rec)
  local ok, why = self:ready()
  if not ok then return nil, "cannot write the ledger: " .. why end
  ok, why = core.append_durable(self.path, self:line(rec), true)
  if not ok then return nil, "cannot write the ledger: " .. why end
  return true
end

-- Saving: the process that will save a task (a generate waiting for it or downloading it, a resume) holds a lock
-- named after the task (its ref, else its id) next to the ledger while it does; another process's resume leaves
-- that task alone. The lock is an flock, so a killed process holds nothing; its file is removed with it.
local function hold_path(book_path, key)
  return ("%s.saving-%s"):format(book_path, tostring(key):gsub("[^%w_-]", "_"))
end

--- Holds the task `key` (a ref or an id) as being saved by this process. -> hold | nil, "locked" (another
-- process holds it) | nil, message (no lock could be made: the caller goes on without)
function Ledger:hold(key)
  local ok = self:ready()
  if not ok then return nil, "no ledger directory" end
  local path = hold_path(self.path, key)
  local lock, why, how = core.lock(path)
  if not lock then return nil, how == "locked" and "locked" or why end
  return { lock = lock, path = path }
end

--- Lets go of a hold (its file removed first: a resume that finds no file knows nothing is being saved).
function M.release(hold)
  if not hold then return end
  os.remove(hold.path)
  hold.lock:unlock()
end

--- Whether another process holds task `key` as being saved (a stale file of a killed process is removed).
function M.held(book_path, key)
  local path = hold_path(book_path, key)
  if not core.file_id(path) then return false end
  local lock, _, how = core.lock(path)
  if not lock then return how == "locked" end
  os.remove(path)
  lock:unlock()
  return false
end

--- A new ref: the name of one create in the ledger, made before it is sent.
function M.new_ref()
  return core.fingerprint(("%.6f %s %s %d"):format(core.now(), tostring({}), os.time(),
    math.random(0, 0x7fffffff))):sub(1, 16)
end

-- Reading

-- What an entry's state means, said to a user.
M.STATE_WORDS = {
  sending = "sent, id unknown, may be billed",
  unknown = "sent, outcome unknown, may be billed",
  not_created = "not created (nothing paid)",
  created = "created, not saved",
  completed = "completed, not saved",
  failed = "failed",
  saved = "saved",
  download_failed = "download failed, not saved",
}

-- The states of a task paid for whose video is not saved: what `resume` takes up.
M.UNSAVED = { created = true, completed = true, download_failed = true }

-- The latest moment os.date can show on every Lua (the end of year 9999), in seconds since the epoch.
local LAST_MOMENT = 253402300799

-- A record's field as the reader takes it: of the type its writer writes, else nil (a line damaged, or written
-- by hand or by another program, is read for what it holds and never crashes list, show or resume). A
-- moment ("at") is whole seconds from the epoch to the year 9999: 1.5 is 1, "x", -1 or 1e400 are unknown.
local function moment(v)
  if type(v) ~= "number" or v ~= v or v < 0 or v > LAST_MOMENT then return nil end
  return math.floor(v)
end
local function str(v) return type(v) == "string" and v or nil end
local function count(v) return type(v) == "number" and v >= 0 and v < 2 ^ 53 and v == math.floor(v) and v or nil end
local function tbl(v) return type(v) == "table" and v or nil end

-- The record with each field it may hold of its type (the others nil).
local function sane(rec)
  return { ev = rec.ev, id = str(rec.id), ref = str(rec.ref), at = moment(rec.at), params = tbl(rec.params),
    base_url = str(rec.base_url), what = str(rec.what), output = str(rec.output), path = str(rec.path),
    bytes = count(rec.bytes), file = str(rec.file), error = str(rec.error) }
end

--- Reads the ledger at path and folds its records into entries, oldest first: {ref=, id=, state=, at=
-- (first record), updated=, params=, base_url=, output=, path= (where saved), bytes=, file=, error=, attempts=}.
-- Lines that cannot be read (a torn last line) are skipped. -> entries, by_id | nil, message (unreadable)
function M.read(path, json)
  local entries, by_ref, by_id = {}, {}, {}
  if not path then return entries, by_id end
  local f, why, errno = io.open(path, "rb")
  if not f then
    -- no ledger yet (no such file: ENOENT); anything else (a file where its directory should be, no right to
    -- read it) is said: "nothing to resume" would be a lie
    if errno == 2 then return entries, by_id end
    return nil, ("cannot read the ledger (%s): %s"):format(path, tostring(why))
  end
  for text in f:lines() do
    local ok, rec = pcall(json.decode, text)
    if ok and type(rec) == "table" and type(rec.ev) == "string" then
      rec = sane(rec)
      local id, ref = rec.id, rec.ref
      local e = (ref and by_ref[ref]) or (id and by_id[id])
      if not e then
        e = { ref = ref, at = rec.at, attempts = 0 }
        entries[#entries + 1] = e
        if ref then by_ref[ref] = e end
      end
      if id then
        e.id = id
        by_id[id] = e
      end
      e.updated = rec.at or e.updated
      local ev = rec.ev
      if ev == "sending" then
        e.attempts = e.attempts + 1
        e.params, e.base_url, e.what = rec.params, rec.base_url, rec.what
        e.output = e.output or rec.output
        if not e.state or e.state == "not_created" then e.state = "sending" end
      elseif ev == "created" then
        e.state = (e.state == "completed" or e.state == "saved") and e.state or "created"
        e.output = rec.output or e.output
        e.base_url = e.base_url or rec.base_url
      elseif ev == "not_created" then
        if e.state == "sending" or not e.state then e.state = "not_created" end
      elseif ev == "unknown" then
        if e.state == "sending" or not e.state then e.state = "unknown" end
        e.error = rec.error
      elseif ev == "completed" or ev == "failed" then
        if e.state ~= "saved" then e.state = ev end
        e.error = rec.error
      elseif ev == "saved" then
        e.state, e.path, e.bytes, e.file, e.error = "saved", rec.path, rec.bytes, rec.file, nil
        e.saved = e.saved or {}
        e.saved[#e.saved + 1] = { path = rec.path, bytes = rec.bytes, file = rec.file }
      elseif ev == "download_failed" then
        if e.state ~= "saved" then e.state = "download_failed" end
        e.error = rec.error
        e.output = e.output or rec.path
      end
      e.base_url = e.base_url or rec.base_url
    end
  end
  f:close()
  -- a ref whose every attempt provably made nothing is no task: not listed
  local kept_entries = {}
  for _, e in ipairs(entries) do
    if e.state and (e.state ~= "not_created" or e.id) then kept_entries[#kept_entries + 1] = e end
  end
  return kept_entries, by_id
end

--- Whether the file at `path` is the video of task `id` this ledger saw saved there: a saved record of that
-- task names this very file (its absolute path, and the same device, inode, size and modification time).
function M.saved_here(entry, path)
  if not entry or not entry.saved then return false end
  local abs = core.canonical_path(path)
  local file = core.file_id(path)
  if not abs or not file then return false end
  for _, s in ipairs(entry.saved) do
    if s.path == abs and s.file == file then return true end
  end
  return false
end

return M
