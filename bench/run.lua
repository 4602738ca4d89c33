--- make bench: the client side by side with curl, Python requests and a hand-written lua-curl loop,
-- against the sandbox on loopback, in one run; prints one table of ratios. See bench/README.md.
-- Environment: BENCH_RUNS (3), BENCH_DOWNLOAD_MB (1024), BENCH_POLLS (5000), BENCH_TASKS (200), BENCH_WAITING (1000),
-- BENCH_FLEET (1,100,1000,10000), BENCH_FLEET_INTERVAL (1 s, 5 s from 10,000 tasks), BENCH_LUAS (the Luas whose
-- sequential poll and fleet are measured: JIMENG_TEST_LUA and luajit), BENCH_ONLY (some of download, polling,
-- concurrency, front, fleet, startup, hosts; all by default), JIMENG_TEST_LUA.
local sandbox = require "jimeng.sandbox"
local core = require "jimeng.core"

local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 3
local MB = tonumber(os.getenv("BENCH_DOWNLOAD_MB") or "") or 1024
local POLLS = tonumber(os.getenv("BENCH_POLLS") or "") or 5000
local TASKS = tonumber(os.getenv("BENCH_TASKS") or "") or 200
local WAITING = tonumber(os.getenv("BENCH_WAITING") or "") or 1000
local LUA = os.getenv("JIMENG_TEST_LUA") or "lua5.4"
local PY = "/usr/bin/python3" -- Debian's, where python3-requests is installed
local ONLY = os.getenv("BENCH_ONLY")
local function section(name) return not ONLY or (("," .. ONLY .. ","):find("," .. name .. ",", 1, true) ~= nil) end
-- the Luas of the polling and fleet rows: each needs its build (make LUA=...)
local LUAS = {}
for l in (os.getenv("BENCH_LUAS") or (LUA .. " luajit")):gmatch("%S+") do
  local seen = false
  for _, m in ipairs(LUAS) do seen = seen or m == l end
  if not seen then LUAS[#LUAS + 1] = l end
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return code == 0, (out:gsub("exit=%d+%s*$", ""))
end

local tmp = os.tmpname()
os.remove(tmp)
assert(sh("mkdir -p " .. tmp))

--- Runs cmd under GNU time: wall seconds, peak RSS in KiB, CPU seconds (user + sys, children included).
local function measure(cmd)
  local tf = tmp .. "/time.out"
  local t0 = core.now()
  local ok, out = sh(("/usr/bin/time -f '%%e %%M %%U %%S' -o %s sh -c %s"):format(tf, q(cmd)))
  local wall = core.now() - t0
  assert(ok, cmd .. "\n" .. out)
  local f = assert(io.open(tf))
  local _, m, u, s = f:read("*a"):match("([%d.]+) (%d+) ([%d.]+) ([%d.]+)%s*$")
  f:close()
  -- wall from the monotonic clock (GNU time rounds to 10 ms); a program may report its own loop's CPU
  return { wall = wall, rss = tonumber(m), cpu = tonumber(out:match("cpu ([%d.]+)")) or (tonumber(u) + tonumber(s)) }
end

local function median(list, key)
  local v = {}
  for i, r in ipairs(list) do v[i] = r[key] end
  table.sort(v)
  local n = #v
  if n % 2 == 1 then return v[(n + 1) / 2] end
  return (v[n / 2] + v[n / 2 + 1]) / 2
end

local function runs(cmd, n, before)
  local list = {}
  for i = 1, n or RUNS do
    if before then before(i) end
    list[i] = measure(cmd)
  end
  return { wall = median(list, "wall"), rss = median(list, "rss"), cpu = median(list, "cpu") }
end

local function lua_env(lua)
  local root = os.getenv("PWD")
  return ("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/build/%s/?.so;;'"):format(root, root, root,
    lua or LUA)
end

local rows = {}
local POLL_CPU = {} -- Lua -> one sequential status poll's CPU (section 2), the yardstick of section 5
local function row(measure_name, name, value, ratio, note)
  rows[#rows + 1] = { measure_name, name, value, ratio or "", note or "" }
end

local sb = assert(sandbox.start { queue_seconds = 0, process_seconds = 0 })
local url = sb.url
local key = "-H 'Authorization: Bearer bench'"
local function new_task(prompt)
  local t = assert(io.popen(("curl -s -X POST %s/videos %s -H 'Content-Type: application/json' -d '%s'")
    :format(url, key, ('{"model":"jimeng-video-3.0-pro","req_key":"jimeng_ti2v_v30_pro","prompt":"%s"}'):format(prompt))))
  local body = t:read("*a")
  t:close()
  local id = assert(body:match('"id": "(%d+)"'), body)
  core.sleep(0.05)
  return id
end

io.stderr:write(("bench: %d runs each; download %d MiB; %d polls; %d tasks\n"):format(RUNS, MB, POLLS, TASKS))

-- 1. Download ----------------------------------------------------------------------------------
if section("download") then
  local bytes = MB * 1024 * 1024
  local id = new_task("bench download sandbox:bytes=" .. bytes)
  local out = tmp .. "/video.mp4"
  local content = ("%s/videos/%s/content"):format(url, id)
  assert(sh(("curl -s -o /dev/null %s %s"):format(key, content))) -- the server writes its file once
  local function check()
    local size = core.file_size(out)
    assert(size == bytes, ("the download is %s bytes, not %d"):format(tostring(size), bytes))
    os.remove(out)
  end
  local results = {}
  local sides = {
    { "jimeng client:download", ("%s %s bench/download_jimeng.lua %s %s %s"):format(lua_env(), LUA, url, id, out) },
    { "curl -s -o", ("curl -s -o %s %s %s"):format(out, key, content) },
    -- jimeng fsyncs before it renames; curl and requests leave the file in the page cache. This row is
    -- curl made as durable, for the like-for-like ratio.
    { "curl -s -o, then sync FILE", ("curl -s -o %s %s %s && sync %s"):format(out, key, content, out) },
    { "requests .content (vendor page)", ("%s bench/download_requests.py content %s %s %s"):format(PY, url, id, out) },
    { "requests iter_content", ("%s bench/download_requests.py stream %s %s %s"):format(PY, url, id, out) },
  }
  for _, side in ipairs(sides) do
    local list = {}
    for i = 1, RUNS do
      list[i] = measure(side[2])
      check()
    end
    results[side[1]] = { wall = median(list, "wall"), rss = median(list, "rss") }
  end
  local curl, durable = results["curl -s -o"], results["curl -s -o, then sync FILE"]
  for _, side in ipairs(sides) do
    local r = results[side[1]]
    row("download " .. MB .. " MiB", side[1], ("%.2f s, %.0f MiB/s, peak RSS %.1f MiB"):format(r.wall, MB / r.wall, r.rss / 1024),
      ("%.2fx curl, %.2fx curl+sync"):format(r.wall / curl.wall, r.wall / durable.wall),
      side[1]:find("jimeng") and "fsynced, renamed, directory fsynced" or (side[1]:find("sync") and "durable" or "page cache only"))
  end
end

-- 2. Polling ------------------------------------------------------------------------------------
-- The client on each Lua of LUAS against the hand-written lua-curl loop, interleaved run by run (the machine
-- is shared: a ratio is taken within one run, and the spread of the runs' ratios is shown).
local function spread(list)
  table.sort(list)
  return list[1], list[#list]
end
if section("polling") then
  local id = new_task("bench polling")
  local status = ("%s/videos/%s"):format(url, id)
  local curl_calls = math.min(POLLS, 500)
  local LC = "lua-curl easy loop (Lua 5.1)"
  local sides = {}
  for _, lua in ipairs(LUAS) do
    sides[#sides + 1] = { "jimeng client:status (" .. lua .. ")", function(n)
      return ("%s %s bench/poll_jimeng.lua %s %s %d"):format(lua_env(lua), lua, url, id, n)
    end, lua = lua }
  end
  sides[#sides + 1] = { LC, function(n) return ("lua5.1 bench/poll_luacurl.lua %s %s %d"):format(url, id, n) end }
  sides[#sides + 1] = { "requests.Session", function(n) return ("%s bench/poll_requests.py %s %s %d"):format(PY, url, id, n) end }
  sides[#sides + 1] = { "one curl process per call", function(n)
    return ("i=0; while [ $i -lt %d ]; do curl -s %s %s >/dev/null; i=$((i+1)); done"):format(n, key, status)
  end, curl_calls }
  local per, list = {}, {}
  for _, side in ipairs(sides) do per[side[1]], list[side[1]] = { conns = 0, n = side[3] or POLLS }, {} end
  for _ = 1, RUNS do
    for _, side in ipairs(sides) do
      local p = per[side[1]]
      local c0 = sb:stats().connections
      local m = measure(side[2](p.n))
      p.conns = sb:stats().connections - c0
      m.cpu = m.cpu / p.n
      local l = list[side[1]]
      l[#l + 1] = m
    end
  end
  local ratios = {} -- side -> its ratio to lua-curl in each run
  for _, side in ipairs(sides) do
    per[side[1]].cpu = median(list[side[1]], "cpu")
    local r = {}
    for i = 1, RUNS do r[i] = list[side[1]][i].cpu / list[LC][i].cpu end
    ratios[side[1]] = r
  end
  local base_req, base_lc = per["requests.Session"].cpu, per[LC].cpu
  for _, side in ipairs(sides) do
    local p = per[side[1]]
    if side.lua then POLL_CPU[side.lua] = p.cpu end
    local lo, hi = spread(ratios[side[1]])
    row(POLLS .. " status polls", side[1],
      ("%.1f us CPU/call (%d calls, %d connection%s)"):format(p.cpu * 1e6, p.n, p.conns, p.conns == 1 and "" or "s"),
      ("%.2fx requests.Session, %.2fx lua-curl (runs: %.2f-%.2fx)"):format(p.cpu / base_req, p.cpu / base_lc, lo, hi),
      side[3] and "each call starts a process: that cost is the point" or "the loop's own CPU, start-up excluded")
  end
end

-- 3. Concurrency ------------------------------------------------------------------------------
if section("concurrency") then
  sb:config { queue_seconds = 1, process_seconds = 1 }
  local dir = tmp .. "/many"
  assert(sh("mkdir -p " .. dir))
  local one = runs(("%s %s bench/many_jimeng.lua %s 1 %s"):format(lua_env(), LUA, url, dir))
  local many = runs(("%s %s bench/many_jimeng.lua %s %d %s"):format(lua_env(), LUA, url, TASKS, dir))
  local seq_n = 5
  local seq = runs(("%s bench/sequential_requests.py %s %d %s 0.25"):format(PY, url, seq_n, dir), 1)
  row("tasks of 2 s", "jimeng: 1 task alone", ("%.2f s"):format(one.wall), "1.00x")
  row("tasks of 2 s", ("jimeng.run: %d tasks at once"):format(TASKS), ("%.2f s, peak RSS %.1f MiB"):format(many.wall, many.rss / 1024),
    ("%.2fx one task alone"):format(many.wall / one.wall))
  row("tasks of 2 s", ("vendor loop (requests), %d in a row"):format(seq_n), ("%.2f s"):format(seq.wall),
    ("%.2fx one task alone"):format(seq.wall / one.wall), ("%d tasks so: about %.0f s"):format(TASKS, seq.wall / seq_n * TASKS))
  sb:config { queue_seconds = 0, process_seconds = 0 }
end

-- 4. Many tasks waiting through a TLS front: HTTP/2 against HTTP/1.1 -------------------------------
if section("front") then
  local tls = require "spec.support.tls"
  if not tls.available then
    row(WAITING .. " tasks waiting via nginx", "skipped", "needs nginx (http_v2) and openssl")
  else
    local dir = tmp .. "/front"
    assert(sh("mkdir -p " .. dir))
    tls.make_ca(dir, { front = { san = "DNS:localhost,IP:127.0.0.1" } })
    local front = tls.nginx_front(dir, url, { { name = "front", cert = "front" } })
    local front_url = ("https://127.0.0.1:%d/v1"):format(front.ports.front)
    sb:config { queue_seconds = 2, process_seconds = 2 }
    local function cmd(n, version)
      return ("%s %s bench/wait_front_jimeng.lua %s %s %s %d %s"):format(lua_env(), LUA, url, front_url, dir .. "/ca.pem", n,
        version)
    end
    local per = {}
    for _, version in ipairs { "2", "1.1" } do
      local polls, conns
      local full = runs(cmd(WAITING, version), RUNS, function()
        os.remove(front.log)
        sh(("kill -USR1 $(cat %s/logs/nginx.pid)"):format(dir)) -- reopen the access log: one run's lines only
        sh("sleep 0.2")
      end)
      local seen, count = {}, 0
      polls = 0
      for _, e in ipairs(tls.access(front)) do
        if e.uri:match("^/v1/videos/[^/]+$") then
          polls = polls + 1
          if not seen[e.connection] then seen[e.connection], count = true, count + 1 end
        end
      end
      conns = count
      local one = runs(cmd(1, version), RUNS)
      per[version] = { cpu = full.cpu / math.max(polls, 1), polls = polls, conns = conns, wall = full.wall,
        rss_task = (full.rss - one.rss) / (WAITING - 1) }
    end
    for _, version in ipairs { "2", "1.1" } do
      local p, other = per[version], per[version == "2" and "1.1" or "2"]
      row(WAITING .. " tasks waiting via nginx (TLS)", "HTTP/" .. version,
        ("%d connections, %.1f us CPU/poll (%d polls, last run), %.1f KiB RSS/task"):format(p.conns, p.cpu * 1e6, p.polls,
          p.rss_task),
        ("%.2fx HTTP/%s CPU/poll"):format(p.cpu / other.cpu, version == "2" and "1.1" or "2"),
        "tasks of 4 s, polled every 0.5 s; at most 64 connections per host")
    end
    front.stop()
    sb:config { queue_seconds = 0, process_seconds = 0 }
  end
end

-- 5. Many tasks waiting on the sandbox: cost flat in the number of tasks ---------------------------
-- For each Lua of LUAS: N tasks of 10 s waited on together, against the same Lua's sequential poll (section 2).
-- RSS per task: the peak growth past start-up over N, and the growth past one task's over N - 1 (what one more
-- waiting task costs, without the fixed cost of the connections and the scheduler); and "while waiting": the
-- peak growth during the wait past the RSS once the creates were done, over N (the creates, 1,000 paid requests
-- in flight at once, leave memory that malloc keeps).
if section("fleet") then
  local sizes = {}
  for v in (os.getenv("BENCH_FLEET") or "1,100,1000,10000"):gmatch("%d+") do sizes[#sizes + 1] = tonumber(v) end
  local function interval_of(n)
    return tonumber(os.getenv("BENCH_FLEET_INTERVAL") or "") or (n >= 10000 and 5 or 1)
  end
  local function fleet(lua, n, max_rps)
    sb:reset()
    sb:config { queue_seconds = 1, process_seconds = 9, max_rps = max_rps and max_rps.server or 0 }
    local ok, out = sh(("%s %s bench/fleet_jimeng.lua %s %d %g %s"):format(lua_env(lua), lua, url, n, interval_of(n),
      max_rps and max_rps.client or ""))
    assert(ok, out)
    local cpu, wall, rss, creates, rss_wait = out:match(
      "cpu ([%d.]+) wall ([%d.]+) rss_kb (%d+) creates ([%d.]+) rss_wait_kb (%d+)")
    local st = sb:stats()
    local polls = st.requests - st.creates
    return { cpu = tonumber(cpu), wall = tonumber(wall), rss = tonumber(rss), rss_wait = tonumber(rss_wait), polls = polls,
      limited = st.rate_limited,
      waited = tonumber(wall) - tonumber(creates), creates = tonumber(creates) }
  end
  -- the yardstick of a fleet that sleeps between polls: the sequential poll paced at 100 tasks' rate
  local function paced(lua, n, gap)
    local paced_id = new_task("bench paced polling") -- after the fleets' resets
    local list = {}
    for i = 1, RUNS do
      list[i] = measure(("%s %s bench/poll_paced_jimeng.lua %s %s %d %g"):format(lua_env(lua), lua, url, paced_id, n, gap))
      list[i].cpu = list[i].cpu / n
    end
    return median(list, "cpu")
  end
  for _, lua in ipairs(LUAS) do
    local single = fleet(lua, 1)
    local seq = POLL_CPU[lua] -- CPU of one sequential client:status on this Lua, from section 2
    local gap = interval_of(100) / 100
    local paced_cpu = paced(lua, 500, gap)
    row(("%s: one poll at a time"):format(lua), ("a poll every %g s (100 tasks' rate)"):format(gap),
      ("%.1f us CPU/poll"):format(paced_cpu * 1e6),
      seq and ("%.2fx a sequential poll"):format(paced_cpu / seq) or "",
      "the same client:status loop with a sleep between polls: each poll wakes the process")
    for _, n in ipairs(sizes) do
      local list = {}
      for i = 1, n == 1 and 1 or RUNS do list[i] = n == 1 and single or fleet(lua, n) end
      for _, x in ipairs(list) do x.per_poll = x.cpu / math.max(x.polls, 1) end
      table.sort(list, function(a, b) return a.per_poll < b.per_poll end)
      local lo, hi = list[1].per_poll, list[#list].per_poll
      local r = list[math.floor((#list + 1) / 2)] -- shown: the run of the median CPU per poll
      local cpu_poll = r.per_poll
      row(("%s: tasks of 10 s, polled every %g s"):format(lua, interval_of(n)), ("%d task%s waiting"):format(n, n == 1 and "" or "s"),
        ("%.1f us CPU/poll, %.1f KiB RSS/task (%s KiB past one task; %.1f KiB while waiting), %.1f polls/video, %.1f s (creates %.1f s)"):format(
          cpu_poll * 1e6, r.rss / n, n > 1 and ("%.1f"):format((r.rss - single.rss) / (n - 1)) or "-", r.rss_wait / n,
          r.polls / n, r.wall, r.creates),
        seq and ("%.2fx a sequential poll (runs: %.2f-%.2fx), waiting %.2fx one task"):format(cpu_poll / seq, lo / seq,
          hi / seq, r.waited / single.waited) or "",
        "CPU of the waiting alone; RSS growth past start-up")
    end
  end
  local n = sizes[#sizes]
  local limit = math.max(20, math.floor(n / interval_of(n) / 2))
  for _, side in ipairs { { "max_rps known", { server = limit, client = limit } }, { "limit unknown", { server = limit } } } do
    local r = fleet(LUA, n, side[2])
    row(("%d tasks, the API allows %d requests/s"):format(n, limit), side[1],
      ("%d 429s, %.1f polls/video, %.1f s"):format(r.limited, r.polls / n, r.wall), "",
      side[2].client and "max_rps set to the API's limit" or "learnt from the 429s")
  end
  sb:config { queue_seconds = 0, process_seconds = 0, max_rps = 0 }
end

-- 6. Start-up ---------------------------------------------------------------------------------
if section("startup") then
  local req = runs(("%s %s -e 'require \"jimeng\"'"):format(lua_env(), LUA), 10)
  local help = runs(("%s bin/jimeng --help >/dev/null"):format(LUA), 10)
  local bare = runs(("%s -e ''"):format(LUA), 10)
  row("start-up", "require \"jimeng\"", ("%.0f ms"):format(req.wall * 1000), "", ("bare %s: %.0f ms"):format(LUA, bare.wall * 1000))
  row("start-up", "jimeng --help", ("%.0f ms"):format(help.wall * 1000))
end

sb:stop()
sh("rm -rf " .. tmp)

-- 7. Hosts: what waiting costs Neovim and an nginx worker (bench/host.lua prints its own table) -------
local host_table
if section("hosts") then
  local ok_host
  ok_host, host_table = sh("make -s LUA=luajit >/dev/null && " .. lua_env() .. " " .. LUA .. " bench/host.lua")
  if not ok_host then host_table = "the host table failed:\n" .. host_table end
end

-- The table ------------------------------------------------------------------------------------
local machine = select(2, sh("nproc")):gsub("%s+$", "") .. " cores, " ..
  (select(2, sh("grep -m1 'model name' /proc/cpuinfo")):match(":%s*(.-)%s*$") or "unknown CPU")
print(("| measure | side | result | ratio | note |\n|---|---|---|---|---|"))
for _, r in ipairs(rows) do print(("| %s | %s | %s | %s | %s |"):format(r[1], r[2], r[3], r[4], r[5])) end
print(("\nmachine: %s; %s; libcurl %s; %d runs each, medians"):format(machine, _VERSION, core.curl_version(), RUNS))
if host_table then
  print("\n## Hosts: Neovim and nginx while generates wait\n")
  print(host_table)
end
