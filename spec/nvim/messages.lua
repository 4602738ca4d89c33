-- What the user has been shown, read back as they would read it: the lines of :messages (vim.notify's
-- messages through the real nvim_echo), and whether a task has settled. Used by spec/nvim/*.lua; nothing of the
-- UI is replaced.
local M = {}

--- The lines of :messages now.
function M.lines()
  local api = vim.api
  local text = api.nvim_exec2 and api.nvim_exec2("messages", { output = true }).output or api.nvim_exec("messages", true)
  return vim.split(text, "\n", { plain = true, trimempty = true })
end

--- The first line of :messages that matches pattern, or nil.
function M.find(pattern)
  for _, l in ipairs(M.lines()) do
    if l:find(pattern) then return l end
  end
end

--- Whether the plugin's task n has settled (its job over, its create answered) within 20 s.
function M.settled(n)
  local plugin = require("jimeng.plugin")
  return vim.wait(20000, function()
    local t = plugin.tasks()[n]
    return t ~= nil and t.job == nil and t.state ~= "creating"
  end, 20)
end

return M
