--- make bench (and make bench-host alone): what waiting costs the hosts, against the sandbox on loopback.
-- Neovim: wake-ups a second (epoll_wait calls of the whole nvim process, counted by strace -c -f) and CPU
-- seconds a minute (/proc/PID/stat) of headless nvim with 1 and 20 generates waiting, against an idle nvim with
-- a 5 s timer, and against the previous adapter (a 10 ms tick). nginx (examples/openresty, one worker): worker
-- CPU and syscalls a second with 50, 200 and 1000 requests waiting, on loopback and with 0.3 s added to every
-- status poll (the sandbox's stall fault), and the p95 of GET /health meanwhile.
-- Environment: BENCH_HOST_WINDOW (seconds per measurement, 20), BENCH_HOST_NGINX ("50,200,1000"),
-- BENCH_HOST_NVIM ("1,20"). Prints one markdown table. Needs nvim, nginx with its Lua module, strace.
local sandbox = require "jimeng.sandbox"
local core = require "jimeng.core"
local cjson = require "cjson"

local WINDOW = tonumber(os.getenv("BENCH_HOST_WINDOW") or "") or 20
local ROOT = os.getenv("PWD")

local function sh(cmd)
  local p = assert(io.popen("unset LD_PRELOAD; " .. cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return code == 0, (out:gsub("exit=%d+%s*$", ""))
end

local function list(env, default)
  local t = {}
  for v in (os.getenv(env) or default):gmatch("%d+") do t[#t + 1] = tonumber(v) end
  return t
end

local tmp = os.tmpname()
os.remove(tmp)
assert(sh("mkdir -p " .. tmp))

local TICK = select(2, sh("getconf CLK_TCK")):match("%d+") + 0

--- CPU seconds (user + system, all threads) of a process so far.
local function cpu_of(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  local rest = s:match("%) (.*)$")
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  return (tonumber(fields[12]) + tonumber(fields[13])) / TICK -- utime, stime (fields 14, 15 of stat)
end

--- Syscalls of a process (all its threads) over `seconds`, by strace -c: total, and the named ones.
local function syscalls(pid, seconds, names)
  local out = tmp .. "/strace." .. pid
  assert(sh(("timeout -s INT %g strace -c -f -p %d -o %s >/dev/null 2>&1; true"):format(seconds, pid, out)))
  local f = assert(io.open(out))
  local total, named = 0, 0
  for line in f:lines() do
    local calls, name = line:match("^%s*[%d.]+%s+[%d.]+%s+%d+%s+(%d+)%s+%d*%s*(%S+)%s*$")
    if calls and name ~= "total" then
      total = total + tonumber(calls)
      for _, n in ipairs(names or {}) do
        if name == n then named = named + tonumber(calls) end
      end
    end
  end
  f:close()
  return total / seconds, named / seconds
end

--- Wake-ups of a process over `seconds`: its epoll_wait/epoll_pwait/poll calls that could sleep (a timeout
-- other than 0), by strace (every thread). A call with timeout 0 only looks: nvim's loop makes such calls
-- after a wake-up, which `strace -c` would count as wake-ups too. Returns wake-ups/s, all such calls/s.
local function wakeups(pid, seconds)
  local out = tmp .. "/strace-w." .. pid
  assert(sh(("timeout -s INT %g strace -f -qq -e trace=epoll_wait,epoll_pwait,poll,ppoll -p %d -o %s >/dev/null 2>&1; true")
    :format(seconds, pid, out)))
  local f = assert(io.open(out))
  local sleeping, all = 0, 0
  for line in f:lines() do
    if not line:find("unfinished", 1, true) then
      -- the timeout: 4th argument of epoll_wait, 3rd of poll; epoll_pwait and ppoll carry more after it
      local tmo = line:match("epoll_wait%b()") and line:match(", (%-?%d+)%)%s*=")
        or line:match("epoll_wait resumed>.-, (%-?%d+)%)%s*=")
        or line:match("epoll_pwait.-, (%-?%d+), [^,]+, %d+%)%s*=")
        or line:match("poll.-, (%-?%d+)%)%s*=")
      if tmo then
        all = all + 1
        if tonumber(tmo) ~= 0 then sleeping = sleeping + 1 end
      end
    end
  end
  f:close()
  return sleeping / seconds, all / seconds
end

local rows = {}
local function row(...) rows[#rows + 1] = { ... } end

-- Processes this bench started (nvim, nginx): ended on the way out, also when a case fails.
local started = {}
local function stop_started()
  for pid in pairs(started) do sh("kill " .. pid .. " 2>/dev/null") end
  started = {}
end

local sb = assert(sandbox.start { queue_seconds = 1, process_seconds = 1 })

-- Neovim ----------------------------------------------------------------------------------------
local SKIP = 6 -- seconds after the creates: past the first polls, which follow them
local function nvim_case(adapter, n)
  sb:reset()
  local ready, stats = tmp .. "/ready", tmp .. "/stats"
  os.remove(ready)
  os.remove(stats)
  local ok, pid = sh(("cd %s && BENCH_N=%d BENCH_ADAPTER=%s BENCH_READY=%s BENCH_ROOT=%s BENCH_OUT=%s BENCH_OLD_LUA=%s " ..
    "BENCH_STATS=%s BENCH_SKIP=%d BENCH_WINDOW=%d JIMENG_API_KEY=bench JIMENG_BASE_URL=%s nohup nvim --headless -u NONE " ..
    "-i NONE -n -c 'luafile bench/nvim_wait.lua' >%s/nvim.log 2>&1 & echo $!"):format(ROOT, n, adapter, ready, ROOT, tmp,
    tmp .. "/old", stats, SKIP, WINDOW, sb.url, tmp))
  assert(ok, pid)
  pid = tonumber(pid:match("%d+"))
  started[pid] = true
  local deadline = core.now() + 60
  while not io.open(ready) and core.now() < deadline do core.sleep(0.1) end
  assert(io.open(ready), "nvim did not get its creates answered: " .. tostring(select(2, sh("cat " .. tmp .. "/nvim.log"))))
  core.sleep(SKIP)
  local c0 = cpu_of(pid)
  core.sleep(WINDOW + 0.5)
  local cpu = (cpu_of(pid) - c0) / (WINDOW + 0.5) * 60
  local f = io.open(stats)
  local counts = f and f:read("*a") or ""
  if f then f:close() end
  local w, all = wakeups(pid, WINDOW)
  sh("kill " .. pid)
  started[pid] = nil
  local timer, poll = counts:match("timer (%d+) poll (%d+)")
  return w, cpu, all, timer and tonumber(timer) / WINDOW, poll and tonumber(poll) / WINDOW
end

local function neovim_rows()
if sh("command -v nvim && command -v strace") and not os.getenv("BENCH_HOST_CASE") then
  -- the previous adapter, as it was before the event-driven one (for the "before" rows)
  assert(sh("mkdir -p " .. tmp .. "/old/jimeng && git show 69b06cc:lua/jimeng/nvim.lua > " .. tmp .. "/old/jimeng/nvim.lua"))
  local idle_w, idle_c, idle_all = nvim_case("idle", 0)
  row("Neovim headless", "idle, a 5 s timer", ("%.2f wakeups/s, %.3f CPU s/min"):format(idle_w, idle_c), "1.00x idle",
    ("%.2f epoll_wait calls/s"):format(idle_all))
  for _, n in ipairs(list("BENCH_HOST_NVIM", "1,20")) do
    for _, adapter in ipairs { "new", "old" } do
      local w, c, all, timer, poll = nvim_case(adapter, n)
      row("Neovim headless", ("%d generate%s waiting, %s"):format(n, n == 1 and "" or "s",
        adapter == "new" and "event-driven (uv polls + one timer)" or "previous adapter (10 ms tick)"),
        ("%.2f wakeups/s, %.3f CPU s/min"):format(w, c), ("%.1fx idle wakeups%s"):format(w / math.max(idle_w, 0.01),
          idle_c > 0 and (", %.2fx idle CPU"):format(c / idle_c) or ""),
        ("%.2f epoll_wait calls/s%s"):format(all, timer and (", adapter: %.2f timer + %.2f socket wake-ups/s")
          :format(timer, poll) or ""))
    end
  end
else
  row("Neovim headless", "skipped", "needs nvim and strace")
end
end

-- nginx -----------------------------------------------------------------------------------------
local function start_nginx(max_connections)
  local prefix = tmp .. "/nginx"
  assert(sh(("rm -rf %s && mkdir -p %s/logs %s/videos"):format(prefix, prefix, prefix)))
  local _, free = sh([[python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])
  local port = tonumber(free:match("%d+"))
  local f = assert(io.open("examples/openresty/nginx.conf"))
  local conf = f:read("*a")
  f:close()
  conf = conf:gsub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. port .. ";")
  conf = conf:gsub("%$prefix/%.%./%.%./", ROOT .. "/")
  conf = conf:gsub("%$prefix/%?%.lua", ROOT .. "/examples/openresty/?.lua")
  f = assert(io.open(prefix .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  assert(sh(("cd %s && JIMENG_API_KEY=bench JIMENG_BASE_URL=%s JIMENG_OUTPUT_DIR=%s/videos JIMENG_MAX_CONNECTIONS=%d " ..
    "nohup nginx -p %s/ -c %s/nginx.conf -g 'daemon off; master_process off;' >%s/logs/stdout 2>&1 &")
    :format(prefix, sb.url, prefix, max_connections, prefix, prefix, prefix)))
  local base = "http://127.0.0.1:" .. port
  local health = core.engine()
  local deadline = core.now() + 10
  while core.now() < deadline do
    local t = assert(health:request { url = base .. "/health", timeout = 1 })
    while not t:done() do
      health:perform()
      health:poll(50)
    end
    if t:result().status == 200 then break end
    core.sleep(0.1)
  end
  local pf = assert(io.open(prefix .. "/logs/nginx.pid"))
  local pid = tonumber(pf:read("*a"):match("%d+"))
  pf:close()
  started[pid] = true
  return base, pid, health, prefix
end

local function nginx_case(n, latency, max_connections)
  sb:reset()
  sb:config { queue_seconds = 1, process_seconds = 1 }
  if latency > 0 then
    sb:faults { { path = "^/v1/videos/[0-9]+$", method = "GET", fault = "stall", seconds = latency, count = 100000000 } }
  end
  local base, pid, health, prefix = start_nginx(max_connections)
  local engine = core.engine { max_connections = 1024, http_version = "1.1" }
  local gens = {}
  for i = 1, n do
    gens[i] = assert(engine:request { url = ("%s/generate?prompt=bench+%d+sandbox%%3Aslow%%3D600"):format(base, i),
      timeout = 600, max_body = 64 * 1024 })
  end
  local deadline = core.now() + 120
  while sb:stats().creates < n and core.now() < deadline do
    for _ = 1, 20 do
      engine:perform()
      engine:poll(10)
    end
  end
  if sb:stats().creates < n then
    local r = gens[1]:done() and gens[1]:result() or {}
    error(("%d of %d creates arrived; first request: %s %s; %s"):format(sb:stats().creates, n, tostring(r.status),
      tostring(r.body or r.curl_error), tostring(select(2, sh("cat " .. prefix .. "/logs/error.log")))))
  end
  core.sleep(6) -- past the first polls
  local function get_health()
    local t0 = core.now()
    local t = assert(health:request { url = base .. "/health", timeout = 5 })
    while not t:done() do
      health:perform()
      if not t:done() then health:poll(20) end
    end
    assert(t:result().status == 200)
    return core.now() - t0
  end
  local polls0 = sb:stats().requests
  local c0, t0 = cpu_of(pid), core.now()
  local times = {}
  while core.now() - t0 < WINDOW do
    times[#times + 1] = get_health()
    engine:perform()
    core.sleep(0.1)
  end
  local elapsed = core.now() - t0
  local cpu = (cpu_of(pid) - c0) / elapsed
  local polls = (sb:stats().requests - polls0) / elapsed
  local calls = syscalls(pid, WINDOW / 2)
  table.sort(times)
  local p95 = times[math.ceil(#times * 0.95)]
  local st = assert(health:request { url = base .. "/jimeng/stats", timeout = 5 })
  while not st:done() do
    health:perform()
    health:poll(20)
  end
  local stats = cjson.decode(st:result().body)
  sh("kill -TERM " .. pid)
  started[pid] = nil
  core.sleep(0.5)
  engine:close()
  health:close()
  sh("rm -rf " .. prefix)
  return cpu, calls, p95, polls, stats
end

local function nginx_rows()
if sh("command -v nginx && test -f /usr/share/nginx/modules/ngx_http_lua_module.so && command -v strace") then
  local sizes = list("BENCH_HOST_NGINX", "50,200,1000")
  local cases = {}
  local only = os.getenv("BENCH_HOST_CASE") -- "1000,0.3,64": one case alone
  for _, latency in ipairs { 0, 0.3 } do
    for _, n in ipairs(sizes) do cases[#cases + 1] = { n, latency, 8 } end
  end
  -- 8 connections answer about 26 polls/s at 0.3 s: the most requests, with enough connections for their polls
  cases[#cases + 1] = { sizes[#sizes], 0.3, 64 }
  if only then
    local a, b, c = only:match("(%d+),([%d.]+),(%d+)")
    cases = { { tonumber(a), tonumber(b), tonumber(c) } }
  end
  for _, c in ipairs(cases) do
    local n, latency, conns = c[1], c[2], c[3]
    local cpu, calls, p95, polls, stats = nginx_case(n, latency, conns)
    row("nginx worker", ("%d requests waiting, %s, max_connections %d"):format(n, latency > 0 and "0.3 s API latency" or "loopback",
      conns), ("%.1f%% of a core, %.0f syscalls/s, /health p95 %.1f ms"):format(cpu * 100, calls, p95 * 1000),
      ("%.4f%% of a core per waiting request, %.0f us CPU per poll"):format(cpu * 100 / n, cpu / math.max(polls, 0.01) * 1e6),
      ("%.1f status polls/s answered (%.0f due); %d waiting on the stepper at the end"):format(polls, n / 5, stats.waiting or -1))
  end
else
  row("nginx worker", "skipped", "needs nginx, libnginx-mod-http-lua and strace")
end
end

for _, section in ipairs { neovim_rows, nginx_rows } do
  local ok, err = pcall(section)
  stop_started()
  if not ok then
    sb:stop()
    error(err, 0)
  end
end

sb:stop()
sh("rm -rf " .. tmp)

print("| measure | side | result | ratio | note |\n|---|---|---|---|---|")
for _, r in ipairs(rows) do print(("| %s | %s | %s | %s | %s |"):format(r[1], r[2], r[3], r[4] or "", r[5] or "")) end
print(("\nwindow: %d s per measurement; %s"):format(WINDOW, core.curl_version()))
