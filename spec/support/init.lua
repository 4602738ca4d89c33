-- Loaded by busted before the specs: seed the random numbers used for jitter.
math.randomseed(os.time())

-- The specs never write into the real home: the ledger of paid creates goes under XDG_STATE_HOME, which
-- make test points at a directory of its own in /tmp.
local state = os.getenv("XDG_STATE_HOME") or ""
if not state:match("^/tmp/") then
  error("the specs must run with XDG_STATE_HOME in /tmp (make test sets it): they would write the ledger into $HOME", 0)
end
