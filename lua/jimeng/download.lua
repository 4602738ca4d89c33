--- The resumable download of a task's video (client:download): streamed into <path>.part (locked, bound to
-- the task by its record <path>.part.json), resumed with Range + If-Range, checked (its length, and its MP4
-- boxes: part:commit), fsynced and renamed.
local core = require "jimeng.core"
local errors = require "jimeng.errors"
local http = require "jimeng.http"
local runtime = require "jimeng.runtime"
local trace = require "jimeng.trace"

local M = {}

local now = core.now

-- PUC Lua 5.1 cannot yield across pcall: there, an error raised inside leaves the lock to the collector.
local YIELDING_PCALL = _VERSION ~= "Lua 5.1" or type(jit) == "table" -- luacheck: ignore 113

--- download.not_an_output(path[, ledger_path]) -> why | nil: why `path` cannot be where a video is saved. The
-- names a download keeps for itself (<output>.part and its record <output>.part.json: another run's would be
-- written over, or removed when that run finishes), and the ledger of paid tasks (a video there would replace
-- what says what was paid for).
function M.not_an_output(path, ledger_path)
  local name = path:match("[^/]*$")
  if name:match("%.part$") or name:match("%.part%.json$") then
    return path .. " is a name downloads keep for their own files (.part, .part.json): choose another"
  end
  if ledger_path and (core.canonical_path(path) or path) == (core.canonical_path(ledger_path) or ledger_path) then
    return path .. " is the ledger of paid tasks: a video there would replace it"
  end
  return nil
end

local function io_error(id, message)
  return nil, errors.new { kind = "io", task_id = id, message = message }
end


-- The record beside a .part (written by the engine before the first byte lands in it): the task, the
-- validator (ETag, else Last-Modified) and the total length of the bytes it holds (-1, read as nil: the
-- server sent no length, or the bytes proved too few). nil when it is missing, unreadable, a link, or
-- another task's.
local function read_record(client, part, id)
  local text = part:record()
  if not text then return nil end
  local ok, rec = pcall(client.json.decode, text)
  if not ok or type(rec) ~= "table" or rec.task_id ~= id then return nil end
  if type(rec.total) ~= "number" or (rec.total < 1 and rec.total ~= -1) or rec.total ~= math.floor(rec.total) then
    return nil
  end
  if rec.total == -1 then rec.total = nil end
  if type(rec.validator) ~= "string" or rec.validator == "" or rec.validator:find("%c") then rec.validator = nil end
  return rec
end

-- Where the next attempt starts: the bytes of the .part are kept only when its record binds them to this
-- task and they can be continued (a validator to send in If-Range) or are already whole; otherwise the .part
-- is emptied and its record removed. -> offset, record | nil, err
local function resume_point(client, part, id)
  local size, serr = part:size()
  if not size then return nil, serr end
  local rec = size > 0 and read_record(client, part, id)
  if rec and not rec.total and rec.validator then return size, rec end
  if rec and rec.total and size <= rec.total and (rec.validator or size == rec.total) then return size, rec end
  if size > 0 or part:record() then
    local ok, rerr = part:reset()
    if not ok then return nil, rerr end
  end
  return 0
end

local function download_error(client, r, id)
  local decoded
  local ok, d = pcall(client.json.decode, r.body or "")
  if ok then decoded = d end
  if r.status >= 200 and r.status < 300 then
    local msg = core.error_message(decoded, r.body) or "an empty body"
    -- the engine kept the body because its type or its first bytes are text: say which
    local ctype = r.headers["content-type"]
    local what = ctype or "no content type"
    if r.body ~= "" and not (ctype and (ctype:find("json") or ctype:find("html") or ctype:lower():find("^text/"))) then
      what = ("text (labelled %s)"):format(ctype or "with no content type")
    end
    return errors.new({
      kind = "protocol", status = r.status, task_id = id, request_id = http.request_id(r, decoded),
      message = "expected a video but the server sent " .. what .. ": " .. msg,
    }, client.api_key)
  end
  local e = http.status_error(client, r, decoded)
  e.task_id = id
  return e
end

-- What a refused body means (see the engine): whether the .part must restart from zero, the message, and
-- whether another try may succeed.
local REFUSED = {
  range = { true, "the server resumed at the wrong offset", true },
  validator = { true, "the server resumed another version of the video (its ETag or Last-Modified changed)", true },
  total = { true, "the server resumed a video of another length", true },
  length = { false, "the server sent the video without a length (no Content-Length or Content-Range) and " ..
    "without chunked or HTTP/2 framing, so that it ends wherever the connection closes: a cut one could not be " ..
    "told from a whole one", true },
  encoding = { false, "the server sent the video compressed (a Content-Encoding, or a Transfer-Encoding other " ..
    "than chunked) although identity was asked", false },
  format = { false, "the server sent %s where an MP4 video was expected", false },
}

