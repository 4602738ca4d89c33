/* How a host drives an engine. A host with its own loop (Neovim's libuv, nginx) watches exactly libcurl's
 * sockets and one timer: libcurl's socket and timer callbacks only record what it wants (they never call
 * Lua), engine:watch() hands the changes over, and engine:socket_action(fd, events) /
 * engine:socket_action_timeout() drive the transfers; engine:step_sockets() polls those sockets for a host that
 * cannot (nginx); the blocking wait (loop.c) polls them through jm_engine_pollfds and jm_engine_act. Each
 * returns the finished transfers as engine:perform() (curl_multi_perform, which walks every transfer) does. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

/* engine:perform() -> running, finished (an array of the transfers finished since the last call, or nil).
 * Never blocks. */
int l_engine_perform(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    int running = 0;
    CURLMcode mrc = curl_multi_perform(e->multi, &running);
    if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_perform: %s", curl_multi_strerror(mrc));
    return jm_collect(L, e, running);
}

/* engine:poll(ms) -> number of sockets with activity. Waits for activity on any transfer, or ms. */
int l_engine_poll(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    lua_Number ms = jm_wait_cap(luaL_optnumber(L, 2, 1000));
    double pace = jm_pace_wait_ms(e);
    int numfds = 0, sfd = jm_signal_fd();
    struct curl_waitfd sig;
    CURLMcode mrc;
    sig.fd = sfd;
    sig.events = CURL_WAIT_POLLIN;
    sig.revents = 0;
    if (pace >= 0 && pace < ms) ms = pace; /* a token comes: the next perform starts a queued transfer */
    mrc = curl_multi_poll(e->multi, sfd >= 0 ? &sig : NULL, sfd >= 0 ? 1 : 0, (int)ms, &numfds);
    if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_poll: %s", curl_multi_strerror(mrc));
    lua_pushinteger(L, numfds);
    return 1;
}

/* ---- the host's event loop: libcurl's socket and timer callbacks, seen from outside ----
 *
 * A host with its own loop (Neovim's libuv, nginx) watches exactly libcurl's sockets and one timer instead of
 * polling: libcurl's callbacks only record what it wants (they never call Lua), engine:watch() hands the
 * changes over, and engine:socket_action(fd, events) / engine:socket_action_timeout() drive the transfers,
 * returning the finished ones as engine:perform() does. The blocking path (perform, poll) ignores the records. */

struct jm_want {
    curl_socket_t fd;
    int what; /* CURL_POLL_IN, _OUT, _INOUT or _REMOVE */
};

/* Keeps the set of sockets libcurl wants watched now (engine:step_sockets polls exactly those). */
static int jm_track_socket(jm_engine *e, curl_socket_t s, int what) {
    int i;
    for (i = 0; i < e->nsock; i++) {
        if (e->sock[i].fd == s) break;
    }
    if (what == CURL_POLL_REMOVE) {
        if (i < e->nsock) e->sock[i] = e->sock[--e->nsock];
        return 0;
    }
    if (i == e->nsock) {
        if (e->nsock == e->sockcap) {
            int cap = e->sockcap ? e->sockcap * 2 : 16;
            struct jm_want *w = realloc(e->sock, (size_t)cap * sizeof *w);
            if (!w) return -1;
            e->sock = w;
            e->sockcap = cap;
        }
        e->sock[e->nsock++].fd = s;
    }
    e->sock[i].what = what;
    return 0;
}

/* CURLMOPT_SOCKETFUNCTION: remembers the latest wish for the socket. A socket closed and another opened with
 * the same number before the host looked shows as the new wish: the host re-arms its watcher either way. */
