-- A minimal Neovim configuration with jimeng installed by lazy.nvim (README, "Neovim"). Copy the spec into
-- your own lazy.nvim setup; the plugin's build step compiles the C core for Neovim's LuaJIT.
--   nvim -u examples/nvim/init.lua    (once lazy.nvim is installed under stdpath("data")/lazy/lazy.nvim)
local lazypath = vim.fn.stdpath("data") .. "/lazy/lazy.nvim"
if not vim.loop.fs_stat(lazypath) then
  vim.notify("install lazy.nvim first: git clone https://github.com/folke/lazy.nvim " .. lazypath)
  return
end
vim.opt.rtp:prepend(lazypath)
require("lazy").setup {
  {
    "jimeng",
    dir = vim.fn.fnamemodify(debug.getinfo(1, "S").source:gsub("^@", ""), ":p:h:h:h"), -- this checkout
    build = "make LUA=luajit",
    cmd = { "JimengGenerate", "JimengStatus", "JimengCancel", "JimengOpen", "JimengResume" },
    opts = { -- passed to require("jimeng").setup(opts)
      output_dir = vim.fn.expand("~/Videos/jimeng"),
      seconds = 5,
      ratio = "16:9",
      interval = 5,
    },
  },
}
