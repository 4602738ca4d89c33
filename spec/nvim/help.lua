-- Run by spec/nvim_help_spec.lua in a Neovim started as a user starts it (their HOME, no -u): `:help jimeng`
-- as typed, then every tag doc/jimeng.txt defines and every link it makes; the outcome to $JIMENG_NVIM_OUT.
local out = { links = {}, bad_links = {}, tags = {}, bad_tags = {} }
local ok, err = pcall(vim.cmd, "help jimeng")
out.help_ok, out.help_err = ok, err and tostring(err) or vim.NIL
out.file = vim.fn.expand("%:p")
out.filetype = vim.bo.filetype
out.line = vim.api.nvim_get_current_line()
local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
vim.cmd("helpclose")
-- what it defines (*tag*) is found, in this file; what it links to (|tag|) is found somewhere
for tag in text:gmatch("%*([^%s*|]+)%*") do
  out.tags[#out.tags + 1] = tag
  local found = pcall(vim.cmd, "help " .. vim.fn.escape(tag, " "))
  if not found or vim.fn.expand("%:t") ~= "jimeng.txt" then out.bad_tags[#out.bad_tags + 1] = tag end
  if found then vim.cmd("helpclose") end
end
for link in text:gmatch("|([^%s|]+)|") do
  out.links[#out.links + 1] = link
  local found = pcall(vim.cmd, "help " .. vim.fn.escape(link, " "))
  if not found then out.bad_links[#out.bad_links + 1] = link else vim.cmd("helpclose") end
end
-- and the plugin itself is there: its commands, its core from the package's own build
out.commands = vim.fn.exists(":JimengGenerate") + vim.fn.exists(":JimengResume") + vim.fn.exists(":JimengStatus")
out.core = package.searchpath("jimeng.core", package.cpath) or vim.NIL
out.core_loads = pcall(require, "jimeng.core")
local f = io.open(os.getenv("JIMENG_NVIM_OUT"), "w")
f:write(vim.fn.json_encode(out))
f:close()
vim.cmd("qa!")
