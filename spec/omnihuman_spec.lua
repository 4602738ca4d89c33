-- OmniHuman: detection, recognition and the choice of speaker, all before the paid create.
local h = require "spec.support.helpers"

local AUDIO = "https://example.com/speech.mp3"
local function portrait(n) return ("https://example.com/portrait.jpg?subjects=%d"):format(n) end

describe("client:omnihuman", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, dir = "setup", reset = true }
  local PROBE = "/v1/videos/" .. require("jimeng.dialect").PROBE_ID

  -- the calls made, one by one; the free call by which the client asks the gateway which it is is left out
  local function paths()
    local out = {}
    for _, e in ipairs(env.sb:log()) do
      if e.path ~= PROBE then out[#out + 1] = e.method .. " " .. e.path:gsub("/[0-9]+", "/ID") end
    end
    return out
  end

  local function created_body()
    for _, e in ipairs(env.sb:log()) do
      if e.path == "/v1/videos" then return e.body end
    end
  end

  it("detects, chooses the largest subject, recognizes, generates and downloads: the happy path", function()
    local statuses = {}
    local result = assert(env.client:omnihuman({ image = portrait(2), audio = AUDIO, prompt = "自然说话,面带微笑",
      recognize = true, subject = "largest", output = env.dir .. "/talk.mp4" },
      { interval = 0.02, on_status = function(t) statuses[#statuses + 1] = t.status end }))
    assert.equals(env.dir .. "/talk.mp4", result.path)
    assert.equals(h.fixture(), h.read(result.path))
    local log = paths()
    assert.equals("POST /v1/omnihuman/subject/recognition", log[1])
    assert.equals("POST /v1/omnihuman/subject/detection", log[2])
    assert.equals("POST /v1/videos", log[3])
    assert.equals("GET /v1/videos/ID/content", log[#log])
    local body = created_body()
    assert.equals("omni_human", body.generation_type)
    assert.equals("OmniHuman_1.5", body.model)
    assert.equals("jimeng_realman_avatar_picture_omni_v15", body.req_key)
    assert.same({ result.mask_url }, body.mask_urls)
    assert.truthy(result.mask_url:find("/0%.png"))
    assert.equals(1080, body.output_resolution)
    assert.equals("in_queue", statuses[1])
    assert.equals("completed", statuses[#statuses])
  end)

  it("with two subjects, subject = 2 sends the second (smaller) mask", function()
    local task = assert(env.client:omnihuman { image = portrait(2), audio = AUDIO, subject = 2 })
    assert.equals("in_queue", task.status)
    assert.truthy(task.mask_url:find("/1%.png"))
    assert.same({ task.mask_url }, created_body().mask_urls)
  end)

  it("with two subjects, a function receives the masks, largest first, and picks one", function()
    local given
    local task = assert(env.client:omnihuman { image = portrait(2), audio = AUDIO, subject = function(masks)
      given = masks
      return masks[#masks]
    end })
    assert.equals(2, #given)
    assert.truthy(given[1]:find("area=100"))
    assert.equals(given[2], task.mask_url)
    assert.same({ given[2] }, created_body().mask_urls)
  end)

  it("asking for a subject the detection did not find is an error, and nothing is created", function()
    local err = h.failed("invalid_argument", env.client:omnihuman { image = portrait(2), audio = AUDIO, subject = 3 })
    assert.truthy(err.message:find("found 2 subjects"))
    assert.equals(0, env.sb:stats().creates)
  end)

  it("an image with no subject is refused after detection, before any paid call", function()
    local err = h.failed("invalid_argument", env.client:omnihuman { image = portrait(0), audio = AUDIO, subject = "largest" })
    assert.truthy(err.message:find("detection found no subject"))
    assert.same({ "POST /v1/omnihuman/subject/detection" }, paths())
    assert.equals(0, env.sb:stats().creates)
  end)

  it("recognize = true refuses an image without a person-like subject, before any paid call", function()
    local err = h.failed("invalid_argument", env.client:omnihuman { image = portrait(0), audio = AUDIO, recognize = true })
    assert.equals("image", err.field)
    assert.truthy(err.message:find("recognition found no person"))
    assert.same({ "POST /v1/omnihuman/subject/recognition" }, paths())
  end)

  it("bad parameters are refused before detection or recognition run", function()
    local task, err = env.client:omnihuman { image = portrait(1), recognize = true, subject = "largest" }
    assert.is_nil(task)
    assert.equals("audio", err.field)
    local _, err2 = env.client:omnihuman { image = portrait(1), audio = AUDIO, subject = "largest", masks = { "https://m/1.png" } }
    assert.equals("subject", err2.field)
    local _, err3 = env.client:omnihuman { image = portrait(1), audio = AUDIO, subject = "biggest" }
    assert.equals("subject", err3.field)
    assert.same({}, paths())
  end)

  it("passes masks given directly, and no subject step runs", function()
    local task = assert(env.client:omnihuman { image = portrait(3), audio = AUDIO, masks = { "https://example.com/m.png" }, resolution = 720 })
    assert.is_string(task.id)
    assert.same({ "POST /v1/videos" }, paths())
    assert.equals(720, created_body().output_resolution)
  end)
end)

describe("client:detect and client:recognize", function()
  local env = h.with_sandbox()

  it("detect returns has_subject and the mask URLs, largest first, with the request id", function()
    local d = assert(env.client:detect(portrait(3)))
    assert.is_true(d.has_subject)
    assert.equals(3, #d.mask_urls)
    assert.truthy(d.mask_urls[1]:find("area=100"))
    assert.truthy(d.mask_urls[3]:find("area=70"))
    assert.is_string(d.request_id)
    local none = assert(env.client:detect(portrait(0)))
    assert.is_false(none.has_subject)
    assert.same({}, none.mask_urls)
  end)

  it("recognize returns has_subject and the recognition task id", function()
    local r = assert(env.client:recognize(portrait(1)))
    assert.is_true(r.has_subject)
    assert.is_string(r.task_id)
    assert.is_false(assert(env.client:recognize(portrait(0))).has_subject)
  end)

  it("refuses a non-http image before any request", function()
    local before = #env.sb:log()
    h.failed("invalid_argument", env.client:detect("/home/me/portrait.jpg"))
    assert.equals(before, #env.sb:log())
  end)

  it("detect is retried on a 503 and on a reset, like any call that changes nothing", function()
    env.sb:faults { path = "detection$", fault = "status", status = 503, headers = { ["retry-after-ms"] = "10" } }
    env.sb:faults { path = "detection$", fault = "reset_before" }
    local d = assert(env.client:detect(portrait(2)))
    assert.equals(2, #d.mask_urls)
  end)

  it("detect gives up on a persisting 500 with a server error", function()
    env.sb:faults { path = "detection$", fault = "status", status = 500, count = 3, headers = { ["retry-after-ms"] = "10" } }
    local err = h.failed("server", env.client:detect(portrait(2)))
    assert.equals(500, err.status)
  end)

  it("a malformed detection answer is a protocol error", function()
    env.sb:faults { path = "detection$", fault = "json", body = { status = "maybe" } }
    h.failed("protocol", env.client:detect(portrait(2)))
  end)
end)
