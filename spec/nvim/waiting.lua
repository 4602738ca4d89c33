-- Run by spec/nvim_spec.lua: $JIMENG_NVIM_N generates wait (tasks far longer than the window, polled every
-- 5 s); over a window of $JIMENG_NVIM_WINDOW seconds after their creates, count the adapter's wake-ups: each
-- firing of its one uv timer or of a poll handle on a libcurl socket is one wake-up of the editor's loop that
-- jimeng caused. The editor's own 20 ms timer shows the loop stays responsive.
local n = tonumber(os.getenv("JIMENG_NVIM_N"))
local window = tonumber(os.getenv("JIMENG_NVIM_WINDOW"))
require("jimeng").setup { output_dir = os.getenv("JIMENG_OUTPUT_DIR"), interval = 5, notify = false }
local plugin, driver = require("jimeng.plugin"), require("jimeng.nvim")
-- what a statusline sees: the User JimengProgress autocommands, with the task in vim.g.jimeng_progress
local created_events = 0
vim.api.nvim_create_autocmd("User", { pattern = "JimengProgress", callback = function()
  if vim.g.jimeng_progress.state == "created" then created_events = created_events + 1 end
end })

for i = 1, n do vim.cmd(("JimengGenerate waiting %d sandbox:slow=120"):format(i)) end
local created = vim.wait(20000, function()
  for _, t in ipairs(plugin.tasks()) do
    if not t.task_id then return false end
  end
  return true
end, 50)

local ticker = dofile("spec/nvim/ticker.lua")()
local s0 = vim.deepcopy(driver.stats)
local t0 = vim.loop.hrtime()
vim.wait(window * 1000, function() return false end, 100)
local elapsed = (vim.loop.hrtime() - t0) / 1e9
local s1 = vim.deepcopy(driver.stats)
ticker.timer:stop()
local running = 0
for _, t in ipairs(plugin.tasks()) do
  if t.job then running = running + 1 end
end
vim.cmd("JimengCancel")
vim.wait(5000, function() return driver.state().running == 0 end, 20)

local out = io.open(os.getenv("JIMENG_NVIM_OUT"), "w")
out:write(vim.fn.json_encode({
  created = created, running = running, seconds = elapsed, timer = s1.timer - s0.timer, poll = s1.poll - s0.poll,
  timer_idle = s1.timer_idle - s0.timer_idle,
  created_events = created_events, ticks = ticker.ticks, worst_gap_ms = ticker.worst, left_running = driver.state().running,
}))
out:close()
vim.cmd("qa!")
