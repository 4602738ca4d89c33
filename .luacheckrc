std = "max"
max_line_length = 130
files["bench/"] = { max_line_length = 150 } -- the table rows read best on one line
files["bench/nvim_wait.lua"] = { read_globals = { "vim" }, max_line_length = 150 }
files["spec/"] = { std = "+busted", max_line_length = 170 } -- table-driven rows read best on one line
exclude_files = { "build/" }
files["examples/openresty/"] = { std = "+ngx_lua" }
-- Neovim plugins set fields of vim (vim.g, vim.notify...), as the editor intends
files["examples/nvim/"] = { read_globals = { "vim" } }
files["plugin/"] = { globals = { "vim" } }
files["lua/jimeng/plugin.lua"] = { globals = { "vim" } } -- it sets vim.g.jimeng_progress
files["lua/jimeng/health.lua"] = { read_globals = { "vim" } }
files["lua/jimeng/openresty.lua"] = { std = "+ngx_lua" }
files["spec/nvim/"] = { globals = { "vim" } }
files["lua/jimeng/nvim.lua"] = { read_globals = { "vim" } }
