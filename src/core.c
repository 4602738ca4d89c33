/* jimeng.core: the module's entry. It starts libcurl once per process and registers each C file's
 * functions; the files are: util.c (helpers), signals.c, engine.c (HTTP: with configure.c, queue.c, pace.c,
 * callbacks.c, transfer.c and host.c), request.c (request bodies), response.c (answers; status.c: a status
 * answer read from its bytes), files.c, url.c. Lua owns control flow. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>

#include <curl/curl.h>

#include "jimeng.h"

static pthread_once_t jm_curl_once = PTHREAD_ONCE_INIT;
static CURLcode jm_curl_init_rc = CURLE_OK;

static void jm_curl_global(void) {
    jm_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* core.curl_version() -> "libcurl/x.y.z" as libcurl reports it (for the User-Agent). */
static int l_curl_version(lua_State *L) {
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    lua_pushfstring(L, "libcurl/%s", v && v->version ? v->version : "unknown");
    return 1;
}

/* core.curl_info() -> {version=, ssl=, features = {http2=, ...}}: libcurl's own account of itself,
 * for `jimeng doctor` and :checkhealth. */
static int l_curl_info(lua_State *L) {
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (!v) return luaL_error(L, "jimeng: curl_version_info failed");
    lua_createtable(L, 0, 4);
    lua_pushstring(L, v->version ? v->version : "unknown");
    lua_setfield(L, -2, "version");
    if (v->ssl_version) lua_pushstring(L, v->ssl_version);
    else lua_pushnil(L);
    lua_setfield(L, -2, "ssl");
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0);
    lua_setfield(L, -2, "http2");
    lua_pushboolean(L, (v->features & CURL_VERSION_SSL) != 0);
    lua_setfield(L, -2, "ssl");
    lua_pushboolean(L, (v->features & CURL_VERSION_ASYNCHDNS) != 0);
    lua_setfield(L, -2, "asynchdns");
    lua_setfield(L, -2, "features");
    return 1;
}

int luaopen_jimeng_core(lua_State *L);

__attribute__((visibility("default"))) int luaopen_jimeng_core(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"curl_version", l_curl_version},
        {"curl_info", l_curl_info},
        {NULL, NULL},
    };
    if (pthread_once(&jm_curl_once, jm_curl_global) != 0 || jm_curl_init_rc != CURLE_OK)
        return luaL_error(L, "jimeng.core: curl_global_init failed");
    lua_newtable(L);
    jm_setfuncs(L, fns, 0);
    jm_setstr(L, "_VERSION", JM_VERSION);
    jm_open_util(L);
    jm_open_signals(L);
    jm_open_engine(L);
    jm_open_request(L);
    jm_open_response(L);
    jm_open_status(L);
    jm_open_files(L);
    jm_open_url(L);
    jm_open_share(L);
    jm_open_loop(L); /* after jm_open_engine: it adds engine:wait */
    return 1;
}
