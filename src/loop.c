/* The blocking wait: how a plain Lua program (the command, a script, jimeng.run) waits for its transfers, the
 * way the Neovim and nginx hosts do. libcurl's socket and timer callbacks (host.c) keep the set of sockets it
 * wants watched and when it wants its timer; one poll(2) waits on exactly those sockets of every engine given,
 * on the trapped-signal self-pipe (signals.c: Ctrl-C ends the wait at once) and until the nearest timer; then
 * a socket action runs for each ready socket and for each timer due, so a wake-up touches only the transfers
 * on the sockets that moved (curl_multi_perform walks every running transfer). Nothing is allocated per wait
 * but the array of finished transfers, and only when some finished. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "jimeng.h"

/* The pollfds of one wait: on the stack, or (several engines with many connections each) in a userdata that
 * the collector takes back, so that a raise leaks nothing and two Lua states in two threads share nothing. */
#define JM_FEW_FDS 72

/* Appends the finished transfers at the top of the stack (an array or nil) to the array at `into` (0: none yet:
 * the top becomes it). Leaves the stack as it found it but for a new `into`. Returns the new `into`. */
static int jm_merge(lua_State *L, int into) {
    int n, m, i;
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return into;
    }
    if (!into) return lua_gettop(L);
    n = (int)jm_rawlen(L, into);
    m = (int)jm_rawlen(L, -1);
    for (i = 1; i <= m; i++) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, into, n + i);
    }
    lua_pop(L, 1);
    return into;
}

/* Waits on the engines at stack indices first..last (or none) at most ms, acts on what is ready and pushes the
 * finished transfers of all of them (an array, or nil), then the number of transfers still in flight. */
static int jm_wait(lua_State *L, int first, int last, double ms) {
    struct pollfd few[JM_FEW_FDS], *fds = few;
    int owner_few[JM_FEW_FDS] = {0}, *owner = owner_few;
    int total = 1, n = 0, i, k, sfd = jm_signal_fd(), into = 0, timeout, ready, due_now = 0; /* 1: the self-pipe */
    lua_Integer inflight = 0;
    for (i = first; i <= last; i++) total += jm_engine_pollfds(jm_engine_check(L, i), NULL, 0);
    if (total > JM_FEW_FDS) {
        fds = lua_newuserdata(L, (size_t)total * (sizeof *fds + sizeof *owner));
        owner = (int *)(void *)(fds + total);
    }
    for (i = first; i <= last; i++) {
        struct jm_engine *e = jm_engine_check(L, i);
        double due = jm_engine_due_ms(e);
        int got;
        if (due >= 0 && due < ms) ms = due;
        if (due == 0) due_now = 1;
        got = jm_engine_pollfds(e, fds + n, total - 1 - n);
        if (got > total - 1 - n) got = total - 1 - n; /* counted above: never, but never past the array */
        for (k = n; k < n + got; k++) owner[k] = i;
        n += got;
    }
    if (sfd >= 0) {
        fds[n].fd = sfd;
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        owner[n] = 0;
        n++;
    }
    /* whole milliseconds, rounded up: a timer is never found not yet due after its wait */
    timeout = ms <= 0 ? 0 : (int)ceil(jm_wait_cap(ms));
    /* a step is due now (libcurl's timer, say a request just queued): no look at the sockets before it, they are
     * looked at by the next wait, which then has nothing due (one syscall less per request) */
    ready = (n > 0 || timeout > 0) && !(timeout == 0 && due_now) ? poll(fds, (nfds_t)n, timeout) : 0;
    if (ready < 0 && errno != EINTR) return luaL_error(L, "jimeng: poll: %s", strerror(errno));
    for (k = 0; ready > 0 && k < n; k++) {
        int mask = 0;
        if (!fds[k].revents || !owner[k]) continue;
        if (fds[k].revents & (POLLIN | POLLHUP)) mask |= CURL_CSELECT_IN;
        if (fds[k].revents & POLLOUT) mask |= CURL_CSELECT_OUT;
        if (fds[k].revents & (POLLERR | POLLNVAL)) mask |= CURL_CSELECT_ERR;
        /* an action may close another socket of the same engine: libcurl answers CURLM_BAD_SOCKET, ignored */
        jm_engine_act(L, jm_engine_check(L, owner[k]), fds[k].fd, mask);
    }
    for (i = first; i <= last; i++) {
        struct jm_engine *e = jm_engine_check(L, i);
        jm_engine_act(L, e, -1, 0); /* its timer, if due */
        jm_engine_collect(L, e);    /* running, finished | nil */
        inflight += lua_tointeger(L, -2);
        lua_remove(L, -2);
        into = jm_merge(L, into);
    }
    if (!into) lua_pushnil(L);
    lua_pushinteger(L, inflight);
    return 2;
}

/* engine:wait([ms]) -> running, finished | nil: waits at most ms (1000) for one of the engine's sockets, its
 * timer, or a trapped signal, then acts on what is ready; finished as engine:perform's. Never longer than ms,
 * never spinning. */
static int l_engine_wait(lua_State *L) {
    double ms;
    jm_engine_check(L, 1);
    ms = jm_wait_cap(luaL_optnumber(L, 2, 1000));
    lua_settop(L, 1);
    jm_wait(L, 1, 1, ms);
    lua_insert(L, -2); /* running first */
    return 2;
}

/* core.wait({engine, ...}, ms) -> finished | nil, in_flight: a scheduler's one wait over every engine it
 * waits on (none: a sleep that a trapped signal cuts short), acting on whatever is ready; finished: the
 * transfers of all of them that finished. */
static int l_wait(lua_State *L) {
    int n, i, base;
    double ms;
    luaL_checktype(L, 1, LUA_TTABLE);
    ms = jm_wait_cap(luaL_optnumber(L, 2, 1000));
    n = (int)jm_rawlen(L, 1);
    lua_settop(L, 1);
    luaL_checkstack(L, n + 8, "too many engines");
    base = lua_gettop(L);
    for (i = 1; i <= n; i++) lua_rawgeti(L, 1, i);
    return jm_wait(L, base + 1, base + n, ms);
}

void jm_open_loop(lua_State *L) {
    lua_pushcfunction(L, l_wait);
    lua_setfield(L, -2, "wait");
    /* engine:wait joins the engine's methods (engine.c registers the class first) */
    luaL_getmetatable(L, "jimeng.engine");
    lua_getfield(L, -1, "__index");
    lua_pushcfunction(L, l_engine_wait);
    lua_setfield(L, -2, "wait");
    lua_pop(L, 2);
}
