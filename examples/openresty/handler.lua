--- An OpenResty handler: GET /generate?prompt=...&seconds=5 creates a video, waits for it and saves it,
-- answering {"path", "task_id", "bytes"} as JSON; errors answer {"error", "kind", "task_id"} with a status.
-- One client per worker: its libcurl connections are reused by every request the worker serves, and one
-- stepper per worker (jimeng.openresty) drives its transfers while the requests sleep on semaphores.
local jimeng = require "jimeng"
local cjson = require "cjson.safe"

local _M = {}

local client, client_err

local STATUS = { invalid_argument = 400, auth = 502, not_found = 404, rate_limited = 429, timeout = 504 }

local function reply(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(body))
end

function _M.generate()
  if not client and not client_err then
    -- status polls in flight at once per worker (default 8): raise it when the API is slow and many wait
    client, client_err = jimeng.new { max_connections = tonumber(os.getenv("JIMENG_MAX_CONNECTIONS") or "") }
  end
  if not client then return reply(500, { error = tostring(client_err), kind = client_err.kind }) end
  local args = ngx.req.get_uri_args()
  local result, err = client:generate({
    prompt = args.prompt, seconds = tonumber(args.seconds) or 5, aspect_ratio = args.aspect_ratio,
  }, {
    output_dir = os.getenv("JIMENG_OUTPUT_DIR") or "/tmp",
    interval = tonumber(args.interval) or 5,
  })
  if not result then
    return reply(STATUS[err.kind] or 502, { error = err.message, kind = err.kind, task_id = err.task_id })
  end
  reply(200, { path = result.path, task_id = result.task.id, bytes = result.bytes })
end

--- GET /jimeng/stats: what this worker's stepper is doing (requests waiting on it, its steps so far).
function _M.stats()
  local adapter = require("jimeng.runtime").host()
  local waiting, running = 0, false
  if adapter.waiting then waiting, running = adapter.waiting() end
  local st = adapter.stats or {}
  reply(200, { adapter = adapter.name, waiting = waiting, stepper = running, steps = st.steps, performs = st.performs,
    wakeups = st.wakeups, pid = ngx.worker.pid() })
end

return _M
