-- The command's config file and profiles (flag > environment > profile > default, as `jimeng config show`
-- says and as the requests show), -v and -vv (every request, never the key), doctor's proxy hop, the lines
-- of a download in a log, plain slashes in --json. The command runs as a user runs it: a subprocess against
-- the sandbox, with a config file of its own (JIMENG_CONFIG, or XDG_CONFIG_HOME of a temporary directory).
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"

local KEY = "sk-verbose-secret-0123456789abcdef"

describe("the command's config file", function()
  local sb, dir
  setup(function()
    sb = h.sandbox { queue_seconds = 0.05, process_seconds = 0.1 }
    dir = h.tmpdir()
  end)
  teardown(function()
    sb:stop()
    h.cleanup()
  end)

  -- Runs `jimeng <args>` in dir with XDG_CONFIG_HOME=dir/xdg and the given environment (a string of
  -- assignments); returns the exit code, stdout and stderr.
  local function jimeng(args, env)
    local errfile = dir .. "/stderr"
    local p = io.popen(("%scd %s && unset JIMENG_API_KEY JIMENG_BASE_URL JIMENG_CONFIG JIMENG_PROFILE NO_COLOR; " ..
      "XDG_CONFIG_HOME=%s/xdg %s %s %s/bin/jimeng %s 2>%s; echo \"exit=$?\""):format(proc.own_env, dir, dir,
      env or "", proc.lua, proc.root, args, errfile))
    local out = p:read("*a")
    p:close()
    local code = tonumber(out:match("exit=(%d+)%s*$"))
    return code, (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
  end

  local function config(text)
    os.execute(("mkdir -p %s/xdg/jimeng"):format(dir))
    h.write(dir .. "/xdg/jimeng/config", text)
  end

  local function creates() return #h.api_requests(sb, "^/v1/videos$") end
  local function last_create() local c = h.api_requests(sb, "^/v1/videos$") return c[#c].body end

  -- config show's rows by name: {value=, from=}
  local function shown(args, env)
    local code, out, err = jimeng("config show --json " .. (args or ""), env)
    assert.equals(0, code, err)
    assert.falsy(out:find("\\/", 1, true), "escaped slashes: " .. out)
    local rows = {}
    for _, r in ipairs(cjson.decode(out).settings) do rows[r.name] = r end
    return rows, out
  end

  it("takes a profile's settings, under the environment and the flags (flag > env > profile > default)", function()
    h.write(dir .. "/key", "profile-key-123456\n")
    os.execute("chmod 600 " .. dir .. "/key")
    config(([[
# settings for every profile
seconds = 10
aspect-ratio = 9:16

[sandbox]
base_url = %s
api_key_file = %s/key
]]):format(sb.url, dir))
    -- the default: no profile chosen, the [default] section's seconds; no base URL in it: the built-in one
    local rows = shown()
    assert.equals("10", rows.seconds.value)
    assert.matches("config %[default%] line 2", rows.seconds.from)
    assert.equals("9:16", rows.aspect_ratio.value)
    assert.equals("https://api.tokenops.ai/v1", rows.base_url.value)
    assert.equals("default", rows.base_url.from)
    assert.equals("jimeng-video-3.0-pro", rows.model.value)
    assert.equals("default", rows.model.from)
    -- the profile: its base URL and key file, by --profile and by JIMENG_PROFILE
    rows = shown("--profile sandbox")
    assert.equals(sb.url, rows.base_url.value)
    assert.matches("config %[sandbox%] line 6", rows.base_url.from)
    assert.equals("sandbox", rows.profile.value)
    assert.equals("flag --profile", rows.profile.from)
    rows = shown(nil, "JIMENG_PROFILE=sandbox")
    assert.equals(sb.url, rows.base_url.value)
    assert.equals("env JIMENG_PROFILE", rows.profile.from)
    -- the environment over the profile, the flag over both
    rows = shown("--profile sandbox", "JIMENG_BASE_URL=http://127.0.0.1:9/v1")
    assert.equals("http://127.0.0.1:9/v1", rows.base_url.value)
    assert.matches("^env JIMENG_BASE_URL, over config %[sandbox%]", rows.base_url.from)
    rows = shown("--profile sandbox --base-url http://127.0.0.1:8/v1", "JIMENG_BASE_URL=http://127.0.0.1:9/v1")
    assert.equals("http://127.0.0.1:8/v1", rows.base_url.value)
    assert.matches("^flag", rows.base_url.from)
    -- the key: where it comes from, never what it is
    local _, text = shown("--profile sandbox")
    assert.falsy(text:find("profile-key-123456", 1, true))
    assert.matches("read from .*/key", rows["api key"].value)

    -- and the requests say the same: the profile's URL, key and defaults
    local before = creates()
    local code, out, err = jimeng("create 'a profile fox' --profile sandbox")
    assert.equals(0, code, err)
    assert.truthy(out:match("^%d+"), out)
    assert.equals(before + 1, creates())
    assert.equals(241, last_create().frames) -- seconds = 10
    assert.equals("9:16", last_create().aspect_ratio)
    local reqs = h.api_requests(sb, "^/v1/videos$")
    assert.equals("Bearer profile-key-123456", reqs[#reqs].headers.authorization or reqs[#reqs].headers.Authorization)
    -- a flag over the profile: --seconds 5
    code, _, err = jimeng("create 'a flag fox' --profile sandbox --seconds 5")
    assert.equals(0, code, err)
    assert.equals(121, last_create().frames)
    -- the environment over the profile: JIMENG_BASE_URL to a port where nothing listens, nothing reaches the sandbox
    before = creates()
    code, _, err = jimeng("create 'an env fox' --profile sandbox", "JIMENG_BASE_URL=http://127.0.0.1:9/v1")
    assert.equals(3, code, err)
    assert.equals(before, creates())
    -- JIMENG_API_KEY over the profile's key file
    code, _, err = jimeng("create 'an env key fox' --profile sandbox", "JIMENG_API_KEY=env-key-abcdefgh")
    assert.equals(0, code, err)
    reqs = h.api_requests(sb, "^/v1/videos$")
    assert.equals("Bearer env-key-abcdefgh", reqs[#reqs].headers.authorization or reqs[#reqs].headers.Authorization)
    -- the default section alone (no profile): its seconds, with the URL and key from flags
    before = creates()
    code = jimeng("create 'a default fox' --api-key-file key --base-url " .. sb.url)
    assert.equals(0, code)
    assert.equals(before + 1, creates())
    assert.equals(241, last_create().frames)
  end)

  it("takes the dialect from a profile, under JIMENG_DIALECT", function()
    config("[gw]\ndialect = new-api\n")
    local rows = shown("--profile gw")
    assert.equals("new-api", rows.dialect.value)
    assert.matches("config %[gw%] line 2", rows.dialect.from)
    rows = shown("--profile gw", "JIMENG_DIALECT=tokenops")
    assert.equals("tokenops", rows.dialect.value)
    assert.matches("^env JIMENG_DIALECT, over config %[gw%]", rows.dialect.from)
  end)

  it("refuses an unknown key with a did-you-mean, an unknown profile, and the key itself: nothing sent", function()
    local before = creates()
    config("modle = jimeng-video-3.0-720P\n")
    local code, _, err = jimeng("create 'a typo' --base-url " .. sb.url, "JIMENG_API_KEY=k")
    assert.equals(2, code)
    assert.matches('config:1: unknown key "modle": did you mean "model"%?', err)
    -- doctor says so among its checks, and goes on with the others
    local dout
    code, dout = jimeng("doctor --base-url " .. sb.url, "JIMENG_API_KEY=k")
    assert.equals(3, code)
    assert.matches('FAIL  config +[^\n]*unknown key "modle"', dout)
    assert.matches("\nok    API +answered", dout)
    config("api_key = sk-inline\n")
    code, _, err = jimeng("create 'inline key' --base-url " .. sb.url, "JIMENG_API_KEY=k")
    assert.equals(2, code)
    assert.truthy(err:find("api_key cannot be set in the config file", 1, true), err)
    config("[work]\nseconds = 5\n")
    code, _, err = jimeng("create 'no such profile' --profile wrok --base-url " .. sb.url, "JIMENG_API_KEY=k")
    assert.equals(2, code)
    assert.truthy(err:find('no profile "wrok"', 1, true) and err:find('did you mean "work"?', 1, true), err)
    config("seconds = 5\nseconds = 10\n")
    code, _, err = jimeng("config show")
    assert.equals(2, code)
    assert.truthy(err:find("set twice", 1, true), err)
    -- JIMENG_CONFIG names the file, which must then exist
    code, _, err = jimeng("config show", "JIMENG_CONFIG=" .. dir .. "/nowhere")
    assert.equals(2, code)
    assert.truthy(err:find("cannot read the config file", 1, true), err)
    assert.equals(before, creates())
  end)

  it("refuses a key file every user can read, and takes it once it is the owner's alone", function()
    h.write(dir .. "/open-key", "open-key-123456789\n")
    os.execute("chmod 644 " .. dir .. "/open-key")
    config(("base_url = %s\napi_key_file = %s/open-key\n"):format(sb.url, dir))
    local before = creates()
    local code, _, err = jimeng("create 'an open key'")
    assert.equals(2, code)
    assert.truthy(err:find("readable by every user", 1, true) and err:find("chmod 600", 1, true), err)
    assert.equals(before, creates())
    -- config show and doctor say so rather than stop
    local rows = shown()
    assert.matches("^refused: .*readable by every user", rows["api key"].value)
    local dout
    code, dout = jimeng("doctor")
    assert.equals(3, code)
    assert.matches("FAIL  API key +api_key_file .*readable by every user", dout)
    os.execute("chmod 600 " .. dir .. "/open-key")
    code, _, err = jimeng("create 'a closed key'")
    assert.equals(0, code, err)
    assert.equals(before + 1, creates())
  end)

  it("reads the README's sample and examples/config as they are written (comments after values too)", function()
    local readme = h.read(proc.root .. "/README.md")
    local sample = readme:match("\n```ini\n(.-)\n```")
    assert.is_string(sample)
    config(sample .. "\n")
    local rows = shown("--profile work")
    assert.equals("10", rows.seconds.value)
    assert.equals("9:16", rows.aspect_ratio.value)
    assert.equals("http://proxy.corp.example:3128", rows.proxy.value)
    assert.matches("^config %[work%] line %d+$", rows.proxy.from)
    assert.matches("/videos$", rows.output_dir.value)
    rows = shown("--profile sandbox")
    assert.equals("http://127.0.0.1:8080/v1", rows.base_url.value)
    local env = "JIMENG_CONFIG=" .. proc.root .. "/examples/config"
    rows = shown("--profile work", env)
    assert.equals("5", rows.seconds.value)
    assert.equals("http://proxy.example.com:3128", rows.proxy.value)
    assert.matches("^refused: api_key_file .*/work%.key", rows["api key"].value) -- no such file here
    rows = shown("--profile sandbox", env)
    assert.equals("10", rows.seconds.value)
    assert.matches("config %[sandbox%]", rows.seconds.from)
    -- a value in double quotes keeps a # after a space
    config('seconds = "5 # five" # a comment\n')
    local code, _, err = jimeng("config show")
    assert.equals(0, code, err)
  end)

  it("puts the default name of generate and download in the config's output_dir", function()
    config(("base_url = %s\noutput_dir = vids\n"):format(sb.url))
    local code, out, err = jimeng("generate 'a dir fox' --interval 0.05 --json -q", "JIMENG_API_KEY=k")
    assert.equals(0, code, err)
    local r = cjson.decode(out)
    assert.matches("^vids/jimeng_video_%d+%.mp4$", r.path)
    -- --json prints slashes as they are
    assert.truthy(out:find('"vids/jimeng_video_', 1, true), out)
    assert.equals(h.fixture(), h.read(dir .. "/" .. r.path))
    os.remove(dir .. "/" .. r.path)
    code, out, err = jimeng("download " .. r.task.id, "JIMENG_API_KEY=k")
    assert.equals(0, code, err)
    assert.equals("vids/jimeng_video_" .. r.task.id .. ".mp4\n", out)
  end)
end)

describe("jimeng -v", function()
  local sb, dir
  setup(function()
    sb = h.sandbox { queue_seconds = 0.05, process_seconds = 0.1 }
    dir = h.tmpdir()
  end)
  teardown(function()
    sb:stop()
    h.cleanup()
  end)

  local function jimeng(args)
    local errfile = dir .. "/stderr"
    local p = io.popen(("%scd %s && unset JIMENG_CONFIG JIMENG_PROFILE; JIMENG_API_KEY=%s JIMENG_BASE_URL=%s " ..
      "%s %s/bin/jimeng %s 2>%s; echo \"exit=$?\""):format(proc.own_env, dir, KEY, sb.url, proc.lua, proc.root,
      args, errfile))
    local out = p:read("*a")
    p:close()
    return tonumber(out:match("exit=(%d+)%s*$")), (out:gsub("exit=%d+%s*$", "")), h.read(errfile) or ""
  end

  it("shows each request and answer (method, URL, status, time, connection, HTTP version, request id), never the key", function()
    local code, out, err = jimeng("generate 'a verbose heron' -o heron.mp4 --interval 0.05 -v")
    assert.equals(0, code, err)
    assert.equals("heron.mp4\n", out)
    assert.falsy(err:find(KEY:sub(1, 12), 1, true), err)
    local id = err:match("created task (%d+)")
    assert.truthy(err:find("> POST " .. sb.url .. "/videos\n", 1, true), err)
    assert.matches("> GET " .. sb.url:gsub("%p", "%%%0") .. "/videos/" .. id .. "\n", err)
    assert.matches("< HTTP/1%.1 200, %d+ ms, new connection, request id [%w%-]+\n", err)
    assert.matches("< HTTP/1%.1 200, %d+ ms, reused connection", err) -- the polls after the first: one connection
    assert.truthy(err:find("> GET " .. sb.url .. "/videos/" .. id .. "/content\n", 1, true), err)
    -- one line per request: as many as the sandbox saw
    local _, sent = err:gsub("\n> [A-Z]+ ", "")
    local seen = 0
    for _, e in ipairs(sb:log()) do if e.path:match("^/v1/") then seen = seen + 1 end end
    assert.equals(seen, sent + (err:sub(1, 2) == "> " and 1 or 0))
    -- the free call by which the default dialect (auto) asks the gateway which it is shows too
    assert.truthy(err:find("> GET " .. sb.url .. "/videos/", 1, true), err)
    -- -v has no headers
    assert.falsy(err:find("Authorization", 1, true))
  end)

  it("-vv adds the headers, Authorization redacted; a retry says why; a key the server echoes is scrubbed", function()
    local code, _, err = jimeng("create 'a loud heron' -vv")
    assert.equals(0, code, err)
    assert.truthy(err:find("> Authorization: Bearer [redacted]\n", 1, true), err)
    assert.truthy(err:find("> Content-Type: application/json\n", 1, true), err)
    -- the answer's header lines, every one, as received
    assert.truthy(err:find("< Content-Type: application/json\n", 1, true), err)
    assert.truthy(err:find("< Server: jimeng-sandbox", 1, true), err)
    assert.truthy(err:find("< x-request-id: ", 1, true), err)
    assert.falsy(err:find(KEY:sub(1, 12), 1, true), err)
    -- a 503 on a status: retried, and the retry says so
    local id = err:match("created task (%d+)")
    sb:faults { path = "^/v1/videos/" .. id .. "$", fault = "status", status = 503 }
    code, _, err = jimeng("status " .. id .. " -v")
    assert.equals(0, code, err)
    assert.matches("< HTTP/1%.1 503, %d+ ms, [a-z]+ connection", err)
    assert.matches("%* retry 1 of status in [%d.]+s: ", err)
    assert.truthy(err:find("(retry 1)", 1, true), err)
    -- a server that echoes the key back: neither the answer nor the error shows it
    sb:faults { path = "^/v1/videos/" .. id .. "$", fault = "echo_auth", status = 401 }
    code, _, err = jimeng("status " .. id .. " -vv")
    assert.equals(3, code, err)
    assert.truthy(err:find("< HTTP/1.1 401", 1, true), err)
    assert.falsy(err:find(KEY:sub(1, 12), 1, true), err)
  end)

  it("-vv shows what a server sent with its control characters escaped, never run by the terminal", function()
    local _, _, err = jimeng("create 'an escaping heron'")
    local id = err:match("created task (%d+)")
    sb:faults { path = "^/v1/videos/" .. id .. "$", fault = "headers",
      headers = { ["x-request-id"] = "r\27[31mq", ["X-Evil"] = "a\27]0;owned\7b" } }
    local code
    code, _, err = jimeng("status " .. id .. " -vv")
    assert.equals(0, code, err)
    assert.falsy(err:find("\27", 1, true), err)
    assert.falsy(err:find("\7", 1, true), err)
    assert.truthy(err:find(", r\\e[31mq\n", 1, true), err) -- the request ids the answer gave
    assert.truthy(err:find("< X-Evil: a\\e]0;owned\\x07b\n", 1, true), err)
  end)

  it("gives the same events to a Lua client's trace option, the key scrubbed from every text", function()
    local events = {}
    -- the free call asking the gateway which it is (made once per base URL) is left out of the count
    local c = h.client(sb, { api_key = KEY, trace = function(ev)
      if ev.what ~= "identify" then events[#events + 1] = ev end
    end })
    local task = assert(c:create { prompt = "a traced heron" })
    assert(c:status(task.id))
    assert(c:status(task.id))
    c:close()
    assert.equals(3, #events)
    local create, status = events[1], events[3]
    assert.same({ "request", "POST", sb.url .. "/videos", 200, "new", "1.1" },
      { create.event, create.method, create.url, create.status, create.connection, create.http_version })
    -- a create has a connection of its own (never reused: a paid request is sent once); polls share one (the
    -- first may reuse the free identifying call's)
    assert.equals("reused", status.connection)
    assert.equals(task.request_id, create.request_id)
    assert.truthy(create.time > 0 and create.time < 5)
    local auth
    for _, l in ipairs(create.request_headers) do if l:find("^Authorization:") then auth = l end end
    assert.equals("Authorization: Bearer [redacted]", auth)
    local names = {}
    for _, hd in ipairs(create.response_headers) do names[hd[1]:lower()] = hd[2] end
    assert.equals(task.request_id, names["x-request-id"])
    local text = cjson.encode(events)
    assert.falsy(text:find(KEY:sub(1, 12), 1, true))
  end)

  it("logs a line at every tenth of a download when stderr is not a terminal", function()
    sb:config { video_bytes = 400000, download_rate = 80000 } -- 5 s: a report every 0.25 s, 2 a tenth
    local code, out, err = jimeng("create 'a slow river' --json")
    assert.equals(0, code, err)
    local id = cjson.decode(out).id
    assert.equals(0, (jimeng("wait " .. id .. " --interval 0.05")))
    local _
    code, _, err = jimeng("download " .. id .. " -o river.mp4")
    sb:config { video_bytes = 0, download_rate = 0 }
    assert.equals(0, code, err)
    local tenths = {}
    for pct in err:gmatch("downloaded (%d+)%% %(") do tenths[#tenths + 1] = tonumber(pct) end
    assert.same({ 10, 20, 30, 40, 50, 60, 70, 80, 90 }, tenths, err)
    assert.truthy(err:find("downloaded 390.6 KiB in", 1, true), err)
    assert.falsy(err:find("\27[", 1, true), "color in a file: " .. err)
  end)
end)

describe("jimeng doctor with a dead proxy", function()
  it("blames the proxy, not the API or its URL, and calls nothing through it", function()
    local port = proc.free_port()
    local dir = h.tmpdir()
    local p = io.popen(("%scd %s && unset JIMENG_CONFIG JIMENG_PROFILE no_proxy NO_PROXY; JIMENG_API_KEY=k " ..
      "JIMENG_BASE_URL=https://api.tokenops.ai/v1 https_proxy=http://127.0.0.1:%d %s %s/bin/jimeng doctor 2>&1; " ..
      "echo \"exit=$?\""):format(proc.own_env, dir, port, proc.lua, proc.root))
    local out = p:read("*a")
    p:close()
    h.cleanup()
    assert.equals("3", out:match("exit=(%d+)"), out)
    assert.matches("FAIL  proxy +http://127%.0%.0%.1:" .. port .. " %(from https_proxy%): nothing answers", out)
    assert.truthy(out:find("fix: start the proxy", 1, true), out)
    assert.matches("FAIL  API +not called: the proxy it goes through does not answer", out)
    assert.falsy(out:find("ok    proxy", 1, true), out)
    assert.falsy(out:find("is the URL right", 1, true), out)
  end)
end)

describe("--json", function()
  it("prints slashes plainly, and a backslash before a slash stays a backslash", function()
    local cli = require "jimeng.cli"
    local json = require("cjson").new()
    for _, s in ipairs { "vids/fox.mp4", "a\\/b", "a\\\\/b", "\\", "/\\/", "x\\\\\\/y", "\"/\"" } do
      local text = cli.plain_slashes(json.encode { p = s })
      assert.falsy(text:find("\\/", 1, true) and not s:find("\\", 1, true), text)
      assert.equals(s, json.decode(text).p)
    end
  end)
end)
