/* libFuzzer target: fuzzer bytes -> JSON (lua-cjson) -> Lua table -> every normalization and response
 * function of jimeng.core. Any crash, sanitizer report or Lua error escaping pcall is a finding. */
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
        /* normalization returns nil, err: it never raises on data, so a raise is a bug */
        fprintf(stderr, "raised: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
