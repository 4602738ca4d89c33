/* libFuzzer target: fuzzer bytes -> core.parse_url (libcurl's URL API and the loopback test on the host it
 * returns) and core.noproxy_match (the no-proxy list matcher), the checks every base URL and every proxied
 * request goes through. Input: [URL]\n[no-proxy list]. Any crash, sanitizer report or raise is a finding.
 * parse_url returns nil, err and noproxy_match a boolean: a raise is a bug.
 * The Lua state and the call per input: lua_driver.c. */
#include "lua_driver.h"

const char *const fuzz_driver =
    "local core = require 'jimeng.core'\n"
    "return function(s)\n"
    "  local url, list = s:match('^([^\\n]*)\\n?(.*)$')\n"
    "  local u, err = core.parse_url(url)\n"
    "  if u then\n"
    "    assert(type(u.host) == 'string' and u.host ~= '' and type(u.loopback) == 'boolean')\n"
    "    core.noproxy_match(u.host, list)\n"
    "    local again = assert(core.parse_url(u.url))\n"
    "    assert(again.loopback == u.loopback)\n"
    "  else\n"
    "    assert(type(err) == 'string')\n"
    "  end\n"
    "  core.noproxy_match(url, list)\n"
    "end\n";
