-- Run by spec/nvim_spec.lua: a download stalls half-way (the sandbox's stall_mid_body); :JimengCancel stops
-- it, the notification says what was paid for, no file descriptor of nvim points at the .part any more, and
-- :JimengResume continues the same .part to the whole video.
-- What it shows goes through the real vim.notify and nvim_echo, read back from :messages.
local messages = dofile("spec/nvim/messages.lua")
require("jimeng").setup { output_dir = os.getenv("JIMENG_OUTPUT_DIR"), interval = 0.1 }
local plugin, driver = require("jimeng.plugin"), require("jimeng.nvim")

local note = messages.find

local function open_parts()
  local list = {}
  local dir = vim.loop.fs_scandir("/proc/self/fd")
  while dir do
    local name = vim.loop.fs_scandir_next(dir)
    if not name then break end
    local target = vim.loop.fs_readlink("/proc/self/fd/" .. name)
    if target and target:find("%.part") then list[#list + 1] = target end
  end
  return list
end

vim.cmd("JimengGenerate cancel me sandbox:bytes=400000")
local task = plugin.tasks()[1]
local stalled = vim.wait(20000, function() return (task.percent or 0) > 0 and (task.percent or 0) < 100 end, 20)
local parts_before = #open_parts()
vim.cmd("JimengCancel")
local reported = vim.wait(5000, function() return note("cancelled") ~= nil end, 20)
local state_after = driver.state()
local parts_after = open_parts()
local part = task.dir .. "/jimeng_video_" .. tostring(task.task_id) .. ".mp4.part"
local part_size = (vim.loop.fs_stat(part) or {}).size

vim.cmd("JimengResume " .. tostring(task.task_id))
local resumed = vim.wait(20000, function() return note("saved") ~= nil end, 20)

local out = io.open(os.getenv("JIMENG_NVIM_OUT"), "w")
out:write(vim.fn.json_encode({
  stalled = stalled, reported = reported, cancelled = note("cancelled") or vim.NIL, saved = note("saved") or vim.NIL,
  resumed = resumed, task_id = task.task_id, state = task.state, part = part, part_size = part_size or vim.NIL,
  parts_before = parts_before, parts_after = #parts_after, sockets_after = state_after.sockets,
  running_after = state_after.running, path = plugin.tasks()[2] and plugin.tasks()[2].path or vim.NIL,
}))
out:close()
vim.cmd("qa!")
