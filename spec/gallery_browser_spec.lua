-- The experiment gallery in a real browser: Debian's Chromium, headless, opens index.html from disk;
-- a script in the page's context checks the videos, the failures, the copy buttons and the console
-- (spec/support/browser.py drives it over the DevTools protocol on a pipe).
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"

local PROBE = [[
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const videos = Array.from(document.querySelectorAll("video"));
  const t0 = Date.now();
  while (Date.now() - t0 < 20000 && videos.some((v) => v.readyState < 1 && !v.error)) await sleep(100);
  await sleep(300);
  const text = (el) => (el ? el.textContent : null);
  const cards = Array.from(document.querySelectorAll("article.card")).map((c) => {
    const v = c.querySelector("video");
    const json = c.querySelector("button.copy-json");
    const cmd = c.querySelector("button.copy-cmd");
    return {
      label: c.dataset.label, status: c.dataset.status, seconds: Number(c.dataset.seconds),
      file_duration: c.dataset.duration ? Number(c.dataset.duration) : null,
      video: v ? { ready_state: v.readyState, duration: v.duration, error: v.error ? v.error.code : null,
                   muted: v.muted, loop: v.loop, poster: v.getAttribute("poster") } : null,
      duration_text: text(c.querySelector(".dur")), error_text: text(c.querySelector(".error")),
      status_text: text(c.querySelector(".status")), task_text: text(c.querySelector(".task")),
      json: json ? window.jimengGallery.copyText(json) : null,
      command: cmd ? window.jimengGallery.copyText(cmd) : null,
    };
  });
  // and as a person does: a click, whether or not this browser grants the clipboard
  const button = document.querySelector("button.copy-json");
  button.click();
  await sleep(300);
  return { cards, title: document.title, live: document.body.dataset.live, clicked: button.textContent,
           headers: Array.from(document.querySelectorAll(".colhead,.rowhead")).map((e) => e.textContent) };
})()
]]

describe("the experiment gallery in headless Chromium #host", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, client = { poll_interval = 0.05 },
    dir = "setup" }

  it("plays every made video at its real length, shows failures in words, copies valid JSON, logs no error", function()
    local name = [[<i>cats</i> & "dogs"]]
    local report = assert(env.client:experiment({ name = name, base = { aspect_ratio = "16:9" },
      vary = { prompt = { [[a cat's <b>nap</b> & "dream"]], "sandbox:fail a storm at sea" }, seconds = { 5, 10 } } },
      { dir = env.dir, rows = "prompt", cols = "seconds" }))
    assert.equals(2, report.made)
    assert.equals(2, report.failed)
    h.write(env.dir .. "/probe.js", PROBE)
    assert(proc.run("mkdir -p " .. proc.root .. "/build"))
    local shot = proc.root .. "/build/gallery.png"
    os.remove(shot)
    local ok, out = proc.run(("python3 %s/spec/support/browser.py --url 'file://%s/index.html' --script %s/probe.js "
      .. "--screenshot %s --width 1400 --height 900 2>&1"):format(proc.root, env.dir, env.dir, shot))
    assert.is_true(ok, out)
    local page = cjson.decode(out:match("{.*}"))
    local r = page.result
    assert.is_table(r, out)

    local errors = {}
    for _, e in ipairs(page.console) do
      if e.level ~= "warning" then errors[#errors + 1] = e.level .. ": " .. tostring(e.text) end
    end
    assert.same({}, errors)

    assert.equals(name .. " · jimeng experiment", r.title) -- escaped in the file, the same text on screen
    assert.equals("0", r.live)
    assert.same({ "seconds5", "seconds10", "prompt" .. [[a cat's <b>nap</b> & "dream"]], "promptsandbox:fail a storm at sea" },
      r.headers)
    assert.equals(4, #r.cards)
    local made, failed = 0, 0
    for _, c in ipairs(r.cards) do
      if c.status == "saved" then
        made = made + 1
        assert.is_true(c.video.ready_state >= 1, c.label)
        assert.is_true(c.video.muted and c.video.loop, c.label)
        assert.truthy(c.video.poster, c.label)
        -- the sandbox's fixture is a 5.0 s MP4 whatever was asked (5 or 10 s): the browser reads the file's
        -- own length, which is what the gallery shows
        assert.near(5.0, c.video.duration, 0.05)
        assert.near(c.file_duration, c.video.duration, 0.05)
        assert.equals("5.0 s video", c.duration_text)
        assert.equals("done", c.status_text)
        assert.is_string(c.task_text)
      else
        failed = failed + 1
        assert.equals("failed", c.status)
        assert.equals(cjson.null, c.video)
        assert.equals("sandbox: the generation failed (asked by prompt)", c.error_text)
      end
      local params = cjson.decode(c.json)
      assert.equals(c.seconds, params.seconds)
      assert.equals("16:9", params.aspect_ratio)
      assert.truthy(c.command:find("^jimeng generate "), c.command)
    end
    assert.equals(2, made)
    assert.equals(2, failed)
    assert.truthy(r.clicked == "Copied" or r.clicked == "Select and copy below", r.clicked)

    -- the screenshot kept under build/ is a real PNG of the page
    local png = assert(h.read(shot))
    assert.equals("\137PNG", png:sub(1, 4))
    assert.is_true(#png > 20000)
  end)

  it("reloads itself while the run is live, and stays put once it has ended", function()
    local live_dir = h.tmpdir()
    local snapshot
    assert(env.client:experiment({ name = "live", base = { prompt = "a kite" }, vary = { seed = { 1, 2 } } }, {
      dir = live_dir, on_event = function(ev)
        if ev.type == "created" and not snapshot then snapshot = h.read(live_dir .. "/index.html") end
      end }))
    h.write(live_dir .. "/live.html", assert(snapshot))
    -- how this page was loaded, after waiting `ms`
    for name, ms in pairs { now = 0, later = 3500 } do
      h.write(("%s/%s.js"):format(live_dir, name), ([[
(async () => {
  await new Promise((r) => setTimeout(r, %d));
  return { type: performance.getEntriesByType("navigation")[0].type, live: document.body.dataset.live };
})()
]]):format(ms))
    end
    local function open(page, loads, script)
      local ok, out = proc.run(("python3 %s/spec/support/browser.py --url 'file://%s/%s' --script %s/%s.js --loads %d 2>&1")
        :format(proc.root, live_dir, page, live_dir, script, loads))
      assert.is_true(ok, out)
      local r = cjson.decode(out:match("{.*}"))
      assert.same({}, r.console)
      return r.result
    end
    -- a live page has reloaded itself by its second load
    assert.same({ type = "reload", live = "1" }, open("live.html", 2, "now"))
    -- the finished page is still its first load after 3.5 s
    assert.same({ type = "navigate", live = "0" }, open("index.html", 1, "later"))
  end)
end)
