/* A Lua-driven libFuzzer target defines only its driver: a Lua chunk that returns function(s), called with
 * each input's bytes as a string. lua_driver.c (linked with the target) does the rest. */
#ifndef JM_FUZZ_LUA_DRIVER_H
#define JM_FUZZ_LUA_DRIVER_H

extern const char *const fuzz_driver;

#endif
