--- A talking-head video: check the portrait, detect its subjects, choose the speaker, generate, download.
--   JIMENG_API_KEY=... lua examples/omnihuman.lua IMAGE_URL AUDIO_URL [output.mp4]
local jimeng = require "jimeng"

local image = arg[1] or "https://example.com/two-people.jpg?subjects=2"
local audio = arg[2] or "https://example.com/speech.mp3"
local output = arg[3] or "omnihuman.mp4"

local client = assert(jimeng.new())

-- 1. detection: the subjects' masks, largest first
local detection, err = client:detect(image)
if not detection then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
print(("detected %d subject(s)"):format(#detection.mask_urls))
for i, mask in ipairs(detection.mask_urls) do print(("  %d: %s"):format(i, mask)) end

-- 2. and 3. recognition, the choice of speaker (here: the largest), the paid create, waiting, download
local started = os.time()
local result
result, err = client:omnihuman({
  image = image, audio = audio, prompt = "自然说话,面带微笑",
  recognize = true,
  subject = function(masks) return masks[1] end,
  output = output,
}, {
  overwrite = true, -- the example makes its video anew on every run
  interval = tonumber(os.getenv("JIMENG_POLL_INTERVAL") or "") or 15,
  on_status = function(task) print(("[%3ds] task %s: %s"):format(os.time() - started, task.id, task.status)) end,
})
if not result then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
print(("saved %s (%d bytes), speaker mask %s"):format(result.path, result.bytes, result.mask_url))
