-- The Neovim plugin as a person sees it: Neovim (Debian's 0.7.2 here) in a real terminal (a tmux pane of a
-- fixed size), the plugin installed as a native package, the commands typed, the screen read back. Nothing
-- of the UI is replaced: the notifications go through the real vim.notify and nvim_echo, which Neovim
-- refuses inside a libuv callback (E5560) unless they go through the main loop.
-- #host: drives tmux and nvim, other programs.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"

local SOCKET = "jimeng-nvim-spec-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local WIDTH, HEIGHT = 120, 30

local function tmux(args)
  return proc.run(("tmux -L %s %s"):format(SOCKET, args))
end

local function screen()
  local _, out = tmux("capture-pane -p -t nvim")
  return out or ""
end

-- Waits until the screen shows pattern; returns the screen, or fails showing it.
local function wait_for(pattern, seconds)
  local t0 = core.now()
  while core.now() - t0 < (seconds or 20) do
    local s = screen()
    if s:find(pattern) then return s end
    core.sleep(0.1)
  end
  error(("%q never showed; the screen:\n%s"):format(pattern, screen()))
end

-- Types a command line and Enter (keys: no single quote).
local function type_keys(keys)
  assert(tmux(("send-keys -t nvim -l '%s'"):format(keys)))
  assert(tmux("send-keys -t nvim Enter"))
end

