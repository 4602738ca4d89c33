--- The `jimeng` command's arguments: one parser, from which the help, the shell completions (bash, zsh)
-- and the man page are all made. Each command lists only the options it reads.
local argparse = require "argparse"

local M = {}

--- The prompt limits, said the same way wherever they are said (help, README, reference).
M.PROMPT_LIMITS = "up to 800 characters (UTF-8); past 400 a warning: the vendor advises 400 at most"

M.DESCRIPTION = "Generate videos with the Jimeng API (tokenops.ai): create, wait, download."

M.EPILOG = [[
Examples:
  jimeng generate "千军万马奔腾在草原上,阳光明媚,高清画质" --seconds 5 -o horses.mp4
  jimeng generate "a cat jumps" --image cat.jpg --size 1280x720 --seed 7 -o cat.mp4
  jimeng create "waves at dusk" --json          # prints the task; then: jimeng wait ID; jimeng download ID
  jimeng omnihuman --image https://.../portrait.jpg --audio https://.../speech.mp3 --subject largest -o talk.mp4
  jimeng batch jobs.jsonl --journal run.jsonl -o videos/ -j 8
  jimeng experiment examples/experiment.lua --dry-run   # then without --dry-run; open DIR/index.html
  jimeng sandbox                                 # a local API for trying all of this without a key
  jimeng doctor                                  # key, base URL, proxy, CA, the API's answer, libcurl

Environment: JIMENG_API_KEY (required for the real API), JIMENG_BASE_URL (default https://api.tokenops.ai/v1).
Settings also come from ~/.config/jimeng/config and its profiles (--profile NAME): see jimeng config show.
Exit codes: 0 ok, 1 the task failed, 2 usage or invalid input, 3 API or network error, 130 interrupted.]]

-- argparse prints "-o FILE," and "--output FILE" on two lines, the first right-aligned; one line reads better.
local function one_line_label(opt)
  local aliases = opt._public_aliases or opt._aliases
  if #aliases < 2 or (opt._maxargs or 0) == 0 then return opt end
  local argname = opt._argname
  if type(argname) == "table" then argname = table.concat(argname, " ") end
  local label = table.concat(aliases, ", ") .. " " .. (argname or "")
  opt._get_label_lines = function() return { label } end
  return opt
end

local function option(cmd, names, desc, argname)
  local o = cmd:option(names, desc)
  if argname then o:argname(argname) end
  return one_line_label(o)
end

local function number(cmd, names, desc, argname)
  return option(cmd, names, desc, argname or "N"):convert(tonumber)
end

local function add_video_options(cmd)
  option(cmd, "--seconds", "Length: 5 or 10 seconds (default 5).", "S")
  option(cmd, "--frames", "Frames: 121 or 241 (instead of --seconds).", "N")
  option(cmd, "--size", "Size, e.g. 1280x720 (becomes the nearest aspect ratio).", "WxH")
  option(cmd, "--aspect-ratio", "16:9 (default), 9:16, 4:3, 3:4, 1:1 or 21:9.", "R")
  option(cmd, "--image", "A reference image: URL or local JPEG/PNG (twice: first and last frame).", "IMG")
    :count("*"):args(1)
  option(cmd, "--model", "jimeng-video-3.0-pro (default), jimeng-video-3.0-720P or jimeng-video-3.0-1080P.", "M")
  option(cmd, "--req-key", "A req_key of the model (chosen for you when left out).", "K")
  option(cmd, "--seed", "Random seed: -1 (random, default) or 0..4294967295.", "N")
  cmd:flag("--camera-move", "A camera move from one image (720P).")
end

-- The option groups, and the commands that read them.
local function add_json(cmd) cmd:flag("--json", "Print results as JSON on stdout (and nothing else).") end
local function add_quiet(cmd) cmd:flag("-q --quiet", "No progress on stderr (a created task's id is still said).") end
local function add_wait(cmd, what)
  number(cmd, "--timeout", "Seconds to wait for " .. (what or "the task") .. " (default 600).", "S")
  number(cmd, "--interval", "Seconds between status polls (default 5).", "S")
end
local function add_network(cmd)
  option(cmd, "--api-key", "API key (default: $JIMENG_API_KEY); other users see it in the process list.", "KEY")
  option(cmd, "--api-key-file", "Read the API key from this file ('-': standard input).", "FILE")
  option(cmd, "--base-url", "API base URL (default: $JIMENG_BASE_URL or https://api.tokenops.ai/v1).", "URL")
  option(cmd, "--cainfo", "PEM file of the CA(s) to trust (default: $CURL_CA_BUNDLE, $SSL_CERT_FILE).", "FILE")
  option(cmd, "--proxy", "Proxy URL, http://user:password@host:port (default: $https_proxy, $all_proxy).", "URL")
  option(cmd, "--no-proxy", "Hosts that bypass the proxy, comma-separated (default: $no_proxy).", "HOSTS")
  option(cmd, "--dialect", "The gateway's dialect: auto (default: $JIMENG_DIALECT or auto, which asks the gateway), " ..
    "tokenops or new-api.", "D"):choices { "auto", "tokenops", "new-api" }
  cmd:mutex(cmd:flag("--http1.1", "Speak HTTP/1.1 only."),
    cmd:flag("--http2", "Ask for HTTP/2 (over TLS it is used anyway when the server speaks it)."))
  option(cmd, "--profile", "The config file's profile to use (default: $JIMENG_PROFILE, else [default]).", "NAME")
  cmd:flag("-v --verbose", "Show each request and answer on stderr (-vv: with headers); the key never.")
    :count("*")
  cmd:flag("--no-color", "No color, even on a terminal (as NO_COLOR=1 does).")
  M.add_budget(cmd)
end

--- The account's budget (README, "One account, many clients"): shared by every client that names the same
-- place with the same key and base URL.
function M.add_budget(cmd)
  number(cmd, "--max-rps", "At most N API requests a second (with every client sharing the budget).")
  number(cmd, "--max-tasks", "At most N tasks created and not finished at once (a create waits for a slot).")
  option(cmd, "--budget", "Where the budget is held: process, local (every process of this user here), a " ..
    "file path, redis://host:port/prefix (every machine), or client (default: $JIMENG_BUDGET, else process).",
    "WHERE")
end

--- The parser of the whole command line.
function M.parser()
  local p = argparse("jimeng", M.DESCRIPTION):epilog(M.EPILOG)
  p:command_target("command")
  p:require_command(false)
  p:flag("--version", "Print the version (of jimeng, libcurl and Lua) and exit.")

  local gen = p:command("generate g", "Create a video, wait for it and download it.")
  gen:argument("prompt", "What the video shows: " .. M.PROMPT_LIMITS .. ".")
  add_video_options(gen)
  option(gen, "-o --output", "Output file, a template ({id}, {prompt:.20}, {seed}, {n}, {date}...; see the README) " ..
    "or DIR/ (default jimeng_video_<id>.mp4).", "FILE")
  gen:flag("--force", "Replace the output file if it exists (otherwise refused before paying).")
  add_wait(gen, "the video")
  add_json(gen); add_quiet(gen); add_network(gen)

  local create = p:command("create", "Create a video task and print its id (no waiting).")
  create:argument("prompt", "What the video shows: " .. M.PROMPT_LIMITS .. ".")
  add_video_options(create)
  add_json(create); add_quiet(create); add_network(create)

  local st = p:command("status", "Print a task's status.")
  st:argument("id", "Task id.")
  add_json(st); add_network(st)

  local wait = p:command("wait", "Wait until a task completes or fails.")
  wait:argument("id", "Task id.")
  add_wait(wait)
  add_json(wait); add_quiet(wait); add_network(wait)

  local dl = p:command("download", "Download a completed task's video (resumes a broken download).")
  dl:argument("id", "Task id.")
  option(dl, "-o --output", "Output file or template (default jimeng_video_<id>.mp4); a file the ledger saw saved " ..
    "as this task's video: already saved, exit 0.", "FILE")
  dl:flag("--no-resume", "Start over even if a .part file exists.")
  dl:flag("--force", "Replace the output file if it exists (otherwise refused).")
  add_json(dl); add_quiet(dl); add_network(dl)

  local det = p:command("detect", "Detect the subjects of a portrait (OmniHuman): their mask URLs, largest first.")
  det:argument("image", "Portrait image URL.")
  add_json(det); add_network(det)
  local rec = p:command("recognize", "Tell whether a portrait holds a person-like subject (OmniHuman).")
  rec:argument("image", "Portrait image URL.")
  add_json(rec); add_network(rec)

  local omni = p:command("omnihuman", "A talking-head video from a portrait and an audio track.")
  option(omni, "--image", "Portrait image URL.", "URL"):count(1)
  option(omni, "--audio", "Audio URL (under 60 s).", "URL"):count(1)
  option(omni, "--prompt", "How the person speaks (a warning past 300 characters).", "TEXT")
  option(omni, "--subject", 'Who speaks: "largest" or a number (runs detection first).', "WHO")
  omni:flag("--recognize", "First check that the portrait holds a person-like subject.")
  option(omni, "--mask", "A mask URL for the speaker (instead of --subject).", "URL"):count("*"):args(1)
  option(omni, "--resolution", "720 or 1080 (default 1080).", "P")
  omni:flag("--fast", "Fast mode (pe_fast_mode).")
  option(omni, "--seed", "Random seed: -1 (random, default) or 0..4294967295.", "N")
  option(omni, "-o --output", "Output file or template (without it, only the task is created).", "FILE")
  omni:flag("--force", "Replace the output file if it exists (otherwise refused before paying).")
  add_wait(omni, "the video")
  add_json(omni); add_quiet(omni); add_network(omni)

  local batch = p:command("batch", "Run many jobs from a JSON-lines file, resumable with a journal.")
  batch:argument("jobs", "JSON-lines file: one job per line, create parameters plus optional label and output.")
  option(batch, "--journal", "Journal file: rerunning with it creates and downloads nothing already done.", "FILE")
  option(batch, "-o --output-dir", "Directory for the videos (default: the current one).", "DIR")
  number(batch, "-j --jobs-in-flight", "How many jobs run at once (default 4).")
  batch:flag("--recreate-unknown", "Create again the jobs whose earlier create may or may not have happened.")
  batch:flag("--force", "Replace output files this journal did not make (otherwise refused before paying).")
  add_wait(batch, "each job")
  add_json(batch); add_quiet(batch); add_network(batch)

  local exp = p:command("experiment", "Run a grid of variations (a spec file) as one resumable batch, with a gallery.")
  exp:argument("spec", "Experiment spec: a Lua file returning a table, or a JSON file (base, vary, vars, cells).")
  option(exp, "-o --output-dir", "The experiment's directory (default: the spec's name).", "DIR")
  option(exp, "--rows", "The axis shown as the gallery's rows.", "AXIS")
  option(exp, "--cols", "The axis shown as the gallery's columns.", "AXIS")
  exp:flag("--dry-run", "Print the grid, how many videos would be paid and their seconds; create nothing.")
  number(exp, "--max-videos", "Refuse a run that would pay for more videos than this without --yes (default 20).")
  exp:flag("-y --yes", "Run even above --max-videos.")
  option(exp, "--retake", "Make a new take of this cell (its id, as --dry-run prints it).", "CELL"):count("*"):args(1)
  number(exp, "-j --jobs-in-flight", "How many videos are made at once (default 4).")
  exp:flag("--recreate-unknown", "Create again the cells whose earlier create may or may not have happened.")
  exp:flag("--no-posters", "Do not make poster images with ffmpeg.")
  exp:flag("--force", "Replace videos in the directory that its journal did not make.")
  add_wait(exp, "each video")
  add_json(exp); add_quiet(exp); add_network(exp)

  local list = p:command("list ls", "The recent tasks of the ledger (every create sent): status, where saved.")
  number(list, "-n", "How many tasks, most recent first (default 20).")
  list:flag("--ids", "Print only their ids, one a line (for scripts and completion).")
  add_json(list)

  local show = p:command("show", "All the ledger knows of one task: parameters, status, where it is saved.")
  show:argument("id", "Task id (or the ref of a create whose id is unknown).")
  add_json(show)

  local resume = p:command("resume", "Wait for and download every task paid for and not saved (creates nothing).")
  option(resume, "-o --output-dir", "Directory for tasks created without an output path (default: the current one).",
    "DIR")
  resume:flag("--force", "Replace a file at a task's path that is not its video (otherwise that task is refused).")
  add_wait(resume, "each task")
  add_json(resume); add_quiet(resume); add_network(resume)

  local sb = p:command("sandbox", "Run the local API emulator; prints its URL and the environment to use it.")
  number(sb, "--port", "Port (default: a free one).")
  number(sb, "--queue-seconds", "How long a task stays in_queue (default 0.2).", "S")
  number(sb, "--process-seconds", "How long a task stays processing (default 0.5).", "S")
  number(sb, "--video-bytes", "Every video a synthetic body of N bytes (default: a 59.7 KiB MP4).")
  number(sb, "--download-rate", "Send videos at N bytes per second (default: as fast as loopback goes).")
  sb:flag("--tls", "Serve https with a throwaway certificate (its path is printed, as CURL_CA_BUNDLE).")
  option(sb, "--dialect", "Answer as this gateway does: tokenops (default) or new-api.", "D")
    :choices { "tokenops", "new-api" }
  add_json(sb); add_quiet(sb)

  local doc = p:command("doctor", "Check the setup: key, base URL, proxy, CA file, the API's answer, libcurl.")
  add_json(doc); add_network(doc)

  local conf = p:command("config", "Show each setting, its value and where it comes from (flag, environment, " ..
    "profile, default).")
  conf:argument("action", "show (the settings; the default), path (the config file's path) or profiles (their " ..
    "names)."):choices { "show", "path", "profiles" }
    :args("?")
  add_json(conf)
  -- the settings config show shows: as options too, so that it says what a flag would do
  option(conf, "--api-key", "API key (default: $JIMENG_API_KEY); shown only as where it comes from.", "KEY")
  option(conf, "--api-key-file", "Read the API key from this file ('-': standard input).", "FILE")
  option(conf, "--base-url", "API base URL (default: $JIMENG_BASE_URL or https://api.tokenops.ai/v1).", "URL")
  option(conf, "--cainfo", "PEM file of the CA(s) to trust (default: $CURL_CA_BUNDLE, $SSL_CERT_FILE).", "FILE")
  option(conf, "--proxy", "Proxy URL, http://user:password@host:port (default: $https_proxy, $all_proxy).", "URL")
  option(conf, "--no-proxy", "Hosts that bypass the proxy, comma-separated (default: $no_proxy).", "HOSTS")
  option(conf, "--profile", "The config file's profile to use (default: $JIMENG_PROFILE, else [default]).", "NAME")
  conf:flag("--no-color", "No color, even on a terminal (as NO_COLOR=1 does).")

  local comp = p:command("completion", "Print a shell completion script: jimeng completion bash > FILE.")
  comp:argument("shell", "bash or zsh."):choices { "bash", "zsh" }

  return p
end

--- The command parser named name (or aliased so), or nil.
function M.command(p, name)
  for _, cmd in ipairs(p._commands) do
    for _, alias in ipairs(cmd._aliases) do
      if alias == name then return cmd end
    end
  end
  return nil
end

--- What each command's options are: {name=, options={ {aliases=, target=, takes_arg=, choices=}... }}.
function M.describe(p)
  local list = {}
  for _, cmd in ipairs(p._commands) do
    local opts = {}
    for _, o in ipairs(cmd._options) do
      if o._name ~= "-h" then
        opts[#opts + 1] = { aliases = o._aliases, target = o._target or o:_get_default_target(),
          takes_arg = (o._maxargs or 0) > 0, description = o._description, choices = o._choices,
          argname = type(o._argname) == "string" and o._argname or nil }
      end
    end
    local args = {}
    for _, a in ipairs(cmd._arguments) do args[#args + 1] = { name = a._name, choices = a._choices } end
    list[#list + 1] = { name = cmd._name, aliases = cmd._aliases, options = opts, arguments = args,
      summary = cmd._summary or cmd._description }
  end
  return list
end

-- Completion

local FILE_ARGS = { output = true, output_dir = true, api_key_file = true, cainfo = true, journal = true, image = true }

-- Whether a command's first argument is a task id (completed from the ledger).
local function takes_id(c) return c.arguments[1] ~= nil and c.arguments[1].name == "id" end

--- The values an option takes, offered by the completions instead of file names: the enumerated ones here
-- (the models are jm_models of src/request.c), and any option declared with :choices (e.g. a dialect).
M.VALUES = {
  aspect_ratio = { "16:9", "9:16", "4:3", "3:4", "1:1", "21:9" },
  model = { "jimeng-video-3.0-pro", "jimeng-video-3.0-720P", "jimeng-video-3.0-1080P" },
  seconds = { "5", "10" }, frames = { "121", "241" }, resolution = { "720", "1080" },
  subject = { "largest", "1", "2", "3" }, seed = { "-1" },
  -- WIDTHxHEIGHT, each near one of the aspect ratios (the vendor's page: "1280x720" becomes 16:9)
  size = { "1280x720", "1920x1080", "720x1280", "1080x1920", "960x720", "720x960", "720x720", "1080x1080",
    "1680x720" },
}

local function values_of(o)
  return M.VALUES[o.target] or o.choices
end

--- A completion script for `shell` ("bash" or "zsh"), made from the parser.
function M.completion(p, shell)
  local cmds = M.describe(p)
  if shell == "bash" then
    local lines = {
      "# bash completion for jimeng (made by: jimeng completion bash)",
      "_jimeng() {",
      "  local cur prev cmd i line before",
      "  cur=\"${COMP_WORDS[COMP_CWORD]}\"; prev=\"${COMP_WORDS[COMP_CWORD-1]}\"; cmd=",
      "  if [[ -n \"$COMP_LINE\" ]]; then # the words by spaces alone: bash splits 16:9 at its colon",
      "    line=\"${COMP_LINE:0:COMP_POINT}\"; cur=\"${line##*[[:space:]]}\"; before=\"${line%\"$cur\"}\"",
      "    before=\"${before%\"${before##*[![:space:]]}\"}\"; prev=\"${before##*[[:space:]]}\"",
      "  fi",
      "  for ((i = 1; i < COMP_CWORD; i++)); do",
      "    case \"${COMP_WORDS[i]}\" in -*) ;; *) cmd=\"${COMP_WORDS[i]}\"; break ;; esac",
      "  done",
      "  local vals=",
      "  case \"$cmd:$prev\" in",
    }
    -- "command:option": an option may take other values in another command (sandbox --dialect)
    for _, c in ipairs(cmds) do
      for _, o in ipairs(c.options) do
        local v = o.takes_arg and values_of(o)
        if v then
          local pats = {}
          for _, n in ipairs(c.aliases) do
            for _, a in ipairs(o.aliases) do pats[#pats + 1] = n .. ":" .. a end
          end
          lines[#lines + 1] = ("    %s) vals=%q ;;"):format(table.concat(pats, "|"), table.concat(v, " "))
        end
      end
    end
    lines[#lines + 1] = [=[    *:--profile) vals="$(jimeng config profiles 2>/dev/null)" ;; # the config file's profiles]=]
    lines[#lines + 1] = "  esac"
    lines[#lines + 1] = [=[  if [[ -n "$vals" ]]; then]=]
    lines[#lines + 1] = [=[    COMPREPLY=($(compgen -W "$vals" -- "$cur"))]=]
    lines[#lines + 1] = [=[    if [[ "$cur" == *:* && "$COMP_WORDBREAKS" == *:* ]]; then # what bash replaces: after the colon]=]
    lines[#lines + 1] = [=[      local pre="${cur%"${cur##*:}"}"; COMPREPLY=("${COMPREPLY[@]#"$pre"}")]=]
    lines[#lines + 1] = [=[    fi]=]
    lines[#lines + 1] = [=[    return]=]
    lines[#lines + 1] = [=[  fi]=]
    lines[#lines + 1] = "  local opts files ids"
    lines[#lines + 1] = "  case \"$cmd\" in"
    local names = {}
    for _, c in ipairs(cmds) do
      local words, files = { "-h", "--help" }, {}
      for _, o in ipairs(c.options) do
        for _, a in ipairs(o.aliases) do
          words[#words + 1] = a
          if o.takes_arg and FILE_ARGS[o.target] then files[#files + 1] = a end
        end
      end
      for _, a in ipairs(c.aliases) do names[#names + 1] = a end
      lines[#lines + 1] = ("    %s) opts=%q; files=%q%s ;;"):format(table.concat(c.aliases, "|"),
        table.concat(words, " "), "|" .. table.concat(files, "|") .. "|", takes_id(c) and "; ids=1" or "")
      if c.arguments[1] and c.arguments[1].choices then
        lines[#lines] = ("    %s) opts=%q; files= ;;"):format(c.name, table.concat(c.arguments[1].choices, " "))
      end
    end
    lines[#lines + 1] = ("    \"\") COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;"):format(
      table.concat(names, " ") .. " --help --version")
    lines[#lines + 1] = "  esac"
    lines[#lines + 1] = [=[  if [[ -n "$files" && "$files" == *"|$prev|"* ]]; then]=]
    lines[#lines + 1] = [=[    COMPREPLY=($(compgen -f -- "$cur")); return
  fi]=]
    -- a task id: the ids of the ledger (jimeng list --ids), read when asked for
    lines[#lines + 1] = [=[  if [[ -n "$ids" && "$cur" != -* ]]; then
    COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" list --ids -n 100 2>/dev/null)" -- "$cur")); return
  fi]=]
    lines[#lines + 1] = [=[  if [[ "$cur" == -* || -z "$files" ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); return; fi]=]
    lines[#lines + 1] = "  COMPREPLY=($(compgen -f -- \"$cur\"))"
    lines[#lines + 1] = "}"
    lines[#lines + 1] = "complete -o filenames -F _jimeng jimeng"
    return table.concat(lines, "\n") .. "\n"
  end
  -- zsh: _arguments per command
  -- inside '...': a quote closes, is escaped, and opens again; _arguments reads \[ \] \: as the characters
  local function q(s) return ((s or ""):gsub("[%[%]:]", "\\%0"):gsub("'", "'\\''")) end
  local lines = { "#compdef jimeng", "# zsh completion for jimeng (made by: jimeng completion zsh)",
    "_jimeng_ids() { local -a ids; ids=(${(f)\"$(jimeng list --ids -n 100 2>/dev/null)\"}); compadd -a ids }",
    "_jimeng() {",
    "  local -a commands", "  commands=(" }
  for _, c in ipairs(cmds) do
    for _, a in ipairs(c.aliases) do lines[#lines + 1] = ("    '%s:%s'"):format(a, q(c.summary)) end
  end
  lines[#lines + 1] = "  )"
  lines[#lines + 1] = "  if (( CURRENT == 2 )); then _describe 'command' commands; _arguments '--version' '--help'; return; fi"
  lines[#lines + 1] = "  case ${words[2]} in"
  for _, c in ipairs(cmds) do
    local specs = { "'(-h --help)'{-h,--help}'[show the help]'" }
    for _, o in ipairs(c.options) do
      local vals = o.takes_arg and values_of(o)
      local action = o.takes_arg and (FILE_ARGS[o.target] and ":file:_files" or
        o.target == "profile" and ":NAME:{compadd - ${(f)\"$(jimeng config profiles 2>/dev/null)\"}}" or
        vals and (":" .. q(o.argname or "value") .. ":(" .. q(table.concat(vals, " ")) .. ")") or ":value: ") or ""
      for _, a in ipairs(o.aliases) do
        specs[#specs + 1] = ("'%s[%s]%s'"):format(a, q(o.description), action)
      end
    end
    for i, a in ipairs(c.arguments) do
      local action = a.choices and ("(" .. table.concat(a.choices, " ") .. ")") or
        ((a.name == "spec" or a.name == "jobs") and "_files" or a.name == "id" and "_jimeng_ids" or " ")
      specs[#specs + 1] = ("'%d:%s:%s'"):format(i, a.name, action)
    end
    lines[#lines + 1] = ("    %s) shift words; (( CURRENT-- )); _arguments %s ;;"):format(table.concat(c.aliases, "|"),
      table.concat(specs, " "))
  end
  lines[#lines + 1] = "  esac"
  lines[#lines + 1] = "}"
  -- autoloaded from fpath (#compdef), the file's body runs at the first Tab: it must complete then too, not only
  -- define the function (else the first Tab does nothing); sourced, it registers the function
  lines[#lines + 1] = "if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then _jimeng \"$@\"; else compdef _jimeng jimeng; fi"
  return table.concat(lines, "\n") .. "\n"
end

-- The man page

local function roff(s)
  s = s:gsub("\\", "\\e"):gsub("^%.", "\\&."):gsub("\n%.", "\n\\&."):gsub("^'", "\\&'"):gsub("\n'", "\n\\&'")
  return (s:gsub("%-", "\\-"))
end

-- The options every command that calls the API takes (OPTIONS), and the rest: each command's own (COMMANDS).
local COMMON = { api_key = true, api_key_file = true, base_url = true, cainfo = true, proxy = true, no_proxy = true,
  ["http1.1"] = true, http2 = true, profile = true, verbose = true, no_color = true, json = true, quiet = true }

-- An option as a man page's tagged paragraph: its names in bold, its argument in italics.
local function man_option(o)
  local names = {}
  for _, a in ipairs(o.aliases) do
    names[#names + 1] = "\\fB" .. roff(a) .. "\\fR" .. (o.takes_arg and (" \\fI" .. roff(o.argname or "VALUE") ..
      "\\fR") or "")
  end
  return { ".TP", table.concat(names, ", "), roff(o.description or "") }
end

M.MAN_EXAMPLES = {
  { "A 10-second video, saved as horses.mp4:", 'jimeng generate "horses on the steppe" --seconds 10 -o horses.mp4' },
  { "From a first frame, in portrait:", "jimeng generate \"a cat jumps\" --image cat.jpg --aspect-ratio 9:16" },
  { "Create now, fetch later:", "jimeng create \"waves at dusk\"\njimeng wait ID && jimeng download ID -o waves.mp4" },
  { "The tasks paid for, and one of them in full:", "jimeng list\njimeng show ID" },
  { "Save every task paid for and not saved (after a closed terminal):", "jimeng resume" },
  { "Many jobs, resumable:", "jimeng batch jobs.jsonl --journal run.jsonl -o videos/ -j 8" },
  { "Try everything without a key, against a local API:", "jimeng sandbox" },
  { "Check the setup, with each request shown:", "jimeng doctor -v" },
  { "Where each setting comes from:", "jimeng config show --profile work" },
}

--- jimeng.1 in roff: NAME, SYNOPSIS, DESCRIPTION, COMMANDS (each with its own options), OPTIONS (those
-- every API command takes), ENVIRONMENT, FILES, EXIT STATUS, EXAMPLES, SEE ALSO. Filled text only (the
-- examples aside, each shorter than 72 columns), so that it reads within 80 columns.
function M.man(p, version, date, share_dir)
  local out = {
    ('.TH JIMENG 1 "%s" "jimeng %s" "User Commands"'):format(date or os.date("!%Y-%m-%d"), version),
    ".SH NAME", "jimeng \\- " .. roff(M.DESCRIPTION:gsub("%.$", "")),
    ".SH SYNOPSIS", ".B jimeng", ".I COMMAND", ".RI [ OPTIONS ]", ".RI [ ARGUMENTS ]", ".br", ".B jimeng",
    ".RI [ COMMAND ]", ".B \\-\\-help", ".br", ".B jimeng \\-\\-version",
    ".SH DESCRIPTION",
    roff("jimeng makes videos with the Jimeng video API of tokenops.ai: it creates a task (the call that is paid " ..
      "for), waits for it, and downloads the video, resuming a broken download. A created task's id is said " ..
      "at once, and after an interruption the command to continue it is printed on a line of its own. " ..
      "Progress goes to standard error, results to standard output (JSON with --json)."),
    ".SH COMMANDS",
  }
  local common = {}
  for _, c in ipairs(M.describe(p)) do
    local args = {}
    for _, a in ipairs(c.arguments) do
      args[#args + 1] = " \\fI" .. roff(a.choices and table.concat(a.choices, "|") or a.name:upper()) .. "\\fR"
    end
    out[#out + 1] = ".TP"
    out[#out + 1] = "\\fB" .. roff(c.name) .. "\\fR" .. table.concat(args) ..
      (#c.aliases > 1 and (" (also \\fB" .. roff(c.aliases[2]) .. "\\fR)") or "")
    out[#out + 1] = roff(c.summary or "")
    local own = {}
    for _, o in ipairs(c.options) do
      if COMMON[o.target] then
        if not common[o.target] then common[o.target] = o; common[#common + 1] = o end
      else
        own[#own + 1] = o
      end
    end
    if #own > 0 then
      out[#out + 1] = ".RS"
      for _, o in ipairs(own) do
        for _, l in ipairs(man_option(o)) do out[#out + 1] = l end
      end
      out[#out + 1] = ".RE"
    end
  end
  out[#out + 1] = ".SH OPTIONS"
  out[#out + 1] = roff("Every command that calls the API takes these (config and doctor too; -h and --help everywhere). " ..
    "A setting not given as an option comes from the environment, then from the config file's profile, " ..
    "then from the default: jimeng config show says which.")
  for _, o in ipairs(common) do
    for _, l in ipairs(man_option(o)) do out[#out + 1] = l end
  end
  local function tp(name, text)
    out[#out + 1] = ".TP"
    out[#out + 1] = "\\fB" .. roff(name) .. "\\fR"
    out[#out + 1] = roff(text)
  end
  out[#out + 1] = ".SH ENVIRONMENT"
  tp("JIMENG_API_KEY", "The API key (the only credential; never shown, never written to a file by jimeng).")
  tp("JIMENG_BASE_URL", "The API's base URL (default https://api.tokenops.ai/v1).")
  tp("JIMENG_CONFIG", "The config file to read instead of the default one (it must exist).")
  tp("JIMENG_PROFILE", "The config file's profile to use when --profile is not given.")
  tp("XDG_CONFIG_HOME", "Where the config file is looked for (default ~/.config).")
  tp("https_proxy, http_proxy, all_proxy, no_proxy", "The proxy, and the hosts that bypass it, as curl reads " ..
    "them; a loopback API is never reached through a proxy.")
  tp("CURL_CA_BUNDLE, SSL_CERT_FILE, SSL_CERT_DIR", "The CA certificates to trust (default: libcurl's).")
  tp("JIMENG_DIALECT", "The gateway's dialect (tokenops, new-api or auto) when --dialect is not given; it " ..
    "outranks a profile's dialect.")
  tp("JIMENG_LEDGER", "The ledger of paid tasks: a file to use instead of the default one, or false (also off, " ..
    "0, no) for none. A ledger asked for that cannot be made stops a create before it is sent.")
  tp("XDG_STATE_HOME", "Where the ledger is kept (default ~/.local/state).")
  tp("NO_COLOR", "When set to anything, no color (as --no-color). Color is only ever used on a terminal, " ..
    "and never when TERM is dumb.")
  tp("COLUMNS, LINES", "The terminal's size, when set (else asked of the terminal).")
  out[#out + 1] = ".SH FILES"
  tp("$XDG_CONFIG_HOME/jimeng/config", "The config file (~/.config/jimeng/config by default): key = value " ..
    "lines, [name] starting a profile, # or ; starting a comment. Its keys are the long options' names " ..
    "(base_url, proxy, cainfo, model, seconds, aspect_ratio, output_dir...); the key itself is never one: " ..
    "api_key_file names a file only its owner may read.")
  tp("$XDG_STATE_HOME/jimeng/ledger.jsonl", "The ledger (~/.local/state/jimeng/ledger.jsonl by default): one " ..
    "JSON line per event of every create this machine sent (its id, parameters, base URL, the path meant, what " ..
    "became of it), never the key. jimeng list, show and resume read it; when its default place cannot be " ..
    "made, a create says so and goes on without it.")
  tp("FILE.part, FILE.part.json", "A download in progress and its record: the next download of the same task " ..
    "to FILE resumes from them.")
  out[#out + 1] = ".SH EXIT STATUS"
  for _, e in ipairs { { "0", "Success." }, { "1", "The task failed (the API said so)." },
    { "2", "Usage or invalid input: nothing was sent, nothing was paid for." },
    { "3", "An API or network error (the message says whether a task exists)." },
    { "130", "Interrupted (Ctrl-C or SIGTERM): the message says what exists and how to continue." } } do
    tp(e[1], e[2])
  end
  out[#out + 1] = ".SH EXAMPLES"
  for _, ex in ipairs(M.MAN_EXAMPLES) do
    out[#out + 1] = ".PP"
    out[#out + 1] = roff(ex[1])
    out[#out + 1] = ".RS 4"
    out[#out + 1] = ".nf"
    out[#out + 1] = roff(ex[2])
    out[#out + 1] = ".fi"
    out[#out + 1] = ".RE"
  end
  out[#out + 1] = ".SH SEE ALSO"
  out[#out + 1] = roff("jimeng COMMAND --help for each command's own words; jimeng doctor to check a setup; " ..
    "jimeng sandbox for a local API" .. (share_dir and (" (" .. share_dir .. "/sandbox/server.py)") or "") .. ".")
  return table.concat(out, "\n") .. "\n"
end

return M
