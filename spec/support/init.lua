-- Loaded by busted before the specs: seed the random numbers used for jitter.
math.randomseed(os.time())

-- The specs never write into the real home: the ledger of paid creates goes under XDG_STATE_HOME, which
-- make test points at a directory of its own in /tmp.
local state = os.getenv("XDG_STATE_HOME") or ""
if not state:match("^/tmp/") then
  error("the specs must run with XDG_STATE_HOME in /tmp (make test sets it): they would write the ledger into $HOME", 0)
end
-- The specs never read the user's own config file (make test points XDG_CONFIG_HOME at an empty directory of
-- the build): run otherwise, with a config file where the command would look, they stop here rather than
-- run against its profile.
do
  local config = require "jimeng.cli.config"
  local path = config.path()
  local f = io.open(path, "r")
  if f then
    f:close()
    error(("the specs would read the config file %s: run them with make test (it sets XDG_CONFIG_HOME to an " ..
      "empty directory), or unset JIMENG_CONFIG"):format(path), 0)
  end
  if os.getenv("JIMENG_PROFILE") then error("JIMENG_PROFILE is set: run the specs with make test", 0) end
end