describe("#host Neovim in a terminal", function()
  if not (proc.run("command -v nvim") and proc.run("command -v tmux")) then
    it("needs Neovim and tmux (apt-get install neovim tmux)", function() pending("nvim or tmux is not installed") end)
    return
  end

  local sb, dir
  setup(function()
    local ok, out = proc.run("make -s LUA=luajit")
    assert(ok, out)
    sb = h.sandbox { queue_seconds = 0.3, process_seconds = 0.3 }
    dir = h.tmpdir()
    local pack = h.tmpdir()
    assert(proc.run(("mkdir -p %s/pack/plugins/start && ln -s %s %s/pack/plugins/start/jimeng"):format(pack, proc.root, pack)))
    -- as a user starts it: a key and a base URL in the environment, a setup{} in the config (here on the command
    -- line: polls every 0.5 s), the videos in the directory it was started in
    local script = dir .. "/nvim.sh"
    h.write(script, ("cd %s\nexport JIMENG_PACK=%s JIMENG_API_KEY=nvim-key JIMENG_BASE_URL=%s TERM=xterm\n" ..
      "exec nvim -u %s/spec/nvim/init.lua -i NONE -n -c 'lua require(\"jimeng\").setup { interval = 0.5 }'\n")
      :format(dir, pack, sb.url, proc.root))
    ok, out = tmux(("new-session -d -s nvim -x %d -y %d 'env -u LD_PRELOAD bash --norc --noprofile %s'")
      :format(WIDTH, HEIGHT, script))
    assert(ok, out)
    wait_for("%[No Name%]", 10)
  end)
  teardown(function()
    tmux("kill-server")
    sb:stop()
    h.cleanup()
  end)

  it(":JimengGenerate shows each step and saves the video; the screen says where", function()
    type_keys(":JimengGenerate a paper boat")
    local s = wait_for("jimeng: saved [^\n]*jimeng_video_%d+%.mp4 %(%d+ bytes%)")
    assert.falsy(s:find("E5560"), s)
    local id = s:match("jimeng: saved [^\n]*jimeng_video_(%d+)%.mp4")
    assert.equals(h.fixture(), h.read(dir .. "/jimeng_video_" .. id .. ".mp4"), s)
    assert.equals(1, sb:creates_for("a paper boat")) -- paid once
    -- what was shown on the way, as :messages lists it (the screen, again)
    type_keys(":messages")
    s = wait_for("Press ENTER")
    assert.truthy(s:find("jimeng: #1 started\njimeng: #1 task " .. id .. " created\n", 1, true), s)
    assert.truthy(s:find("jimeng: #1 task " .. id .. " completed", 1, true), s)
    assert.falsy(s:find("E5560"), s)
    assert(tmux("send-keys -t nvim Enter"))
  end)

  it(":JimengResume waits for a task created elsewhere and saves it; :JimengStatus lists both", function()
    local task = assert(h.client(sb):create { prompt = "a task created from the shell" })
    type_keys(":JimengResume " .. task.id)
    local s = wait_for("jimeng: saved [^\n]*jimeng_video_" .. task.id .. "%.mp4")
    assert.falsy(s:find("E5560"), s)
    assert.equals(h.fixture(), h.read(dir .. "/jimeng_video_" .. task.id .. ".mp4"), s)
    type_keys(":JimengStatus")
    s = wait_for("Press ENTER")
    assert.truthy(s:find("#1 saved task %d+ " .. dir:gsub("%p", "%%%0") .. "/jimeng_video_%d+%.mp4 %(\"a paper boat\"%)"), s)
    assert.truthy(s:find("#2 saved task " .. task.id .. " ", 1, true), s)
    assert(tmux("send-keys -t nvim Enter"))
  end)

  it("takes a prompt after --; shows :JimengCancel abc and :JimengResume ../../etc refused, nothing cancelled or sent", function()
    -- the screen as one line: Neovim breaks a long message at the width itself (a full row, 120 characters)
    local function joined(colors)
      local _, out = tmux("capture-pane -p " .. (colors and "-e " or "") .. "-t nvim")
      return colors and (out or "") or (out or ""):gsub("\n", "")
    end
    local function wait_joined(text)
      local t0 = core.now()
      while core.now() - t0 < 20 do
        local s = joined()
        if s:find(text, 1, true) then return s end
        core.sleep(0.1)
      end
      error(("%q never showed; the screen:\n%s"):format(text, screen()))
    end
    type_keys(":JimengGenerate -seconds=10 -- -nv a dash of paint")
    local s = wait_for("jimeng: saved [^\n]*jimeng_video_%d+%.mp4")
    assert.equals(1, sb:creates_for("-nv a dash of paint"))
    assert.equals(0, sb:creates_for("-- -nv a dash of paint"))
    assert.falsy(s:find("E5560"), s)
    -- a running task, then a cancel that names none: an error on the screen, in the error colors
    type_keys(":JimengGenerate a slow tide sandbox:slow=30")
    s = wait_for("jimeng: #4 task %d+ %a")
    local id = s:match("jimeng: #4 task (%d+) %a")
    type_keys(":JimengCancel abc")
    wait_joined("jimeng: :JimengCancel abc: no running task has that number or task id (running: #4 (task " ..
      id .. ")); nothing was cancelled")
    local colored = joined(true)
    local sgr = colored:match("(\27%[[%d;]*m)jimeng: :JimengCancel abc")
    assert.truthy(sgr and sgr:find("[;%[]41[;m]"), colored) -- ErrorMsg's: on red (41), as vim.notify's ERROR draws it
    assert(tmux("send-keys -t nvim Enter"))
    core.sleep(0.5) -- a cancel would have said so by now
    assert.falsy(joined():find("cancelled", 1, true), joined())
    -- :JimengResume with an id that is not one: refused before anything is sent
    type_keys(":JimengResume ../../etc")
    s = wait_joined('jimeng: :JimengResume: task id "../../etc" is not a valid id')
    assert.truthy(s:find("nothing was sent", 1, true), s)
    assert(tmux("send-keys -t nvim Enter"))
    for _, r in ipairs(h.api_requests(sb)) do assert.falsy(r.path:find("etc", 1, true), r.path) end
    -- the running task is still running, and no task was recorded for the bad id
    type_keys(":JimengStatus")
    s = wait_for("Press ENTER")
    assert.truthy(s:find("#4 [%a_]+ task " .. id), s)
    assert.falsy(s:find("#4 cancelled", 1, true), s)
    assert.falsy(s:find("#5", 1, true), s)
    assert(tmux("send-keys -t nvim Enter"))
    -- its task id cancels it, saying what was paid for
    type_keys(":JimengCancel " .. id)
    wait_joined("jimeng: #4 cancelled: task " .. id .. " was created and is paid for")
  end)
end)
