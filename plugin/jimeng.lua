-- jimeng as a Neovim plugin: this repository on 'runtimepath' (lazy.nvim, packer, or pack/*/start/jimeng)
-- gives :JimengGenerate, :JimengStatus, :JimengCancel, :JimengOpen, :JimengResume and :checkhealth jimeng.
-- The C core is built for Neovim's LuaJIT by `make LUA=luajit` (the plugin managers' build step); this file
-- puts that build on package.cpath, so nothing else is to be configured. Settings: require("jimeng").setup{}.
if vim.g.loaded_jimeng then return end
vim.g.loaded_jimeng = true

-- <root>/plugin/jimeng.lua -> <root>/build/luajit/?.so (first: this checkout's core, not another installed one)
local here = debug.getinfo(1, "S").source:gsub("^@", "")
local root = vim.fn.fnamemodify(here, ":p:h:h")
local so = root .. "/build/luajit/?.so"
if not package.cpath:find(so, 1, true) then package.cpath = so .. ";" .. package.cpath end

require("jimeng.plugin").commands()