static int jm_on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    jm_engine *e = userp;
    int i;
    (void)easy;
    (void)socketp;
    if (jm_track_socket(e, s, what) != 0) {
        e->want_oom = 1;
        return -1;
    }
    for (i = 0; i < e->nwant; i++) {
        if (e->want[i].fd == s) {
            e->want[i].what = what;
            return 0;
        }
    }
    if (e->nwant == e->wantcap) {
        int cap = e->wantcap ? e->wantcap * 2 : 16;
        struct jm_want *w = realloc(e->want, (size_t)cap * sizeof *w);
        if (!w) {
            e->want_oom = 1;
            return -1; /* libcurl 7.88 ignores it; newer ones fail the transfer */
        }
        e->want = w;
        e->wantcap = cap;
    }
    e->want[e->nwant].fd = s;
    e->want[e->nwant].what = what;
    e->nwant++;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: when libcurl wants socket_action_timeout, as an absolute time (the host may look
 * later than libcurl asked). */
static int jm_on_timer(CURLM *multi, long timeout_ms, void *userp) {
    jm_engine *e = userp;
    (void)multi;
    e->timer_at = timeout_ms < 0 ? -1 : jm_now() + (double)timeout_ms / 1000;
    return 0;
}

int jm_watch_setup(jm_engine *e) {
    e->timer_at = -1;
    if (curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, jm_on_socket) != CURLM_OK) return -1;
    if (curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, (void *)e) != CURLM_OK) return -1;
    if (curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, jm_on_timer) != CURLM_OK) return -1;
    if (curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, (void *)e) != CURLM_OK) return -1;
    return 0;
}

void jm_watch_free(jm_engine *e) {
    free(e->want);
    e->want = NULL;
    e->nwant = e->wantcap = 0;
    free(e->sock);
    e->sock = NULL;
    e->nsock = e->sockcap = 0;
    e->timer_at = -1;
}

/* engine:watch() -> changes | nil, timeout_ms | nil, in_flight. changes: fd -> "in" | "out" | "inout" |
 * "remove", the sockets whose wish changed since the last call; timeout_ms: when to call
 * socket_action_timeout (0: now; nil: no timer wanted); in_flight: transfers running or queued. A closed
 * engine answers false. */
int l_engine_watch(lua_State *L) {
    jm_engine *e = luaL_checkudata(L, 1, JM_ENGINE_MT);
    if (e->closed) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (e->want_oom) {
        e->want_oom = 0;
        return luaL_error(L, "jimeng: out of memory recording libcurl's sockets");
    }
    if (e->nwant == 0) {
        lua_pushnil(L);
    } else {
        lua_createtable(L, 0, e->nwant);
        for (int i = 0; i < e->nwant; i++) {
            int w = e->want[i].what;
            lua_pushstring(L, w == CURL_POLL_IN      ? "in"
                              : w == CURL_POLL_OUT   ? "out"
                              : w == CURL_POLL_INOUT ? "inout"
                                                     : "remove");
            lua_rawseti(L, -2, (int)e->want[i].fd);
        }
        e->nwant = 0;
    }
    {
        double pace = jm_pace_wait_ms(e), ms = (e->timer_at - jm_now()) * 1000; /* pace < 0: not waiting */
        if (ms < 0) ms = 0;
        if (e->timer_at < 0 && pace < 0) lua_pushnil(L);
        else if (e->timer_at < 0 || (pace >= 0 && pace < ms)) lua_pushnumber(L, pace); /* a token comes: step */
        else lua_pushnumber(L, ms);
    }
    lua_pushinteger(L, e->nflight);
    return 3;
}

/* events as luv's poll callback spells them ("r", "w", "rw"), or "in", "out", "inout", "err", or a number of
 * CURL_CSELECT_* bits; nothing known: 0 (libcurl looks at the socket itself). */
