-- The reference (make docs): the public API only, every option and error kind in it, rendered without a
-- warning; and, with headless Chromium (#host), a picture of it kept in build/.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local errors = require "jimeng.errors"

describe("the reference", function()
  local html
  setup(function()
    local ok, out = proc.run("make -s docs")
    assert(ok, out)
    assert(not out:lower():find("warn"), out)
    html = assert(h.read("build/docs/index.html"))
  end)

  it("is one page of the public API, with the internals left out", function()
    for _, internal in ipairs { "Client.new", "Client:finish", "runtime.await", "Scheduler:tick", "check_id",
      "plan_output", "modules/client.html", "modules/runtime.html" } do
      assert.falsy(html:find(internal, 1, true), internal)
    end
    for _, public in ipairs { "new", "normalize", "run", "spawn", "gather", "sleep", "Client:create", "Client:status",
      "Client:wait", "Client:download", "Client:generate", "Client:detect", "Client:recognize", "Client:omnihuman",
      "Client:batch", "Client:experiment", "batch.plan", "nvim.generate" } do
      assert.truthy(html:find('<a name = "' .. public .. '"></a>', 1, true), public)
    end
  end)

  it("describes every option of jimeng.new, every error kind and the parameter tables", function()
    for _, opt in ipairs { "api_key", "base_url", "timeout", "connect_timeout", "max_retries", "poll_interval",
      "wait_timeout", "stall_timeout", "allow_insecure_http", "cainfo", "capath", "proxy", "no_proxy",
      "http_version", "max_connections", "max_rps", "logger" } do
      assert.truthy(html:find("<code>" .. opt .. "</code>:", 1, true) or html:find(opt .. "</span>", 1, true) or
        html:find(opt .. ":", 1, true), opt)
    end
    for kind in pairs(errors.KINDS) do
      assert.truthy(html:find("<td> <code>" .. kind .. "</code> </td>", 1, true) or html:find("<code>" .. kind .. "</code>", 1, true),
        kind)
    end
    for _, param in ipairs { "prompt", "req_key", "seconds", "frames", "size", "aspect_ratio", "seed", "camera_move",
      "strict", "audio", "resolution", "fast" } do
      assert.truthy(html:find("<code>" .. param .. "</code>", 1, true), param)
    end
  end)

  it("shows text in angle brackets as text: jimeng_video_<id>.mp4", function()
    assert.truthy(html:find("jimeng_video_&lt;id&gt;.mp4", 1, true))
    assert.falsy(html:find("jimeng_video_.mp4", 1, true))
  end)

  it("gives an example for every call", function()
    local calls, with_usage = 0, 0
    for item in html:gmatch('<dt>%s*<a name = "[^"]+"></a>(.-)</dd>') do
      if item:find("<strong>[%w_.:]+%(") then
        calls = calls + 1
        if item:find("Usage:", 1, true) then with_usage = with_usage + 1 end
      end
    end
    assert.truthy(calls >= 18, "calls: " .. calls)
    assert.equals(calls, with_usage)
  end)

  it("#host renders in headless Chromium to build/docs-reference.png", function()
    os.remove("build/docs-reference.png")
    local ok, out = proc.run("make -s docs-screenshot")
    assert.is_true(ok, out)
    local png = assert(h.read("build/docs-reference.png"))
    assert.equals("\137PNG", png:sub(1, 4))
    local w = png:byte(17) * 2 ^ 24 + png:byte(18) * 2 ^ 16 + png:byte(19) * 2 ^ 8 + png:byte(20)
    assert.equals(1280, w)
    assert.truthy(#png > 50000, "a page, not a blank: " .. #png)
  end)
end)
