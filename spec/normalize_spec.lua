-- Normalization: the exact body create sends, row by row, and every refusal with the field it names.
local jimeng = require "jimeng"
local core = require "jimeng.core"
local h = require "spec.support.helpers"
local images = require "spec.support.images"

local P1 = "千军万马奔腾在草原上,阳光明媚,高清画质"
local PRO, K_PRO = "jimeng-video-3.0-pro", "jimeng_ti2v_v30_pro"
local M720, M1080 = "jimeng-video-3.0-720P", "jimeng-video-3.0-1080P"
local IMG, IMG2 = "https://example.com/a.jpg", "https://example.com/b.jpg"
local IMAGE = "https://example.com/portrait.jpg"
local AUDIO = "https://example.com/speech.mp3"
local MASK = "https://example.com/mask.png"

local function video(extra)
  local b = { model = PRO, req_key = K_PRO, prompt = "x", seed = -1, frames = 121, aspect_ratio = "16:9" }
  for k, v in pairs(extra or {}) do b[k] = v end
  return b
end

local function omni(extra)
  local b = {
    model = "OmniHuman_1.5", req_key = "jimeng_realman_avatar_picture_omni_v15", generation_type = "omni_human",
    output_resolution = 1080, pe_fast_mode = false, seed = -1,
    content = {
      { type = "image_url", image_url = { url = IMAGE } },
      { type = "audio_url", audio_url = { url = AUDIO } },
    },
  }
  for k, v in pairs(extra or {}) do b[k] = v end
  return b
end

describe("normalize gives the vendor page's own bodies", function()
  it("for the first text-to-video example, unchanged", function()
    local params = { model = PRO, prompt = P1, req_key = K_PRO, seed = -1, frames = 121, aspect_ratio = "16:9" }
    local body, warnings = assert(jimeng.normalize(params))
    assert.same(params, body)
    assert.same({}, warnings)
  end)

  it("for the image-to-video example (image_urls, 241 frames), unchanged", function()
    local params = { model = PRO, prompt = "根据图片内容生成一段动态视频,保持画面风格一致", req_key = K_PRO,
      image_urls = { "https://example.com/reference_image.jpg" }, seed = -1, frames = 241, aspect_ratio = "16:9" }
    assert.same(params, (jimeng.normalize(params)))
  end)

  it("for the content text example: size and seconds become aspect_ratio and frames, the text the prompt", function()
    local body = assert(jimeng.normalize { model = PRO, size = "1280x720", seconds = "5", req_key = K_PRO,
      content = { { type = "text", text = P1 } } })
    assert.same(video { prompt = P1 }, body)
  end)

  it("for the content image URL examples: the image becomes image_urls", function()
    for _, ex in ipairs {
      { "根据这张风景图生成一段视频,展现微风轻抚、云朵缓缓移动的动态效果", "https://example.com/landscape.jpg" },
      { "根据图片生成一段动态视频", "https://example.com/image.jpg" },
    } do
      local body = assert(jimeng.normalize { model = PRO, size = "1280x720", seconds = "5", req_key = K_PRO,
        content = { { type = "text", text = ex[1] }, { type = "image_url", image_url = { url = ex[2] } } } })
      assert.same(video { prompt = ex[1], image_urls = { ex[2] } }, body)
    end
  end)

  it("for the base64 example: the image stays a content item, with the text beside it", function()
    local content = { { type = "text", text = "让画面中的小猫跳跃玩耍" },
      { type = "image_base64", image_url = { url = "data:image/jpeg;base64,/9j/4AAQSkZJRg..." } } }
    local body = assert(jimeng.normalize { model = PRO, size = "1280x720", seconds = "5", req_key = K_PRO, content = content })
    local expected = video { content = content }
    expected.prompt = nil
    assert.same(expected, body)
  end)

  it("for the OmniHuman example, with seed and pe_fast_mode defaults filled in", function()
    local params = { model = "OmniHuman_1.5", req_key = "jimeng_realman_avatar_picture_omni_v15", prompt = "自然说话,面带微笑",
      generation_type = "omni_human", output_resolution = 1080, content = omni().content }
    assert.same(omni { prompt = "自然说话,面带微笑" }, (jimeng.normalize(params)))
  end)

  it("for an OmniHuman mask given as a content item with role mask_image: it becomes mask_urls", function()
    local content = omni().content
    content[3] = { type = "image_url", role = "mask_image", image_url = { url = MASK } }
    local body = assert(jimeng.normalize { generation_type = "omni_human", content = content })
    assert.same(omni { mask_urls = { MASK } }, body)
  end)

  it("for the detection and recognition examples", function()
    assert.same({ model = "OmniHuman_1.5", req_key = "jimeng_realman_avatar_object_detection", image_url = IMAGE },
      core.subject_body("detection", IMAGE))
    assert.same({ model = "OmniHuman_1.5", req_key = "jimeng_realman_avatar_picture_create_role_omni_v15", image_url = IMAGE },
      core.subject_body("recognition", IMAGE))
    local body, why, class, field = core.subject_body("detection", "file:///etc/passwd")
    assert.is_nil(body)
    assert.matches("http or https URL", why)
    assert.equals("invalid_argument", class)
    assert.equals("image_url", field)
  end)
end)