static int jm_event_mask(lua_State *L, int i) {
    const char *s;
    int mask = 0;
    if (lua_type(L, i) == LUA_TNUMBER) return (int)lua_tointeger(L, i);
    s = luaL_optstring(L, i, "");
    if (strstr(s, "in") || strstr(s, "out") || strstr(s, "err")) {
        if (strstr(s, "in")) mask |= CURL_CSELECT_IN;
        if (strstr(s, "out")) mask |= CURL_CSELECT_OUT;
        if (strstr(s, "err")) mask |= CURL_CSELECT_ERR;
        return mask;
    }
    for (; *s; s++) {
        if (*s == 'r' || *s == 'd' || *s == 'p') mask |= CURL_CSELECT_IN;
        else if (*s == 'w') mask |= CURL_CSELECT_OUT;
        else if (*s == 'e') mask |= CURL_CSELECT_ERR;
    }
    return mask;
}


static int jm_socket_action(lua_State *L, jm_engine *e, curl_socket_t fd, int mask) {
    int running = 0;
    CURLMcode mrc = curl_multi_socket_action(e->multi, fd, mask, &running);
    /* a socket libcurl closed meanwhile is not an error: the host learns of it in the next watch() */
    long tmo = -1;
    if (mrc != CURLM_OK && mrc != CURLM_BAD_SOCKET)
        return luaL_error(L, "jimeng: curl_multi_socket_action: %s", curl_multi_strerror(mrc));
    /* libcurl calls the timer callback only when its next expiry changes: one that fired a little early and
     * is still due would be lost, so the timer is read back from libcurl after every action */
    if (curl_multi_timeout(e->multi, &tmo) == CURLM_OK) e->timer_at = tmo < 0 ? -1 : jm_now() + (double)tmo / 1000;
    return jm_collect(L, e, running);
}

/* engine:socket_action(fd, events) -> running, finished | nil: the host saw events on one of libcurl's
 * sockets. Never blocks. */
int l_engine_socket_action(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    lua_Integer fd = luaL_checkinteger(L, 2);
    if (fd < 0) return luaL_argerror(L, 2, "a socket");
    return jm_socket_action(L, e, (curl_socket_t)fd, jm_event_mask(L, 3));
}

/* engine:socket_action_timeout() -> running, finished | nil: libcurl's timer (watch's timeout_ms) expired. */
int l_engine_socket_action_timeout(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    return jm_socket_action(L, e, CURL_SOCKET_TIMEOUT, 0);
}

/* engine:step_sockets() -> running, finished | nil, ready: one step for a host that cannot watch sockets
 * itself (nginx): a poll(2) without waiting over exactly the sockets libcurl asked to watch, a socket action
 * for each ready one and for libcurl's timer when due. Its cost grows with the sockets that are ready, not
 * with the transfers in flight (curl_multi_perform looks at every transfer's socket). ready: the actions run. */
int l_engine_step_sockets(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    struct pollfd few[64], *fds = few;
    int n = e->nsock, ready = 0, running = e->running, i, nret;
    long tmo = -1;
    CURLMcode mrc;
    if (e->want_oom) {
        e->want_oom = 0;
        return luaL_error(L, "jimeng: out of memory recording libcurl's sockets");
    }
    if (n > (int)(sizeof few / sizeof few[0])) {
        fds = malloc((size_t)n * sizeof *fds);
        if (!fds) return luaL_error(L, "jimeng: out of memory");
    }
    for (i = 0; i < n; i++) {
        fds[i].fd = (int)e->sock[i].fd;
        fds[i].events = (short)(((e->sock[i].what & CURL_POLL_IN) ? POLLIN : 0) | ((e->sock[i].what & CURL_POLL_OUT) ? POLLOUT : 0));
        fds[i].revents = 0;
    }
    if (n > 0 && poll(fds, (nfds_t)n, 0) < 0 && errno != EINTR) {
        int err = errno;
        if (fds != few) free(fds);
        return luaL_error(L, "jimeng: poll: %s", strerror(err));
    }
    /* the copy in fds stays valid while the actions change e->sock */
    for (i = 0; i < n; i++) {
        int mask = 0;
        if (!fds[i].revents) continue;
        if (fds[i].revents & (POLLIN | POLLHUP)) mask |= CURL_CSELECT_IN;
        if (fds[i].revents & POLLOUT) mask |= CURL_CSELECT_OUT;
        if (fds[i].revents & (POLLERR | POLLNVAL)) mask |= CURL_CSELECT_ERR;
        mrc = curl_multi_socket_action(e->multi, (curl_socket_t)fds[i].fd, mask, &running);
        if (mrc != CURLM_OK && mrc != CURLM_BAD_SOCKET) {
            if (fds != few) free(fds);
            return luaL_error(L, "jimeng: curl_multi_socket_action: %s", curl_multi_strerror(mrc));
        }
        ready++;
    }
    if (fds != few) free(fds);
    if (e->timer_at >= 0 && e->timer_at <= jm_now()) {
        mrc = curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_socket_action: %s", curl_multi_strerror(mrc));
        ready++;
    }
    if (ready > 0 && curl_multi_timeout(e->multi, &tmo) == CURLM_OK)
        e->timer_at = tmo < 0 ? -1 : jm_now() + (double)tmo / 1000;
    nret = jm_collect(L, e, running);
    lua_pushinteger(L, ready);
    return nret + 1;
}

