--- Text to video: the vendor page's first example, end to end (create, wait, download).
--   JIMENG_API_KEY=... lua examples/text_to_video.lua [output-directory]
local jimeng = require "jimeng"

local started = os.time()

local result, err = jimeng.generate({
  prompt = "千军万马奔腾在草原上,阳光明媚,高清画质",
  seconds = 5,
  aspect_ratio = "16:9",
}, {
  output_dir = arg[1] or ".",
  interval = tonumber(os.getenv("JIMENG_POLL_INTERVAL") or "") or 15,
  on_status = function(task)
    print(("[%3ds] task %s: %s"):format(os.time() - started, task.id, task.status))
  end,
})

if not result then
  io.stderr:write(tostring(err), "\n")
  if err.task_id and err.kind ~= "task_failed" then
    io.stderr:write("The task exists and is paid for: fetch it later with client:download(\"", err.task_id, "\", path)\n")
  end
  os.exit(1)
end
print(("saved %s (%d bytes, %s)"):format(result.path, result.bytes, result.content_type or "video"))
