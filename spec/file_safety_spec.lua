-- The files a paid run writes, checked before it pays (issue: an outside tester's file-safety findings): every
-- name a download creates beside its output fits NAME_MAX and PATH_MAX; a journal or a ledger that is some
-- other file (a video) is refused, never appended to; the ledger is never a journal, and a wait for its lock
-- ends on Ctrl-C; an experiment does not replace a user's own index.html; a batch job's output is never the
-- jobs file. Money is counted at the sandbox (its creates), through the library and the jimeng command.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local lsupport = require "spec.support.ledger"
local core = require "jimeng.core"
local cjson = require "cjson"

local function md5(path)
  local p = io.popen(proc.clean_env .. "md5sum '" .. path .. "'")
  local out = p:read("*l")
  p:close()
  return out and out:match("^%x+")
end

describe("a name too long for what the download writes beside it", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }
  local function jimeng(args) return lsupport.jimeng(env, args) end

  -- X.part.json is 255 bytes and passed every check; X.part.json.tmp (259) is what the download writes first
  it("-o of 245 bytes is refused before the create (the record's .tmp would be 259); 241 are saved", function()
    local code, _, err = jimeng("generate 'long name' --interval 0.05 -o " .. ("c"):rep(241) .. ".mp4")
    assert.equals(2, code, err)
    assert.truthy(err:find("too long: at most 241 bytes", 1, true), err)
    assert.truthy(err:find("would be 259", 1, true), err)
    assert.truthy(err:find("nothing was paid for", 1, true), err)
    assert.equals(0, env.sb:stats().creates)
    local name = ("c"):rep(237) .. ".mp4" -- 241 bytes: its .part.json.tmp is 255
    code, _, err = jimeng("generate 'long name' --interval 0.05 -o " .. name)
    assert.equals(0, code, err)
    assert.truthy(core.file_size(env.dir .. "/" .. name))
    assert.equals(1, env.sb:stats().creates)
  end)

  it("a template whose name grows too long, a batch label of 241 bytes: refused before paying", function()
    local code, _, err = jimeng("generate '" .. ("p"):rep(150) .. "' --interval 0.05 -o '{prompt}{prompt}.mp4'")
    assert.equals(2, code, err)
    assert.truthy(err:find("too long", 1, true), err)
    h.write(env.dir .. "/jobs.jsonl", cjson.encode { prompt = "a fox", label = ("l"):rep(241) } .. "\n")
    code, _, err = jimeng("batch jobs.jsonl --journal run.jsonl -o vids/ --interval 0.05")
    assert.equals(2, code, err)
    assert.truthy(err:find("too long", 1, true), err)
    -- {id} is not known before the create: it counts as the vendor's 20 digits
    code, _, err = jimeng("generate 'a fox' --interval 0.05 -o '" .. ("c"):rep(220) .. "{id}.mp4'")
    assert.equals(2, code, err)
    assert.truthy(err:find("too long", 1, true), err)
    assert.equals(0, env.sb:stats().creates)
  end)

  it("a path that fits PATH_MAX but whose record's .tmp would not is refused before paying (library)", function()
    local dir = env.dir
    while #dir < 3850 do dir = dir .. "/" .. ("d"):rep(200) end
    assert(core.mkdirs(dir))
    local path = dir .. "/" .. ("v"):rep(4085 - #dir - 1 - 4) .. ".mp4"
    assert.equals(4085, #path)
    local r, err = env.client:generate({ prompt = "a fox" }, { output = path, interval = 0.05 })
    h.failed("invalid_argument", r, err)
    assert.truthy(err.message:find("path", 1, true) and err.message:find("too long", 1, true), err.message)
    assert.equals(0, env.sb:stats().creates)
  end)
end)

describe("a journal or a ledger that is another file", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }
  local function jimeng(args, extra) return lsupport.jimeng(env, args, extra) end

  it("a video given as the journal or as the ledger is refused, unchanged, and nothing is paid for", function()
    h.write(env.dir .. "/keep.mp4", h.mp4(3000))
    local before = md5(env.dir .. "/keep.mp4")
    h.write(env.dir .. "/j.jsonl", '{"prompt":"a fox"}\n')
    local code, _, err = jimeng("batch j.jsonl --journal keep.mp4 -o vids/ --interval 0.05")
    assert.equals(2, code, err)
    assert.truthy(err:find("keep.mp4 exists and is not a journal", 1, true), err)
    code, _, err = jimeng("generate 'a fox' -o fox.mp4 --interval 0.05", "JIMENG_LEDGER=" .. env.dir .. "/keep.mp4")
    assert.equals(2, code, err)
    assert.truthy(err:find("keep.mp4 exists and is not a ledger", 1, true), err)
    local r, lerr = h.client(env.sb, { ledger = env.dir .. "/keep.mp4" }):create { prompt = "a fox" }
    h.failed("invalid_argument", r, lerr)
    assert.equals(before, md5(env.dir .. "/keep.mp4"))
    assert.equals(0, env.sb:stats().creates)
    -- an empty file is a journal yet to be written
    h.write(env.dir .. "/empty.jsonl", "")
    code, _, err = jimeng("batch j.jsonl --journal empty.jsonl -o vids/ --interval 0.05")
    assert.equals(0, code, err)
    assert.equals(1, env.sb:stats().creates)
  end)

  it("the ledger is refused as a journal, by what file it is (a hard link to an empty one too)", function()
    local book = env.dir .. "/state/jimeng/ledger.jsonl"
    assert(core.mkdirs(env.dir .. "/state/jimeng"))
    h.write(book, "")
    assert(os.execute(proc.clean_env .. "ln '" .. book .. "' '" .. env.dir .. "/other-name.jsonl'"))
    h.write(env.dir .. "/j.jsonl", '{"prompt":"a fox"}\n')
    for _, journal in ipairs { book, "other-name.jsonl" } do
      -- (it took the ledger's lock for its journal, then waited for it for every ledger line: for ever)
      local code, _, err = jimeng("batch j.jsonl --journal " .. journal .. " -o vids/ --interval 0.05",
        "timeout -s KILL " .. proc.scaled(20) .. " ")
      assert.equals(2, code, err)
      assert.truthy(err:find("not the ledger of paid tasks", 1, true), err)
    end
    assert.equals("", h.read(book))
    assert.equals(0, env.sb:stats().creates)
  end)

  it("a wait for the ledger's lock says what it waits for, and Ctrl-C ends it (download; generate before paying)",
    function()
    local task = assert(h.client(env.sb, { ledger = false }):create { prompt = "a fox" })
    assert(h.client(env.sb, { ledger = false }):wait(task.id, { interval = 0.05 }))
    local book = env.dir .. "/state/jimeng/ledger.jsonl"
    assert(core.mkdirs(env.dir .. "/state/jimeng"))
    h.write(book, "")
    -- another process holds the ledger's lock (as a run that took it as its journal did, for good)
    local holder = io.popen((proc.clean_env .. "python3 -c 'import fcntl,time,sys; f=open(sys.argv[1],\"a\"); " ..
      "fcntl.flock(f, fcntl.LOCK_EX); open(sys.argv[2],\"w\").close(); time.sleep(60)' %s %s/held & echo $!")
      :format(book, env.dir)):read("*l")
    local deadline = core.now() + 10
    while not core.file_id(env.dir .. "/held") and core.now() < deadline do core.sleep(0.02) end
    local function alive(pid)
      local r = os.execute(proc.clean_env .. "kill -0 " .. pid .. " 2>/dev/null")
      return r == true or r == 0
    end
    local outcomes = {}
    for i, args in ipairs { "download " .. task.id .. " -o fox.mp4", "generate 'a fox' -o fox2.mp4 --interval 0.05" } do
      local log = ("%s/bg%d.log"):format(env.dir, i)
      local cmd = ("cd %s && XDG_STATE_HOME=%s/state JIMENG_LEDGER= JIMENG_API_KEY=k JIMENG_BASE_URL=%s exec %s " ..
        "%s/bin/jimeng %s"):format(env.dir, env.dir, env.sb.url, proc.lua, proc.root, args)
      local pid = io.popen(("%ssh -c '%s >%s 2>&1 & echo $!'"):format(proc.own_env, cmd:gsub("'", "'\\''"), log))
        :read("*l")
      deadline = core.now() + proc.scaled(8)
      while not (h.read(log) or ""):find("waiting for the lock on", 1, true) and core.now() < deadline do
        core.sleep(0.05)
      end
      os.execute(proc.clean_env .. "kill -INT " .. pid)
      deadline = core.now() + proc.scaled(3)
      while alive(pid) and core.now() < deadline do core.sleep(0.05) end
      local hung = alive(pid)
      if hung then os.execute(proc.clean_env .. "kill -9 " .. pid) end
      outcomes[i] = { said = h.read(log) or "", hung = hung }
    end
    os.execute(proc.clean_env .. "kill " .. holder)
    for i, o in ipairs(outcomes) do
      assert.truthy(o.said:find("waiting for the lock on " .. book, 1, true), o.said)
      assert.is_false(o.hung, "a Ctrl-C did not end the wait for the ledger's lock: " .. i)
    end
    assert.equals(1, env.sb:stats().creates) -- the spec's own: the generate sent nothing
  end)
end)

describe("an experiment's files in a directory of the user's", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }
  local SPEC = { name = "s", base = { prompt = "a {animal}", seconds = 5 }, vars = { animal = { "fox" } } }

  it("an index.html or results.json no experiment made is refused before paying, unless overwrite", function()
    local site = env.dir .. "/site"
    assert(core.mkdirs(site))
    h.write(site .. "/index.html", "<html>my own page</html>\n")
    h.write(site .. "/results.json", '{"mine": true}\n')
    local r, err = env.client:experiment(SPEC, { dir = site, ffmpeg = false, interval = 0.05 })
    h.failed("invalid_argument", r, err)
    assert.truthy(err.message:find("index.html exists and no experiment made it", 1, true), err.message)
    os.remove(site .. "/index.html")
    r, err = env.client:experiment(SPEC, { dir = site, ffmpeg = false, interval = 0.05 })
    h.failed("invalid_argument", r, err)
    assert.truthy(err.message:find("results.json exists", 1, true), err.message)
    assert.equals('{"mine": true}\n', h.read(site .. "/results.json"))
    assert.equals(0, env.sb:stats().creates)
    -- its own files (a run's gallery with no journal any more) are its to rewrite; --force replaces the user's
    assert(env.client:experiment(SPEC, { dir = site, ffmpeg = false, interval = 0.05, overwrite = true }))
    assert.equals(1, env.sb:stats().creates)
    os.remove(site .. "/journal.jsonl")
    r, err = env.client:experiment(SPEC, { dir = site, ffmpeg = false, interval = 0.05 })
    -- the video it made is not this journal's any more (refused, as before); the gallery files are not the reason
    h.failed("invalid_argument", r, err)
    assert.falsy(err.message:find("no experiment made it", 1, true), err.message)
  end)
end)

describe("a batch job's output", function()
  local env = h.with_sandbox { sandbox = { queue_seconds = 0.05, process_seconds = 0.1 }, reset = true, dir = "each" }

  it("is never the jobs file, however it is spelt, --force or not; outside -o is allowed", function()
    -- job outputs are relative to -o: "../j.jsonl" is the jobs file; "../other.jsonl" a hard link to it
    local jobs = cjson.encode { prompt = "a fox", output = "../j.jsonl" } .. "\n"
    h.write(env.dir .. "/j.jsonl", jobs)
    assert(core.mkdirs(env.dir .. "/vids"))
    assert(os.execute(proc.clean_env .. "ln '" .. env.dir .. "/j.jsonl' '" .. env.dir .. "/vids/other.jsonl'"))
    local code, _, err = lsupport.jimeng(env, "batch j.jsonl --journal run.jsonl -o vids/ --force")
    assert.equals(2, code, err)
    assert.truthy(err:find("is the jobs file", 1, true), err)
    jobs = cjson.encode { prompt = "a fox", output = "other.jsonl" } .. "\n"
    h.write(env.dir .. "/j.jsonl", jobs)
    code, _, err = lsupport.jimeng(env, "batch j.jsonl --journal run.jsonl -o vids/ --force")
    assert.equals(2, code, err)
    assert.truthy(err:find("is the jobs file", 1, true), err)
    assert.equals(jobs, h.read(env.dir .. "/j.jsonl"))
    assert.equals(0, env.sb:stats().creates)
    h.write(env.dir .. "/k.jsonl", cjson.encode { prompt = "a fox", output = "../out.mp4" } .. "\n")
    code, _, err = lsupport.jimeng(env, "batch k.jsonl --journal run.jsonl -o vids/ --interval 0.05")
    assert.equals(0, code, err)
    assert.truthy(core.file_size(env.dir .. "/out.mp4"))
    assert.equals(1, env.sb:stats().creates)
  end)
end)
