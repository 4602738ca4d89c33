-- The editor's own timer in the Neovim specs: ticks every 20 ms, counting its ticks and the worst gap between
-- two (a gap far over 20 ms is the editor frozen). Returns a function that starts one: ticker.ticks, .worst.
return function()
  local ticker = { ticks = 0, worst = 0 }
  local last = vim.loop.now()
  local timer = vim.loop.new_timer()
  timer:start(20, 20, function()
    local t = vim.loop.now()
    ticker.worst = math.max(ticker.worst, t - last)
    last = t
    ticker.ticks = ticker.ticks + 1
  end)
  ticker.timer = timer
  return ticker
end
