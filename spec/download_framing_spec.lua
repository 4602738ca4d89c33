-- Videos saved whole however they are framed: a chunked body (how new-api's proxy relays a video that came
-- without a length) and an HTTP/2 stream end with a marker of their own and are saved; an HTTP/1.x body that
-- ends where the connection closes is refused. Whatever the transport said, the file is walked as an MP4
-- (its top-level boxes) before it is renamed onto the output: a cut, damaged or spliced one, or another
-- format, is never saved, its bytes stay in the .part, and the next download completes it.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local vs = require "spec.support.video_server"
local core = require "jimeng.core"
local jimeng = require "jimeng"

describe("download framing and the MP4 check", function()
  local server, dir, files, client, once

  setup(function()
    dir, files = h.tmpdir(), h.tmpdir()
    server = vs.start(files)
    client = assert(jimeng.new { api_key = "k", base_url = server.url, max_retries = 2 })
    once = assert(jimeng.new { api_key = "k", base_url = server.url, max_retries = 0 })
  end)
  teardown(function()
    server:stop()
    h.cleanup()
  end)

  local function serve(id, data) h.write(files .. "/" .. id .. ".mp4", data) end
  -- The next answer for id behaves as `kind` (video_server.py's ID.as).
  local function next_as(id, kind) h.write(files .. "/" .. id .. ".as", kind) end
  local function break_next(id, bytes) h.write(files .. "/" .. id .. ".break", bytes and tostring(bytes) or "") end
  local function part_size(path) return core.file_size(path .. ".part") end

  -- n as 32 bits, big-endian
  local function be32(n)
    return string.char(math.floor(n / 2 ^ 24) % 256, math.floor(n / 2 ^ 16) % 256, math.floor(n / 2 ^ 8) % 256, n % 256)
  end

  it("saves a chunked video without a length whole, reporting progress without a total until the end", function()
    local a = h.mp4(300000)
    serve("chunked-a", a)
    local path = dir .. "/chunked.mp4"
    local calls = {}
    local info = assert(client:download("chunked-a", path, { progress_interval = 0,
      on_progress = function(got, total) calls[#calls + 1] = { got, total } end }))
    assert.equals(a, h.read(path))
    assert.equals(300000, info.bytes)
    assert.equals(200, info.status)
    assert.is_false(h.exists(path .. ".part"))
    assert.is_false(h.exists(path .. ".part.json"))
    assert.is_nil(calls[1][2]) -- no length was sent: no total while it comes
    assert.same({ 300000, 300000 }, calls[#calls])
    local got = server:requests("chunked-a")
    assert.equals(1, #got)
  end)

  it("saves a chunked video with `jimeng download`", function()
    local a = h.mp4(120000, true) -- its mdat with a 64-bit size
    serve("chunked-cli", a)
    local ok, out = proc.run(("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng download chunked-cli " ..
      "-o cli.mp4 -q"):format(dir, server.url, proc.lua, proc.root), proc.own_env)
    assert(ok, out)
    assert.equals(a, h.read(dir .. "/cli.mp4"))
  end)

  it("keeps the .part of a chunked body cut before its last chunk, and resumes it to the whole video", function()
    local a = h.mp4(200000)
    serve("chunked-b", a)
    local path = dir .. "/chunkcut.mp4"
    break_next("chunked-b", 80000)
    h.failed("network", once:download("chunked-b", path))
    assert.equals(80000, part_size(path))
    local info = assert(client:download("chunked-b", path))
    assert.equals(a, h.read(path))
    assert.equals(80000, info.resumed_from)
    assert.equals(206, info.status)
    local got = server:requests("chunked-b")
    assert.equals("bytes=80000-", got[2].range)
  end)

  it("refuses an HTTP/1.1 body without a length or chunked framing, keeping the .part for the next download", function()
    local a = h.mp4(150000)
    serve("fixed-c", a)
    local path = dir .. "/close.mp4"
    break_next("fixed-c", 60000)
    h.failed("network", once:download("fixed-c", path))
    assert.equals(60000, part_size(path))
    next_as("fixed-c", "close11") -- the whole file, then a close: it cannot be told from a cut one
    local err = h.failed("protocol", once:download("fixed-c", path))
    assert.truthy(err.message:find("without a length", 1, true))
    assert.truthy(err.message:find("chunked or HTTP/2", 1, true))
    assert.is_false(h.exists(path))
    assert.equals(60000, part_size(path))
    local info = assert(client:download("fixed-c", path))
    assert.equals(a, h.read(path))
    assert.equals(60000, info.resumed_from)
  end)

  -- Serves `bad` as id (a fixed ETag, so that a resume may continue it), downloads it once (refused, nothing at
  -- the path, the .part holding its bytes), then serves `good` and downloads again: returns the refusal, the
  -- second download's info and the requests for id.
  local function refused_then_mended(id, bad, good, name)
    serve(id, bad)
    local path = dir .. "/" .. name .. ".mp4"
    local err = h.failed("protocol", once:download(id, path))
    assert.is_false(h.exists(path))
    assert.equals(bad, h.read(path .. ".part"))
    serve(id, good)
    local info = assert(client:download(id, path))
    assert.equals(good, h.read(path))
    assert.is_false(h.exists(path .. ".part"))
    return err, info, server:requests(id)
  end

  it("refuses a chunked MP4 that ended cleanly but cut inside its media (new-api's proxy cut at 60 s)", function()
    local a, at = h.mp4(250000)
    local err, info, got = refused_then_mended("fixedchunked-d", a:sub(1, 100000), a, "cutmdat")
    assert.truthy(err.message:find("not a whole MP4", 1, true))
    assert.truthy(err.message:find("box 'mdat' at byte " .. at.mdat, 1, true))
    assert.truthy(err.message:find("resumes", 1, true))
    assert.is_true(err.retryable)
    assert.equals(100000, info.resumed_from)
    assert.equals(206, info.status)
    assert.equals("bytes=100000-", got[2].range)
    assert.equals('"fixed"', got[2].if_range)
  end)

  it("refuses an MP4 cut inside its media although its Content-Length matched, and resumes it", function()
    local a = h.mp4(180000, true)
    local err, info, got = refused_then_mended("fixed-e", a:sub(1, 90000), a, "cutlength")
    assert.truthy(err.message:find("cut short", 1, true))
    assert.equals(90000, info.resumed_from)
    assert.equals("bytes=90000-", got[2].range)
  end)

  it("says the server's own copy is cut when it has nothing past a cut .part, and keeps the .part", function()
    local a = h.mp4(120000)
    serve("fixed-k", a:sub(1, 64000))
    local path = dir .. "/servercut.mp4"
    h.failed("protocol", once:download("fixed-k", path))
    local err = h.failed("protocol", client:download("fixed-k", path)) -- resumed: 416, nothing past 64000
    assert.truthy(err.message:find("nothing past the 64000 bytes", 1, true))
    assert.truthy(err.message:find("its copy is cut short", 1, true))
    assert.equals(64000, part_size(path))
    assert.is_false(h.exists(path))
    local got = server:requests("fixed-k")
    assert.equals(416, got[#got].status)
    serve("fixed-k", a) -- mended under the same version: the next download resumes
    local info = assert(client:download("fixed-k", path))
    assert.equals(a, h.read(path))
    assert.equals(64000, info.resumed_from)
  end)

  it("refuses an MP4 cut at a box boundary (its moov, at the end, missing), and resumes it", function()
    local a = h.mp4(160000)
    -- the same boxes with moov last: ftyp, mdat, moov
    local ftyp, moov_at, mdat_at = a:sub(1, 24), 24, 24 + 108
    local moov, mdat = a:sub(moov_at + 1, mdat_at), a:sub(mdat_at + 1)
    local whole = ftyp .. mdat .. moov
    local err, info = refused_then_mended("fixed-f", ftyp .. mdat, whole, "boundary")
    assert.truthy(err.message:find("without 'moov'", 1, true))
    assert.equals(#ftyp + #mdat, info.resumed_from)
  end)

  it("refuses a spliced MP4 (the head of one, the tail of a longer one) and starts over for the whole one", function()
    local a = h.mp4(100000)
    local b = h.mp4(130000)
    b = b:sub(1, 100000) .. ("\0"):rep(8) .. b:sub(100009) -- where a's boxes end, no box
    local spliced = a:sub(1, 50000) .. b:sub(50001)
    local err, info, got = refused_then_mended("fixed-g", spliced, a, "spliced")
    assert.truthy(err.message:find("no box at byte 100000", 1, true))
    assert.truthy(err.message:find("starts over", 1, true))
    assert.is_nil(info.resumed_from)
    assert.equals(200, info.status)
    assert.is_nil(got[2].range)
  end)

  it("refuses an MP4 whose box claims less than its own header", function()
    local a = h.mp4(90000)
    local bad = a:sub(1, 24) .. be32(4) .. a:sub(29)
    local err = refused_then_mended("fixed-h", bad, a, "tiny")
    assert.truthy(err.message:find("box 'moov' at byte 24 claims 4 bytes", 1, true))
  end)

  it("finalizes a whole .part only once its boxes are checked: a cut one left by an earlier call is resumed", function()
    local a = h.mp4(120000)
    serve("fixed-i", a)
    local path = dir .. "/stale.mp4"
    -- an earlier call's record says the .part is whole, but its bytes are a cut video
    h.write(path .. ".part", a:sub(1, 70000))
    h.write(path .. ".part.json", '{"task_id":"fixed-i","validator":"\\"fixed\\"","total":70000}')
    local info = assert(client:download("fixed-i", path))
    assert.equals(a, h.read(path))
    assert.equals(70000, info.resumed_from)
    local got = server:requests("fixed-i")
    assert.equals(1, #got)
    assert.equals("bytes=70000-", got[1].range)
  end)

  it("refuses a WebM video, saying so, and saves nothing", function()
    local webm = "\26\69\223\163\159\66\134\129\1\66\247\129\1\66\242\129\4\66\243\129\8\66\130\132webm" ..
      ("\0"):rep(2000)
    serve("plain-webm", webm)
    local path = dir .. "/webm.mp4"
    local err = h.download_failed("protocol", { path, path .. ".part" }, client:download("plain-webm", path))
    assert.truthy(err.message:find("the server sent a WebM video where an MP4 video was expected", 1, true))
    assert.is_false(err.retryable)
    assert.equals(1, #server:requests("plain-webm"))
  end)

  it("refuses a text page sent as video/mp4, showing what it said, and saves nothing", function()
    serve("plain-text", "Service temporarily unavailable, try again later\n")
    local path = dir .. "/text.mp4"
    local err = h.download_failed("protocol", { path, path .. ".part" }, client:download("plain-text", path))
    assert.truthy(err.message:find("the server sent text (labelled video/mp4): Service temporarily unavailable", 1, true))
    serve("chunked-html", "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>")
    err = h.download_failed("protocol", { path, path .. ".part" }, client:download("chunked-html", path))
    assert.truthy(err.message:find("text (labelled video/mp4): 502 Bad Gateway", 1, true))
  end)

  it("restarts from zero when the gateway ignores Range (a 200), and saves the video whole", function()
    local a = h.mp4(140000)
    serve("norange-j", a)
    local path = dir .. "/norange.mp4"
    break_next("norange-j", 70000)
    h.failed("network", once:download("norange-j", path))
    assert.equals(70000, part_size(path))
    local info = assert(client:download("norange-j", path))
    assert.equals(a, h.read(path))
    assert.is_nil(info.resumed_from)
    assert.equals(200, info.status)
    local got = server:requests("norange-j")
    assert.equals("bytes=70000-", got[2].range)
    assert.equals(200, got[2].status)
  end)
end)

describe("the sandbox's videos, as a client checks them", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0, process_seconds = 0, video_bytes = 5000 }, dir = "setup" }

  it("are whole MP4s: the fixture, every synthetic size (the smallest, 64-bit mdat, sendfile), and --video-bytes", function()
    assert.is_true(core.mp4_check(proc.root .. "/sandbox/fixtures/jimeng-sample.mp4"))
    local sizes = { 10, 56, 57, 70000, 17 * 1024 * 1024 + 3 }
    for _, size in ipairs(sizes) do
      local task = assert(env.client:create { prompt = "checked sandbox:bytes=" .. size .. " sandbox:seed=3" })
      assert(env.client:wait(task.id, { interval = 0.01 }))
      local path = env.dir .. "/synthetic-" .. size .. ".mp4"
      local info = assert(env.client:download(task.id, path))
      assert.equals(math.max(size, 56), info.bytes)
      assert.is_true(core.mp4_check(path))
      os.remove(path)
    end
    local task = assert(env.client:create { prompt = "the server's --video-bytes" })
    assert(env.client:wait(task.id, { interval = 0.01 }))
    local path = env.dir .. "/configured.mp4"
    assert.equals(5000, assert(env.client:download(task.id, path)).bytes)
    assert.is_true(core.mp4_check(path))
    -- a cut copy of one is not
    h.write(path, h.read(path):sub(1, 4000))
    local ok, why, verdict = core.mp4_check(path)
    assert.is_nil(ok)
    assert.equals("short", verdict)
    assert.truthy(why:find("box 'mdat' at byte 40", 1, true))
  end)
end)

describe("a content answer redirected to another loopback origin", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0, process_seconds = 0 }, dir = "setup" }

  -- Redirects the next content answer to `root` .. "/cdn/video.mp4" of `cdn`; downloads; returns the storage
  -- host's requests.
  local function through(cdn, root, name)
    local task = assert(env.client:create { prompt = "redirected " .. name })
    assert(env.client:wait(task.id, { interval = 0.01 }))
    env.sb:faults { path = "^/v1/videos/[^/]+/content$", fault = "redirect", location = root .. "/cdn/video.mp4" }
    local path = env.dir .. "/" .. name .. ".mp4"
    assert(env.client:download(task.id, path))
    assert.equals(h.fixture(), h.read(path))
    return h.api_requests(cdn, "^/cdn/")
  end

  it("sends no Authorization to the same address on another port, nor to another name for it", function()
    local cdn = h.sandbox { host = "127.0.0.1" }
    local ok, err = pcall(function()
      local port = cdn.root:match(":(%d+)$")
      local got = through(cdn, cdn.root, "otherport")
      assert.equals(1, #got)
      assert.is_nil(got[1].headers.authorization)
      got = through(cdn, "http://localhost:" .. port, "othername")
      assert.equals(2, #got)
      assert.is_nil(got[2].headers.authorization)
      -- the key did go to the API: the same client, the same download, only the storage host lacks it
      local api = h.api_requests(env.sb, "/content$")
      assert.equals("Bearer test-key", api[#api].headers.authorization)
    end)
    cdn:stop()
    assert(ok, err)
  end)
end)

-- HTTP/2 without a length: Debian's nginx as a TLS + HTTP/2 front (spec/support/tls.lua) relays the chunked
-- answers of video_server.py as HTTP/2 DATA frames with no content-length; its stream ends with END_STREAM.
describe("download over HTTP/2 without a length, through nginx #host", function()
  local tls = require "spec.support.tls"
  if not tls.available then
    it("needs nginx with http_v2 and openssl (apt-get install nginx-light openssl)", function()
      pending("nginx or openssl is not installed")
    end)
    return
  end

  local server, files, dir, front, base

  setup(function()
    dir, files = h.tmpdir(), h.tmpdir()
    server = vs.start(files)
    tls.make_ca(dir, { good = { san = "DNS:localhost,IP:127.0.0.1" } })
    front = tls.nginx_front(dir, server.url, { { name = "good", cert = "good" } })
    base = ("https://127.0.0.1:%d/v1"):format(front.ports.good)
  end)
  teardown(function()
    if front then front.stop() end
    if server then server:stop() end
    h.cleanup()
  end)

  local function client(retries)
    return assert(jimeng.new { api_key = "k", base_url = base, cainfo = dir .. "/ca.pem", max_retries = retries })
  end

  it("saves the video whole; a stream cut midway is resumed", function()
    local a = h.mp4(400000)
    h.write(files .. "/chunked-h2.mp4", a)
    -- what the client gets: HTTP/2, and no length
    local ok, head = proc.run(("curl -sS --http2 --cacert %s/ca.pem -D - -o /dev/null %s/videos/chunked-h2/content")
      :format(dir, base))
    assert(ok, head)
    assert.truthy(head:match("^HTTP/2 200"), head)
    assert.is_nil(head:lower():find("content-length", 1, true), head)
    local path = dir .. "/h2.mp4"
    local info = assert(client(0):download("chunked-h2", path))
    assert.equals(a, h.read(path))
    assert.equals(400000, info.bytes)
    local access = tls.access(front)
    assert.equals("HTTP/2.0", access[#access].protocol)

    -- the upstream closes before its last chunk: nginx resets the stream, the .part stays and is resumed
    h.write(files .. "/chunked-h2.break", "150000")
    local cut = dir .. "/h2cut.mp4"
    h.failed("network", client(0):download("chunked-h2", cut))
    local kept = core.file_size(cut .. ".part")
    assert.truthy(kept > 0 and kept < 400000, tostring(kept))
    info = assert(client(2):download("chunked-h2", cut))
    assert.equals(a, h.read(cut))
    assert.equals(kept, info.resumed_from)
    assert.equals(206, info.status)
  end)
end)
