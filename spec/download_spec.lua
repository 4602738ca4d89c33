-- Downloads: streamed to <path>.part, renamed only when complete; a failed one leaves no file at path.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"

describe("download", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0, process_seconds = 0 }, dir = "setup" }

  local function finished_task(prompt)
    local task = assert(env.client:create { prompt = prompt or "a finished video" })
    assert(env.client:wait(task.id, { interval = 0.01 }))
    return task
  end

  it("of a task that is not finished fails with the server's message and leaves no file", function()
    env.sb:config { queue_seconds = 30 }
    local task = assert(env.client:create { prompt = "still queued" })
    env.sb:config { queue_seconds = 0 }
    local path = env.dir .. "/early.mp4"
    local err = h.download_failed("not_ready", { path, path .. ".part" }, env.client:download(task.id, path))
    assert.equals(400, err.status)
    assert.truthy(err.message:find("not ready"))
    assert.equals(task.id, err.task_id)
  end)

  it("of an unknown task is not_found and leaves no file", function()
    local path = env.dir .. "/missing.mp4"
    h.download_failed("not_found", { path }, env.client:download("98765432109876543210", path))
  end)

  it("into a directory that does not exist is an io error and leaves nothing", function()
    local task = finished_task()
    local path = env.dir .. "/no/such/dir/v.mp4"
    h.download_failed("io", { path }, env.client:download(task.id, path))
  end)

  it("overwrites an older file at the path only once the new one is complete", function()
    local task = finished_task()
    local path = env.dir .. "/replace.mp4"
    h.write(path, "old contents")
    local err = h.failed("invalid_argument", env.client:download(task.id, path)) -- not without overwrite
    assert.truthy(err.message:find("overwrite", 1, true))
    assert.equals("old contents", h.read(path))
    assert(env.client:download(task.id, path, { overwrite = true }))
    assert.equals(h.fixture(), h.read(path))
  end)

  it("throws away a resumed 206 that starts anywhere but where the .part ends, and saves the video whole", function()
    local size = 200000
    local task = assert(env.client:create { prompt = "resumed badly sandbox:bytes=" .. size })
    assert(env.client:wait(task.id, { interval = 0.01 }))
    local path = env.dir .. "/badrange.mp4"
    env.sb:faults { path = "^/v1/videos/[0-9]+/content$", fault = "reset_mid_body", after_bytes = 50000 }
    assert.is_nil(h.client(env.sb, { max_retries = 0 }):download(task.id, path))
    assert.equals(50000, #h.read(path .. ".part"))
    env.sb:faults { path = "^/v1/videos/[0-9]+/content$", fault = "bad_range" }
    local info = assert(env.client:download(task.id, path))
    assert.equals(200, info.status)
    assert.is_nil(info.resumed_from)
    local data = h.read(path)
    assert.equals(size, #data)
    for i = 56, size - 1, 997 do assert.equals(h.synthetic_byte(i), data:byte(i + 1), "byte " .. i) end
    local log = h.api_requests(env.sb, "^/v1/videos/" .. task.id .. "/content$")
    assert.equals("bytes=50000-", log[#log - 1].headers.range)
    assert.is_nil(log[#log].headers.range)
  end)

  it("reports progress, ending with the whole size", function()
    local task = finished_task()
    local calls = {}
    assert(env.client:download(task.id, env.dir .. "/progress.mp4", {
      on_progress = function(got, total) calls[#calls + 1] = { got, total } end,
    }))
    local last = calls[#calls]
    assert.equals(#h.fixture(), last[1])
    assert.equals(#h.fixture(), last[2])
  end)
end)

-- Against a small server of the spec's own (spec/support/video_server.py): each task id's prefix picks how it
-- answers (with or without validators, another ETag on a 206, HTTP/1.0 halves, gzip, JSON as octet-stream).
describe("download bound to its task and its bytes", function()
  local vs = require "spec.support.video_server"
  local core = require "jimeng.core"
  local jimeng = require "jimeng"
  local server, dir, files, client, once

  -- An MP4 of size random bytes (valid by its boxes): two calls never give the same video.
  local function video(size) return (h.mp4(size)) end

  setup(function()
    dir = h.tmpdir()
    files = h.tmpdir()
    server = vs.start(files)
    client = assert(jimeng.new { api_key = "k", base_url = server.url, max_retries = 2 })
    once = assert(jimeng.new { api_key = "k", base_url = server.url, max_retries = 0 })
  end)
  teardown(function()
    server:stop()
    h.cleanup()
  end)

  local function serve(id, data) h.write(files .. "/" .. id .. ".mp4", data) end
  -- The next answer for id sends its headers and half its body, then closes.
  local function break_next(id) h.write(files .. "/" .. id .. ".break", "") end

  -- A new video of size bytes served as id, broken off halfway (a download with no retries fails), then
  -- downloaded again to the same path: that must give it whole. Returns the second download's info and the
  -- server's requests for id.
  local function broken_then_again(id, size, name)
    local a = video(size)
    serve(id, a)
    local path = dir .. "/" .. name .. ".mp4"
    break_next(id)
    assert.is_nil(once:download(id, path))
    local info = assert(client:download(id, path))
    assert.equals(a, h.read(path))
    return info, server:requests(id)
  end

  -- Downloads id to dir/name.mp4, which must fail as a protocol error and leave no file; returns the error.
  local function refused(id, name)
    local path = dir .. "/" .. name .. ".mp4"
    return h.download_failed("protocol", { path, path .. ".part" }, client:download(id, path))
  end

  it("gives the second video whole when two tasks share a path on a server without ETags", function()
    local a, b = video(150000), video(150000)
    serve("noetag-a", a)
    serve("noetag-b", b)
    local path = dir .. "/shared.mp4"
    break_next("noetag-a")
    h.failed("network", once:download("noetag-a", path))
    assert.equals(75000, #h.read(path .. ".part"))
    local info = assert(client:download("noetag-b", path))
    assert.equals(b, h.read(path))
    assert.is_nil(info.resumed_from)
    local got = server:requests("noetag-b")
    assert.equals(1, #got)
    assert.is_nil(got[1].range)
    assert.is_false(h.exists(path .. ".part"))
    assert.is_false(h.exists(path .. ".part.json"))
  end)

  it("starts over rather than resume blind when the server gives no validator", function()
    local info, got = broken_then_again("noetag-c", 120000, "blind")
    assert.is_nil(info.resumed_from)
    assert.equals(2, #got)
    assert.is_nil(got[2].range)
  end)

  it("resumes with If-Range: Last-Modified when that is the server's only validator", function()
    local info, got = broken_then_again("lastmod-d", 120000, "lastmod")
    assert.equals(60000, info.resumed_from)
    assert.equals(206, info.status)
    assert.equals("bytes=60000-", got[2].range)
    assert.truthy(got[2].if_range:match("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$"))
    assert.equals(206, got[2].status)
  end)

  it("resumes with If-Range: Last-Modified when the ETag is weak (If-Range never matches a weak one)", function()
    local info, got = broken_then_again("weak-p", 120000, "weak")
    assert.equals(206, info.status)
    assert.equals(60000, info.resumed_from)
    assert.equals(2, #got)
    assert.truthy(got[2].if_range:match("GMT$"))
  end)

  it("throws away a 206 whose ETag is not the one If-Range sent, and saves the current video whole", function()
    local other = video(100000)
    h.write(files .. "/otheretag-e.other", other)
    local info, got = broken_then_again("otheretag-e", 100000, "otheretag")
    assert.equals(200, info.status)
    assert.is_nil(info.resumed_from)
    assert.equals(3, #got)
    assert.equals("bytes=50000-", got[2].range)
    assert.truthy(got[2].if_range:match('^"%x+"$'))
    assert.equals(206, got[2].status)
    assert.is_nil(got[3].range)
  end)

  it("throws away a 206 whose total is not the length the download began with, and saves the video whole", function()
    local info, got = broken_then_again("othertotal-q", 100000, "othertotal")
    assert.equals(200, info.status)
    assert.equals(3, #got)
    assert.equals(206, got[2].status)
    assert.is_nil(got[3].range)
  end)

  it("never saves an HTTP/1.0 answer without a length that closes halfway", function()
    serve("http10-f", video(100000))
    local err = refused("http10-f", "http10")
    assert.truthy(err.message:find("without a length"))
  end)

  it("refuses a gzip-encoded video instead of saving it compressed, and asks for identity", function()
    serve("gzip-g", video(100000))
    local err = refused("gzip-g", "gzip")
    assert.is_false(err.retryable)
    assert.truthy(err.message:find("Content%-Encoding"))
    local got = server:requests("gzip-g")
    assert.equals(1, #got)
    assert.equals("identity", got[1].accept_encoding)
  end)

  it("reports JSON sent as application/octet-stream as the server's error, not as a video", function()
    local err = refused("octetjson-h", "octet")
    assert.truthy(err.message:find("video expired"))
  end)

  it("refuses a .part that is a symbolic link, leaving the file it points to untouched", function()
    serve("plain-i", video(50000))
    local path, victim = dir .. "/linked.mp4", dir .. "/precious.txt"
    h.write(victim, "do not touch")
    assert(proc.run(("ln -s '%s' '%s.part'"):format(victim, path)))
    local err = h.download_failed("io", { path }, client:download("plain-i", path))
    assert.truthy(err.message:find("symbolic link"))
    assert.equals("do not touch", h.read(victim))
    assert.equals(0, #server:requests("plain-i"))
  end)

  it("replaces a record (or its temp file) that is a symbolic link instead of writing through it", function()
    local a = video(50000)
    serve("plain-j", a)
    local path = dir .. "/linkedrecord.mp4"
    local v1, v2 = dir .. "/precious1.txt", dir .. "/precious2.txt"
    h.write(v1, "one")
    h.write(v2, "two")
    assert(proc.run(("ln -s '%s' '%s.part.json' && ln -s '%s' '%s.part.json.tmp'"):format(v1, path, v2, path)))
    assert(client:download("plain-j", path))
    assert.equals(a, h.read(path))
    assert.equals("one", h.read(v1))
    assert.equals("two", h.read(v2))
    assert.is_nil(core.file_size(path .. ".part.json"))
  end)

  it("refuses a second download to a path while the first is writing it; the file is the first's, whole", function()
    local a, b = video(300000), video(300000)
    serve("plain-k", a)
    serve("plain-l", b)
    h.write(files .. "/plain-k.slow", "600000")
    local path = dir .. "/twice.mp4"
    local results, errs
    jimeng.run(function()
      results, errs = jimeng.gather {
        function() return client:download("plain-k", path) end,
        function() return client:download("plain-l", path) end,
      }
    end)
    os.remove(files .. "/plain-k.slow")
    assert.equals(300000, results[1].bytes)
    assert.is_nil(results[2])
    assert.equals("io", errs[2].kind)
    assert.truthy(errs[2].message:find("another download is writing " .. path .. ".part", 1, true))
    assert.equals(a, h.read(path))
    assert.equals(0, #server:requests("plain-l"))
  end)

  it("renames only the .part it wrote: one moved away and replaced meanwhile stays where it is", function()
    serve("plain-n", video(200000))
    h.write(files .. "/plain-n.slow", "400000")
    local path = dir .. "/moved.mp4"
    local info, err
    jimeng.run(function()
      jimeng.gather {
        function() info, err = client:download("plain-n", path) end,
        function()
          while (core.file_size(path .. ".part") or 0) < 20000 do jimeng.sleep(0.01) end
          assert(os.rename(path .. ".part", dir .. "/moved-away.part"))
          h.write(path .. ".part", "another program's file")
        end,
      }
    end)
    os.remove(files .. "/plain-n.slow")
    assert.is_nil(info)
    assert.equals("io", err.kind)
    assert.truthy(err.message:find("moved or replaced", 1, true))
    assert.is_false(h.exists(path))
    assert.equals("another program's file", h.read(path .. ".part"))
  end)

  it("an on_progress callback that raises is a callback error with the task id; the path is released", function()
    local a = video(100000)
    serve("plain-o", a)
    -- paced (at least 1 s for the body): the callback raises while the download runs. Unpaced, a body that
    -- arrived whole between two steps (the process descheduled under load) was saved before the first report,
    -- which then raised after the rename, and raised.mp4 existed for the second download.
    h.write(files .. "/plain-o.slow", "100000")
    local path = dir .. "/raised.mp4"
    local info, err = client:download("plain-o", path, { progress_interval = 0,
      on_progress = function() error("stop here") end })
    assert.is_nil(info)
    assert.equals("callback", err.kind)
    assert.equals("plain-o", err.task_id)
    assert.truthy(err.message:find("stop here", 1, true))
    assert.equals(a, h.read(path)) -- saved all the same
    os.remove(files .. "/plain-o.slow")
    assert(client:download("plain-o", path, { overwrite = true }))
    assert.equals(a, h.read(path))
  end)

  it("finalizes a .part that is already whole without downloading it again", function()
    local a = video(80000)
    serve("plain-m", a)
    local path = dir .. "/whole.mp4"
    assert(proc.run(("mkdir '%s'"):format(path))) -- a directory where the video goes: refused, nothing sent
    h.failed("io", client:download("plain-m", path))
    assert(proc.run(("rmdir '%s'"):format(path)))
    assert.equals(0, #server:requests("plain-m"))
    -- an earlier call stopped between its last byte and its rename: a whole .part, bound to the task by its
    -- record (the server's ETag: a hash of the bytes, see video_server.py)
    h.write(path .. ".part", a)
    local ok, sum = proc.run(("sha1sum '%s.part'"):format(path))
    assert(ok, sum)
    h.write(path .. ".part.json", ('{"task_id":"plain-m","validator":"\\"%s\\"","total":80000}'):format(sum:sub(1, 16)))
    local info = assert(client:download("plain-m", path))
    assert.equals(a, h.read(path))
    assert.equals(80000, info.resumed_from)
    assert.equals(0, #server:requests("plain-m"))
  end)
end)
