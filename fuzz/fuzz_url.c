/* libFuzzer target: fuzzer bytes -> core.parse_url (libcurl's URL API and the loopback test on the host it
 * returns) and core.noproxy_match (the no-proxy list matcher), the checks every base URL and every proxied
 * request goes through. Input: [URL]\n[no-proxy list]. Any crash, sanitizer report or raise is a finding. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_jimeng_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *driver =
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

static lua_State *L;

static void setup(void) {
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_jimeng_core);
    lua_setfield(L, -2, "jimeng.core");
    lua_pop(L, 2);
    if (luaL_dostring(L, driver) != LUA_OK) {
        fprintf(stderr, "fuzz driver: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_setglobal(L, "fuzz_one");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!L) setup();
    lua_getglobal(L, "fuzz_one");
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        /* parse_url returns nil, err and noproxy_match a boolean: a raise is a bug */
        fprintf(stderr, "raised: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
