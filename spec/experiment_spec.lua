-- Prompt experiments: grids and templates, validation and the budget before paying, resume without paying
-- twice (after SIGKILL too), takes, and the gallery's files.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"
local cjson = require "cjson"
local jimeng = require "jimeng"
local experiment = require "jimeng.experiment"
local images = require "spec.support.images"

local lua = proc.lua

local function count(text, pattern)
  local n = 0
  for _ in text:gmatch(pattern) do n = n + 1 end
  return n
end

local function results(dir)
  local text = h.read(dir .. "/results.json")
  assert.is_string(text, dir .. "/results.json")
  return cjson.decode(text)
end

describe("jimeng.experiment", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, client = { poll_interval = 0.05 },
    reset = { queue_seconds = 0.05, process_seconds = 0.1 }, dir = "each" }

  local function spec(extra)
    local s = { name = "foxes", base = { prompt = "a {animal} at {place}", seconds = 5, aspect_ratio = "16:9" },
      vars = { animal = { "red fox", "owl" }, place = { "dawn" } }, vary = { seed = { 1, 2 } } }
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
  end

  it("makes the product of the axes, fills the prompt template, and names each cell by its values", function()
    local plan = assert(experiment.plan(spec { vary = { seed = { 1, 2 }, seconds = { 5, 10 } } }, jimeng.json))
    assert.equals(8, #plan.cells)
    local by_id = {}
    for _, c in ipairs(plan.cells) do by_id[c.id] = c end
    local c = assert(by_id["animal=red-fox,place=dawn,seconds=10,seed=2"])
    assert.equals("a red fox at dawn", c.params.prompt)
    assert.equals(241, c.body.frames)
    assert.equals(10, c.seconds)
    assert.equals("16:9", plan.shared.aspect_ratio)
    assert.same({ "prompt", "seconds", "seed" }, plan.varying)
    -- the template's variables come first, then the parameters, prompt-like ones before the seed
    local names = {}
    for i, a in ipairs(plan.axes) do names[i] = a.name end
    assert.same({ "animal", "place", "seconds", "seed" }, names)
    -- a long prompt as an axis value reads as a slug and a hash, and stays the same from run to run
    local long = assert(experiment.plan({ vary = { prompt = { "waves at dusk over a quiet harbour, 4k", "b" } } }, jimeng.json))
    assert.truthy(long.cells[1].id:match("^prompt=waves%-at%-dusk%-over%-a%-qui~%x%x%x%x%x%x$"), long.cells[1].id)
    assert.equals("prompt=b", long.cells[2].id)
  end)

  it("adds the spec's extra cells, on top of base, with their own ids", function()
    local plan = assert(experiment.plan(spec { cells = { { id = "hand-picked", animal = "heron", place = "noon", seed = 9 },
      { prompt = "no template here", seconds = 10 } } }, jimeng.json))
    assert.equals(6, #plan.cells)
    assert.equals("hand-picked", plan.cells[5].id)
    assert.equals("a heron at noon", plan.cells[5].params.prompt)
    assert.is_true(plan.cells[5].extra)
    assert.truthy(plan.cells[6].id:match("^cell%-%x+$"))
    assert.equals(241, plan.cells[6].body.frames)
  end)

  it("refuses a bad cell before paying for any, naming the cell and the field", function()
    local _, err = env.client:experiment(spec { vary = { seed = { 1, 2 }, seconds = { 5, 7 } } }, { dir = env.dir })
    assert.equals("invalid_argument", err.kind)
    assert.equals("seconds", err.field)
    assert.truthy(err.message:find("cell animal=red-fox,place=dawn,seconds=7,seed=1", 1, true), err.message)
    local _, terr = env.client:experiment(spec { base = { prompt = "a {animal} in {weather}" } }, { dir = env.dir })
    assert.equals("prompt", terr.field)
    assert.truthy(terr.message:find("{weather}", 1, true), terr.message)
    local _, uerr = env.client:experiment(spec { vary = { sedd = { 1 } } }, { dir = env.dir })
    assert.equals("sedd", uerr.field)
    assert.truthy(uerr.message:find("seed", 1, true), uerr.message)
    assert.equals(0, env.sb:stats().creates)
    assert.is_nil(h.read(env.dir .. "/journal.jsonl"))
  end)

  it("refuses a run above max_videos unless told yes, then pays for exactly its cells", function()
    local _, err = env.client:experiment(spec(), { dir = env.dir, max_videos = 3 })
    assert.equals("invalid_argument", err.kind)
    assert.equals("max_videos", err.field)
    assert.truthy(err.message:find("4 videos (20 s)", 1, true), err.message)
    assert.equals(0, env.sb:stats().creates)
    local report = assert(env.client:experiment(spec(), { dir = env.dir, max_videos = 3, yes = true }))
    assert.equals(4, report.made)
    assert.equals(4, env.sb:stats().creates)
    assert.equals(20, report.paid_seconds)
  end)

  it("run again, pays for nothing; with a seed added, pays only for the new cells", function()
    local first = assert(env.client:experiment(spec(), { dir = env.dir }))
    assert.equals(4, first.made)
    for _, t in ipairs(first.takes) do assert.equals(h.fixture(), h.read(env.dir .. "/" .. t.video)) end
    local again = assert(env.client:experiment(spec(), { dir = env.dir }))
    assert.equals(0, again.to_pay)
    assert.equals(4, again.skipped)
    assert.equals(4, env.sb:stats().creates)
    local more = assert(env.client:experiment(spec { vary = { seed = { 1, 2, 3 } } }, { dir = env.dir }))
    assert.equals(2, more.to_pay)
    assert.equals(2, more.made)
    assert.equals(4, more.skipped)
    assert.equals(6, env.sb:stats().creates)
    -- and the gallery holds all six, each with its task
    local r = results(env.dir)
    assert.equals(6, #r.cells)
    for _, c in ipairs(r.cells) do
      assert.equals("saved", c.status)
      assert.is_string(c.task_id)
    end
  end)

  it("a retake makes one more video of one cell and keeps the earlier take", function()
    assert(env.client:experiment(spec(), { dir = env.dir }))
    local id = "animal=owl,place=dawn,seed=2"
    local report = assert(env.client:experiment(spec(), { dir = env.dir, retake = id }))
    assert.equals(1, report.made)
    assert.equals(5, env.sb:stats().creates)
    local takes = {}
    for _, c in ipairs(results(env.dir).cells) do
      if c.id == id then takes[c.take] = c end
    end
    assert.truthy(takes[1].video:match("^videos/animal=owl,place=dawn,seed=2~%x+%.mp4$"), takes[1].video)
    assert.equals(takes[1].video:gsub("%.mp4$", "-take2.mp4"), takes[2].video)
    assert.are_not.equal(takes[1].task_id, takes[2].task_id)
    assert.equals(h.fixture(), h.read(env.dir .. "/" .. takes[1].video))
    assert.equals(h.fixture(), h.read(env.dir .. "/" .. takes[2].video))
    -- the take stays part of the experiment; a plain rerun pays for nothing
    local again = assert(env.client:experiment(spec(), { dir = env.dir }))
    assert.equals(5, #again.takes)
    assert.equals(0, again.to_pay)
    assert.equals(5, env.sb:stats().creates)
    local _, err = env.client:experiment(spec(), { dir = env.dir, retake = "animal=cat" })
    assert.equals("retake", err.field)
    assert.equals(5, env.sb:stats().creates)
  end)

  it("writes a gallery that needs no network, escapes what the spec and server say, and shows failures in words", function()
    local s = { name = "<b>tags</b> & 'quotes'", base = { seconds = 5 },
      vary = { prompt = { "a cat <script>alert(1)</script> & \"dog\"", "sandbox:fail a storm" } } }
    local report = assert(env.client:experiment(s, { dir = env.dir }))
    assert.equals(1, report.made)
    assert.equals(1, report.failed)
    local html = assert(h.read(env.dir .. "/index.html"))
    assert.falsy(html:find("<script>alert", 1, true))
    assert.truthy(html:find("a cat &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;dog&quot;", 1, true))
    assert.truthy(html:find("&lt;b&gt;tags&lt;/b&gt; &amp; &#39;quotes&#39;", 1, true))
    assert.falsy(html:find("https?://"), "the page refers to the network")
    assert.falsy(html:find("<link", 1, true))
    assert.equals(1, count(html, "<script>"))
    assert.truthy(html:find("sandbox: the generation failed (asked by prompt)", 1, true))
    assert.truthy(html:find('data-live="0"', 1, true))
    assert.falsy(html:find("http-equiv", 1, true))
    local r = results(env.dir)
    assert.equals("<b>tags</b> & 'quotes'", r.name)
    local failed
    for _, c in ipairs(r.cells) do if c.status == "failed" then failed = c end end
    assert.equals("task_failed", failed.error.kind)
    assert.is_nil(failed.video)
  end)

  it("lays the gallery out as asked: rows, columns, one grid per value of another axis, shared values once", function()
    local s = spec { vars = { animal = { "red fox", "owl" }, place = { "dawn", "dusk" } } }
    assert(env.client:experiment(s, { dir = env.dir, rows = "animal", cols = "seed" }))
    local html = h.read(env.dir .. "/index.html")
    local r = results(env.dir)
    assert.equals("animal", r.rows)
    assert.equals("seed", r.cols)
    assert.same({ "place" }, r.pages)
    assert.same({ "place = dawn", "place = dusk" }, (function()
      local t = {}
      for title in html:gmatch("<h2>(.-)</h2>") do t[#t + 1] = title end
      return t
    end)())
    assert.equals(2, count(html, 'class="corner"'))
    assert.equals(4, count(html, 'class="rowhead"'))
    assert.equals(8, count(html, "<article "))
    -- shared once at the top (with the prompt's template), varying per cell
    assert.equals(1, count(html, "<b>aspect_ratio</b>16:9"))
    assert.truthy(html:find("prompt template: <code>a {animal} at {place}</code>", 1, true))
    assert.equals(8, count(html, "<b>seed</b>"))
    assert.equals(2, count(html, '<p class="prompt">a red fox at dusk</p>'))
    assert.same({ aspect_ratio = "16:9", seconds = "5" }, r.shared)
  end)

  it("rewrites the gallery atomically while it runs, reloading itself until the run ends", function()
    local seen, torn = {}, 0
    local report = assert(env.client:experiment(spec(), { dir = env.dir, on_event = function(ev)
      local html = h.read(env.dir .. "/index.html") or ""
      if not html:find("</html>\n$") then torn = torn + 1 end
      seen[#seen + 1] = { type = ev.type, live = html:find('data-live="1"', 1, true) ~= nil,
        saved = count(html, 'data%-status="saved"') }
    end }))
    assert.equals(4, report.made)
    assert.equals(0, torn)
    local last_saved = 0
    for _, e in ipairs(seen) do
      assert.is_true(e.live, e.type)
      assert.is_true(e.saved >= last_saved)
      last_saved = e.saved
    end
    assert.equals(4, last_saved)
    local html = h.read(env.dir .. "/index.html")
    assert.truthy(html:find('data-live="0"', 1, true))
    assert.falsy(html:find("http-equiv", 1, true))
    assert.falsy(h.exists(env.dir .. "/index.html.tmp"))
  end)

  it("gives each video a poster of its first frame with ffmpeg, and a plain card without it", function()
    assert(env.client:experiment(spec(), { dir = env.dir }))
    for _, c in ipairs(results(env.dir).cells) do
      local jpeg = assert(h.read(env.dir .. "/" .. c.poster), c.poster)
      assert.equals("\255\216\255", jpeg:sub(1, 3))
    end
    assert.equals(4, count(h.read(env.dir .. "/index.html"), ' poster="posters/'))
    local plain = h.tmpdir()
    assert(env.client:experiment(spec(), { dir = plain, ffmpeg = false }))
    assert.equals(0, count(h.read(plain .. "/index.html"), "poster="))
    for _, c in ipairs(results(plain).cells) do assert.is_nil(c.poster) end
  end)

  it("records each video's real duration, read from its MP4 header", function()
    assert(env.client:experiment(spec { vary = { seconds = { 5, 10 } } }, { dir = env.dir }))
    for _, c in ipairs(results(env.dir).cells) do
      -- the sandbox serves its 5-second fixture whatever was asked: the gallery says what the file holds
      assert.near(5.0, c.duration, 0.01)
    end
    assert.is_nil(experiment.mp4_duration(env.dir .. "/results.json"))
  end)

  it("after a shared parameter changes, the dry run and the budget count the videos of the new parameters", function()
    local kyte = { name = "kites", base = { prompt = "a red kyte over the dunes", seconds = 5 }, vary = { seed = { 1, 2, 3 } } }
    assert.equals(3, assert(env.client:experiment(kyte, { dir = env.dir, max_videos = 3 })).made)
    local kite = { name = "kites", base = { prompt = "a red kite over the dunes", seconds = 5 }, vary = { seed = { 1, 2, 3 } } }
    local dry = assert(env.client:experiment(kite, { dir = env.dir, dry_run = true }))
    assert.equals(3, dry.to_pay)
    assert.equals(15, dry.to_pay_seconds)
    local _, err = env.client:experiment(kite, { dir = env.dir, max_videos = 2 })
    assert.equals("max_videos", err.field)
    assert.truthy(err.message:find("3 videos (15 s)", 1, true), err.message)
    assert.equals(3, env.sb:stats().creates)
    -- the files of finished cells moved away: downloaded again, never paid again
    assert(os.execute("rm -r " .. env.dir .. "/videos"))
    local moved = assert(env.client:experiment(kyte, { dir = env.dir, dry_run = true }))
    assert.equals(0, moved.to_pay)
    local again = assert(env.client:experiment(kyte, { dir = env.dir, max_videos = 0 }))
    assert.equals(0, again.paid)
    assert.equals(3, env.sb:stats().creates)
    for _, c in ipairs(results(env.dir).cells) do assert.equals(h.fixture(), h.read(env.dir .. "/" .. c.video)) end
  end)

  it("a cell whose parameters changed is a new cell: a new file, and the old video never shown under them", function()
    local five = { name = "len", base = { prompt = "a paper boat", seconds = 5 }, vary = { seed = { 1, 2 } } }
    assert(env.client:experiment(five, { dir = env.dir }))
    local old = {}
    for _, c in ipairs(results(env.dir).cells) do old[c.task_id], old[c.video] = true, true end
    local ten = { name = "len", base = { prompt = "a paper boat", seconds = 10 }, vary = { seed = { 1, 2 } } }
    local dry = assert(env.client:experiment(ten, { dir = env.dir, dry_run = true }))
    assert.equals(2, dry.to_pay)
    for _, t in ipairs(dry.takes) do
      assert.is_nil(t.task_id)
      assert.is_nil(old[t.video], t.video)
    end
    -- a run refused by batch before it starts (a file of someone else's in the way) leaves the gallery alone
    local gallery_before, results_before = h.read(env.dir .. "/index.html"), h.read(env.dir .. "/results.json")
    h.write(env.dir .. "/" .. dry.takes[1].video, "someone else's")
    local _, err = env.client:experiment(ten, { dir = env.dir })
    assert.truthy(err.message:find("did not make it", 1, true), err.message)
    assert.equals(gallery_before, h.read(env.dir .. "/index.html"))
    assert.equals(results_before, h.read(env.dir .. "/results.json"))
    assert.equals(2, env.sb:stats().creates)
    -- with overwrite (--force) it goes on, and each 10 s cell shows its own new task
    local report = assert(env.client:experiment(ten, { dir = env.dir, overwrite = true }))
    assert.equals(2, report.made)
    for _, c in ipairs(results(env.dir).cells) do
      assert.equals(10, c.seconds)
      assert.is_nil(old[c.task_id], c.task_id)
      assert.equals(241, env.sb:tasks()[c.task_id].body.frames)
      assert.equals(h.fixture(), h.read(env.dir .. "/" .. c.video))
    end
  end)

  it("a retake whose create never happened is continued by the same retake, not paid twice", function()
    assert(env.client:experiment(spec(), { dir = env.dir }))
    local id = "animal=owl,place=dawn,seed=2"
    -- the retake's create is refused (nothing is made), as if the run had stopped before it
    env.sb:faults { path = "^/v1/videos$", method = "POST", fault = "status", status = 400, count = 1 }
    local first = assert(env.client:experiment(spec(), { dir = env.dir, retake = id }))
    assert.equals(1, first.errors)
    assert.equals(4, env.sb:stats().creates)
    local again = assert(env.client:experiment(spec(), { dir = env.dir, retake = id }))
    assert.equals(1, again.made)
    assert.equals(5, #again.takes)
    assert.equals(5, env.sb:stats().creates)
    -- once that take is made, the same command adds the next one
    local third = assert(env.client:experiment(spec(), { dir = env.dir, retake = id }))
    assert.equals(6, #third.takes)
    assert.equals(6, env.sb:stats().creates)
  end)

  it("two extra cells whose ids clean up to one file name keep their own videos, in any order", function()
    local function two(reverse)
      local a, b = { id = "a/b", prompt = "slash cell" }, { id = "a_b", prompt = "underscore cell" }
      return { name = "ids", base = { seconds = 5 }, cells = reverse and { b, a } or { a, b } }
    end
    assert(env.client:experiment(two(false), { dir = env.dir }))
    local function by_id()
      local t = {}
      for _, c in ipairs(results(env.dir).cells) do t[c.id] = c end
      return t
    end
    local first = by_id()
    assert.are_not.equal(first["a/b"].video, first["a_b"].video)
    assert(env.client:experiment(two(true), { dir = env.dir }))
    local second = by_id()
    assert.equals(2, env.sb:stats().creates)
    for _, id in ipairs { "a/b", "a_b" } do
      assert.equals(first[id].video, second[id].video)
      assert.equals(first[id].task_id, second[id].task_id)
      assert.equals(first[id].prompt, env.sb:tasks()[second[id].task_id].body.prompt)
    end
  end)

  it("with cells and no vary, the grid is exactly the cells: no hidden cell of base alone", function()
    local only = assert(env.client:experiment({ name = "only", cells = { { id = "one", prompt = "a lamp" },
      { id = "two", prompt = "a chair", seed = 3 } } }, { dir = env.dir }))
    assert.equals(2, only.made)
    assert.equals(2, env.sb:stats().creates)
    local other = h.tmpdir()
    local with_base = assert(env.client:experiment({ name = "b", base = { prompt = "a lamp", seconds = 5 },
      cells = { { id = "long", seconds = 10 } } }, { dir = other }))
    assert.equals(1, #with_base.takes)
    assert.equals(1, with_base.made)
    assert.equals(3, env.sb:stats().creates)
    assert.equals("long", results(other).cells[1].id)
  end)

  it("a slow ffmpeg does not hold up the run: each poster has a time limit", function()
    local slow = env.dir .. "/slow-ffmpeg"
    h.write(slow, "#!/bin/sh\nexec sleep 60\n")
    assert(os.execute("chmod +x " .. slow))
    local t0 = core.now()
    local report = assert(env.client:experiment(spec(), { dir = env.dir .. "/x", ffmpeg = slow, poster_timeout = 1 }))
    assert.equals(4, report.made)
    assert.is_true(core.now() - t0 < 20, "the run waited for ffmpeg")
    for _, c in ipairs(results(env.dir .. "/x").cells) do
      assert.equals("saved", c.status)
      assert.is_nil(c.poster)
    end
    assert.equals(0, count(h.read(env.dir .. "/x/index.html"), "poster="))
  end)

  it("the card of an extra cell shows its own parameters, the grid's axes among them", function()
    assert(env.client:experiment(spec { cells = { { id = "hand-picked", animal = "heron", place = "noon", seed = 9,
      aspect_ratio = "1:1" } } }, { dir = env.dir }))
    local html = h.read(env.dir .. "/index.html")
    local card = html:match('<article[^>]-data%-label="hand%-picked".-</article>')
    assert.truthy(card, html)
    assert.truthy(card:find("<b>seed</b>9", 1, true), card)
    assert.truthy(card:find("<b>aspect_ratio</b>1:1", 1, true), card)
    assert.truthy(card:find("<b>animal</b>heron", 1, true), card)
    assert.truthy(card:find('<p class="prompt">a heron at noon</p>', 1, true), card)
  end)

  it("the copied command makes the same request, however the prompt is quoted", function()
    local prompt = [[it's a "test" of $HOME, `date` & \n; 千军万马]]
    assert(env.client:experiment({ base = { prompt = prompt, seed = 42, aspect_ratio = "9:16" } }, { dir = env.dir }))
    local cell = results(env.dir).cells[1]
    assert.equals(prompt, cell.params.prompt)
    local cmd = cell.command:gsub("^jimeng ", ("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng "):format(
      env.dir, env.sb.url, lua, proc.root)) .. " --interval 0.05 -q"
    local ok, out = proc.run(cmd, proc.own_env)
    assert.is_true(ok, out)
    local bodies = {}
    for _, t in pairs(env.sb:tasks()) do bodies[#bodies + 1] = t.body end
    assert.equals(2, #bodies)
    assert.same(bodies[1], bodies[2])
    assert.equals(prompt, bodies[1].prompt)
  end)
end)

describe("jimeng experiment (the command)", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, client = false, reset = true, dir = "each" }

  local function jimeng_cmd(args)
    return ("cd %s && JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng experiment %s"):format(env.dir, env.sb.url, lua,
      proc.root, args)
  end

  -- Runs `jimeng experiment args`, which must succeed (succeeds true) or fail (false); returns its output.
  local function run(args, succeeds)
    local ok, out = proc.run(jimeng_cmd(args), proc.own_env)
    if succeeds then assert.is_true(ok, out) else assert.is_false(ok) end
    return out
  end

  local SPEC = [[return { name = "six", base = { prompt = "a {animal} running", seconds = 5 },
    vars = { animal = { "fox", "hare", "lynx" } }, vary = { seed = { 1, 2 } } }]]

  it("--dry-run prints the grid, the videos it would pay for and their seconds, and creates nothing", function()
    h.write(env.dir .. "/six.lua", SPEC)
    local out = run("six.lua --dry-run", true)
    assert.truthy(out:find("6 cells (3 animal x 2 seed)", 1, true), out)
    assert.truthy(out:find("animal=lynx,seed=2", 1, true), out)
    assert.truthy(out:find("would pay for 6 videos, 30 s in total", 1, true), out)
    assert.equals(0, env.sb:stats().creates)
    assert.falsy(h.exists(env.dir .. "/six/journal.jsonl"))
  end)

  it("refuses above --max-videos without --yes (exit 2), and a JSON spec works the same", function()
    h.write(env.dir .. "/six.json", cjson.encode { name = "six", base = { prompt = "a {animal}" },
      vars = { animal = { "fox", "hare", "lynx" } }, vary = { seed = { 1, 2 } } })
    local out = run("six.json --max-videos 5 --interval 0.05", false)
    assert.truthy(out:find("would pay for 6 videos (30 s), above the limit of 5", 1, true), out)
    assert.equals(0, env.sb:stats().creates)
    out = run("six.json --max-videos 5 --yes --interval 0.05 -o out --rows seed --cols animal", true)
    assert.truthy(out:find("6 videos: 6 made, 0 already made, 0 failed, 0 unknown, 0 errors; paid for 6 videos (30 s)", 1, true), out)
    assert.equals(6, env.sb:stats().creates)
    local r = results(env.dir .. "/out")
    assert.equals("seed", r.rows)
    assert.equals("animal", r.cols)
    out = run("six.json -o out --rows weather", false)
    assert.truthy(out:find("--rows weather is not an axis of this experiment (axes: animal, seed)", 1, true), out)
    out = run("six.json -o out --rows seed --cols seed", false)
    assert.truthy(out:find("rows and cols are both seed", 1, true), out)
    assert.equals(6, env.sb:stats().creates)
  end)

  it("stopped with SIGTERM: exits 130 saying how to continue, no card left running, and the same command ends it", function()
    env.sb:config { queue_seconds = 0.05, process_seconds = 3 }
    h.write(env.dir .. "/six.lua", SPEC)
    local cmd = jimeng_cmd("six.lua -o out -j 2 --interval 0.05 --no-posters")
    local pid = io.popen(("%ssh -c '%s 2>%s/err; echo $? >%s/code' >/dev/null 2>&1 & echo $!"):format(proc.own_env,
      cmd:gsub("'", "'\\''"), env.dir, env.dir)):read("*l")
    local deadline = core.now() + 20
    repeat
      core.sleep(0.02)
      local journal = h.read(env.dir .. "/out/journal.jsonl") or ""
      local created = count(journal, '"event":"created"')
    until (created >= 2 and created == count(journal, '"event":"sending"')) or core.now() > deadline
    os.execute(proc.clean_env .. "pkill -TERM -P " .. pid) -- pkill is not ours: no sanitizer preloaded
    while not (h.read(env.dir .. "/code") or ""):find("%d") and core.now() < deadline do core.sleep(0.02) end
    local err = h.read(env.dir .. "/err") or ""
    assert.equals("130", (h.read(env.dir .. "/code") or ""):match("%d+"), err)
    assert.truthy(err:find("nothing is lost: run the same command again", 1, true), err)
    assert.truthy(err:find("interrupted", 1, true), err)
    local r = results(env.dir .. "/out")
    assert.is_false(r.live)
    for _, c in ipairs(r.cells) do
      assert.truthy(c.status == "saved" or c.status == "interrupted", c.status)
    end
    assert.falsy(h.read(env.dir .. "/out/index.html"):find('data-status="processing"', 1, true))
    local ok, out = proc.run(cmd, proc.own_env)
    assert.is_true(ok, out)
    assert.equals(6, env.sb:stats().creates)
    for _, c in ipairs(results(env.dir .. "/out").cells) do assert.equals("saved", c.status) end
  end)

  it("a second run on a directory in use is refused before it touches a file, and says why", function()
    h.write(env.dir .. "/six.lua", SPEC)
    run("six.lua -o out --interval 0.05", true)
    local gallery, res = h.read(env.dir .. "/out/index.html"), h.read(env.dir .. "/out/results.json")
    local lock = assert(core.lock(env.dir .. "/out/journal.jsonl")) -- as another run holds it
    h.write(env.dir .. "/six.lua", SPEC:gsub("seed = { 1, 2 }", "seed = { 1, 2, 3 }"))
    local ok, out = proc.run(jimeng_cmd("six.lua -o out --interval 0.05"), proc.own_env)
    lock:unlock()
    assert.is_false(ok)
    assert.truthy(out:find("in use by another run", 1, true), out)
    assert.truthy(out:find("wait for it to end", 1, true), out)
    assert.falsy(out:find("writable", 1, true), out)
    assert.equals(gallery, h.read(env.dir .. "/out/index.html"))
    assert.equals(res, h.read(env.dir .. "/out/results.json"))
    assert.equals(6, env.sb:stats().creates)
  end)

  it("--force replaces a file the journal did not make; --dry-run --json gives the grid; one video is one video", function()
    h.write(env.dir .. "/one.lua", [[return { name = "one", base = { prompt = "a single heron", seconds = 5 } }]])
    local out = run("one.lua -o out --dry-run", true)
    assert.truthy(out:find("1 cell (no axes), 1 video with its takes", 1, true), out)
    assert.truthy(out:find("would pay for 1 video, 5 s", 1, true), out)
    out = run("one.lua -o out --dry-run --json -q", true)
    local plan = cjson.decode(out:match("(%b{})"))
    assert.equals(1, #plan.grid)
    assert.equals("base", plan.grid[1].id)
    assert.is_true(plan.grid[1].to_pay)
    assert.equals("a single heron", plan.grid[1].params.prompt)
    os.execute("mkdir -p " .. env.dir .. "/out/videos")
    h.write(env.dir .. "/out/" .. plan.grid[1].video, "an older file")
    out = run("one.lua -o out --interval 0.05", false)
    assert.truthy(out:find("--force", 1, true), out)
    assert.equals(0, env.sb:stats().creates)
    out = run("one.lua -o out --interval 0.05 --force", true)
    assert.truthy(out:find("paid for 1 video (5 s)", 1, true), out)
    assert.equals(h.fixture(), h.read(env.dir .. "/out/" .. plan.grid[1].video))
    -- the budget's refusal says what to do about the budget
    h.write(env.dir .. "/one.lua", [[return { name = "one", base = { prompt = "a single heron" }, vary = { seed = { 1, 2 } } }]])
    out = run("one.lua -o out --max-videos 1", false)
    assert.truthy(out:find("what to do: see what it would make with --dry-run, then pass --yes", 1, true), out)
  end)

  it("reads a spec's local images relative to the spec file, wherever it is run from", function()
    os.execute("mkdir -p " .. env.dir .. "/specs")
    local png = images.png(env.dir .. "/specs/frame.png", 640, 360)
    h.write(env.dir .. "/specs/still.lua", [[return { name = "still", base = { prompt = "the frame comes alive", image = "frame.png" } }]])
    run("specs/still.lua -o out --interval 0.05 --no-posters", true)
    assert.equals(1, env.sb:stats().creates)
    local body
    for _, t in pairs(env.sb:tasks()) do body = t.body end
    local sent = cjson.encode(body)
    local b64 = h.base64_file(png)
    assert.truthy(sent:find(b64:sub(1, 40), 1, true), sent:sub(1, 300))
  end)

  it("killed with SIGKILL mid-run, then run again: every cell made, none paid twice", function()
    env.sb:config { queue_seconds = 0.05, process_seconds = 1.5 }
    h.write(env.dir .. "/six.lua", SPEC)
    local cmd = jimeng_cmd("six.lua -o out -j 2 --interval 0.05")
    local p = io.popen(("%ssh -c '%s >%s/first.log 2>&1 & echo $!'"):format(proc.own_env, cmd:gsub("'", "'\\''"), env.dir))
    local pid = p:read("*l")
    p:close()
    -- kill it once two tasks are created and no create is in flight (both wait 1.5 s for their video)
    local journal
    local deadline = core.now() + 20
    repeat
      core.sleep(0.02)
      journal = h.read(env.dir .. "/out/journal.jsonl") or ""
      local created = count(journal, '"event":"created"')
    until (created >= 2 and created == count(journal, '"event":"sending"')) or core.now() > deadline
    os.execute("kill -9 " .. pid)
    assert.equals(2, count(journal, '"event":"created"'), journal)
    assert.equals(0, count(journal, '"event":"saved"'), journal)
    local live = h.read(env.dir .. "/out/index.html")
    assert.truthy(live:find('data-live="1"', 1, true))
    local ok, out = proc.run(cmd, proc.own_env)
    assert.is_true(ok, out)
    assert.truthy(out:find("paid for 4 videos (20 s)", 1, true), out)
    assert.equals(6, env.sb:stats().creates)
    local r = results(env.dir .. "/out")
    assert.equals(6, #r.cells)
    assert.is_false(r.live)
    for _, c in ipairs(r.cells) do
      assert.equals("saved", c.status, c.id)
      assert.equals(h.fixture(), h.read(env.dir .. "/out/" .. c.video))
    end
  end)
end)
