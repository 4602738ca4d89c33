std = "max"
max_line_length = 130
files["bench/"] = { max_line_length = 150 } -- the table rows read best on one line
files["spec/"] = { std = "+busted", max_line_length = 170 } -- table-driven rows read best on one line
exclude_files = { "build/" }
files["examples/openresty/"] = { std = "+ngx_lua" }
-- Neovim plugins set fields of vim (vim.g, vim.notify...), as the editor intends
files["examples/nvim/"] = { globals = { "vim" } }
files["spec/nvim/"] = { globals = { "vim" } }
files["lua/jimeng/nvim.lua"] = { read_globals = { "vim" } }
