-- Helpers for the specs: a sandbox per spec file, temporary directories, file reading.
local busted = require "busted"
local assert = require "luassert"
local sandbox = require "jimeng.sandbox"

local M = {}

--- Starts a sandbox (fast timings unless told otherwise); stop it in teardown.
function M.sandbox(opts)
  opts = opts or {}
  if opts.queue_seconds == nil then opts.queue_seconds = 0.05 end
  if opts.process_seconds == nil then opts.process_seconds = 0.1 end
  return assert(sandbox.start(opts))
end

--- A client on the sandbox with fast polling and retries that do not make the suite slow.
function M.client(sb, extra)
  local jimeng = require "jimeng"
  local opts = { api_key = "test-key", base_url = sb.url, poll_interval = 0.05 }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return assert(jimeng.new(opts))
end

local tmpdirs = {}

--- A fresh temporary directory, removed at exit of the suite.
function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("unset LD_PRELOAD; mkdir -p '" .. p .. "'"))
  tmpdirs[#tmpdirs + 1] = p
  return p
end

function M.cleanup()
  for _, p in ipairs(tmpdirs) do os.execute("unset LD_PRELOAD; rm -rf '" .. p .. "'") end
  tmpdirs = {}
end

--- The sandbox of the describe block that calls it, and what goes with it: registers its setup, before_each
-- and teardown, and returns the table they fill in: sb (the sandbox), client (h.client on it), dir (a
-- temporary directory). Teardown stops the sandbox and, where opts.dir asked for one, removes the temporary
-- directories (all of them, as h.cleanup does).
-- opts.sandbox: h.sandbox's options; opts.client: false for no client, else h.client's extra options;
-- opts.dir: "setup" for one directory for the block, "each" for a fresh one before each test;
-- opts.reset: true to reset the sandbox before each test, a table to then configure it with that table.
function M.with_sandbox(opts)
  opts = opts or {}
  local env = {}
  busted.setup(function()
    env.sb = M.sandbox(opts.sandbox)
    if opts.client ~= false then env.client = M.client(env.sb, opts.client) end
    if opts.dir == "setup" then env.dir = M.tmpdir() end
  end)
  if opts.reset or opts.dir == "each" then
    busted.before_each(function()
      if opts.reset then env.sb:reset() end
      if type(opts.reset) == "table" then env.sb:config(opts.reset) end
      if opts.dir == "each" then env.dir = M.tmpdir() end
    end)
  end
  busted.teardown(function()
    if env.sb then env.sb:stop() end
    if opts.dir then M.cleanup() end
  end)
  return env
end

function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- The base64 of a file by coreutils' base64: an encoder that is not ours, to check ours against.
function M.base64_file(path)
  local pipe = assert(io.popen("base64 -w0 '" .. path:gsub("'", "'\\''") .. "'"))
  local b64 = pipe:read("*a")
  pipe:close()
  return b64
end

function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

function M.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

--- Asserts that a call failed the library's way: nil, then an error of that kind. Call it with the call's
-- own results: h.failed("auth", c:create {...}). Returns the error, for the checks of its own that each case
-- makes.
function M.failed(kind, value, err)
  assert.is_nil(value)
  assert.equals(kind, err.kind)
  return err
end

--- Asserts that a download failed (as h.failed) and left nothing behind: none of the paths in absent (the
-- file, its .part...) on disk. h.download_failed(kind, { path, path .. ".part" }, c:download(...)).
function M.download_failed(kind, absent, info, err)
  M.failed(kind, info, err)
  for _, p in ipairs(absent) do assert.is_false(M.exists(p), p) end
  return err
end

--- The committed MP4 fixture the sandbox serves.
function M.fixture()
  return assert(M.read("sandbox/fixtures/jimeng-sample.mp4"))
end

--- The requests of the sandbox's log that hit the API (not the control plane), optionally by path pattern.
function M.api_requests(sb, pattern)
  local out = {}
  for _, e in ipairs(sb:log()) do
    if not pattern or e.path:match(pattern) then out[#out + 1] = e end
  end
  return out
end

--- The box headers that begin a synthetic sandbox video of `size` bytes (see sandbox/server.py): ftyp, an
-- empty moov, and an mdat with a 64-bit size holding the rest (56 bytes).
function M.synthetic_head(size)
  local mdat = size - 40
  return "\0\0\0\32ftypisom\0\0\2\0isomiso2avc1mp41" .. "\0\0\0\8moov" .. "\0\0\0\1mdat" ..
    string.char(0, 0, 0, math.floor(mdat / 2 ^ 32) % 256, math.floor(mdat / 2 ^ 24) % 256,
      math.floor(mdat / 2 ^ 16) % 256, math.floor(mdat / 2 ^ 8) % 256, mdat % 256)
end

--- The expected byte at offset i of a synthetic sandbox video (see sandbox/server.py), past its headers.
M.SYNTHETIC_HEAD = 56
function M.synthetic_byte(i)
  if i < M.SYNTHETIC_HEAD then return nil end
  return ((i % 65521) * 7 + 13) % 256
end

--- A valid MP4 of `size` bytes by its top-level boxes (what the client checks before it saves a video):
-- ftyp, a moov of random bytes, an mdat of random bytes (a 64-bit size when `large`); two calls never give
-- the same bytes. Also its parts' offsets: {moov = , mdat = }.
function M.mp4(size, large)
  local f = assert(io.open("/dev/urandom", "rb"))
  local ftyp = "\0\0\0\24ftypisom\0\0\2\0isomiso2"
  local moov_body = f:read(100)
  local moov = "\0\0\0\108moov" .. moov_body
  local head = large and 16 or 8
  local mdat_len = size - #ftyp - #moov
  assert(mdat_len >= head, "too small for an MP4")
  local function be(n, bytes)
    local out = {}
    for k = bytes - 1, 0, -1 do out[#out + 1] = string.char(math.floor(n / 2 ^ (8 * k)) % 256) end
    return table.concat(out)
  end
  local mdat = large and (be(1, 4) .. "mdat" .. be(mdat_len, 8)) or (be(mdat_len, 4) .. "mdat")
  local data = ftyp .. moov .. mdat .. f:read(mdat_len - head)
  f:close()
  return data, { moov = #ftyp, mdat = #ftyp + #moov }
end

return M
