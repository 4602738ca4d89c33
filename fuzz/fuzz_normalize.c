/* libFuzzer target: fuzzer bytes -> JSON (lua-cjson) -> Lua table -> every normalization and response
 * function of jimeng.core. Any crash, sanitizer report or Lua error escaping pcall is a finding.
 * Normalization returns nil, err: it never raises on data, so a raise is a bug.
 * The Lua state and the call per input: lua_driver.c. */
#include "lua_driver.h"

const char *const fuzz_driver =
    "local core, cjson = require 'jimeng.core', require 'cjson'\n"
    "local json = cjson.new()\n"
    "json.decode_max_depth(32)\n"
    "return function(s)\n"
    "  local ok, t = pcall(json.decode, s)\n"
    "  if ok and type(t) == 'table' then\n"
    "    core.normalize(t)\n"
    "    core.normalize(t, 'omni_human')\n"
    "    core.task(t, s)\n"
    "    core.detection(t)\n"
    "    core.recognition(t)\n"
    "    core.error_message(t, s)\n"
    "    if type(t.image_url) == 'string' then core.subject_body('detection', t.image_url) end\n"
    "  end\n"
    "  core.error_message(nil, s)\n"
    "  core.sniff_image(s)\n"
    "  core.fingerprint(s)\n"
    "end\n";
