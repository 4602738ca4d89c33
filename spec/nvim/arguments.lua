-- Run by spec/nvim_spec.lua: the commands' arguments as a user types them. "--" ends :JimengGenerate's options
-- (a prompt may start with "-" after it); a word that looks like an option before the prompt is refused, never
-- paid for; :JimengCancel, :JimengResume and :JimengOpen refuse an argument that names no task, and change
-- nothing. What was refused is read back as the user got it: vim.notify at ERROR level writes v:errmsg (the real
-- vim.notify and nvim_err_writeln; nothing of the UI is replaced), and :messages. The outcome to $JIMENG_NVIM_OUT.
local messages = dofile("spec/nvim/messages.lua")
local base = os.getenv("JIMENG_OUTPUT_DIR")
local opened = base .. "/arguments-opened.txt"
os.remove(opened)
require("jimeng").setup {
  output_dir = base .. "/arguments", interval = 0.1,
  open_cmd = { "sh", "-c", 'printf %s "$1" > ' .. opened, "player" },
}
local plugin = require("jimeng.plugin")
local out = {}

-- Types a command line as a user does (the keys, then Enter); returns the error it showed ("" when none).
local function typed(cmd)
  vim.v.errmsg = ""
  vim.api.nvim_feedkeys(":" .. cmd .. "\r", "nx", false)
  return vim.v.errmsg
end

local settled = messages.settled

local function last() return plugin.tasks()[#plugin.tasks()] end

-- 1. "--" ends the options: the prompt is what follows it
out.dash = typed("JimengGenerate -seconds=10 -- -nv dash")
out.dash_saved = settled(1)
out.dash_state = plugin.tasks()[1].state
-- a prompt that starts with "-", without "--": refused; so is a mistyped option, and "--" with no prompt
out.no_dashes = typed("JimengGenerate -nv dash")
out.double_dash_option = typed("JimengGenerate --seconds=10 a cat on a mat")
out.lone_dashes = typed("JimengGenerate --")
out.tasks_after_refusals = #plugin.tasks()

-- 2. :JimengCancel with an argument that is no running task's number or id cancels nothing
typed("JimengGenerate a slow river sandbox:slow=30")
local slow = last()
out.slow_created = vim.wait(20000, function() return slow.task_id ~= nil end, 20)
out.slow_n, out.slow_id = slow.n, slow.task_id or vim.NIL
out.cancel_abc = typed("JimengCancel abc")
out.cancel_99 = typed("JimengCancel 99")
out.cancel_saved = typed("JimengCancel 1") -- #1 is saved: not running
vim.wait(300, function() return false end, 20) -- a cancel would have been reported by now
out.after_bad_cancels = { state = slow.state, running = slow.job ~= nil }
out.cancel_by_id = typed("JimengCancel " .. tostring(slow.task_id))
out.cancelled = vim.wait(5000, function() return slow.state == "cancelled" end, 20)
out.cancel_note = messages.find("#" .. slow.n .. " cancelled") or vim.NIL

-- 3. :JimengResume checks the id before anything is sent or recorded
local before = #plugin.tasks()
out.resume_path = typed("JimengResume ../../etc")
out.resume_slash = typed("JimengResume a/b")
vim.wait(300, function() return false end, 20) -- a task would have failed by now
out.tasks_after_bad_resume = #plugin.tasks() - before
-- a well-formed id the API does not know: asked about (a free status call), and not called paid for
out.resume_unknown = typed("JimengResume no-such-task")
out.unknown_settled = settled(before + 1)
out.unknown_note = messages.find("no%-such%-task") or vim.NIL

-- 4. :JimengOpen with something that is not a task number plays nothing
out.open_abc = typed("JimengOpen abc")
vim.wait(500, function() return vim.loop.fs_stat(opened) ~= nil end, 20)
out.open_abc_played = vim.loop.fs_stat(opened) ~= nil
out.open_1 = typed("JimengOpen 1")
out.open_1_played = vim.wait(5000, function() return vim.loop.fs_stat(opened) ~= nil end, 20)

out.messages = messages.lines()
local f = io.open(os.getenv("JIMENG_NVIM_OUT"), "w")
f:write(vim.fn.json_encode(out))
f:close()
vim.cmd("qa!")
