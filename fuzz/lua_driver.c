/* The shared half of the Lua-driven libFuzzer targets (fuzz_normalize.c, fuzz_url.c): one Lua state with the
 * standard libraries and jimeng.core preloaded, the target's driver chunk run once, and every input handed to
 * the function that chunk returns. The driver's contract: it returns nil, err or a value on any data and never
 * raises, so a raise (or a crash, or a sanitizer report) is a finding. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua_driver.h"

int luaopen_jimeng_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

static void setup(void) {
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_jimeng_core);
    lua_setfield(L, -2, "jimeng.core");
    lua_pop(L, 2);
    if (luaL_dostring(L, fuzz_driver) != LUA_OK) {
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
        fprintf(stderr, "raised: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
