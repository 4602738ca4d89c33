/* jimeng.core: the C half of jimeng (HTTP engine, normalization, files); Lua owns control flow. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "jimeng.h"

static pthread_once_t jm_curl_once = PTHREAD_ONCE_INIT;
static CURLcode jm_curl_init_rc = CURLE_OK;

static void jm_curl_global(void) {
    jm_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- signals: SIGINT and SIGTERM become a flag that every wait checks (core.trap_signals) ---- */

static volatile sig_atomic_t jm_caught = 0;
static int jm_trapped = 0;
/* the self-pipe: the handler writes a byte, every wait also watches the read end, so a signal that lands
 * just before a wait begins still ends it at once, and no wait needs a short timeout to notice */
static int jm_sigpipe[2] = {-1, -1};
static struct sigaction jm_old_int, jm_old_term, jm_old_pipe;

static void jm_on_signal(int sig) {
    if (jm_caught) { /* a second one: the user insists; die of it as if we had never caught it */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    jm_caught = sig;
    if (jm_sigpipe[1] >= 0) {
        int saved = errno;
        ssize_t w = write(jm_sigpipe[1], "!", 1); /* async-signal-safe; a full pipe already says enough */
        (void)w;
        errno = saved;
    }
}

int jm_signal_fd(void) {
    return jm_trapped ? jm_sigpipe[0] : -1;
}

int jm_interrupted(void) {
    return (int)jm_caught;
}

double jm_wait_cap(double ms) {
    if (!(ms >= 0)) return 0;             /* NaN and negatives: do not wait */
    if (ms > 86400000.0) ms = 86400000.0; /* a day at most: the int libcurl takes never overflows */
    return ms;
}

/* core.trap_signals() -> true if this call set the trap (false: it was set already): SIGINT and SIGTERM set a flag instead of killing the process (without
 * SA_RESTART, so a sleep or poll in progress returns at once), SIGPIPE is ignored (a closed stdout is an
 * error to report, not a death that hides a paid task id). core.untrap_signals() puts the old handlers back. */
static int l_trap_signals(lua_State *L) {
    struct sigaction sa;
    if (jm_trapped) {
        lua_pushboolean(L, 0); /* someone else (the CLI) set it: they will undo it */
        return 1;
    }
    if (jm_sigpipe[0] < 0) {
        int i;
        if (pipe(jm_sigpipe) != 0) return luaL_error(L, "jimeng: pipe: %s", strerror(errno));
        for (i = 0; i < 2; i++)
            if (fcntl(jm_sigpipe[i], F_SETFL, O_NONBLOCK) != 0 || fcntl(jm_sigpipe[i], F_SETFD, FD_CLOEXEC) != 0)
                return luaL_error(L, "jimeng: fcntl: %s", strerror(errno));
    }
    {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = jm_on_signal;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGINT, &sa, &jm_old_int) != 0 || sigaction(SIGTERM, &sa, &jm_old_term) != 0)
            return luaL_error(L, "jimeng: sigaction: %s", strerror(errno));
        sa.sa_handler = SIG_IGN;
        if (sigaction(SIGPIPE, &sa, &jm_old_pipe) != 0) return luaL_error(L, "jimeng: sigaction: %s", strerror(errno));
        jm_trapped = 1;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_untrap_signals(lua_State *L) {
    (void)L;
    if (jm_trapped) {
        sigaction(SIGINT, &jm_old_int, NULL);
        sigaction(SIGTERM, &jm_old_term, NULL);
        sigaction(SIGPIPE, &jm_old_pipe, NULL);
        jm_trapped = 0;
    }
    return 0;
}

/* core.interrupted() -> the name of the signal caught ("SIGINT", "SIGTERM") or nil. */
static int l_interrupted(lua_State *L) {
    int sig = (int)jm_caught;
    if (sig == SIGINT) lua_pushliteral(L, "SIGINT");
    else if (sig == SIGTERM) lua_pushliteral(L, "SIGTERM");
    else if (sig) lua_pushfstring(L, "signal %d", sig);
    else lua_pushnil(L);
    return 1;
}

/* core.mute_interrupt(): keeps the caught signal but lets waits block again (the self-pipe drained): for
 * the one wait that must go on after Ctrl-C, a paid request's answer. */
static void jm_drain_sigpipe(void) {
    if (jm_sigpipe[0] >= 0) {
        char buf[64];
        while (read(jm_sigpipe[0], buf, sizeof buf) > 0) {
        }
    }
}

static int l_mute_interrupt(lua_State *L) {
    (void)L;
    jm_drain_sigpipe();
    return 0;
}

/* core.clear_interrupt(): forgets a caught signal. */
static int l_clear_interrupt(lua_State *L) {
    (void)L;
    jm_caught = 0;
    jm_drain_sigpipe();
    return 0;
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
    if (!(s > 0)) return 0;     /* NaN too */
    if (s > 86400.0) s = 86400.0; /* a day at most: time_t and the nanoseconds stay in range */
    if (jm_trapped) { /* wait on the self-pipe: a trapped signal ends the sleep, even one just before it */
        struct pollfd pfd;
        double end = jm_now() + s;
        pfd.fd = jm_sigpipe[0];
        pfd.events = POLLIN;
        while (!jm_caught) {
            double left = end - jm_now();
            if (left <= 0) break;
            pfd.revents = 0;
            if (poll(&pfd, 1, (int)(left * 1000) + 1) > 0) break;
        }
        return 0;
    }
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
        {"trap_signals", l_trap_signals},
        {"untrap_signals", l_untrap_signals},
        {"interrupted", l_interrupted},
        {"clear_interrupt", l_clear_interrupt},
        {"mute_interrupt", l_mute_interrupt},
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