describe("normalize chooses model and req_key", function()
  local rows = {
    -- params, model, req_key
    { {}, PRO, K_PRO },
    { { image_urls = { IMG } }, PRO, K_PRO },
    { { model = M720 }, M720, "jimeng_t2v_v30" },
    { { model = M720, images = { IMG } }, M720, "jimeng_i2v_first_v30" },
    { { model = M720, images = { IMG, IMG2 } }, M720, "jimeng_i2v_first_tail_v30" },
    { { model = M720, images = { IMG }, camera_move = true }, M720, "jimeng_i2v_recamera_v30" },
    { { images = { IMG }, camera_move = true }, M720, "jimeng_i2v_recamera_v30" },
    { { model = M1080 }, M1080, "jimeng_t2v_v30_1080p" },
    { { model = M1080, image = IMG }, M1080, "jimeng_i2v_first_v30_1080" },
    { { model = M1080, image_urls = { IMG, IMG2 } }, M1080, "jimeng_i2v_first_tail_v30_1080" },
    { { model = "jimeng-video-3.0-1080p" }, M1080, "jimeng_t2v_v30_1080p" },
    { { req_key = "jimeng_t2v_v30_1080p" }, M1080, "jimeng_t2v_v30_1080p" },
    { { req_key = "jimeng_i2v_recamera_v30", images = { IMG } }, M720, "jimeng_i2v_recamera_v30" },
  }
  for i, row in ipairs(rows) do
    it(("row %d: %s with %s -> %s"):format(i, row[1].model or row[1].req_key or "default", row[1].camera_move and "a camera move"
      or ("images"), row[3]), function()
      local params = { prompt = "x" }
      for k, v in pairs(row[1]) do params[k] = v end
      local body = assert(jimeng.normalize(params))
      assert.equals(row[2], body.model)
      assert.equals(row[3], body.req_key)
    end)
  end

  it("passes an unknown model and its req_key through untouched with strict=false", function()
    local body = assert(jimeng.normalize { prompt = "x", model = "jimeng-video-4.0", req_key = "jimeng_new_v40", strict = false })
    assert.equals("jimeng-video-4.0", body.model)
    assert.equals("jimeng_new_v40", body.req_key)
  end)
end)