-- The error for a download stopped by a signal its runtime trapped; an empty .part goes, any other stays.
local function interrupted(part, id, sig)
  if (part:size() or 0) == 0 then part:discard() end
  return nil, errors.new { kind = "interrupted", task_id = id, retryable = false,
    message = ("interrupted (%s): the .part is kept and the next download of this task resumes it"):format(tostring(sig)) }
end

-- Starts one attempt from `offset` (the record's validator and total sent along when resuming).
local function start(client, part, id, offset, rec, deadline)
  local headers = { "Accept-Encoding: identity" }
  if offset > 0 then
    headers[2] = ("Range: bytes=%d-"):format(offset)
    headers[3] = "If-Range: " .. rec.validator
  end
  if client.closed then
    return nil, errors.new { kind = "interrupted", task_id = id, retryable = false,
      message = "the client was closed (client:close()) before the download: the .part is kept" }
  end
  local timeout
  if deadline then
    timeout = deadline - now()
    if timeout <= 0 then
      return nil, errors.new { kind = "timeout", task_id = id, message = "the deadline passed before the download" }
    end
  end
  local t, why, class = client.engine:request {
    kind = "download", url = client.base_url .. "/videos/" .. id .. "/content", headers = headers,
    timeout = timeout, part = part, task_id = id, offset = offset, validator = rec and rec.validator,
    total = rec and rec.total, head = client.trace ~= nil,
  }
  if not t then return nil, errors.from_core(why, class) end
  return t, nil, headers
end

-- Waits for the attempt, calling on_progress(got, total) at most every `every` seconds when bytes came.
-- -> done, signal name
local function await(client, t, on_progress, every)
  if not on_progress then return runtime.await(client.engine, t) end
  local last_call = -1
  while true do
    local done, sig = runtime.await(client.engine, t, every)
    if done or sig then return done, sig end
    local got, total = t:progress()
    if got ~= last_call then
      last_call = got
      on_progress(got, total)
    end
  end
end

-- Renames the .part onto path once it is a whole MP4 (part:commit walks its boxes first): true, or nil, the
-- error, whether to try again. A file that is not is never renamed; its bytes stay in the .part. Cut short
-- (a clean prefix), its record loses its total, so that the next attempt asks for what follows (Range +
-- If-Range, when a validator ties the bytes to the server's); otherwise its record goes, so that the next
-- attempt starts from zero.
local function commit(client, part, id, path, status, rid)
  local ok, why, verdict = part:commit(path)
  if ok then return true end
  if not verdict then return io_error(id, why) end
  local rec = verdict == "short" and read_record(client, part, id)
  local resumable = rec and rec.validator
  local done, werr
  if resumable then done, werr = part:write_record(id, rec.validator) else done, werr = part:forget() end
  if not done then return io_error(id, werr) end
  return nil, errors.new { kind = "protocol", task_id = id, status = status, request_id = rid, retryable = true,
    message = ("the downloaded file is not a whole MP4 video (%s): it was not saved; its bytes stay in the " ..
      ".part and the next download %s"):format(why, resumable and "resumes from them" or "starts over") }, true
end

-- What an attempt's result means: the info of the saved video, or nil, the error, whether to try again.
local function judge(client, part, id, path, r, attempt, rec)
  local refused = REFUSED[r.refused or ""]
  local rid = http.request_id(r)
  if r.ok and (r.status == 200 or r.status == 206) and r.sink == "file" then
    if r.total and r.file_bytes ~= r.total then
      return nil, errors.new { kind = "network", task_id = id,
        message = ("the download ended at %d of %d bytes"):format(r.file_bytes, r.total) }, true
    end
    local committed, cerr, retry = commit(client, part, id, path, r.status, rid)
    if not committed then return nil, cerr, retry end
    return { path = path, bytes = r.file_bytes, task_id = id, status = r.status,
      content_type = r.headers["content-type"], etag = r.headers.etag, request_id = rid }
  elseif refused then
    if refused[1] then
      local ok, rerr = part:reset()
      if not ok then return io_error(id, rerr) end
    end
    return nil, errors.new { kind = "protocol", task_id = id, status = r.status,
      message = refused[2]:format(r.refused_what or "something else"), retryable = refused[3], request_id = rid },
      refused[3]
  elseif r.ok and r.status == 416 and rec and not rec.total then
    -- bytes without a known total (they came without a length, or proved a cut MP4) and nothing past them:
    -- the server's own copy ends there
    return nil, errors.new { kind = "protocol", task_id = id, status = 416, request_id = rid, retryable = false,
      message = ("the server has nothing past the %d bytes already in the .part, and they are not a whole MP4 " ..
        "video: its copy is cut short. The .part is kept; download again once the server has the whole video")
        :format(part:size() or 0) }
  elseif r.ok and r.status == 416 then
    -- the partial file is not a prefix the server can continue: start again from zero
    local ok, rerr = part:reset()
    if not ok then return io_error(id, rerr) end
    return nil, errors.new { kind = "protocol", task_id = id, status = 416,
      message = "the server cannot resume this download" }, attempt == 0
  elseif r.ok and r.sink == "none" and r.status >= 200 and r.status < 300 then
    return nil, errors.new { kind = "protocol", task_id = id, status = r.status, message = "the server sent an empty video" }
  end
  local e
  if r.ok then
    e = download_error(client, r, id)
  else
    e = http.transport_error(r, nil, client)
    e.task_id = id
  end
  return nil, e, http.should_retry(false, r)
end

-- The download proper, with the .part open and locked; the caller closes it.
local function fetch(client, part, id, path, opts)
  if opts.resume == false then
    local ok, rerr = part:reset()
    if not ok then return io_error(id, rerr) end
  end
  local on_progress, every = opts.on_progress, opts.progress_interval or 0.25
  local attempt = 0
  local kept -- bytes of an earlier call's .part that are still in it: resumed_from
  while true do
    local offset, rec = resume_point(client, part, id)
    if not offset then return io_error(id, rec) end
    if kept == nil and offset > 0 and opts.on_resume then opts.on_resume(offset, rec.total) end
    if kept == nil or offset == 0 then kept = offset end
    local info, e, retry, r
    if rec and offset == rec.total then -- already whole: an earlier call was stopped before its rename
      local done
      done, e, retry = commit(client, part, id, path)
      if done then
        if on_progress then on_progress(offset, offset) end
        return { path = path, bytes = offset, task_id = id, resumed_from = kept > 0 and kept or nil,
          etag = rec.validator and rec.validator:find('"', 1, true) and rec.validator or nil }
      end
      r = { headers = {} }
    else
      local t, serr, sent = start(client, part, id, offset, rec, opts.deadline)
      if not t then return nil, serr end
      local done, sig = await(client, t, on_progress, every)
      if not done then
        -- a runtime that traps SIGINT/SIGTERM ended the wait with the signal's name: stop, keeping the .part
        t:cancel()
        return interrupted(part, id, sig)
      end
      r = t:result()
      if r.sink == "file" and r.file_start == 0 then kept = 0 end
      info, e, retry = judge(client, part, id, path, r, attempt, rec)
      if client.trace then
        trace.request(client, { method = "GET", url = client.base_url .. "/videos/" .. id .. "/content",
          what = "download", kind = "download", headers = sent }, r, attempt, info and info.request_id or
          e and e.request_id or http.request_id(r), e)
      end
    end
    if info then
      info.resumed_from = kept > 0 and kept or nil
      if on_progress then on_progress(info.bytes, info.bytes) end
      return info
    end
    if not retry or attempt >= client.max_retries then
      if retry then e.retryable = true end
      if (part:size() or 0) == 0 then part:discard() end
      return nil, e
    end
    local delay = e.kind == "protocol" and 0 or http.backoff(attempt, r.headers)
    attempt = attempt + 1
    client:log("retry", "download", attempt, delay, tostring(e))
    trace.retry(client, "download", attempt, delay, e.message)
    local sig = runtime.sleep(delay)
    if sig then return interrupted(part, id, sig) end
  end
end

--- Downloads task `id` to path (arguments already checked by client:download, which documents it).
-- opts.part: the .part already opened and locked (generate reserves it before it pays); closed here all the same.
function M.download(client, id, path, opts)
  local part, perr = opts.part, nil
  if not part then part, perr = core.part_open(path .. ".part") end
  if not part then return io_error(id, perr) end
  if not YIELDING_PCALL then
    local info, derr = fetch(client, part, id, path, opts)
    part:close()
    return info, derr
  end
  -- an error raised inside (an on_progress callback, Ctrl-C) releases the lock at once, not at the next collection
  local done, info, derr = pcall(fetch, client, part, id, path, opts)
  part:close()
  if not done then error(info, 0) end
  return info, derr
end

return M
