-- A download killed or interrupted midway, against Debian's nginx serving the video as a static file (slowed
-- by limit_rate): run again, it resumes when the file is unchanged and starts over when it was replaced, so
-- the saved video is always one whole file, never the old head on the new tail.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local vs = require "spec.support.video_server"
local core = require "jimeng.core"

local nginx = proc.run("command -v nginx")
local lua = proc.plain_lua

describe("a download killed midway, from nginx #host", function()
  if not nginx then
    it("needs nginx (apt-get install nginx-light)", function() pending("nginx is not installed") end)
    return
  end

  local SIZE = 1024 * 1024
  local prefix, www, dir, port, server, api, client

  -- An MP4 of random bytes (valid by its boxes): two calls never give the same video.
  local function video() return (h.mp4(SIZE)) end

  local function wait_for(what, check, seconds)
    local deadline = core.now() + (seconds or 15)
    while not check() do
      if core.now() > deadline then error("timed out waiting for " .. what) end
      core.sleep(0.02)
    end
  end

  setup(function()
    prefix, dir = h.tmpdir(), h.tmpdir()
    www = prefix .. "/www"
    port = proc.free_port()
    assert(proc.run(("mkdir -p %s/logs %s/tmp %s"):format(prefix, prefix, www)))
    h.write(prefix .. "/nginx.conf", ([[
worker_processes 1;
pid %s/logs/nginx.pid;
error_log %s/logs/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %s/tmp/body;
  proxy_temp_path %s/tmp/proxy;
  fastcgi_temp_path %s/tmp/fastcgi;
  uwsgi_temp_path %s/tmp/uwsgi;
  scgi_temp_path %s/tmp/scgi;
  types { video/mp4 mp4; }
  server {
    listen 127.0.0.1:%d;
    location /fast/ { alias %s/; }
    location /slow/ { alias %s/; limit_rate 256k; }
  }
}
]]):format(prefix, prefix, prefix, prefix, prefix, prefix, prefix, port, www, www))
    server = io.popen(("%sexec nginx -p %s/ -c %s/nginx.conf -g 'daemon off; master_process off;' > %s/logs/stdout 2>&1")
      :format(proc.clean_env, prefix, prefix, prefix), "r")
    local cdn = ("http://127.0.0.1:%d"):format(port)
    h.write(www .. "/probe.mp4", "probe")
    wait_for("nginx", function() return proc.get(cdn .. "/fast/probe.mp4", 1).status == 200 end, 10)
    api = vs.start(www, cdn)
    client = assert(require("jimeng").new { api_key = "k", base_url = api.url })
  end)
  teardown(function()
    if api then api:stop() end
    if prefix then proc.run(("kill -QUIT $(cat %s/logs/nginx.pid)"):format(prefix)) end
    if server then server:close() end
    h.cleanup()
  end)

  -- Starts `jimeng download ID -o PATH` in the background; returns its pid and the file its exit code lands in.
  local function start_cli(id, path)
    local pidfile, rcfile = path .. ".pid", path .. ".rc"
    os.execute(("%s(JIMENG_API_KEY=k JIMENG_BASE_URL=%s %s %s/bin/jimeng download %s -o %s > %s.log 2>&1 & " ..
      "echo $! > %s; wait $!; echo $? > %s) > /dev/null 2>&1 &"):format(proc.clean_env, api.url, lua, proc.root, id, path, path,
      pidfile, rcfile))
    wait_for("the pid", function() return (core.file_size(pidfile) or 0) > 0 end)
    return tonumber(h.read(pidfile):match("%d+")), rcfile
  end

  for _, signal in ipairs { "KILL", "INT" } do
    for _, replaced in ipairs { false, true } do
      local id = ("cdn-%s-%s"):format(signal:lower(), replaced and "replaced" or "same")
      local title = replaced and "then the file replaced by another of the same size: the result is the new file, whole"
        or "then the file unchanged: it resumes with a 206, byte-identical"
      it(("stopped by SIG%s, %s"):format(signal, title), function()
        local old, new = video(), replaced and video()
        local file, path = www .. "/" .. id .. ".mp4", dir .. "/" .. id .. ".mp4"
        h.write(file, old)
        assert(proc.run(("touch -d @1600000000 %s"):format(file)))
        h.write(www .. "/" .. id .. ".slow", "")
        local pid, rcfile = start_cli(id, path)
        wait_for("the download to start", function() return (core.file_size(path .. ".part") or 0) >= 128 * 1024 end)
        assert(proc.run(("kill -%s %d"):format(signal, pid)))
        wait_for("the download to stop", function() return h.exists(rcfile) and #h.read(rcfile) > 0 end)
        assert.are_not.equal(0, tonumber(h.read(rcfile)))
        if signal == "KILL" then assert.equals(137, tonumber(h.read(rcfile))) end
        if signal == "INT" then assert.truthy(h.read(path .. ".log"):find("interrupted")) end
        assert.is_false(h.exists(path))
        local kept = core.file_size(path .. ".part")
        assert.is_true(kept >= 128 * 1024 and kept < SIZE)
        assert.truthy(h.read(path .. ".part.json"):find(id, 1, true))

        os.remove(www .. "/" .. id .. ".slow")
        if replaced then
          h.write(file, new)
          assert(proc.run(("touch -d @1700000000 %s"):format(file)))
        end
        local info = assert(client:download(id, path))
        local got = h.read(path)
        assert.equals(SIZE, #got)
        if replaced then
          assert.is_true(got == new, "the saved video is not the new file")
          assert.equals(200, info.status)
          assert.is_nil(info.resumed_from)
        else
          assert.is_true(got == old, "the saved video is not the file")
          assert.equals(206, info.status)
          assert.equals(kept, info.resumed_from)
        end
        assert.is_false(h.exists(path .. ".part"))
        assert.is_false(h.exists(path .. ".part.json"))
      end)
    end
  end
end)