describe("normalize converts", function()
  local rows = {
    -- params, field, expected value
    { { seconds = 5 }, "frames", 121 },
    { { seconds = "10" }, "frames", 241 },
    { { frames = 241 }, "frames", 241 },
    { { frames = "121" }, "frames", 121 },
    { { seconds = 10, frames = 241 }, "frames", 241 },
    { {}, "frames", 121 },
    { { size = "1280x720" }, "aspect_ratio", "16:9" },
    { { size = "1920x1080" }, "aspect_ratio", "16:9" },
    { { size = "720x1280" }, "aspect_ratio", "9:16" },
    { { size = "1024x768" }, "aspect_ratio", "4:3" },
    { { size = "768x1024" }, "aspect_ratio", "3:4" },
    { { size = "1024x1024" }, "aspect_ratio", "1:1" },
    { { size = "2560x1080" }, "aspect_ratio", "21:9" },
    { { size = "1000x570" }, "aspect_ratio", "16:9" },
    { { size = "1280*720" }, "aspect_ratio", "16:9" },
    { { size = "1280x720", aspect_ratio = "16:9" }, "aspect_ratio", "16:9" },
    { { aspect_ratio = "21:9" }, "aspect_ratio", "21:9" },
    { {}, "aspect_ratio", "16:9" },
    { {}, "seed", -1 },
    { { seed = 0 }, "seed", 0 },
    { { seed = 4294967295 }, "seed", 4294967295 },
    { { seed = "7" }, "seed", 7 },
  }
  for _, row in ipairs(rows) do
    local desc = {}
    for k, v in pairs(row[1]) do desc[#desc + 1] = k .. "=" .. tostring(v) end
    it(("%s into %s %s"):format(#desc > 0 and table.concat(desc, ", ") or "nothing", row[2], tostring(row[3])), function()
      local params = { prompt = "x" }
      for k, v in pairs(row[1]) do params[k] = v end
      local body = assert(jimeng.normalize(params))
      assert.equals(row[3], body[row[2]])
      assert.is_nil(body.size)
      assert.is_nil(body.seconds)
    end)
  end

  it("prompt length in characters, not bytes: 800 Chinese characters are accepted with a warning", function()
    local body, warnings = assert(jimeng.normalize { prompt = ("马"):rep(800) })
    assert.equals(("马"):rep(800), body.prompt)
    assert.equals(1, #warnings)
    assert.truthy(warnings[1]:find("800 characters"))
  end)

  it("warns past 400 characters, and not at 400", function()
    local _, w400 = assert(jimeng.normalize { prompt = ("a"):rep(400) })
    assert.same({}, w400)
    local _, w401 = assert(jimeng.normalize { prompt = ("a"):rep(401) })
    assert.equals(1, #w401)
  end)

  it("takes the text in content over prompt, as the API does, and says so", function()
    local body, warnings = assert(jimeng.normalize { prompt = "ignored", content = { { type = "text", text = "wins" } } })
    assert.equals("wins", body.prompt)
    assert.truthy(warnings[1]:find("content wins"))
  end)

  it("passes unknown parameter names through untouched with strict=false", function()
    local body = assert(jimeng.normalize { prompt = "x", camera_template = "zoom_in", strict = false })
    assert.equals("zoom_in", body.camera_template)
    assert.is_nil(body.strict)
  end)

  it("never puts an empty array on the wire: an empty image list is refused, not sent as no image", function()
    local body, err = jimeng.normalize { prompt = "x", image_urls = {} }
    assert.is_nil(body)
    assert.equals("invalid_argument", err.kind)
    assert.equals("image_urls", err.field)
  end)
end)

describe("normalize refuses", function()
  local long = ("a"):rep(801)
  local rows = {
    -- params (prompt="x" unless given), field, a phrase of the message
    { { prompt = false }, "prompt", "must be a string" },
    { { prompt = "" }, "prompt", "required" },
    { { prompt = long }, "prompt", "at most 800" },
    { { prompt = "bad \255 utf8" }, "prompt", "UTF%-8" },
    { { prompt = "overlong \192\175" }, "prompt", "UTF%-8" },
    { { prompt = "surrogate \237\160\128" }, "prompt", "UTF%-8" },
    { { frames = 100 }, "frames", "121 %(5 s%) or 241" },
    { { frames = 120.5 }, "frames", "whole number" },
    { { seconds = 7 }, "seconds", "5 or 10" },
    { { seconds = "five" }, "seconds", "whole number" },
    { { seconds = 5, frames = 241 }, "frames", "disagree" },
    { { size = "5000x1000" }, "size", "16:9, 9:16, 4:3, 3:4, 1:1, 21:9" },
    { { size = "big" }, "size", "WIDTHxHEIGHT" },
    { { size = "0x720" }, "size", "WIDTHxHEIGHT" },
    { { aspect_ratio = "2:1" }, "aspect_ratio", "one of" },
    { { aspect_ratio = "4:3", size = "1280x720" }, "aspect_ratio", "disagree" },
    { { seed = 4294967296 }, "seed", "0..4294967295" },
    { { seed = -2 }, "seed", "0..4294967295" },
    { { seed = 1.5 }, "seed", "whole number" },
    { { model = "jimeng-video-3.0-prp" }, "model", 'did you mean "jimeng%-video%-3%.0%-pro"' },
    { { model = "sora" }, "model", "unknown model" },
    { { model = PRO, req_key = "jimeng_t2v_v30" }, "req_key", "jimeng_t2v_v30 belongs to model jimeng%-video%-3%.0%-720P, not to model jimeng%-video%-3%.0%-pro" },
    { { req_key = "jimeng_magic" }, "req_key", "unknown req_key" },
    { { image_urls = { IMG, IMG2 } }, "images", "0 or 1" },
    { { req_key = "jimeng_i2v_first_v30" }, "images", "exactly 1 reference image" },
    { { req_key = "jimeng_i2v_first_tail_v30", images = { IMG } }, "images", "exactly 2 reference images" },
    { { req_key = "jimeng_t2v_v30", images = { IMG } }, "images", "exactly 0" },
    { { model = M1080, camera_move = true, images = { IMG } }, "camera_move", "720P" },
    { { req_key = "jimeng_i2v_first_v30", camera_move = true, images = { IMG } }, "req_key", "recamera" },
    { { image_urls = { "ftp://example.com/a.jpg" } }, "image_urls", "only http and https" },
    { { images = { IMG, 42 } }, "images", "images%[2%] must be a string" },
    { { images = 42 }, "images", "string or an array" },
    { { content = "text" }, "content", "array of items" },
    { { content = { "text" } }, "content[1]", "table with a type" },
    { { content = { { text = "a" } } }, "content[1]", "has no type" },
    { { content = { { type = "video_url" } } }, "content[1]", 'unknown type "video_url"' },
    { { content = { { type = "text" } } }, "content[1]", "without a text" },
    { { content = { { type = "text", text = "a" }, { type = "text", text = "b" } } }, "content[2]", "more than one text" },
    { { content = { { type = "image_url", image_url = { url = "data:image/png;base64,AA" } } } }, "content[1]", "http or https" },
    { { content = { { type = "image_base64", image_url = { url = IMG } } } }, "content[1]", "data:image" },
    { { content = { { type = "image_url" } } }, "content[1]", "needs image_url" },
    { { content = { { type = "audio_url", audio_url = { url = AUDIO } } } }, "content[1]", "OmniHuman" },
    { { content = { { type = "image_url", role = "mask_image", image_url = { url = MASK } } } }, "content[1]", "OmniHuman" },
    { { content = { { type = "image_url", role = "poster", image_url = { url = IMG } } } }, "content[1]", 'unknown role "poster"' },
    { { aspect_raito = "16:9" }, "aspect_raito", 'did you mean "aspect_ratio"' },
    { { promt = "x" }, "promt", 'did you mean "prompt"' },
    { { imgae_urls = { IMG } }, "imgae_urls", 'did you mean "image_urls"' },
    { { xyzzy_plugh = 1 }, "xyzzy_plugh", "strict=false" },
    { { [1] = "x" }, nil, "named" },
    { { generation_type = "lip_sync" }, "generation_type", "omni_human" },
  }
  for _, row in ipairs(rows) do
    local desc = {}
    for k, v in pairs(row[1]) do desc[#desc + 1] = tostring(k) .. "=" .. (type(v) == "string" and #v > 20 and "(long)" or tostring(v)) end
    it(("%s, naming %s"):format(table.concat(desc, ", "), tostring(row[2])), function()
      local params = { prompt = "x" }
      for k, v in pairs(row[1]) do params[k] = v end
      if params.prompt == false then params.prompt = 5 end
      local err = h.failed("invalid_argument", jimeng.normalize(params))
      assert.equals(row[2], err.field)
      assert.truthy(err.message:find(row[3]), err.message)
      assert.is_false(err.retryable)
    end)
  end

  it("a params value that is not a table", function()
    local err = h.failed("invalid_argument", jimeng.normalize("a cat"))
    assert.truthy(err.message:find("table"))
  end)
end)

describe("normalize reads local image files", function()
  local dir
  setup(function() dir = h.tmpdir() end)
  teardown(h.cleanup)

  it("sends a checked PNG as an image_base64 content item whose data URL holds the file", function()
    local path = images.png(dir .. "/frame.png", 640, 360)
    local body = assert(jimeng.normalize { prompt = "move", images = { path } })
    assert.is_nil(body.image_urls)
    assert.is_nil(body.prompt)
    assert.same({ type = "text", text = "move" }, body.content[1])
    assert.equals("image_base64", body.content[2].type)
    local url = body.content[2].image_url.url
    assert.equals("data:image/png;base64," .. h.base64_file(path), url)
  end)

  it("sniffs a JPEG by its bytes, whatever its name", function()
    local path = images.jpeg(dir .. "/photo.png", 1280, 720)
    local body = assert(jimeng.normalize { prompt = "move", image = path })
    assert.truthy(body.content[2].image_url.url:find("^data:image/jpeg;base64,/9j/"))
  end)

  it("keeps the order of first and last frame when a URL and a local file are mixed", function()
    local path = images.png(dir .. "/last.png", 400, 400)
    local body = assert(jimeng.normalize { prompt = "p", model = M720, images = { IMG, path } })
    assert.equals("jimeng_i2v_first_tail_v30", body.req_key)
    assert.same({ type = "image_url", image_url = { url = IMG } }, body.content[2])
    assert.equals("image_base64", body.content[3].type)
    for _, item in ipairs(body.content) do
      assert.falsy(item.type == "image_url" and item.image_url.url:find("^data:"), "a data URL in an image_url item")
    end
  end)

  local bad = {
    { "a 1x1 PNG is too small", function(d) return images.png(d .. "/dot.png", 1, 1) end, "1x1; each side must be 320 to 4096" },
    { "a 5000-pixel side is too large", function(d) return images.png(d .. "/wide.png", 5000, 2000) end, "320 to 4096" },
    { "a 4:1 image is too narrow", function(d) return images.jpeg(d .. "/strip.jpg", 1600, 400) end, "3 times" },
    { "a GIF is neither JPEG nor PNG", function(d) return images.junk(d .. "/anim.gif", 2000) end, "neither JPEG nor PNG" },
    { "a 5 MB file is over 4.7 MB", function(d) return images.jpeg(d .. "/big.jpg", 1000, 1000, 5 * 1024 * 1024) end, "at most 4.7 MB" },
    { "a missing file cannot be read", function(d) return d .. "/nothing-here.png" end, "cannot read" },
    { "a directory is not an image", function(d) return d end, "not a regular file" },
    { "a device is not an image", function() return "/dev/zero" end, "not a regular file" },
  }
  for _, row in ipairs(bad) do
    it(row[1], function()
      local path = row[2](dir)
      local err = h.failed("invalid_argument", jimeng.normalize { prompt = "x", images = { path } })
      assert.equals("images", err.field)
      assert.truthy(err.message:find(row[3], 1, true), err.message)
      assert.truthy(err.message:find(path, 1, true))
    end)
  end
end)

describe("normalize for OmniHuman", function()
  it("builds the body from the convenience names image, audio, masks, resolution and fast", function()
    local body, warnings = assert(jimeng.normalize { generation_type = "omni_human", image = IMAGE, audio = AUDIO,
      masks = { MASK }, resolution = 720, fast = true, prompt = "微笑" })
    assert.same(omni { mask_urls = { MASK }, output_resolution = 720, pe_fast_mode = true, prompt = "微笑" }, body)
    assert.same({}, warnings)
  end)

  it("warns about fast mode at 1080, and about prompts past 300 characters", function()
    local _, warnings = assert(jimeng.normalize { generation_type = "omni_human", image = IMAGE, audio = AUDIO,
      pe_fast_mode = true, prompt = ("话"):rep(301) })
    assert.equals(2, #warnings)
  end)

  it("carries no frames or aspect_ratio", function()
    local body = assert(jimeng.normalize { generation_type = "omni_human", image = IMAGE, audio = AUDIO })
    assert.is_nil(body.frames)
    assert.is_nil(body.aspect_ratio)
  end)

  local rows = {
    { { audio = AUDIO }, "image", "exactly one portrait" },
    { { image = IMAGE }, "audio", "one audio URL" },
    { { image = { IMAGE, IMAGE }, audio = AUDIO }, "image", "got 2" },
    { { image = "portrait.jpg", audio = AUDIO }, "image", "http or https URL" },
    { { image = IMAGE, audio = "speech.mp3" }, "audio", "http or https" },
    { { image = IMAGE, audio = AUDIO, mask = "mask.png" }, "mask", "http or https" },
    { { image = IMAGE, audio = AUDIO, masks = { MASK, MASK, MASK, MASK, MASK, MASK } }, "masks", "at most 5" },
    { { image = IMAGE, audio = AUDIO, resolution = 480 }, "resolution", "720 or 1080" },
    { { image = IMAGE, audio = AUDIO, output_resolution = 720, resolution = 1080 }, "resolution", "disagree" },
    { { image = IMAGE, audio = AUDIO, pe_fast_mode = "yes" }, "pe_fast_mode", "true or false" },
    { { image = IMAGE, audio = AUDIO, model = PRO }, "model", "OmniHuman_1.5" },
    { { image = IMAGE, audio = AUDIO, frames = 121 }, "frames", "unknown parameter" },
  }
  for _, row in ipairs(rows) do
    it(("refuses %s, naming %s"):format(row[3], row[2]), function()
      local params = { generation_type = "omni_human" }
      for k, v in pairs(row[1]) do params[k] = v end
      local err = h.failed("invalid_argument", jimeng.normalize(params))
      assert.equals(row[2], err.field)
      assert.truthy(err.message:find(row[3], 1, true), err.message)
    end)
  end
end)

describe("invalid creates never reach the network", function()
  local env = h.with_sandbox()

  it("as the sandbox's log shows, for a refusal of every kind of rule", function()
    local before = #env.sb:log()
    for _, params in ipairs {
      { prompt = "x", frames = 100 }, { prompt = "x", size = "5000x1000" }, { prompt = ("a"):rep(801) },
      { prompt = "x", model = PRO, req_key = "jimeng_t2v_v30" }, { prompt = "x", images = { "/no/such.png" } },
      { prompt = "x", aspect_raito = "16:9" }, { generation_type = "omni_human", image = IMAGE },
    } do
      h.failed("invalid_argument", env.client:create(params))
    end
    assert.equals(before, #env.sb:log())
    assert.equals(0, env.sb:stats().creates)
  end)
end)

describe("responses are normalized", function()
  local rows = {
    { "in_queue", "in_queue" }, { "queued", "in_queue" }, { "pending", "in_queue" }, { "submitted", "in_queue" },
    { "processing", "processing" }, { "in_progress", "processing" }, { "generating", "processing" }, { "running", "processing" },
    { "completed", "completed" }, { "done", "completed" }, { "succeeded", "completed" }, { "SUCCESS", "completed" },
    { "failed", "failed" }, { "error", "failed" }, { "expired", "failed" }, { "cancelled", "failed" },
  }
  for _, row in ipairs(rows) do
    it(("status %q becomes %s, keeping the raw one"):format(row[1], row[2]), function()
      local task = assert(core.task { id = "1", status = row[1] })
      assert.equals(row[2], task.status)
      assert.equals(row[1], task.raw_status)
    end)
  end

  it("an unknown status is kept as it came, with status \"unknown\" (not a guess, not an error)", function()
    local task = assert(core.task { id = "1", status = "teleporting" })
    assert.equals("unknown", task.status)
    assert.equals("teleporting", task.raw_status)
  end)

  it("a numeric id is read from the top-level object only, never from a nested one", function()
    local raw = '{"owner": {"id": 42}, "items": [{"id": 7}], "note": "\\"id\\": 9", "id": 12345678901234567890, ' ..
      '"status": "in_queue"}'
    local task = assert(core.task(jimeng.json.decode(raw), raw))
    assert.equals("12345678901234567890", task.id)
    assert.equals("123", core.raw_id('{"owner":{"id":42},"id": "123", "status": '))
    assert.is_nil(core.raw_id('{"owner":{"id":42}}'))
  end)

  it("a created_at JSON cannot hold (1e400) is left out rather than passed on", function()
    local raw = '{"id": "1", "status": "in_queue", "created_at": 1e400}'
    local task = assert(core.task(jimeng.json.decode(raw), raw))
    assert.is_nil(task.created_at)
    assert.truthy(jimeng.json.encode(task))
  end)

  it("a numeric id keeps all its digits, read from the raw body", function()
    local raw = '{"id": 10762451179911711518, "object": "video", "status": "in_queue", "created_at": 1762776961}'
    local task = assert(core.task(jimeng.json.decode(raw), raw))
    assert.equals("10762451179911711518", task.id)
    assert.equals(1762776961, task.created_at)
  end)

  it("a failed task carries the server's message, from an object or a string", function()
    assert.equals("boom", core.task({ id = "1", status = "failed", error = { code = "x", message = "boom" } }).error)
    assert.equals("bang", core.task({ id = "1", status = "failed", error = "bang" }).error)
  end)

  it("detection status 0/1 becomes has_subject, masks in the server's order", function()
    local d = assert(core.detection { status = 1, mask_urls = { "https://m/1.png", "https://m/2.png" }, request_id = "r" })
    assert.same({ has_subject = true, mask_urls = { "https://m/1.png", "https://m/2.png" } }, d)
    assert.same({ has_subject = false, mask_urls = {} }, core.detection { status = 0 })
    assert.is_nil(core.detection { status = 2 })
    local r = assert(core.recognition { task_id = "t", status = 0, request_id = "r" })
    assert.same({ has_subject = false, task_id = "t" }, r)
  end)

  local bodies = {
    { "OpenAI shape", '{"error":{"message":"Invalid req_key","type":"invalid_request_error","code":"invalid_req_key"}}',
      "Invalid req_key", "invalid_req_key" },
    { "flat shape", '{"message":"quota exceeded","code":1102}', "quota exceeded", "1102" },
    { "an error string", '{"error":"bad things"}', "bad things" },
    { "plain text", "upstream timed out\n", "upstream timed out" },
    { "an HTML page (its title)", "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "502 Bad Gateway" },
  }
  for _, row in ipairs(bodies) do
    it("an error body in " .. row[1] .. " becomes the message", function()
      local ok, decoded = pcall(jimeng.json.decode, row[2])
      local msg, code = core.error_message(ok and decoded or nil, row[2])
      assert.equals(row[3], msg)
      assert.equals(row[4], code)
    end)
  end
end)
