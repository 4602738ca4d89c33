-- bench: what a shared budget costs (README, "One account, many clients"). For each place the budget can be
-- held (none: a client's own, "process", "local": the file every process maps), the CPU of N status polls
-- through a client with max_rps set high enough never to wait (so the cost of taking a token is what is
-- measured, not the pace), and the CPU of a task slot taken and given back (max_tasks). Medians of 3 runs.
--   make bench-budget            (starts its own sandbox)
local core = require "jimeng.core"
local jimeng = require "jimeng"
local sandbox = require "jimeng.sandbox"

local N, SLOTS, RUNS = tonumber(os.getenv("BENCH_POLLS") or "") or 2000, 100000, 3

local sb = assert(sandbox.start { queue_seconds = 60, process_seconds = 60 })
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))

local function median(xs)
  table.sort(xs)
  return xs[math.ceil(#xs / 2)]
end

-- a Redis of its own on loopback, when redis-server is installed
local redis_port, redis_pid
if os.execute("command -v redis-server >/dev/null 2>&1") then
  local pp = io.popen([[python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])
  redis_port = tonumber(pp:read("*l"))
  pp:close()
  pp = io.popen(("exec redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & echo $!")
    :format(redis_port))
  redis_pid = tonumber(pp:read("*l"))
  pp:close()
  local t0 = core.now()
  while not os.execute(("redis-cli -p %d ping >/dev/null 2>&1"):format(redis_port)) and core.now() - t0 < 5 do
    core.sleep(0.05)
  end
end

local PLACES = {
  { name = "none (the client's own pace)", opts = { budget = "client", max_rps = 100000 } },
  { name = "process (shared in memory)", opts = { budget = "process", max_rps = 100000, max_tasks = 1024 } },
  { name = "local (a mapped file, flock)", opts = { budget = dir .. "/budget", max_rps = 100000, max_tasks = 1024 } },
}
if redis_port then
  PLACES[#PLACES + 1] = { name = "redis (loopback, leased tokens)",
    opts = { budget = ("redis://127.0.0.1:%d/bench"):format(redis_port), max_rps = 100000, max_tasks = 1024 } }
end

local rows = {}
for _, place in ipairs(PLACES) do
  local polls, slots = {}, {}
  for run = 1, RUNS do
    local opts = { api_key = "bench-" .. run, base_url = sb.url }
    for k, v in pairs(place.opts) do opts[k] = v end
    if opts.budget:sub(1, 1) == "/" then opts.budget = opts.budget .. run end -- a file per account
    local c = assert(jimeng.new(opts))
    local id = assert(c:create { prompt = "bench budget" }).id
    local t0 = os.clock()
    for _ = 1, N do assert(c:status(id)) end
    polls[run] = (os.clock() - t0) / N * 1e6
    if c.share and not opts.budget:match("^redis:") then
      t0 = os.clock()
      for _ = 1, SLOTS do c.share:release(assert(c.share:acquire())) end
      slots[run] = (os.clock() - t0) / SLOTS * 1e6
    elseif c.share then -- a slot from Redis is a round trip of its thread: wall time, fewer of them
      t0 = core.now()
      for _ = 1, 200 do
        local t
        repeat t = c.share:acquire() if not t then core.sleep(0.0002) end until t
        c.share:release(t)
      end
      slots[run] = (core.now() - t0) / 200 * 1e6
    end
    c:close()
  end
  rows[#rows + 1] = { place.name, median(polls), slots[1] and median(slots) }
end

local base = rows[1][2]
io.write("| budget held | CPU per status poll | vs none | a slot taken and returned |\n|---|---|---|---|\n")
-- (Redis's slot column is wall time: the waiting for its thread's round trip, not CPU)
for _, r in ipairs(rows) do
  io.write(("| %s | %.1f us | %+.1f us | %s |\n"):format(r[1], r[2], r[2] - base,
    r[3] and ("%.2f us"):format(r[3]) or "-"))
end
io.write(("\n%d polls per run on the sandbox over loopback, %d runs, medians; %s, libcurl %s\n"):format(N, RUNS,
  _VERSION, core.curl_version()))
os.execute("rm -rf " .. dir)
if redis_pid then os.execute("kill " .. redis_pid) end
sb:stop()
