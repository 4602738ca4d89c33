-- The gateways as deployed: the vendor page's own (tokenops) and QuantumNous/new-api, both played by the
-- sandbox. Every parameter of the vendor page is asserted where it lands: at the vendor side of the sandbox
-- (what the vendor received for the create), from the CLI and from Lua; a parameter that cannot travel in a
-- dialect is refused before anything is sent; and the answers of both are read as what they mean.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local images = require "spec.support.images"
local errors = require "jimeng.errors"
local jimeng = require "jimeng"

local URL1, URL2 = "https://example.com/first.jpg", "https://example.com/last.jpg"
local PORTRAIT, AUDIO, MASK = "https://example.com/portrait.jpg", "https://example.com/speech.mp3",
  "https://example.com/mask.png"

-- One row per parameter of the vendor page: the CLI's words, the Lua params, and what the vendor must get
-- ({dialect = false} where that dialect cannot carry it: refused, nothing sent). `png` stands for a local
-- image (its path in the CLI and Lua, its bare base64 at the vendor).
local CASES = {
  { name = "seconds, seed, aspect ratio and an image URL",
    cli = "create 'a cat' --seconds 10 --seed 42 --aspect-ratio 9:16 --image " .. URL1,
    lua = { prompt = "a cat", seconds = 10, seed = 42, aspect_ratio = "9:16", image = URL1 },
    vendor = { req_key = "jimeng_ti2v_v30_pro", prompt = "a cat", frames = 241, seed = 42, aspect_ratio = "9:16",
      image_urls = { URL1 } } },
  { name = "frames and a size",
    cli = "create 'a dog' --frames 241 --size 720x1280",
    lua = { prompt = "a dog", frames = 241, size = "720x1280" },
    vendor = { req_key = "jimeng_ti2v_v30_pro", prompt = "a dog", frames = 241, seed = -1, aspect_ratio = "9:16" } },
  { name = "the defaults: 5 s, a random seed, 16:9",
    cli = "create 'a bird'",
    lua = { prompt = "a bird" },
    vendor = { req_key = "jimeng_ti2v_v30_pro", prompt = "a bird", frames = 121, seed = -1, aspect_ratio = "16:9" } },
  { name = "a local image",
    cli = "create 'a fish' --seed 7 --image PNG",
    lua = { prompt = "a fish", seed = 7, image = "PNG" },
    vendor = { req_key = "jimeng_ti2v_v30_pro", prompt = "a fish", frames = 121, seed = 7, aspect_ratio = "16:9",
      binary_data_base64 = { "PNG" } } },
  { name = "first and last frame (720P)",
    cli = ("create 'a door opens' --model jimeng-video-3.0-720P --image %s --image %s --aspect-ratio 4:3"):format(URL1, URL2),
    lua = { prompt = "a door opens", model = "jimeng-video-3.0-720P", images = { URL1, URL2 }, aspect_ratio = "4:3" },
    vendor = { req_key = "jimeng_i2v_first_tail_v30", prompt = "a door opens", frames = 121, seed = -1,
      aspect_ratio = "4:3", image_urls = { URL1, URL2 } } },
  { name = "first and last frame as local files (1080P)",
    cli = "create 'a flower opens' --model jimeng-video-3.0-1080P --image PNG --image PNG --seconds 10",
    lua = { prompt = "a flower opens", model = "jimeng-video-3.0-1080P", images = { "PNG", "PNG" }, seconds = 10 },
    vendor = { req_key = "jimeng_i2v_first_tail_v30_1080", prompt = "a flower opens", frames = 241, seed = -1,
      aspect_ratio = "16:9", binary_data_base64 = { "PNG", "PNG" } } },
  { name = "a camera move (recamera)",
    cli = "create 'the camera circles' --camera-move --image " .. URL1 .. " --seed 3",
    lua = { prompt = "the camera circles", camera_move = true, image = URL1, seed = 3 },
    vendor = { req_key = "jimeng_i2v_recamera_v30", prompt = "the camera circles", frames = 121, seed = 3,
      aspect_ratio = "16:9", image_urls = { URL1 } } },
  { name = "a first frame from a URL and a last frame from a file",
    cli = ("create 'a wave' --model jimeng-video-3.0-720P --image %s --image PNG"):format(URL1),
    lua = { prompt = "a wave", model = "jimeng-video-3.0-720P", images = { URL1, "PNG" } },
    vendor = { req_key = "jimeng_i2v_first_tail_v30", prompt = "a wave", frames = 121, seed = -1,
      aspect_ratio = "16:9", image_urls = { URL1 }, binary_data_base64 = { "PNG" } },
    ["new-api"] = false, refused = "images" },
  { name = "OmniHuman: portrait, audio, prompt and seed",
    cli = ("omnihuman --image %s --audio %s --prompt 'speak warmly' --seed 5"):format(PORTRAIT, AUDIO),
    lua = { omni = true, image = PORTRAIT, audio = AUDIO, prompt = "speak warmly", seed = 5 },
    vendor = { req_key = "jimeng_realman_avatar_picture_omni_v15", prompt = "speak warmly", seed = 5,
      image_url = PORTRAIT, audio_url = AUDIO } },
  { name = "OmniHuman: no prompt",
    cli = ("omnihuman --image %s --audio %s"):format(PORTRAIT, AUDIO),
    lua = { omni = true, image = PORTRAIT, audio = AUDIO },
    vendor = { req_key = "jimeng_realman_avatar_picture_omni_v15", image_url = PORTRAIT, audio_url = AUDIO },
    ["new-api"] = false, refused = "prompt" },
  { name = "OmniHuman: a mask",
    cli = ("omnihuman --image %s --audio %s --mask %s --prompt hi"):format(PORTRAIT, AUDIO, MASK),
    lua = { omni = true, image = PORTRAIT, audio = AUDIO, mask = MASK, prompt = "hi" },
    vendor = { req_key = "jimeng_realman_avatar_picture_omni_v15", image_url = PORTRAIT, audio_url = AUDIO,
      mask_url = { MASK } },
    ["new-api"] = false, refused = "mask" },
  { name = "OmniHuman: resolution and fast mode",
    cli = ("omnihuman --image %s --audio %s --resolution 720 --fast --prompt hi"):format(PORTRAIT, AUDIO),
    lua = { omni = true, image = PORTRAIT, audio = AUDIO, resolution = 720, fast = true, prompt = "hi" },
    vendor = { req_key = "jimeng_realman_avatar_picture_omni_v15", image_url = PORTRAIT, audio_url = AUDIO,
      output_resolution = 720, pe_fast_mode = true },
    ["new-api"] = false, refused = "resolution" },
}

