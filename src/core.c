/* jimeng.core: the C half of jimeng (HTTP engine, normalization, files); Lua owns control flow. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include <curl/curl.h>

#include "jimeng.h"

static pthread_once_t jm_curl_once = PTHREAD_ONCE_INIT;
static CURLcode jm_curl_init_rc = CURLE_OK;

static void jm_curl_global(void) {
    jm_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* core.now() -> monotonic seconds (float). */
static int l_now(lua_State *L) {
    lua_pushnumber(L, jm_now());
    return 1;
}

/* core.sleep(seconds): blocks the thread; the Lua layer only uses it outside any scheduler. */
static int l_sleep(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    struct timespec ts;
    if (s <= 0) return 0;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
    return 0;
}

/* core.curl_version() -> "libcurl/x.y.z" as libcurl reports it (for the User-Agent). */
static int l_curl_version(lua_State *L) {
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    lua_pushfstring(L, "libcurl/%s", v && v->version ? v->version : "unknown");
    return 1;
}

int luaopen_jimeng_core(lua_State *L);

__attribute__((visibility("default"))) int luaopen_jimeng_core(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"now", l_now},
        {"sleep", l_sleep},
        {"curl_version", l_curl_version},
        {NULL, NULL},
    };
    if (pthread_once(&jm_curl_once, jm_curl_global) != 0 || jm_curl_init_rc != CURLE_OK)
        return luaL_error(L, "jimeng.core: curl_global_init failed");
    lua_newtable(L);
    jm_setfuncs(L, fns, 0);
    jm_setstr(L, "_VERSION", JM_VERSION);
    jm_open_engine(L);
    jm_open_normalize(L);
    jm_open_files(L);
    jm_open_url(L);
    return 1;
}

/* ---- helpers shared by the C files ---- */

double jm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void jm_setstr(lua_State *L, const char *k, const char *v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

void jm_setlstr(lua_State *L, const char *k, const char *v, size_t n) {
    lua_pushlstring(L, v, n);
    lua_setfield(L, -2, k);
}

void jm_setint(lua_State *L, const char *k, lua_Integer v) {
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

void jm_setbool(lua_State *L, const char *k, int v) {
    lua_pushboolean(L, v);
    lua_setfield(L, -2, k);
}

#if LUA_VERSION_NUM < 502
void jm_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#endif
