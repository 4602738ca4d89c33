/* The HTTP engine: non-blocking libcurl transfers on one multi handle per client. This file holds the engine
 * object (core.engine, engine:request, close, pace, share) and core.limits; the rest of the engine is in rooms
 * of its own: configure.c (settings and a request's options), queue.c (the queue, the handle pool, a
 * transfer's start and finish), pace.c, callbacks.c (libcurl's callbacks of a transfer: the sinks),
 * transfer.c (the transfer object and its result), host.c (how a host drives it: libcurl's sockets).
 *
 * Lua submits a transfer (engine:request), drives the multi handle (engine:perform, engine:poll) and
 * reads each finished transfer's result (transfer:result). C never calls Lua from a libcurl callback and
 * never yields, so the same loop works in a plain script, a coroutine scheduler, nginx and Neovim. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

/* core.engine([settings]) -> a new engine: one multi handle (its connections and TLS sessions are reused)
 * with a client's settings, applied to every request it makes. settings: max_connections (8),
 * connect_timeout (seconds, 10), user_agent, cainfo, capath, proxy ("" for none; absent: the environment's),
 * no_proxy, http_version ("auto" | "1.1" | "2"), api_key (sent to the API, and to the host of a download
 * only: never to a host a redirect leads to), stall_timeout (a download slower than 1 KiB/s for this
 * many seconds is cut). At most max_connections transfers run at once, so at most that many connections are
 * open to a host: the rest wait in the engine's queue, holding no socket, their timeouts not yet running. */
static int l_engine_new(lua_State *L) {
    long maxc = JM_DEFAULT_MAX_CONNECTIONS;
    jm_engine *e;
    if (lua_istable(L, 1)) {
        double v = jm_optnum(L, 1, "max_connections", (double)JM_DEFAULT_MAX_CONNECTIONS);
        if (!(v >= 1 && v <= 1024)) return luaL_error(L, "jimeng: max_connections must be 1 to 1024");
        maxc = (long)v;
    }
    e = lua_newuserdata(L, sizeof *e);
    memset(e, 0, sizeof *e);
    e->max_running = (int)maxc;
    e->multi = curl_multi_init();
    if (!e->multi) return luaL_error(L, "jimeng: curl_multi_init failed");
    luaL_getmetatable(L, JM_ENGINE_MT);
    lua_setmetatable(L, -2);
    if (jm_watch_setup(e) != 0) return luaL_error(L, "jimeng: cannot set libcurl's socket and timer callbacks");
    jm_config_read(L, 1, e);
    if (curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) != CURLM_OK)
        return luaL_error(L, "jimeng: cannot enable HTTP/2 multiplexing");
    /* libcurl's default of 100 streams per connection would open a new connection for every transfer past
     * the hundredth started at once; the server's own limit (SETTINGS_MAX_CONCURRENT_STREAMS) still holds */
    (void)curl_multi_setopt(e->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, 4096L);
    /* a backstop: libcurl itself never opens more (it closes an idle connection to make room) */
    if (curl_multi_setopt(e->multi, CURLMOPT_MAX_HOST_CONNECTIONS, maxc) != CURLM_OK)
        return luaL_error(L, "jimeng: cannot limit connections per host");
    /* and keeps enough idle: libcurl's default cache (4 per transfer in flight) shrinks to nothing between
     * two rounds of polls, so HTTP/1.1 connections would be closed and opened again every round */
    (void)curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)JM_MAX_HOST_CONNECTIONS);
    return 1;
}

/* engine:closed() -> whether engine:close() was called (a scheduler stops driving it, and wakes its waiters) */
static int l_engine_closed(lua_State *L) {
    jm_engine *e = luaL_checkudata(L, 1, JM_ENGINE_MT);
    lua_pushboolean(L, e->closed);
    return 1;
}

static int l_engine_close(lua_State *L) {
    jm_engine *e = luaL_checkudata(L, 1, JM_ENGINE_MT);
    if (e->closed) return 0;
    e->closed = 1; /* handles of the transfers finished below are cleaned up, not pooled */
    while (e->head) {
        jm_transfer *t = e->head;
        t->cancelled = 1;
        jm_finish(L, t, CURLE_ABORTED_BY_CALLBACK);
        t->eng = NULL;
    }
    while (e->npool > 0) curl_easy_cleanup(e->pool[--e->npool]);
    jm_config_free(&e->cfg);
    while (e->ndone > 0) luaL_unref(L, LUA_REGISTRYINDEX, e->done[--e->ndone]);
    free(e->done);
    e->done = NULL;
    e->donecap = 0;
    free(e->pace_log);
    e->pace_log = NULL;
    e->pace_cap = e->pace_count = e->pace_head = 0;
    if (e->multi) curl_multi_cleanup(e->multi);
    e->multi = NULL;
    jm_watch_free(e); /* after the cleanup: its last socket callbacks still record into it */
    if (e->share) jm_share_drop(e->share);
    e->share = NULL;
    e->closed = 1;
    return 0;
}

