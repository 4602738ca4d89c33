-- Run by spec/nvim_spec.lua inside `nvim --headless -u spec/nvim/init.lua` with the plugin installed as a
-- native package: a timer ticks every 20 ms while :JimengGenerate runs; the outcome goes to $JIMENG_NVIM_OUT.
-- What it shows goes through the real vim.notify and nvim_echo; the outcome carries the lines of :messages.
local messages = dofile("spec/nvim/messages.lua")
require("jimeng").setup { output_dir = os.getenv("JIMENG_OUTPUT_DIR"), interval = 0.1 }

local ticker = dofile("spec/nvim/ticker.lua")()

local started = vim.loop.now()
vim.cmd("JimengGenerate -seconds=5 a kite over the sea sandbox:slow=1.5")
local returned_after = vim.loop.now() - started -- the command must return at once

local function saved()
  return messages.find("jimeng: saved") or messages.find("failed")
end
local done = vim.wait(20000, function() return saved() ~= nil end, 10)
ticker.timer:stop()
local task = require("jimeng.plugin").tasks()[1]

local out = io.open(os.getenv("JIMENG_NVIM_OUT"), "w")
out:write(vim.fn.json_encode({
  done = done, result = saved() or vim.NIL, messages = messages.lines(), ticks = ticker.ticks,
  worst_gap_ms = ticker.worst, path = task.path, state = task.state, command_returned_ms = returned_after, elapsed_ms = vim.loop.now() - started,
  stats = require("jimeng.nvim").stats, driver = require("jimeng.nvim").state(),
  commands = vim.fn.exists(":JimengStatus") + vim.fn.exists(":JimengCancel") + vim.fn.exists(":JimengOpen"),
}))
out:close()
vim.cmd("qa!")