/* ---- for the blocking wait (src/loop.c): an engine's sockets, when it next wants a step, one action ---- */

jm_engine *jm_engine_check(lua_State *L, int i) {
    return jm_check_engine(L, i);
}

/* The sockets libcurl wants watched now, into fds (as many as fit in cap); returns how many there are. */
int jm_engine_pollfds(const jm_engine *e, struct pollfd *fds, int cap) {
    int i;
    for (i = 0; i < e->nsock && i < cap; i++) {
        fds[i].fd = (int)e->sock[i].fd;
        fds[i].events = (short)(((e->sock[i].what & CURL_POLL_IN) ? POLLIN : 0) | ((e->sock[i].what & CURL_POLL_OUT) ? POLLOUT : 0));
        fds[i].revents = 0;
    }
    return e->nsock;
}

/* Milliseconds until the engine wants a step without any socket being ready: libcurl's timer, the pace's
 * next token, or finished transfers not yet handed back (0); -1: none. */
double jm_engine_due_ms(const jm_engine *e) {
    double due = -1, pace;
    if (e->ndone > 0 || e->want_oom) return 0;
    if (e->timer_at >= 0) {
        due = (e->timer_at - jm_now()) * 1000;
        if (due < 0) due = 0;
    }
    pace = jm_pace_wait_ms(e);
    if (pace >= 0 && (due < 0 || pace < due)) due = pace;
    return due;
}

/* One socket action: fd ready with CURL_CSELECT_* mask, or (fd < 0) libcurl's timer when it is due. Returns
 * whether an action ran; raises on a libcurl error. */
int jm_engine_act(lua_State *L, jm_engine *e, int fd, int mask) {
    int running = 0;
    CURLMcode mrc;
    if (e->want_oom) {
        e->want_oom = 0;
        return luaL_error(L, "jimeng: out of memory recording libcurl's sockets");
    }
    if (fd < 0 && !(e->timer_at >= 0 && e->timer_at <= jm_now())) return 0;
    mrc = curl_multi_socket_action(e->multi, fd < 0 ? CURL_SOCKET_TIMEOUT : (curl_socket_t)fd, mask, &running);
    if (mrc != CURLM_OK && mrc != CURLM_BAD_SOCKET)
        return luaL_error(L, "jimeng: curl_multi_socket_action: %s", curl_multi_strerror(mrc));
    return 1;
}

/* After the actions of one wake-up: libcurl's timer read back (see jm_socket_action), the finished transfers
 * collected, the queue pumped. Pushes running, finished | nil (as engine:perform). */
int jm_engine_collect(lua_State *L, jm_engine *e) {
    long tmo = -1;
    if (curl_multi_timeout(e->multi, &tmo) == CURLM_OK) e->timer_at = tmo < 0 ? -1 : jm_now() + (double)tmo / 1000;
    return jm_collect(L, e, e->running);
}
