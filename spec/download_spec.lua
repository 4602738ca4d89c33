-- Downloads: streamed to <path>.part, renamed only when complete; a failed one leaves no file at path.
local h = require "spec.support.helpers"

describe("download", function()
  local sb, client, dir
  setup(function()
    sb = h.sandbox { queue_seconds = 0, process_seconds = 0 }
    client = h.client(sb)
    dir = h.tmpdir()
  end)
  teardown(function()
    sb:stop()
    h.cleanup()
  end)

  local function finished_task(prompt)
    local task = assert(client:create { prompt = prompt or "a finished video" })
    assert(client:wait(task.id, { interval = 0.01 }))
    return task
  end

  it("of a task that is not finished fails with the server's message and leaves no file", function()
    sb:config { queue_seconds = 30 }
    local task = assert(client:create { prompt = "still queued" })
    sb:config { queue_seconds = 0 }
    local path = dir .. "/early.mp4"
    local info, err = client:download(task.id, path)
    assert.is_nil(info)
    assert.equals("invalid_argument", err.kind)
    assert.equals(400, err.status)
    assert.truthy(err.message:find("not ready"))
    assert.equals(task.id, err.task_id)
    assert.is_false(h.exists(path))
    assert.is_false(h.exists(path .. ".part"))
  end)

  it("of an unknown task is not_found and leaves no file", function()
    local path = dir .. "/missing.mp4"
    local info, err = client:download("98765432109876543210", path)
    assert.is_nil(info)
    assert.equals("not_found", err.kind)
    assert.is_false(h.exists(path))
  end)

  it("into a directory that does not exist is an io error and leaves nothing", function()
    local task = finished_task()
    local path = dir .. "/no/such/dir/v.mp4"
    local info, err = client:download(task.id, path)
    assert.is_nil(info)
    assert.equals("io", err.kind)
    assert.is_false(h.exists(path))
  end)

  it("overwrites an older file at the path only once the new one is complete", function()
    local task = finished_task()
    local path = dir .. "/replace.mp4"
    h.write(path, "old contents")
    assert(client:download(task.id, path))
    assert.equals(h.fixture(), h.read(path))
  end)

  it("reports progress, ending with the whole size", function()
    local task = finished_task()
    local calls = {}
    assert(client:download(task.id, dir .. "/progress.mp4", {
      on_progress = function(got, total) calls[#calls + 1] = { got, total } end,
    }))
    local last = calls[#calls]
    assert.equals(#h.fixture(), last[1])
    assert.equals(#h.fixture(), last[2])
  end)
end)
