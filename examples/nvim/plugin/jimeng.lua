-- A small Neovim plugin: :JimengGenerate {prompt} generates a video without freezing the editor,
-- shows its status and download progress in the message area, and says where it saved the MP4.
-- Use it with this checkout on 'runtimepath' and the C core built for LuaJIT (make LUA=luajit):
--   nvim --cmd 'set rtp+=/path/to/jimeng,/path/to/jimeng/examples/nvim' \
--        --cmd 'lua package.cpath = "/path/to/jimeng/build/luajit/?.so;" .. package.cpath'
-- Settings: JIMENG_API_KEY (and JIMENG_BASE_URL) in the environment; g:jimeng_output_dir (default: the
-- current directory); g:jimeng_poll_interval (seconds, default 5).
if vim.g.loaded_jimeng then return end
vim.g.loaded_jimeng = true

local function echo(msg, hl)
  vim.api.nvim_echo({ { msg, hl } }, false, {})
end

vim.api.nvim_create_user_command("JimengGenerate", function(cmd)
  local started = vim.loop.now()
  local function elapsed() return math.floor((vim.loop.now() - started) / 1000) end
  local last_progress = -1
  require("jimeng.nvim").generate({ prompt = cmd.args }, {
    output_dir = vim.g.jimeng_output_dir or vim.fn.getcwd(),
    interval = vim.g.jimeng_poll_interval or 5,
    on_status = function(task)
      echo(("jimeng: task %s %s (%d s)"):format(task.id, task.status, elapsed()))
    end,
    on_progress = function(got, total)
      local pct = total and total > 0 and math.floor(100 * got / total) or nil
      if pct and pct ~= last_progress then
        last_progress = pct
        echo(("jimeng: downloading %d%%"):format(pct))
      end
    end,
    on_done = function(result, err)
      if result then
        vim.notify(("jimeng: saved %s (%d bytes, %d s)"):format(result.path, result.bytes, elapsed()), vim.log.levels.INFO)
      else
        vim.notify("jimeng: " .. tostring(err), vim.log.levels.ERROR)
      end
    end,
  })
end, { nargs = "+", desc = "Generate a video from a prompt with Jimeng, in the background" })
