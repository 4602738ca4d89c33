-- Bad input is refused before any request; the server's refusals come back as typed errors.
local h = require "spec.support.helpers"
local jimeng = require "jimeng"

describe("bad input", function()
  local env = h.with_sandbox()

  local function requests() return #env.sb:log() end

  it("without a prompt returns invalid_argument naming the prompt, and sends nothing", function()
    local before = requests()
    local err = h.failed("invalid_argument", env.client:create { seconds = 5 })
    assert.equals("prompt", err.field)
    assert.is_false(err.retryable)
    assert.is_false(err.created) -- false: nothing was sent (nil would mean "it may exist")
    assert.equals(before, requests())
  end)

  it("with frames 100 returns invalid_argument naming frames, and sends nothing", function()
    local before = requests()
    local err = h.failed("invalid_argument", env.client:create { prompt = "x", frames = 100 })
    assert.equals("frames", err.field)
    assert.truthy(tostring(err):find("^jimeng: invalid_argument: frames must be 121"))
    assert.equals(before, requests())
  end)

  it("a task id that could change the URL path is refused before any request", function()
    local before = requests()
    for _, id in ipairs { "", "..", ".", "a/b", "x?y", "%2e%2e", "a#b", "a b", "a\r\nb", ("9"):rep(10000) } do
      local task, err = env.client:status(id)
      assert.is_nil(task)
      assert.equals("invalid_argument", err.kind, id)
      h.failed("invalid_argument", env.client:download(id, "/tmp/never.mp4"))
    end
    local _, err = env.client:status(12345)
    assert.equals("invalid_argument", err.kind)
    assert.truthy(err.message:find("strings"))
    assert.equals(before, requests())
  end)

  it("a client without an API key refuses to call, saying how to set one", function()
    local c = assert(jimeng.new { base_url = env.sb.url, api_key = "" })
    local before = requests()
    local err = h.failed("auth", c:create { prompt = "x" })
    assert.truthy(err.message:find("JIMENG_API_KEY"))
    assert.is_false(err.created)
    assert.equals(before, requests())
  end)

  it("misspelt client options are refused with the option they probably meant", function()
    local err = h.failed("invalid_argument", jimeng.new { base_url = env.sb.url, timout = 5 })
    assert.truthy(err.message:find('did you mean "timeout"', 1, true))
    local c, again = jimeng.new { base_url = env.sb.url, api_kye = "k" }
    assert.is_nil(c)
    assert.truthy(again.message:find('did you mean "api_key"', 1, true))
  end)

  it("an unknown option like no other gets no guess, but the list of options", function()
    local c, err = jimeng.new { base_url = env.sb.url, zzzzzzzz = 5 }
    assert.is_nil(c)
    assert.equals("zzzzzzzz", err.field)
    assert.is_nil(err.message:find("did you mean", 1, true))
    assert.truthy(err.message:find("poll_interval", 1, true))
  end)

  -- generate's and omnihuman's options are checked before the paid create: a bad one found after it would
  -- cost a video (or raise, and lose the id of the task just paid for)
  local bad_options = {
    { { interval = 0 }, "interval" }, { { interval = "abc" }, "interval" }, { { timeout = "x" }, "timeout" },
    { { on_status = "notfn" }, "on_status" }, { { on_created = 5 }, "on_created" },
    { { on_progress = 5 }, "on_progress" }, { { overwrite = "yes" }, "overwrite" }, { { ouput = "a.mp4" }, "ouput" },
  }
  for _, case in ipairs(bad_options) do
    it("generate with option " .. case[2] .. " = " .. tostring(select(2, next(case[1]))) ..
      " is refused before anything is paid for", function()
      local creates = env.sb:stats().creates
      local err = h.failed("invalid_argument", env.client:generate({ prompt = "never paid" }, case[1]))
      assert.equals(case[2], err.field)
      assert.truthy(err.message:find("nothing was paid for", 1, true), err.message)
      if case[2] == "ouput" then assert.truthy(err.message:find('did you mean "output"', 1, true)) end
      local _, oerr = env.client:omnihuman({ image = "https://x/p.png", audio = "https://x/a.mp3", output = "o.mp4" },
        case[2] ~= "ouput" and case[1] or { outptu = 1 })
      assert.equals("invalid_argument", oerr.kind)
      assert.equals(creates, env.sb:stats().creates)
    end)
  end

  it("omnihuman's subject is checked before any call, and a subject function that raises is a callback error", function()
    local params = { image = "https://x/p.png?subjects=2", audio = "https://x/a.mp3" }
    local before = requests()
    for _, bad in ipairs { 0, -1, 1.5, "biggest" } do
      params.subject = bad
      local err = h.failed("invalid_argument", env.client:omnihuman(params))
      assert.equals("subject", err.field)
    end
    assert.equals(before, requests())
    params.subject = function() error("boom") end
    local err = h.failed("callback", env.client:omnihuman(params))
    assert.truthy(err.message:find("boom", 1, true))
    assert.equals(0, env.sb:stats().creates)
  end)

  it("calling a method with a dot instead of a colon raises at once", function()
    assert.has_error(function() env.client.create { prompt = "x" } end)
  end)
end)

describe("the server's refusals", function()
  local env = h.with_sandbox { sandbox = { api_key = "the-right-key" }, client = false }

  it("a wrong key is an auth error with the server's message, HTTP status and request id", function()
    local c = h.client(env.sb, { api_key = "the-wrong-key" })
    local err = h.failed("auth", c:create { prompt = "x" })
    assert.equals(401, err.status)
    assert.equals("Incorrect API key provided", err.message)
    assert.equals("invalid_api_key", err.code)
    assert.is_string(err.request_id)
    assert.is_false(err.retryable)
    assert.truthy(tostring(err):find("(HTTP 401", 1, true))
  end)

  it("an unknown task is not_found, carrying the task id", function()
    local c = h.client(env.sb, { api_key = "the-right-key" })
    local err = h.failed("not_found", c:status("12345678901234567890"))
    assert.equals(404, err.status)
    assert.equals("12345678901234567890", err.task_id)
  end)
end)
