/* Signals: SIGINT and SIGTERM become a flag that every wait checks (core.trap_signals), with a self-pipe that
 * wakes every wait; and the one blocking sleep, which a trapped signal ends. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jimeng.h"

static volatile sig_atomic_t jm_caught = 0;
static volatile sig_atomic_t jm_again = 0; /* a second signal: abandon what the first let finish (core.insisted) */
static int jm_trapped = 0;
/* the self-pipe: the handler writes a byte, every wait also watches the read end, so a signal that lands
 * just before a wait begins still ends it at once, and no wait needs a short timeout to notice */
static int jm_sigpipe[2] = {-1, -1};
static struct sigaction jm_old_int, jm_old_term, jm_old_pipe, jm_old_hup;

static void jm_on_signal(int sig) {
    if (jm_caught && jm_again) { /* a third one: the user insists; die of it as if we had never caught it */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    if (jm_caught) jm_again = sig; /* a second one: what the first waited for (a create on the wire) is abandoned */
    else jm_caught = sig;
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

int jm_insisted(void) {
    return jm_again != 0;
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
        if (sigaction(SIGINT, &sa, &jm_old_int) != 0 || sigaction(SIGTERM, &sa, &jm_old_term) != 0 ||
            sigaction(SIGHUP, &sa, &jm_old_hup) != 0)
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
        sigaction(SIGHUP, &jm_old_hup, NULL);
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
    else if (sig == SIGHUP) lua_pushliteral(L, "SIGHUP");
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
/* core.insisted() -> whether a second signal came after the first */
static int l_insisted(lua_State *L) {
    lua_pushboolean(L, jm_again != 0);
    return 1;
}

static int l_clear_interrupt(lua_State *L) {
    (void)L;
    jm_caught = 0;
    jm_again = 0;
    jm_drain_sigpipe();
    return 0;
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

void jm_open_signals(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"sleep", l_sleep},
        {"trap_signals", l_trap_signals},
        {"untrap_signals", l_untrap_signals},
        {"interrupted", l_interrupted},
        {"clear_interrupt", l_clear_interrupt},
        {"mute_interrupt", l_mute_interrupt},
        {"insisted", l_insisted},
        {NULL, NULL},
    };
    jm_setfuncs(L, fns, 0);
}