-- What the vendor must have got for `case`, with PNG replaced by the file's base64.
local function expected(case, png_b64)
  local out = {}
  for k, v in pairs(case.vendor) do
    if type(v) == "table" then
      local list = {}
      for i, x in ipairs(v) do list[i] = x == "PNG" and png_b64 or x end
      out[k] = list
    else
      out[k] = v
    end
  end
  return out
end

local function lua_params(case, png)
  local p = {}
  for k, v in pairs(case.lua) do
    if k ~= "omni" then
      if v == "PNG" then v = png end
      if type(v) == "table" then
        local list = {}
        for i, x in ipairs(v) do list[i] = x == "PNG" and png or x end
        v = list
      end
      p[k] = v
    end
  end
  return p
end

for _, dialect in ipairs { "tokenops", "new-api" } do
  describe(("the %s dialect"):format(dialect), function()
    local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1, dialect = dialect },
      client = { dialect = dialect }, dir = "setup", reset = true }
    local png, png_b64

    -- Runs `jimeng <args>` against the sandbox in this dialect; returns the exit code, stdout and stderr.
    local function jimeng_cli(args, extra_env)
      local errfile = env.dir .. "/stderr"
      local p = io.popen(("%scd %s && JIMENG_API_KEY=cli-key JIMENG_BASE_URL=%s JIMENG_DIALECT=%s %s %s %s/bin/jimeng %s 2>%s; echo \"exit=$?\""):format(
        proc.own_env, env.dir, env.sb.url, dialect, extra_env or "", proc.lua, proc.root, args, errfile))
      local out = p:read("*a")
      p:close()
      return tonumber(out:match("exit=(%d+)%s*$")), (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
    end

    -- The one task the sandbox holds, and what its vendor got.
    local function only_vendor()
      local list = {}
      for _, t in pairs(env.sb:tasks()) do list[#list + 1] = t end
      assert.equals(1, #list, "exactly one create reached the vendor")
      return list[1].vendor
    end

    local function assert_vendor(case, got)
      local want = expected(case, png_b64)
      for k, v in pairs(want) do assert.same(v, got[k], k) end
      if not want.image_urls then assert.is_nil(got.image_urls) end
      if not want.binary_data_base64 then assert.is_nil(got.binary_data_base64) end
    end

    setup(function()
      png = images.jpeg(env.dir .. "/frame.jpg", 640, 360)
      png_b64 = h.base64_file(png)
    end)

    for _, case in ipairs(CASES) do
      local travels = case[dialect] ~= false
      it(("%s: %s from Lua"):format(case.name, travels and "reaches the vendor" or "is refused, unsent,"), function()
        local p = lua_params(case, png)
        local task, err
        if case.lua.omni then task, err = env.client:omnihuman(p) else task, err = env.client:create(p) end
        if travels then
          assert(task, tostring(err))
          assert_vendor(case, env.sb:task(task.id).vendor)
          assert.equals(1, env.sb:stats().creates)
        else
          err = h.failed("invalid_argument", task, err)
          assert.equals(case.refused, err.field)
          assert.truthy(err.message:find("new-api dialect", 1, true), err.message)
          assert.equals(0, env.sb:stats().creates)
          assert.same({}, h.api_requests(env.sb, "^/v1/video"))
        end
      end)

      it(("%s: %s from the CLI"):format(case.name, travels and "reaches the vendor" or "is refused, unsent,"), function()
        local code, out, err = jimeng_cli(case.cli:gsub("PNG", png) .. " -q")
        if travels then
          assert.equals(0, code, err)
          local vendor = only_vendor()
          assert.truthy(out:find("%w"), "the task id is printed")
          assert_vendor(case, vendor)
        else
          assert.equals(2, code, err)
          assert.truthy(err:find("new-api dialect", 1, true), err)
          assert.equals(0, env.sb:stats().creates)
        end
      end)
    end

    it("a new task's id is accepted by status, wait and download; statuses and progress reach on_status", function()
      local task = assert(env.client:create { prompt = "a lighthouse" })
      if dialect == "new-api" then assert.truthy(task.id:match("^task_" .. ("%w"):rep(32) .. "$"), task.id) end
      local seen, warned = {}, {}
      local c = h.client(env.sb, { dialect = dialect, logger = function(kind, text)
        if kind == "warning" then warned[#warned + 1] = text end
      end })
      assert(c:wait(task.id, { interval = 0.02, on_status = function(t)
        seen[#seen + 1] = { raw = t.raw_status, status = t.status, progress = t.progress }
      end }))
      assert.equals("completed", seen[#seen].status)
      if dialect == "new-api" then
        -- a fresh client polls from the start: it sees new-api's first status, "unknown", and waits quietly
        local raws = {}
        for _, s in ipairs(seen) do raws[#raws + 1] = s.raw end
        assert.truthy(table.concat(raws, " "):find("in_progress", 1, true), table.concat(raws, " "))
        assert.equals(100, seen[#seen].progress)
        for i = 2, #seen do assert.is_true(seen[i].progress >= seen[i - 1].progress) end
        local inside = 0
        for _, s in ipairs(seen) do if s.progress and s.progress > 0 and s.progress < 100 then inside = inside + 1 end end
        assert.is_true(inside >= 1, "progress seen between 0 and 100")
      end
      assert.same({}, warned)
      local info = assert(c:download(task.id, env.dir .. "/" .. dialect .. "-lighthouse.mp4", { overwrite = true }))
      assert.equals(h.fixture(), h.read(info.path))
      c:close()
    end)

    it("the first status 'unknown' is waited on quietly (no warning)", function()
      if dialect ~= "new-api" then return end
      env.sb:config { queue_seconds = 0.4 }
      local task = assert(env.client:create { prompt = "a slow start" })
      local warned = {}
      local c = h.client(env.sb, { dialect = dialect, logger = function(kind, text)
        if kind == "warning" then warned[#warned + 1] = text end
      end })
      local first = assert(c:status(task.id))
      assert.equals("unknown", first.raw_status)
      assert.same({}, first.warnings)
      assert(c:wait(task.id, { interval = 0.05 }))
      assert.same({}, warned)
      c:close()
    end)

    it("subject detection and recognition: a route of the vendor page's gateway, refused unsent in new-api", function()
      local det, err = env.client:detect(PORTRAIT)
      local task, oerr = env.client:omnihuman { image = PORTRAIT, audio = AUDIO, prompt = "hi", subject = "largest" }
      local code, _, stderr = jimeng_cli("recognize " .. PORTRAIT)
      if dialect == "new-api" then
        h.failed("invalid_argument", det, err)
        h.failed("invalid_argument", task, oerr)
        assert.equals(2, code)
        assert.truthy(stderr:find("not a route of new-api", 1, true), stderr)
        assert.same({}, env.sb:log())
      else
        assert(det, tostring(err))
        assert(task, tostring(oerr))
        assert.equals(0, code, stderr)
      end
    end)

    it("the CLI's waiting line shows the progress the gateway gives", function()
      local task = assert(env.client:create { prompt = ("a kite sandbox:slow=%g"):format(proc.scaled(0.6)) })
      local code, _, err = jimeng_cli(("wait %s --interval 0.05"):format(task.id))
      assert.equals(0, code, err)
      if dialect == "new-api" then
        assert.truthy(err:find("processing %d+%%"), err)
        assert.truthy(err:find("completed 100%", 1, true), err)
      else
        assert.falsy(err:find("%d%%"), err)
      end
    end)

    it("an unknown task id is not_found, with its hint", function()
      local _, err = env.client:status(dialect == "new-api" and "task_0123456789abcdef0123456789abcdef" or "12345")
      assert.equals("not_found", err.kind)
      assert.equals(errors.hint("not_found"), errors.hint(err.kind))
      assert.is_false(err.retryable)
      assert.truthy(err.request_id, "the gateway's request id is kept")
      if dialect == "new-api" then
        assert.equals("task_not_exist", err.code)
        assert.truthy(err.request_id:match("^%d+%x+$"), err.request_id) -- X-Oneapi-Request-Id
      end
      local code, _, stderr = jimeng_cli("status task_0123456789abcdef0123456789abcdef")
      assert.equals(3, code)
      assert.truthy(stderr:find("not_found", 1, true), stderr)
      assert.truthy(stderr:find(errors.hint("not_found"), 1, true), stderr)
    end)

    it("content asked for before completion is not_ready, and the CLI says `jimeng wait ID`", function()
      local task = assert(env.client:create { prompt = "not yet sandbox:slow=5" })
      local _, err = env.client:download(task.id, env.dir .. "/early-" .. dialect .. ".mp4")
      assert.equals("not_ready", err.kind)
      assert.is_false(err.retryable)
      local code, _, stderr = jimeng_cli(("download %s -o early-cli-%s.mp4"):format(task.id, dialect))
      assert.equals(3, code)
      assert.truthy(stderr:find("jimeng wait " .. task.id, 1, true), stderr)
    end)

    it("an empty wallet is quota: hint top up, never retried, nothing created", function()
      env.sb:config { quota = 0 }
      local _, err = env.client:create { prompt = "no money" }
      assert.equals("quota", err.kind)
      assert.equals(403, err.status)
      assert.is_false(err.created)
      assert.is_false(err.retryable)
      assert.equals(1, #h.api_requests(env.sb, "^/v1/videos$"), "asked once, not again")
      assert.equals(0, env.sb:stats().creates)
      local code, _, stderr = jimeng_cli("create 'no money either'")
      assert.equals(3, code)
      assert.truthy(stderr:find("top it up", 1, true), stderr)
    end)

    it("a 429 without Retry-After backs off on its own, then reads the answer", function()
      local task = assert(env.client:create { prompt = "busy" })
      env.sb:faults { fault = "status", status = 429, path = "^/v1/videos/" .. task.id .. "$", method = "GET", count = 1 }
      assert(env.client:status(task.id))
      local polls = h.api_requests(env.sb, "^/v1/videos/" .. task.id .. "$")
      assert.equals(2, #polls)
      assert.is_true(polls[2].time - polls[1].time >= 0.3, "backed off before asking again")
    end)

    it("a request id in the body wins over the headers", function()
      env.sb:faults { fault = "json", status = 400, path = "^/v1/videos/", count = 1,
        body = { code = "task_not_exist", message = "task_not_exist", request_id = "body-rid-1" } }
      local _, err = env.client:status("task_0123456789abcdef0123456789abcdef")
      assert.equals("not_found", err.kind)
      assert.equals("body-rid-1", err.request_id)
    end)

    it("dialect auto asks the gateway once per base URL, for free, then sends its shape", function()
      local c = h.client(env.sb, { dialect = "auto" })
      local t1 = assert(c:create { prompt = "auto one", seed = 11 })
      local t2 = assert(c:create { prompt = "auto two", seed = 12 })
      assert.equals(11, env.sb:task(t1.id).vendor.seed)
      assert.equals(12, env.sb:task(t2.id).vendor.seed)
      local log = h.api_requests(env.sb, "^/v1/")
      -- in tokenops, this block's client (an explicit tokenops, asked the same way) already asked this base URL
      local probes = dialect == "new-api" and 1 or 0
      assert.equals(probes + 2, #log, "one free probe per base URL, two creates")
      if probes == 1 then assert.equals("/v1/videos/" .. require("jimeng.dialect").PROBE_ID, log[1].path) end
      assert.equals(2, env.sb:stats().creates)
      local first = log[probes + 1]
      if dialect == "new-api" then assert.is_table(first.body.metadata) else assert.is_nil(first.body.metadata) end
      c:close()
    end)

    it("by default (no dialect chosen) every parameter reaches the vendor: the issue's command line", function()
      local code, _, err = jimeng_cli(("generate 'a cat' --seconds 10 --seed 42 --aspect-ratio 9:16 --image %s " ..
        "-o default-%s.mp4 --interval 0.02"):format(URL1, dialect), "JIMENG_DIALECT=")
      assert.equals(0, code, err)
      assert.same(expected(CASES[1], png_b64), (function()
        local v = only_vendor()
        return { req_key = v.req_key, prompt = v.prompt, frames = v.frames, seed = v.seed,
          aspect_ratio = v.aspect_ratio, image_urls = v.image_urls }
      end)())
      assert.equals(h.fixture(), h.read(env.dir .. "/default-" .. dialect .. ".mp4"))
      local c = assert(jimeng.new { api_key = "k", base_url = env.sb.url, poll_interval = 0.05 })
      assert.equals("auto", c.dialect)
      local task = assert(c:create { prompt = "a cat", seconds = 10, seed = 42, aspect_ratio = "9:16", image = URL1 })
      local v = env.sb:task(task.id).vendor
      assert.same({ 241, 42, "9:16", { URL1 } }, { v.frames, v.seed, v.aspect_ratio, v.image_urls })
      c:close()
    end)

    it("jimeng doctor names the gateway family and the dialect to use", function()
      local code, out = jimeng_cli("doctor", "JIMENG_DIALECT=tokenops")
      assert.truthy(out:find("gateway +" .. dialect:gsub("%-", "%%-")), out)
      if dialect == "new-api" then
        assert.equals(3, code)
        assert.truthy(out:find("--dialect new-api", 1, true), out)
        code, out = jimeng_cli("doctor")
      end
      assert.equals(0, code, out)
    end)
  end)
end

describe("the new-api sandbox's content route", function()
  local env = h.with_sandbox { sandbox = { dialect = "new-api", queue_seconds = 0.02, process_seconds = 0.02 },
    client = { dialect = "new-api" }, dir = "setup" }

  local function curl(args)
    local p = io.popen(proc.clean_env .. "curl -s -D - -o /dev/null -H 'Authorization: Bearer k' " .. args)
    local head = p:read("*a")
    p:close()
    return head:lower()
  end

  it("answers HEAD with 404, streams chunked by default, and in 302 mode redirects to another host", function()
    local task = assert(env.client:create { prompt = "framing" })
    assert(env.client:wait(task.id, { interval = 0.02 }))
    local url = env.sb.url .. "/videos/" .. task.id .. "/content"
    assert.truthy(curl("-I " .. url):find("^http/1.1 404"))
    local head = curl(url)
    assert.truthy(head:find("^http/1.1 200"), head)
    assert.truthy(head:find("transfer%-encoding: chunked"), head)
    assert.falsy(head:find("content%-length"), head)
    assert.truthy(head:find("x%-new%-api%-version"), head)
    env.sb:config { content_redirect = true }
    head = curl(url)
    assert.truthy(head:find("^http/1.1 302"), head)
    local loc = head:match("location: (%S+)")
    assert.truthy(loc:find("^http://localhost:%d+/cdn/videos/" .. task.id .. "%?sig="), loc)
  end)

  it("serves new-api's other task routes: POST /v1/video/generations and GET /v1/video/generations/{id}", function()
    local before = env.sb:stats().creates
    local p = io.popen(proc.clean_env .. "curl -s -H 'Authorization: Bearer k' -H 'Content-Type: application/json' " ..
      "-d '{\"model\":\"jimeng-video-3.0-pro\",\"prompt\":\"a route\",\"metadata\":{\"seed\":9}}' " ..
      env.sb.url .. "/video/generations")
    local created = require("cjson").decode(p:read("*a"))
    p:close()
    assert.equals(before + 1, env.sb:stats().creates)
    assert.equals(9, env.sb:task(created.id).vendor.seed)
    local t = assert(env.client:status(created.id))
    assert.equals(created.id, t.id)
    local head = curl(env.sb.url .. "/video/generations/" .. created.id)
    assert.truthy(head:find("^http/1.1 200"), head)
  end)

  it("auto takes the vendor page's own host for tokenops without asking it", function()
    local dialect = require "jimeng.dialect"
    local c = assert(jimeng.new { api_key = "k", base_url = "https://api.tokenops.ai/v1", max_retries = 0,
      connect_timeout = 0.2, proxy = "http://127.0.0.1:9" }) -- were it asked, the refused proxy would say so
    assert.equals("tokenops", (dialect.resolve(c)))
    c:close()
  end)

  it("auto against a gateway that cannot be reached: the question is retried, the create never sent", function()
    local retries = {}
    local c = assert(jimeng.new { api_key = "k", base_url = "http://127.0.0.1:9/v1", max_retries = 1,
      logger = function(what, name) if what == "retry" then retries[#retries + 1] = name end end })
    local err = h.failed("network", c:create { prompt = "x" })
    assert.is_false(err.created)
    assert.same({ "identify" }, retries)
    assert.truthy(err.message:find("which it is", 1, true), err.message)
    c:close()
  end)

  it("refuses an unknown JIMENG_DIALECT by name", function()
    local _, err = jimeng.new { api_key = "k", base_url = env.sb.url, dialect = "one-api" }
    assert.equals("invalid_argument", err.kind)
    assert.equals("dialect", err.field)
  end)
end)

describe("the tokenops dialect set explicitly in front of a new-api gateway", function()
  local env = h.with_sandbox { sandbox = { dialect = "new-api", queue_seconds = 0.02, process_seconds = 0.02 },
    client = { dialect = "tokenops" }, dir = "setup", reset = true }

  local function creates()
    local n = 0
    for _, e in ipairs(env.sb:log()) do if e.method == "POST" then n = n + 1 end end
    return n
  end

  it("is refused before the paid create (the vendor would get seed 0, no aspect ratio, 121 frames, no image)", function()
    local task, err = env.client:create { prompt = "a cat", seconds = 10, seed = 42, aspect_ratio = "9:16", image = URL1 }
    err = h.failed("invalid_argument", task, err)
    assert.equals("dialect", err.field)
    assert.is_false(err.created)
    assert.truthy(err.message:find("new-api gateway (X-New-Api-Version", 1, true), err.message)
    assert.truthy(err.message:find("--dialect new-api", 1, true), err.message)
    assert.equals(0, creates())
    assert.same({}, env.sb:tasks())
  end)

  it("is refused from the CLI (JIMENG_DIALECT, --dialect) and in a batch, nothing created", function()
    local errfile = env.dir .. "/stderr"
    for _, how in ipairs { "JIMENG_DIALECT=tokenops", "JIMENG_DIALECT=auto --dialect tokenops" } do
      local envvar, flag = how:match("^(%S+)%s*(.*)$")
      local p = io.popen(("%scd %s && JIMENG_API_KEY=cli-key JIMENG_BASE_URL=%s %s %s %s/bin/jimeng generate 'a cat' " ..
        "--seconds 10 --seed 42 --aspect-ratio 9:16 --image %s -o t.mp4 %s 2>%s; echo \"exit=$?\""):format(proc.own_env,
        env.dir, env.sb.url, envvar, proc.lua, proc.root, URL1, flag, errfile))
      local out = p:read("*a")
      p:close()
      local stderr = h.read(errfile) or ""
      assert.equals("2", out:match("exit=(%d+)"), stderr)
      assert.truthy(stderr:find("new-api gateway", 1, true), stderr)
    end
    local summary, err = env.client:batch({ { prompt = "one" }, { prompt = "two", seed = 3 } },
      { journal = env.dir .. "/journal.jsonl", output_dir = env.dir })
    err = h.failed("invalid_argument", summary, err)
    assert.truthy(err.message:find("job 1: the gateway at", 1, true), err.message)
    assert.equals(0, creates())
    assert.same({}, env.sb:tasks())
  end)
end)

describe("a create answered with new-api headers while in the tokenops dialect", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.02, process_seconds = 0.02 },
    client = { dialect = "tokenops" }, dir = "setup", reset = true }

  it("warns on that task and refuses every later create of the client, unsent", function()
    env.sb:faults { path = "^/v1/videos$", fault = "headers", headers = { ["X-New-Api-Version"] = "v0.9.0" } }
    local task = assert(env.client:create { prompt = "a cat", seed = 42 })
    assert.truthy(task.warnings[#task.warnings]:find("use dialect new-api", 1, true), task.warnings[#task.warnings])
    local again, err = env.client:create { prompt = "a cat", seed = 42 }
    err = h.failed("invalid_argument", again, err)
    assert.equals("dialect", err.field)
    assert.truthy(err.message:find("X-New-Api-Version: v0.9.0", 1, true), err.message)
    local n = 0
    for _ in pairs(env.sb:tasks()) do n = n + 1 end
    assert.equals(1, n)
  end)
end)

describe("the new-api dialect set explicitly in front of the vendor page's gateway", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.02, process_seconds = 0.02 },
    client = { dialect = "new-api" }, dir = "setup", reset = true }

  it("its refusal says the dialect is likely wrong (with the evidence and --dialect auto), not the parameter", function()
    local task, err = env.client:create { prompt = "a cat" }
    err = h.failed("invalid_argument", task, err)
    assert.is_false(err.created)
    assert.truthy(err.message:find("the dialect new-api is likely wrong", 1, true), err.message)
    assert.truthy(err.message:find("X-New-Api-Version", 1, true), err.message)
    assert.truthy(err.hint:find("--dialect auto", 1, true), err.hint)
    local errfile = env.dir .. "/stderr"
    local p = io.popen(("%scd %s && JIMENG_API_KEY=cli-key JIMENG_BASE_URL=%s JIMENG_DIALECT=new-api %s %s/bin/jimeng " ..
      "create 'a cat' 2>%s; echo \"exit=$?\""):format(proc.own_env, env.dir, env.sb.url, proc.lua, proc.root, errfile))
    local out = p:read("*a")
    p:close()
    local stderr = h.read(errfile) or ""
    assert.equals("2", out:match("exit=(%d+)"), stderr)
    assert.truthy(stderr:find("likely wrong", 1, true), stderr)
    assert.truthy(stderr:find("--dialect auto", 1, true), stderr)
    assert.falsy(stderr:find("fix the parameter", 1, true), stderr)
    assert.equals(0, env.sb:stats().creates)
  end)
end)

describe("a batch in the new-api dialect", function()
  local env = h.with_sandbox { sandbox = { dialect = "new-api", queue_seconds = 0.02, process_seconds = 0.02 },
    client = { dialect = "new-api" }, dir = "setup", reset = true }

  it("refuses a job that cannot travel before the first create of the batch", function()
    local jpg = images.jpeg(env.dir .. "/last.jpg", 640, 360)
    local summary, err = env.client:batch({
      { prompt = "fine", label = "one" },
      { prompt = "mixed frames", model = "jimeng-video-3.0-720P", images = { URL1, jpg }, label = "two" },
    }, { journal = env.dir .. "/journal.jsonl", output_dir = env.dir })
    err = h.failed("invalid_argument", summary, err)
    assert.truthy(err.message:find("job 2 (two)", 1, true), err.message)
    assert.equals("images", err.field)
    assert.same({}, env.sb:log())
  end)
end)
