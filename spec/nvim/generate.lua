-- Run by spec/nvim_spec.lua inside `nvim --headless`: a timer ticks every 20 ms while the example
-- plugin's :JimengGenerate runs; the outcome is written as JSON to $JIMENG_NVIM_OUT.
local root = os.getenv("JIMENG_ROOT")
package.cpath = root .. "/build/luajit/?.so;" .. package.cpath
vim.opt.rtp:append(root)
vim.opt.rtp:append(root .. "/examples/nvim")
vim.cmd("runtime plugin/jimeng.lua")
vim.g.jimeng_output_dir = os.getenv("JIMENG_OUTPUT_DIR")
vim.g.jimeng_poll_interval = 0.1

local notes, echoes = {}, {}
vim.notify = function(msg, level) table.insert(notes, { msg = msg, level = level }) end
local real_echo = vim.api.nvim_echo
vim.api.nvim_echo = function(chunks, ...)
  table.insert(echoes, chunks[1][1])
  return real_echo(chunks, ...)
end

local ticks, worst, last = 0, 0, vim.loop.now()
local timer = vim.loop.new_timer()
timer:start(20, 20, function()
  local t = vim.loop.now()
  worst = math.max(worst, t - last)
  last = t
  ticks = ticks + 1
end)

local started = vim.loop.now()
vim.cmd("JimengGenerate a kite over the sea sandbox:slow=1.5")
local returned_after = vim.loop.now() - started -- the command must return at once

local done = vim.wait(20000, function() return #notes > 0 end, 10)
timer:stop()

local out = io.open(os.getenv("JIMENG_NVIM_OUT"), "w")
out:write(vim.fn.json_encode({
  done = done, notes = notes, echoes = echoes, ticks = ticks, worst_gap_ms = worst,
  command_returned_ms = returned_after, elapsed_ms = vim.loop.now() - started,
}))
out:close()
vim.cmd("qa!")