static int l_engine_request(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    jm_transfer *t;
    size_t blen = 0;
    const char *url, *method, *body, *kind, *why;
    luaL_checktype(L, 2, LUA_TTABLE);
    jm_check_request_options(L, 2);
    url = jm_optstr(L, 2, "url", NULL);
    if (!url) return luaL_error(L, "jimeng: request needs a url");
    method = jm_optstr(L, 2, "method", NULL);
    body = jm_optstr(L, 2, "body", &blen);
    kind = jm_optstr(L, 2, "kind", NULL);
    if (jm_has_crlf(url)) {
        lua_pushnil(L);
        lua_pushliteral(L, "a URL contains CR or LF");
        lua_pushliteral(L, "invalid_argument");
        return 3;
    }

    t = lua_newuserdata(L, sizeof *t);
    memset(t, 0, sizeof *t);
    t->fd = -1;
    t->ref = LUA_NOREF;
    t->part_ref = LUA_NOREF;
    luaL_getmetatable(L, JM_TRANSFER_MT);
    lua_setmetatable(L, -2);
    if (!kind || strcmp(kind, "api") == 0) t->kind = JM_KIND_API;
    else if (strcmp(kind, "download") == 0) t->kind = JM_KIND_DOWNLOAD;
    else if (strcmp(kind, "probe") == 0) t->kind = JM_KIND_PROBE;
    else return luaL_error(L, "jimeng: request kind must be api, download or probe");
    t->probe = t->kind == JM_KIND_PROBE;
    {
        double timeout = jm_optnum(L, 2, "timeout", 0);
        t->timeout_ms = timeout > 0 ? (long)(timeout * 1000) : 0L;
    }
    t->deadline = jm_optnum(L, 2, "deadline", 0);
    t->max_body = (size_t)jm_optnum(L, 2, "max_body", JM_MAX_JSON_BODY);
    t->total = -1;
    t->paid = t->kind == JM_KIND_API && jm_optbool(L, 2, "paid");
    if (t->kind == JM_KIND_DOWNLOAD) jm_take_part(L, 2, t);
    if (t->paid) {
        jm_take_line(L, 2, "journal", "journal_line", &t->journal, &t->journal_len);
        jm_take_line(L, 2, "ledger", "ledger_line", &t->ledger, &t->ledger_len);
    }
    {
        char where[256] = "";
        t->proxy_used = jm_proxy_for(url, e->cfg.proxy, e->cfg.noproxy, where, sizeof where);
        if (where[0] && !(t->proxy_where = strdup(where))) return luaL_error(L, "jimeng: out of memory");
    }

    why = jm_build_headers(L, 2, e, t, method && strcmp(method, "POST") == 0);
    if (why) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        lua_pushliteral(L, "invalid_argument");
        return 3;
    }
    t->req_accept_encoding = jm_optbool(L, 2, "accept_encoding");
    t->want_head = jm_optbool(L, 2, "head");
    t->req_blen = blen;
    if (!(t->req_url = strdup(url)) || (method && !(t->req_method = strdup(method))) ||
        (body && !(t->req_body = malloc(blen + 1))))
        return luaL_error(L, "jimeng: out of memory");
    if (body) memcpy(t->req_body, body, blen);
    jm_submit(L, e, t);
    return 1;
}

/* engine:pace(rate[, burst[, count, window]]): at most `burst` transfers at once and `rate` a second on
 * average leave the queue for a connection (so no one-second window holds more than rate + burst), and, with
 * count, at most `count` in any `window` seconds (default 1); rate nil, 0 or inf: no pace. Tokens already
 * earned are kept, up to the new burst; the departures already counted, up to the new count. */
static int l_engine_pace(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    double rate = luaL_optnumber(L, 2, 0), burst = luaL_optnumber(L, 3, 1);
    double count = luaL_optnumber(L, 4, 0), window = luaL_optnumber(L, 5, 1);
    if (jm_pace_set(e, rate, burst, count, window) != 0) return luaL_error(L, "jimeng: out of memory");
    jm_pump(L, e);
    return 0;
}

/* engine:share(share | nil): requests take their tokens from a shared budget (core.share_open) instead of
 * the engine's own pace, from the next transfer that leaves the queue; nil: the engine's own pace again. */
static int l_engine_share(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    jm_share *s = lua_isnoneornil(L, 2) ? NULL : jm_share_check(L, 2);
    if (s) jm_share_hold(s);
    if (e->share) jm_share_drop(e->share);
    e->share = s;
    e->pace_next = 0;
    jm_pump(L, e);
    return 0;
}

void jm_open_engine(lua_State *L) {
    static const luaL_Reg engine_m[] = {
        {"request", l_engine_request}, {"perform", l_engine_perform}, {"poll", l_engine_poll}, {"pace", l_engine_pace},
        {"share", l_engine_share},
        {"close", l_engine_close},     {"closed", l_engine_closed}, {"watch", l_engine_watch},
        {"socket_action", l_engine_socket_action},
        {"socket_action_timeout", l_engine_socket_action_timeout}, {"step_sockets", l_engine_step_sockets},
        {NULL, NULL},
    };
    jm_new_class(L, JM_ENGINE_MT, engine_m, l_engine_close, l_engine_close);
    jm_open_transfer(L);

    lua_pushcfunction(L, l_engine_new);
    lua_setfield(L, -2, "engine");
    /* core.limits: the engine's defaults and caps, for the Lua layer to state (never to define again) */
    lua_newtable(L);
    jm_setint(L, "connect_timeout", (lua_Integer)JM_CONNECT_TIMEOUT);
    jm_setint(L, "max_connections", JM_DEFAULT_MAX_CONNECTIONS);
    jm_setint(L, "max_json_body", (lua_Integer)JM_MAX_JSON_BODY);
    jm_setint(L, "max_header_bytes", (lua_Integer)JM_MAX_HEADER_BYTES);
    jm_setint(L, "max_redirects", JM_MAX_REDIRECTS);
    lua_setfield(L, -2, "limits");
}
