-- A video end to end against the sandbox: create, status, wait, download, generate.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local jimeng = require "jimeng"

describe("a text-to-video task", function()
  local env = h.with_sandbox { dir = "setup" }

  it("is created with the vendor page's body and comes back as a task with a string id", function()
    local task = assert(env.client:create { prompt = "千军万马奔腾在草原上,阳光明媚,高清画质", seconds = 5, aspect_ratio = "16:9" })
    assert.is_string(task.id)
    assert.equals("in_queue", task.status)
    assert.equals("in_queue", task.raw_status)
    assert.is_number(task.created_at)
    assert.is_string(task.request_id)
    local creates = h.api_requests(env.sb, "^/v1/videos$")
    local sent = creates[#creates].body
    assert.same({
      model = "jimeng-video-3.0-pro", prompt = "千军万马奔腾在草原上,阳光明媚,高清画质",
      req_key = "jimeng_ti2v_v30_pro", seed = -1, frames = 121, aspect_ratio = "16:9",
    }, sent)
  end)

  it("sends the bearer key, JSON content type and a User-Agent naming jimeng, libcurl and Lua", function()
    assert(env.client:create { prompt = "a cat" })
    local creates = h.api_requests(env.sb, "^/v1/videos$")
    local headers = creates[#creates].headers
    assert.equals("Bearer test-key", headers.authorization)
    assert.equals("application/json", headers["content-type"])
    local ua = headers["user-agent"]
    assert.truthy(ua:find("^jimeng/" .. jimeng._VERSION:gsub("%.", "%%.") .. " libcurl/%d"))
    assert.truthy(ua:find("Lua") or ua:find("LuaJIT"))
  end)

  it("walks in_queue -> processing -> completed while waited on, reporting each status once", function()
    local task = assert(env.client:create { prompt = "waves on a beach" })
    local seen = {}
    local done = assert(env.client:wait(task.id, { interval = 0.02, on_status = function(t) seen[#seen + 1] = t.status end }))
    assert.equals("completed", done.status)
    assert.equals(task.id, done.id)
    assert.equals("completed", seen[#seen])
    local count = {}
    for _, s in ipairs(seen) do count[s] = (count[s] or 0) + 1 end
    for s, n in pairs(count) do assert.equals(1, n, s .. " reported more than once") end
  end)

  it("downloads the finished video: the same bytes the server holds, in a playable MP4 container", function()
    local task = assert(env.client:create { prompt = "a red kite" })
    assert(env.client:wait(task.id, { interval = 0.02 }))
    local path = env.dir .. "/kite.mp4"
    local info = assert(env.client:download(task.id, path))
    assert.equals(path, info.path)
    local data = h.read(path)
    assert.equals(h.fixture(), data)
    assert.equals(#data, info.bytes)
    assert.equals("ftyp", data:sub(5, 8))
    assert.truthy(data:find("moov", 1, true))
    assert.is_false(h.exists(path .. ".part"))
  end)

  it("generates in one call: create, wait and download, returning the path and the finished task", function()
    local statuses = {}
    local result = assert(env.client:generate({ prompt = "a paper boat", seconds = 10 }, {
      output_dir = env.dir, on_status = function(t) statuses[#statuses + 1] = t.status end,
    }))
    assert.equals(env.dir .. "/jimeng_video_" .. result.task.id .. ".mp4", result.path)
    assert.equals("completed", result.task.status)
    assert.equals(h.fixture(), h.read(result.path))
    assert.equals("in_queue", statuses[1])
    assert.equals("completed", statuses[#statuses])
    local tasks = env.sb:tasks()
    assert.equals(241, tasks[result.task.id].body.frames)
  end)

  it("works through the module-level functions on a client from JIMENG_API_KEY / JIMENG_BASE_URL", function()
    local lua = proc.plain_lua
    local script = [[
      local jimeng = require "jimeng"
      local t = assert(jimeng.create { prompt = "env client" })
      local done = assert(jimeng.wait(t.id, { interval = 0.02 }))
      io.write(done.status)
    ]]
    -- the same module as this process, sanitizer and all; under make asan the child skips the leak check
    -- (this process does it for the same code), as LeakSanitizer's tracer can crash in short-lived children
    local cmd = ("ASAN_OPTIONS=\"${ASAN_OPTIONS:-}:detect_leaks=0\" JIMENG_API_KEY=env-key JIMENG_BASE_URL=%q %s -e %q")
      :format(env.sb.url, lua, script)
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    assert.equals("completed", out)
    local creates = h.api_requests(env.sb, "^/v1/videos$")
    assert.equals("Bearer env-key", creates[#creates].headers.authorization)
  end)
end)
