-- A download from a new-api gateway, which streams the video chunked (no Content-Length), under the same
-- faults as the vendor page's gateway: the sandbox sends one body in two framings, faults and rate alike.
local h = require "spec.support.helpers"

describe("a chunked download (the new-api sandbox) under faults", function()
  local env = h.with_sandbox { sandbox = { dialect = "new-api", queue_seconds = 0, process_seconds = 0 },
    client = { dialect = "new-api" }, dir = "setup" }
  local task, SIZE, CONTENT
  setup(function()
    SIZE = 3 * 1024 * 1024 + 17
    task = assert(env.client:create { prompt = "big one sandbox:bytes=" .. SIZE })
    assert(env.client:wait(task.id, { interval = 0.01 }))
    CONTENT = "^/v1/videos/" .. task.id .. "/content$" -- ids are letters, digits and _
  end)

  local function assert_video(path)
    local data = assert(h.read(path))
    assert.equals(SIZE, #data)
    for i = 56, SIZE - 1, 4093 do
      if data:byte(i + 1) ~= h.synthetic_byte(i) then error("wrong byte at " .. i) end
    end
  end

  it("a reset mid-body interrupts the download, and the next download resumes it", function()
    local path = env.dir .. "/reset.mp4"
    env.sb:faults { path = CONTENT, fault = "reset_mid_body", after_bytes = 1000000 }
    local c = h.client(env.sb, { max_retries = 0, dialect = "new-api" })
    local err = h.download_failed("network", { path }, c:download(task.id, path))
    assert.equals(task.id, err.task_id)
    local partial = #h.read(path .. ".part")
    assert.is_true(partial > 0 and partial < SIZE, tostring(partial))
    local log = h.api_requests(env.sb, CONTENT)
    assert.equals("reset_mid_body", log[#log].fault)
    local again = assert(env.client:download(task.id, path))
    assert.equals(partial, again.resumed_from)
    assert_video(path)
    log = h.api_requests(env.sb, CONTENT)
    assert.equals(("bytes=%d-"):format(partial), log[#log].headers.range)
    assert.is_false(h.exists(path .. ".part"))
  end)

  it("a body that ends without its last chunk is resumed, never saved as if whole", function()
    local path = env.dir .. "/short.mp4"
    local before = #h.api_requests(env.sb, CONTENT)
    env.sb:faults { path = CONTENT, fault = "short_body", after_bytes = 2000000 }
    assert(env.client:download(task.id, path))
    assert_video(path)
    local log = h.api_requests(env.sb, CONTENT)
    assert.equals(2, #log - before)
    assert.truthy(log[#log].headers.range, "the second request resumes")
  end)
end)
