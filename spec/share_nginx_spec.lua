-- One account, an nginx of 4 workers: each worker's client (the default budget inside nginx is "local")
-- spends one max_rps = 20 and max_tasks = 5 with the others, as the sandbox counts them.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"
local cjson = require "cjson"

local nginx = proc.run("command -v nginx && test -f /usr/share/nginx/modules/ngx_http_lua_module.so")

local HANDLER = [[
local jimeng = require "jimeng"
local cjson = require "cjson.safe"
local client
return function()
  if not client then
    client = assert(jimeng.new { api_key = "nginx-budget-key", base_url = os.getenv("JIMENG_BASE_URL"),
      max_rps = 20, max_tasks = 5, poll_interval = 0.05 })
  end
  local args = ngx.req.get_uri_args()
  local result, err = client:generate({ prompt = args.prompt }, { output_dir = os.getenv("JIMENG_OUTPUT_DIR") })
  ngx.header["Content-Type"] = "application/json"
  if not result then
    ngx.status = 502
    return ngx.say(cjson.encode { error = err.message, kind = err.kind })
  end
  ngx.say(cjson.encode { path = result.path, pid = ngx.worker.pid(), where = client.share:stats().where })
end
]]

describe("inside nginx with 4 workers #host", function()
  if not nginx then
    it("needs nginx and libnginx-mod-http-lua", function() pending("nginx with its Lua module is not installed") end)
    return
  end

  local sb, prefix, port, server
  setup(function()
    local ok, out = proc.run("make -s LUA=luajit")
    assert(ok, out)
    sb = h.sandbox { queue_seconds = 0.2, process_seconds = 1 }
    prefix = h.tmpdir()
    port = proc.free_port()
    assert(proc.run("mkdir -p " .. prefix .. "/logs " .. prefix .. "/videos"))
    h.write(prefix .. "/budget_handler.lua", HANDLER)
    h.write(prefix .. "/nginx.conf", ([[
user root;
worker_processes 4;
pid %s/logs/nginx.pid;
error_log %s/logs/error.log warn;
load_module /usr/share/nginx/modules/ndk_http_module.so;
load_module /usr/share/nginx/modules/ngx_http_lua_module.so;
env JIMENG_BASE_URL;
env JIMENG_OUTPUT_DIR;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path logs/client_body;
  proxy_temp_path logs/proxy;
  fastcgi_temp_path logs/fastcgi;
  uwsgi_temp_path logs/uwsgi;
  scgi_temp_path logs/scgi;
  lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;;";
  lua_package_cpath "%s/build/luajit/?.so;;";
  server {
    listen 127.0.0.1:%d reuseport;
    location = /generate { content_by_lua_block { require("budget_handler")() } }
    location = /health { content_by_lua_block { ngx.say("ok") } }
  }
}
]]):format(prefix, prefix, proc.root, proc.root, prefix, proc.root, port))
    server = io.popen((proc.clean_env .. "cd %s && JIMENG_BASE_URL=%s JIMENG_OUTPUT_DIR=%s/videos " ..
      "exec nginx -p %s/ -c %s/nginx.conf -g 'daemon off;' > %s/logs/stdout 2>&1"):format(prefix, sb.url, prefix,
      prefix, prefix, prefix), "r")
    local deadline = core.now() + 10
    repeat
      local r = proc.get(("http://127.0.0.1:%d/health"):format(port), 1)
      if r.status == 200 then return end
      core.sleep(0.1)
    until core.now() > deadline
    error("nginx did not start: " .. tostring(h.read(prefix .. "/logs/error.log")))
  end)
  teardown(function()
    if prefix then proc.run(("kill -QUIT $(cat %s/logs/nginx.pid)"):format(prefix)) end
    if server then server:close() end
    if sb then -- the workers' budget file ("local": /tmp, as nginx hands them no XDG_RUNTIME_DIR)
      local id = io.popen("id -u")
      os.remove(("/tmp/jimeng-budget-%s-%s"):format(id:read("*l"), core.budget_id("nginx-budget-key", sb.url)))
      id:close()
    end
    if sb then sb:stop() end
    h.cleanup()
  end)

  it("its workers share max_rps = 20 and max_tasks = 5: no second above 20, never 6 tasks at once, all saved",
    function()
    local base = ("http://127.0.0.1:%d"):format(port)
    local engine = core.engine { max_connections = 64, http_version = "1.1" }
    local gens = {}
    for i = 1, 16 do
      gens[i] = assert(engine:request { url = base .. "/generate?prompt=worker+" .. i, timeout = 120,
        max_body = 64 * 1024 })
    end
    local deadline = core.now() + 120
    local function pending()
      for _, t in ipairs(gens) do if not t:done() then return true end end
      return false
    end
    while pending() and core.now() < deadline do
      engine:perform()
      engine:poll(50)
    end
    local pids = {}
    for i, t in ipairs(gens) do
      local r = t:result()
      assert.equals(200, r.status, ("generate %d: %s"):format(i, tostring(r.body)))
      local body = cjson.decode(r.body)
      assert.equals(h.fixture(), h.read(body.path))
      assert.matches("jimeng%-budget%-", body.where)
      pids[body.pid] = true
    end
    local workers = 0
    for _ in pairs(pids) do workers = workers + 1 end
    assert.is_true(workers >= 2, "the requests were served by " .. workers .. " worker(s)")
    assert.equals(16, sb:stats().creates)
    local seen = sb:budget()
    assert.is_true(seen.busiest_second <= 20, "busiest second: " .. seen.busiest_second)
    assert.is_true(seen.max_in_flight <= 5, "tasks at once: " .. seen.max_in_flight)
    assert.equals(5, seen.max_in_flight)
    engine:close()
  end)
end)
