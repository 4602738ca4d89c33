-- The command's help as a newcomer reads it: each command lists exactly the options it reads, --version,
-- a missing argument shows that command's usage, the prompt limits said once, completions and the man page
-- made from the same parser; and `jimeng doctor` against the sandbox, a closed port and a wrong key.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local cjson = require "cjson"
local cli = require "jimeng.cli"
local help = require "jimeng.cli.help"
local core = require "jimeng.core"

-- A sink with write/flush, keeping what was written.
local function sink()
  local s = { parts = {} }
  function s:write(...)
    for i = 1, select("#", ...) do self.parts[#self.parts + 1] = tostring((select(i, ...))) end
    return self
  end
  function s:flush() return self end
  function s:text() return table.concat(self.parts) end
  return s
end

-- Runs `jimeng argv...` in this process; returns the code, stdout, stderr and the set of options read.
local function run(argv, extra)
  local out, err, read = sink(), sink(), {}
  local streams = { stdout = out, stderr = err, trace_args = function(args)
    return setmetatable({}, { __index = function(_, k)
      read[k] = true
      return args[k]
    end })
  end }
  for k, v in pairs(extra or {}) do streams[k] = v end
  local code = cli.main(argv, streams)
  return code, out:text(), err:text(), read
end

describe("the command's help", function()
  local sb, dir
  setup(function()
    sb = h.sandbox { queue_seconds = 0.05, process_seconds = 0.1 }
    dir = h.tmpdir()
  end)
  teardown(function()
    sb:stop()
    h.cleanup()
  end)

  it("lists for every command exactly the options that command reads, and --help shows no other", function()
    local c = h.client(sb)
    local task = assert(c:create { prompt = "for the help spec" })
    assert(c:wait(task.id))
    h.write(dir .. "/jobs.jsonl", cjson.encode { prompt = "a job", label = "job1" } .. "\n")
    h.write(dir .. "/exp.lua", 'return { name = "e", base = { prompt = "a {x}" }, vars = { x = { "fox" } } }')
    local base = { "--base-url", sb.url, "--api-key", "k" }
    local lines = {
      generate = { "generate", "a help fox", "-o", dir .. "/g.mp4", "--interval", "0.05" },
      create = { "create", "a help cat" },
      status = { "status", task.id },
      wait = { "wait", task.id, "--interval", "0.05" },
      download = { "download", task.id, "-o", dir .. "/d.mp4" },
      detect = { "detect", "https://example.com/p.jpg" },
      recognize = { "recognize", "https://example.com/p.jpg" },
      omnihuman = { "omnihuman", "--image", "https://example.com/p.jpg", "--audio", "https://example.com/a.mp3",
        "-o", dir .. "/o.mp4", "--interval", "0.05" },
      batch = { "batch", dir .. "/jobs.jsonl", "-o", dir .. "/b", "--interval", "0.05" },
      experiment = { "experiment", dir .. "/exp.lua", "--dry-run", "-o", dir .. "/exp" },
      doctor = { "doctor" },
      sandbox = { "sandbox", "--queue-seconds", "0" },
      completion = { "completion", "bash" },
      list = { "list" },
      show = { "show", task.id },
      resume = { "resume", "-o", dir .. "/r", "--interval", "0.05" },
      config = { "config", "show" },
    }
    local network = { resume = true, doctor = true, config = true, generate = true, create = true, status = true, wait = true, download = true,
      detect = true, recognize = true, omnihuman = true, batch = true, experiment = true }
    local parser = help.parser()
    local all = {}
    for _, cmd in ipairs(help.describe(parser)) do
      for _, o in ipairs(cmd.options) do all[o.target] = true end
    end
    for _, cmd in ipairs(help.describe(parser)) do
      local argv = assert(lines[cmd.name], "no command line for " .. cmd.name)
      if network[cmd.name] then
        for _, a in ipairs(base) do argv[#argv + 1] = a end
      end
      local code, _, err, read = run(argv, { serve = function(s) s:stop() end })
      assert.equals(0, code, cmd.name .. ": " .. err)
      local listed = {}
      for _, o in ipairs(cmd.options) do
        listed[o.target] = true
        assert.is_true(read[o.target] == true, ("jimeng %s lists %s but never reads it"):format(cmd.name, o.aliases[1]))
      end
      local own_args = {}
      for _, a in ipairs(cmd.arguments) do own_args[a.name] = true end
      for k in pairs(read) do
        if all[k] and not own_args[k] then
          assert.is_true(listed[k] == true, ("jimeng %s reads --%s but does not list it"):format(cmd.name, k))
        end
      end
      -- the help text shows each listed option, and none of the others
      local _, text = run { cmd.name, "--help" }
      for _, o in ipairs(cmd.options) do assert.truthy(text:find(o.aliases[#o.aliases], 1, true), cmd.name) end
      for _, never in ipairs { "--timeout", "--interval", "--api-key", "--json", "--quiet" } do
        local target = never:sub(3):gsub("%-", "_")
        if not listed[target] then
          assert.falsy(text:find(never .. "[%s,]"), ("jimeng %s --help shows %s"):format(cmd.name, never))
        end
      end
    end
  end)

  it("shows no --timeout or --interval on the commands that do not wait", function()
    for _, name in ipairs { "create", "status", "download", "detect", "recognize", "doctor" } do
      local _, text = run { name, "--help" }
      assert.falsy(text:find("--timeout", 1, true), name)
      assert.falsy(text:find("--interval", 1, true), name)
    end
  end)

  it("aligns every option on one line of its own: -o FILE, --output FILE", function()
    local _, text = run { "generate", "--help" }
    assert.truthy(text:find("\n   %-o, %-%-output FILE +Output file"), text)
    assert.falsy(text:find("\n +%-o FILE,\n", 1), text)
  end)

  it("--version prints the version of src/jimeng.h, libcurl's and Lua's, and exits 0", function()
    local code, out = run { "--version" }
    assert.equals(0, code)
    local v = h.read("src/jimeng.h"):match('#define JM_VERSION "([^"]+)"')
    assert.equals(("jimeng %s (%s, %s)"):format(v, core.curl_version(), type(jit) == "table" and jit.version or _VERSION), -- luacheck: ignore 113
      out:gsub("\n$", ""))
  end)

  it("a missing argument prints that command's usage, not the top level's", function()
    local code, out, err = run { "generate" }
    assert.equals(2, code)
    assert.equals("", out)
    assert.truthy(err:find("^Usage: jimeng generate"), err)
    assert.truthy(err:find("missing argument 'prompt'", 1, true), err)
    assert.truthy(err:find("jimeng generate --help", 1, true), err)
    local _, _, werr = run { "wait" }
    assert.truthy(werr:find("^Usage: jimeng wait"), werr)
    local _, _, cerr = run { "completion", "fish" }
    assert.truthy(cerr:find("^Usage: jimeng completion"), cerr)
  end)

  it("states the prompt limits once, the same in the help, the README and the reference", function()
    local _, text = run { "generate", "--help" }
    local _, ctext = run { "create", "--help" }
    local flat = function(s) return (s:gsub("%s+", " ")) end
    assert.truthy(flat(text):find(help.PROMPT_LIMITS, 1, true), text)
    assert.truthy(flat(ctext):find(help.PROMPT_LIMITS, 1, true), ctext)
    assert.truthy(flat(h.read("README.md")):find(help.PROMPT_LIMITS, 1, true), "README")
    assert.truthy(flat(h.read("doc/reference.ldoc")):find(help.PROMPT_LIMITS, 1, true), "doc/reference.ldoc")
    -- and no other number is given for the prompt anywhere in them
    for _, f in ipairs { "README.md", "doc/reference.ldoc" } do
      assert.falsy(h.read(f):find("up to 400", 1, true), f)
    end
  end)

  it("completion bash completes commands and each command's own options", function()
    local _, script = run { "completion", "bash" }
    local path = dir .. "/jimeng.bash"
    h.write(path, script)
    local ok, out = proc.run(("bash -c 'source %s; COMP_WORDS=(jimeng gen); COMP_CWORD=1; _jimeng; echo \"${COMPREPLY[*]}\"; " ..
      "COMP_WORDS=(jimeng status --); COMP_CWORD=2; _jimeng; echo \"${COMPREPLY[*]}\"; " ..
      "COMP_WORDS=(jimeng completion \"\"); COMP_CWORD=2; _jimeng; echo \"${COMPREPLY[*]}\"'"):format(path))
    assert.is_true(ok, out)
    local l1, l2, l3 = out:match("^([^\n]*)\n([^\n]*)\n([^\n]*)")
    assert.equals("generate", l1)
    assert.truthy(l2:find("--json", 1, true), l2)
    assert.falsy(l2:find("--timeout", 1, true), l2)
    assert.equals("bash zsh", l3)
  end)

  it("completion bash offers the values of the enumerated options, not file names", function()
    local _, script = run { "completion", "bash" }
    local path = dir .. "/jimeng-values.bash"
    h.write(path, script)
    h.write(dir .. "/a-file-not-a-value", "")
    -- bash's own way: COMP_LINE and COMP_POINT, COMP_WORDS split at bash's word breaks (16:9 is three words)
    -- the command on PATH (for --profile), with a config file of three profiles
    os.execute(("mkdir -p %s/bin"):format(dir))
    h.write(dir .. "/bin/jimeng", ("#!/bin/sh\nexec %s %s/bin/jimeng \"$@\"\n"):format(proc.lua, proc.root))
    os.execute(("chmod +x %s/bin/jimeng"):format(dir))
    h.write(dir .. "/three.conf", "[work]\n[sandbox]\n[studio]\n")
    local function complete(line, words)
      local ok, out = proc.run(("cd %s && export PATH=%s/bin:$PATH JIMENG_CONFIG=%s/three.conf && " ..
        "bash --norc --noprofile -c 'source %s; COMP_LINE=\"%s\"; " ..
        "COMP_POINT=${#COMP_LINE}; COMP_WORDS=(%s); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _jimeng; " ..
        "printf \"%%s\\n\" \"${COMPREPLY[@]}\"'"):format(dir, dir, dir, path, line, words), proc.own_env)
      assert.is_true(ok, out)
      local list = {}
      for w in out:gmatch("[^\n]+") do list[#list + 1] = w end
      table.sort(list)
      return list
    end
    local ratios = { "16:9", "9:16", "4:3", "3:4", "1:1", "21:9" }
    table.sort(ratios)
    assert.same(ratios,
      complete("jimeng generate x --aspect-ratio ", 'jimeng generate x --aspect-ratio ""'))
    -- after "16:" bash replaces only what follows the colon
    assert.same({ "9" }, complete("jimeng generate x --aspect-ratio 16:", "jimeng generate x --aspect-ratio 16 :"))
    assert.same({ "jimeng-video-3.0-1080P", "jimeng-video-3.0-720P", "jimeng-video-3.0-pro" },
      complete("jimeng create x --model jimeng", "jimeng create x --model jimeng"))
    assert.same({ "10", "5" }, complete("jimeng generate x --seconds ", 'jimeng generate x --seconds ""'))
    -- --size: sizes (each near a supported aspect ratio), not files
    assert.same({ "1080x1080", "1080x1920" }, complete("jimeng generate x --size 10", "jimeng generate x --size 10"))
    assert.same({ "1080", "720" }, complete("jimeng omnihuman --resolution ", 'jimeng omnihuman --resolution ""'))
    assert.same({ "largest" }, complete("jimeng omnihuman --subject l", "jimeng omnihuman --subject l"))
    -- a file option still offers files
    assert.same({ "a-file-not-a-value" }, complete("jimeng generate x -o a-", "jimeng generate x -o a-"))
    -- --profile: the config file's profiles, as the command itself reads them
    assert.same({ "sandbox", "studio" }, complete("jimeng status x --profile s", "jimeng status x --profile s"))
    -- every option declared with choices is offered too (what the parser knows, generically)
    for _, c in ipairs(help.describe(help.parser())) do
      for _, o in ipairs(c.options) do
        if o.choices then
          local got = complete(("jimeng %s %s "):format(c.name, o.aliases[#o.aliases]),
            ('jimeng %s %s ""'):format(c.name, o.aliases[#o.aliases]))
          local want = { (table.unpack or unpack)(o.choices) } -- luacheck: ignore 113
          table.sort(want)
          assert.same(want, got, c.name .. " " .. o.aliases[1])
        end
      end
    end
  end)

  it("#host completion zsh offers the values of the enumerated options (compsys in a terminal)", function()
    local _, script = run { "completion", "zsh" }
    local zdir = dir .. "/zsh"
    os.execute(("mkdir -p %s/fp %s/bin"):format(zdir, zdir))
    h.write(zdir .. "/fp/_jimeng", script)
    h.write(zdir .. "/bin/jimeng", ("#!/bin/sh\nexec %s %s/bin/jimeng \"$@\"\n"):format(proc.lua, proc.root))
    h.write(zdir .. "/three.conf", "[work]\n[sandbox]\n[studio]\n")
    os.execute("chmod +x " .. zdir .. "/bin/jimeng")
    h.write(zdir .. "/.zshrc", ("PATH=%s/bin:$PATH\nfpath=(%s/fp $fpath)\nautoload -U compinit\n" ..
      "compinit -u -d %s/zcompdump\nPS1='%%%% '\n"):format(zdir, zdir, zdir))
    local sock = "jimeng-zsh-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e6))
    local function tmux(args) return proc.run(("tmux -L %s %s"):format(sock, args)) end
    assert(tmux(("new-session -d -s z -x 120 -y 20 '%s env -u LD_PRELOAD TERM=xterm ZDOTDIR=%s JIMENG_CONFIG=%s/three.conf " ..
      "zsh -i'"):format(proc.own_env:gsub("'", "'\\''"), zdir, zdir)))
    local function screen() return select(2, tmux("capture-pane -p -t z")) end
    local function wait_for(pattern)
      local t0 = core.now()
      while core.now() - t0 < 10 do
        local s = screen()
        if s:find(pattern) then return s end
        core.sleep(0.1)
      end
      error(("%q never showed:\n%s"):format(pattern, screen()))
    end
    local ok, err = pcall(function()
      wait_for("^%%")
      -- a unique prefix is completed in place; an ambiguous one, after a second Tab, lists the values
      for _, case in ipairs {
        { "jimeng generate x --aspect-ratio 4", "jimeng generate x %-%-aspect%-ratio 4:3" },
        { "jimeng generate x --model jimeng-video-3.0-1", "%-%-model jimeng%-video%-3%.0%-1080P" },
        { "jimeng generate x --seconds 1", "%-%-seconds 10" },
        { "jimeng omnihuman --resolution 7", "%-%-resolution 720" },
        { "jimeng omnihuman --subject l", "%-%-subject largest" },
        { "jimeng status x --profile w", "%-%-profile work" }, -- the config file's profiles
      } do
        tmux(("send-keys -t z C-u '%s' Tab"):format(case[1]))
        wait_for(case[2])
      end
      tmux("send-keys -t z C-u 'jimeng generate x --aspect-ratio ' Tab")
      core.sleep(0.5)
      tmux("send-keys -t z Tab")
      local s = wait_for("21:9")
      for _, v in ipairs { "16:9", "9:16", "4:3", "3:4", "1:1", "21:9" } do assert.truthy(s:find(v, 1, true), s) end
    end)
    tmux("kill-server")
    assert(ok, err)
  end)

  it("completion zsh defines _jimeng with every command", function()
    local code, script = run { "completion", "zsh" }
    assert.equals(0, code)
    assert.truthy(script:find("^#compdef jimeng"))
    for _, cmd in ipairs(help.describe(help.parser())) do
      assert.truthy(script:find("'" .. cmd.name .. ":", 1, true), cmd.name)
    end
  end)

  it("#host completion zsh is a script zsh reads and registers for jimeng", function()
    local _, script = run { "completion", "zsh" }
    local path = dir .. "/_jimeng"
    h.write(path, script)
    local ok, out = proc.run(("zsh -n %s && zsh -f -c 'autoload -U compinit; compinit -u -d %s/zcompdump; source %s; " ..
      "print ${_comps[jimeng]}'"):format(path, dir, path))
    assert.is_true(ok, out)
    assert.equals("_jimeng", out:match("(%S+)%s*$"), out)
  end)

  it("the man page (make man) has the sections of one, each command, reads in 80 columns, man --warnings clean", function()
    local ok, out = proc.run("make -s man")
    assert.is_true(ok, out)
    local page = h.read("build/man/jimeng.1")
    assert.truthy(page:find("^%.TH JIMENG 1"))
    -- the sections, in the order man pages keep
    local at = 0
    for _, sec in ipairs { "NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "ENVIRONMENT", "FILES",
      "EXIT STATUS", "EXAMPLES", "SEE ALSO" } do
      local pos = page:find("\n%.SH " .. sec .. "\n")
      assert.truthy(pos and pos > at, sec .. " missing or out of order")
      at = pos
    end
    -- each command, with its summary as its --help says it
    for _, cmd in ipairs(help.describe(help.parser())) do
      assert.truthy(page:find("\n\\fB" .. cmd.name .. "\\fR", 1, false), cmd.name)
    end
    local _, text = run { "status", "--help" }
    assert.truthy(page:find(text:match("Print a task's status%."), 1, true))
    -- no warning from man (groff's own checks), and nothing wider than 80 columns when read in 80
    local wok, warnings = proc.run("MANWIDTH=80 man --warnings -l build/man/jimeng.1 2>&1 >/dev/null")
    assert.is_true(wok, warnings)
    assert.equals("", warnings)
    local rok, rendered = proc.run("MANWIDTH=80 man -l build/man/jimeng.1 2>/dev/null | col -b")
    assert.is_true(rok, rendered)
    assert.truthy(rendered:find("EXIT STATUS", 1, true), rendered)
    for line in rendered:gmatch("[^\n]+") do
      local width = #(line:gsub("[\128-\191]", "")) -- characters, not bytes (groff's hyphen is UTF-8)
      assert.truthy(width <= 80, line)
    end
    -- SEE ALSO names nothing that is not installed: no path of the source tree, and every page it names exists
    local see = page:match("\n%.SH SEE ALSO\n(.*)$")
    assert.falsy(see:find("build/", 1, true), see)
    for name, sec in see:gmatch("([%w%.%-]+)%((%d)%)") do
      assert.is_true((proc.run(("man -w %s %s"):format(sec, name))), name .. "(" .. sec .. ")")
    end
    -- the environment and the exit codes the command has
    for _, word in ipairs { "JIMENG_API_KEY", "JIMENG_CONFIG", "JIMENG_PROFILE", "NO_COLOR", "https_proxy",
      "JIMENG_LEDGER", "XDG_STATE_HOME", "JIMENG_DIALECT" } do
      local environment = "\n" .. assert(rendered:match("\nENVIRONMENT\n(.-)\nFILES\n"), rendered)
      assert.truthy(environment:find("\n       " .. word, 1, true), word)
    end
    -- the files: the ledger of paid tasks and the config; examples of the commands on the ledger
    local files = rendered:match("\nFILES\n(.-)\nEXIT STATUS")
    assert.truthy(files and files:find("jimeng/ledger.jsonl", 1, true), files)
    assert.truthy(files:find("jimeng/config", 1, true), files)
    local examples = rendered:match("\nEXAMPLES\n(.-)\nSEE ALSO")
    for _, cmd in ipairs { "jimeng list", "jimeng resume" } do
      assert.truthy(examples:find("\n%s+" .. cmd .. "\n"), cmd)
    end
    for _, code in ipairs { "0", "1", "2", "3", "130" } do
      assert.truthy(rendered:find("\n       " .. code .. "%s"), code)
    end
  end)
end)

describe("jimeng doctor", function()
  local sb
  setup(function() sb = h.sandbox { api_key = "the-good-key" } end)
  teardown(function() sb:stop() end)

  local function doctor(args)
    local code, out = run(args)
    local report = {}
    for line in out:gmatch("[^\n]+") do
      -- "%-4s  %-11s %s": the state, the check's name, what was found
      local state, name, detail = line:sub(1, 4):gsub("%s+$", ""), line:sub(7, 17):gsub("%s+$", ""), line:sub(19)
      if state == "ok" or state == "FAIL" then report[name] = { ok = state == "ok", detail = detail } end
      local fix = line:match("^%s+fix: (.*)$")
      if fix then report.last_fix = fix end
    end
    return code, report, out
  end

  it("against the sandbox: every check passes, with the API's latency", function()
    local code, r, out = doctor { "doctor", "--base-url", sb.url, "--api-key", "the-good-key" }
    assert.equals(0, code, out)
    for _, name in ipairs { "API key", "base URL", "proxy", "CA file", "API", "libcurl", "TLS backend", "HTTP/2" } do
      assert.is_table(r[name], name .. "\n" .. out)
    end
    assert.truthy(r.API.detail:find("answered in %d+ ms"), out)
    assert.truthy(r["base URL"].detail:find(sb.url, 1, true), out)
    assert.truthy(r.libcurl.detail:find(core.curl_version(), 1, true), out)
    assert.falsy(out:find("the-good-key", 1, true), "the key is never shown")
  end)

  it("against a closed port: the API check fails, says so, and says what to do", function()
    local port = proc.free_port()
    local code, r, out = doctor { "doctor", "--base-url", ("http://127.0.0.1:%d/v1"):format(port), "--api-key", "k" }
    assert.equals(3, code, out)
    assert.is_false(r.API.ok, out)
    assert.truthy(r.API.detail:find("network", 1, true), out)
    assert.truthy(out:find("fix: nothing answers at", 1, true), out)
    assert.is_true(r["API key"].ok)
  end)

  it("with a wrong key: the API answers, the key was refused, and the fix names JIMENG_API_KEY", function()
    local code, r, out = doctor { "doctor", "--base-url", sb.url, "--api-key", "sk-wrong" }
    assert.equals(3, code, out)
    assert.is_false(r.API.ok, out)
    assert.truthy(r.API.detail:find("refused", 1, true), out)
    assert.truthy(out:find("fix: check JIMENG_API_KEY", 1, true), out)
    assert.falsy(out:find("sk-wrong", 1, true))
  end)

  it("without a key: says so and how to set one; --json gives the same checks as JSON", function()
    local code, out = run({ "doctor", "--base-url", sb.url, "--json" })
    -- the environment of the suite may hold a key: only judge the shape then
    local report = cjson.decode(out)
    assert.is_table(report.checks)
    assert.equals(report.ok and 0 or 3, code)
    local names = {}
    for _, c in ipairs(report.checks) do names[#names + 1] = c.name end
    assert.same({ "config", "API key", "base URL", "proxy", "CA file", "API", "budget", "libcurl", "TLS backend", "HTTP/2" }, names)
  end)
end)
