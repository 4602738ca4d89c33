-- -v of a download that a gateway redirects (new-api's 302 to a signed URL on another host): the hop is shown,
-- the signed URL's query (a secret) is not.
local h = require "spec.support.helpers"
local trace = require "jimeng.trace"

describe("the trace of a redirected download", function()
  local env = h.with_sandbox { sandbox = { dialect = "new-api", queue_seconds = 0, process_seconds = 0 },
    client = { dialect = "new-api" }, dir = "setup" }

  it("shows the redirect and where it led, the query redacted", function()
    local events = {}
    local c = h.client(env.sb, { dialect = "new-api", trace = function(ev) events[#events + 1] = ev end })
    local task = assert(c:create { prompt = "a hop" })
    assert(c:wait(task.id, { interval = 0.01 }))
    env.sb:config { content_redirect = true }
    assert(c:download(task.id, env.dir .. "/hop.mp4"))
    local ev
    for _, e in ipairs(events) do if e.what == "download" then ev = e end end
    assert.equals(1, ev.redirects)
    assert.truthy(ev.final_url:find("^http://localhost:%d+/cdn/videos/" .. task.id .. "%?%[redacted%]$"), ev.final_url)
    local line = table.concat(trace.format(ev, 1), "\n")
    assert.truthy(line:find("after 1 redirect to http://localhost:", 1, true), line)
    assert.falsy(line:find("sig=", 1, true), line)
    -- a download that is not redirected says nothing of it
    env.sb:config { content_redirect = false }
    events = {}
    assert(c:download(task.id, env.dir .. "/direct.mp4"))
    for _, e in ipairs(events) do if e.what == "download" then ev = e end end
    assert.is_nil(ev.redirects)
    assert.falsy(table.concat(trace.format(ev, 1), "\n"):find("redirect", 1, true))
    c:close()
  end)
end)
