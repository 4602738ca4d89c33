-- Run by spec/nvim_help_spec.lua with the plugin on the runtimepath (spec/nvim/init.lua): the README's
-- lazy.nvim and packer block ($JIMENG_BLOCK, a file) runs as written, with require("lazy") and
-- require("packer") recording what they are given (neither is installed, and lazy.nvim needs Neovim 0.8);
-- then the plugin is set up the way each manager does it. The outcome to $JIMENG_NVIM_OUT.
local got = {}
package.preload["lazy"] = function()
  return { setup = function(specs) got.lazy = specs end }
end
package.preload["packer"] = function()
  return { startup = function(fn) fn(function(spec) got.packer = spec end) end }
end
local chunk, perr = loadfile(os.getenv("JIMENG_BLOCK"))
local out = { parses = chunk ~= nil, parse_error = perr or vim.NIL }
if chunk then
  local ran, rerr = pcall(chunk)
  out.runs, out.run_error = ran, rerr and tostring(rerr) or vim.NIL
end
local lazy = got.lazy and got.lazy[1]
local packer = got.packer
out.lazy = lazy and { repo = lazy[1], build = lazy.build, opts = lazy.opts } or vim.NIL
out.packer = packer and { repo = packer[1], run = packer.run, config = type(packer.config) } or vim.NIL
-- lazy.nvim: the plugin's name is the repository's; its main module is require(name), whose setup(opts) it
-- calls. packer: config() as given.
if lazy then
  local name = lazy[1]:match("[^/]+$")
  local ok, mod = pcall(require, name)
  out.lazy_main = ok and type(mod.setup) == "function"
  out.lazy_setup = ok and pcall(mod.setup, lazy.opts) or false
  out.output_dir_after_lazy = require("jimeng.plugin").config.output_dir or vim.NIL
end
if packer then
  out.packer_config = pcall(packer.config)
  out.output_dir_after_packer = require("jimeng.plugin").config.output_dir or vim.NIL
end
out.commands = vim.fn.exists(":JimengGenerate")
local f = io.open(os.getenv("JIMENG_NVIM_OUT"), "w")
f:write(vim.fn.json_encode(out))
f:close()
vim.cmd("qa!")
