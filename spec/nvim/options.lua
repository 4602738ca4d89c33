-- Run by spec/nvim_spec.lua: every setup{} option as a user sets it, each seen where it acts (the request the
-- sandbox got, the file, :messages, the player started); no key in the environment, the client's from setup{}.
-- The outcome to $JIMENG_NVIM_OUT.
local messages = dofile("spec/nvim/messages.lua")
local plugin = require("jimeng.plugin")
local base = os.getenv("JIMENG_OUTPUT_DIR")
local opened = base .. "/opened.txt"
local client = { api_key = "key-from-setup", base_url = os.getenv("JIMENG_BASE_URL") }
require("jimeng").setup {
  output_dir = base .. "/videos", seconds = 10, ratio = "9:16", model = "jimeng-video-3.0-720P", interval = 0.1,
  notify = false, coalesce_ms = 100, client = client,
  open_cmd = { "sh", "-c", 'printf %s "$1" > ' .. opened, "player" },
}
local out = { coalesce_ms = require("jimeng.nvim").coalesce_ms }

local settled = messages.settled

vim.cmd("JimengGenerate a lighthouse at dusk")
out.saved = settled(1)
out.path = plugin.tasks()[1].path or vim.NIL
vim.cmd("JimengOpen")
out.opened = vim.wait(5000, function() return vim.loop.fs_stat(opened) ~= nil end, 20)
-- an error is shown even with notify = false
vim.cmd("JimengGenerate -image=" .. base .. "/no-such-image.png a boat from an image")
out.refused = settled(2)
-- timeout: a whole generate stops after it, saying what was paid for
require("jimeng").setup { output_dir = base .. "/videos", interval = 0.1, timeout = 1, client = client }
local t0 = vim.loop.now()
vim.cmd("JimengGenerate too slow sandbox:slow=30")
out.timed_out = settled(3)
out.timeout_ms = vim.loop.now() - t0
out.states = {}
for i, t in ipairs(plugin.tasks()) do out.states[i] = t.state end
out.task3 = plugin.tasks()[3].task_id or vim.NIL
out.messages = messages.lines()

local f = io.open(os.getenv("JIMENG_NVIM_OUT"), "w")
f:write(vim.fn.json_encode(out))
f:close()
vim.cmd("qa!")
