--- Twenty prompt variations at once, on one thread: each saved, a one-line summary per task.
--   JIMENG_API_KEY=... lua examples/many_prompts.lua [output-directory]
local jimeng = require "jimeng"

local outdir = arg[1] or "."
local client = assert(jimeng.new())

local subjects = { "a red fox", "a paper boat", "a lighthouse", "a hummingbird", "a steam train" }
local moods = { "at dawn, soft mist", "in a thunderstorm", "under neon lights", "in falling snow" }

local jobs = {}
for _, s in ipairs(subjects) do
  for _, m in ipairs(moods) do jobs[#jobs + 1] = s .. ", " .. m .. ", cinematic, 高清画质" end
end

local started = os.time()
local results, errs = jimeng.run(function()
  local list = {}
  for i, prompt in ipairs(jobs) do
    list[i] = function()
      return client:generate({ prompt = prompt, seconds = 5, aspect_ratio = "16:9" }, {
        output = ("%s/variation-%02d.mp4"):format(outdir, i), overwrite = true, -- a rerun makes them anew
        interval = tonumber(os.getenv("JIMENG_POLL_INTERVAL") or "") or 15,
      })
    end
  end
  return jimeng.gather(list)
end)

local failed = 0
for i, prompt in ipairs(jobs) do
  local r, e = results[i], errs[i]
  if r then
    print(("%2d ok     %-22s %8d bytes  %s"):format(i, r.task.id, r.bytes, prompt))
  else
    failed = failed + 1
    print(("%2d FAILED %-22s %s"):format(i, e.task_id or "-", tostring(e)))
  end
end
print(("%d of %d videos in %d s"):format(#jobs - failed, #jobs, os.time() - started))
os.exit(failed == 0 and 0 or 1)
