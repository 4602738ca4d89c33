/* A budget shared by clients (core.share_open): the request rate (a token bucket) and the tasks in flight
 * (slots) of one account, held where every client that shares it can see them: in this process's memory
 * ("process"), or in a small file mapped by every process of a machine (a path). The engine takes its token
 * from here when a request gets its connection (jm_share_take), exactly as from its own pace.
 *
 * A file is opened without following a link, must be a regular file of this user with no group or other
 * access, and is guarded by flock for each short update: a holder killed mid-update releases the lock, and
 * the bucket's state is made sane again by the next reader. A slot is held under a lease (the holder's pid and
 * an expiry, renewed while the holder lives): a killed holder's slots come back once the lease has passed.
 * Nothing here holds an API key: a share is named by a hash of the key and the base URL (core.budget_id). */
#define _DEFAULT_SOURCE /* flock, MAP_SHARED */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jimeng.h"
#include "share_redis.h"

#define JM_SHARE_MAGIC 0x314d424au /* "JBM1" */
#define JM_SHARE_SLOTS 1024        /* the most tasks in flight a budget can count (max_tasks <= this) */
#define JM_SHARE_RING 256          /* the departures a shared window remembers (max_rps above it: the bucket alone) */
#define JM_SHARE_HANDLE_MT "jimeng.budget_share"

typedef struct {
    int32_t pid;
    int32_t used;
    double ticket;
    double lease_until; /* jm_now() seconds; 0: no lease (a share in this process's memory) */
} jm_slot;

/* The state itself: the same bytes in memory or in the file (one machine, one build: no byte order issue). */
typedef struct {
    uint32_t magic, size;
    char id[48]; /* the budget's name: a hash of the key and the base URL */
    double rate, burst, tokens, at; /* the bucket; rate 0: no pace */
    double next_ticket;
    double taken; /* tokens taken since the state was made (jimeng doctor) */
    int32_t max_tasks; /* 0: no limit */
    /* the sliding window (as the engine's own pace has): at most ring_cap departures in any `window` seconds,
     * so that a burst never carries a second over max_rps, whatever the rate; ring_cap 0: none */
    int32_t ring_cap, ring_head, ring_count;
    double window;
    double ring[JM_SHARE_RING];
    jm_slot slots[JM_SHARE_SLOTS];
} jm_share_state;

struct jm_share {
    struct jm_share *next; /* in the process's registry */
    int refs;              /* handles and engines holding it */
    int fd;                /* the file, -1: in memory */
    char *where;           /* "process" or the file's path */
    char id[48];
    jm_share_state *st;
    double lease, renewed_at;
    /* cppcheck-suppress unusedStructMember ; read only when built with hiredis */
    jm_redis *redis; /* a budget in Redis (share_redis.c): st is NULL */
};

static pthread_mutex_t jm_share_mu = PTHREAD_MUTEX_INITIALIZER;
static jm_share *jm_shares;

/* A share's lock: the process's mutex, and for a file the flock every process takes. */
static void jm_share_lock(jm_share *s) {
    pthread_mutex_lock(&jm_share_mu);
    if (s->fd >= 0)
        while (flock(s->fd, LOCK_EX) != 0 && errno == EINTR) {
        }
}

static void jm_share_unlock(jm_share *s) {
    if (s->fd >= 0) (void)flock(s->fd, LOCK_UN);
    pthread_mutex_unlock(&jm_share_mu);
}

/* Makes the state sane after a holder was killed mid-update, or the machine restarted (the monotonic clock
 * began again while a file in /tmp kept old times); renews this process's leases now and then. */
static void jm_share_mend(jm_share *s, double now) {
    jm_share_state *st = s->st;
    int i;
    if (!(st->rate >= 0) || st->rate > 1e9) st->rate = 0;
    if (!(st->burst >= 1) || st->burst > 1e9) st->burst = 1;
    if (!(st->tokens >= -64)) st->tokens = 0; /* below 0 only by debits (jm_share_debit), a few at most */
    if (st->tokens > st->burst) st->tokens = st->burst;
    if (!(st->at <= now)) st->at = now;
    if (st->max_tasks < 0 || st->max_tasks > JM_SHARE_SLOTS) st->max_tasks = JM_SHARE_SLOTS;
    if (st->ring_cap < 0 || st->ring_cap > JM_SHARE_RING) st->ring_cap = 0;
    if (st->ring_head < 0 || st->ring_head >= JM_SHARE_RING) st->ring_head = 0;
    if (st->ring_count < 0 || st->ring_count > st->ring_cap) st->ring_count = 0;
    if (!(st->window > 0) || st->window > 3600) st->window = 1;
    if (s->fd < 0 || now - s->renewed_at < s->lease / 4) return;
    s->renewed_at = now;
    for (i = 0; i < JM_SHARE_SLOTS; i++) {
        jm_slot *sl = &st->slots[i];
        if (sl->used && sl->pid == (int32_t)getpid()) sl->lease_until = now + s->lease;
    }
}

/* Whether a slot is held: used, and its lease (if any) not passed. A lease further ahead than any lease can
 * be is from another boot of the machine: passed. */
static int jm_slot_held(const jm_slot *sl, double now, double max_lease) {
    if (!sl->used) return 0;
    if (sl->lease_until <= 0) return 1;
    return sl->lease_until > now && sl->lease_until <= now + max_lease + 1;
}

#define JM_MAX_LEASE 86400.0

JM_HIDDEN int jm_share_take(jm_share *s, double *next) {
    jm_share_state *st = s->st;
    double now = jm_now();
    int got;
#ifdef JM_HIREDIS
    if (s->redis) return jm_redis_take(s->redis, next);
#endif
    jm_share_lock(s);
    jm_share_mend(s, now);
    if (st->rate <= 0) {
        got = 1;
    } else {
        st->tokens += (now - st->at) * st->rate;
        if (st->tokens > st->burst) st->tokens = st->burst;
        st->at = now;
        got = st->tokens >= 1;
        if (!got) *next = now + (1 - st->tokens) / st->rate;
        if (got && st->ring_cap > 0 && st->ring_count == st->ring_cap) {
            double oldest = st->ring[st->ring_head]; /* the departure ring_cap ago: a window from it must pass */
            if (now - oldest < st->window && oldest <= now) {
                got = 0;
                *next = oldest + st->window;
            }
        }
        if (got) {
            st->tokens -= 1;
            if (st->ring_cap > 0) {
                int at = (st->ring_head + st->ring_count) % st->ring_cap;
                if (st->ring_count == st->ring_cap) {
                    at = st->ring_head;
                    st->ring_head = (st->ring_head + 1) % st->ring_cap;
                } else {
                    st->ring_count++;
                }
                st->ring[at] = now;
            }
        }
    }
    if (got) {
        st->taken += 1;
        *next = 0;
    }
    jm_share_unlock(s);
    return got;
}

/* A request libcurl made by itself (a redirect's next hop) takes its token after the fact: the bucket may go
 * below zero and the window counts it, so the sharers' next requests wait for it (a budget in Redis owes it
 * to its next lease: jm_redis_debit). */
JM_HIDDEN void jm_share_debit(jm_share *s) {
    jm_share_state *st = s->st;
    double now = jm_now();
#ifdef JM_HIREDIS
    if (s->redis) {
        jm_redis_debit(s->redis);
        return;
    }
#endif
    if (!st) return;
    jm_share_lock(s);
    jm_share_mend(s, now);
    if (st->rate > 0) {
        st->tokens += (now - st->at) * st->rate;
        if (st->tokens > st->burst) st->tokens = st->burst;
        st->at = now;
        if (st->tokens > -64) st->tokens -= 1;
        if (st->ring_cap > 0) {
            if (st->ring_count == st->ring_cap) {
                st->ring[st->ring_head] = now;
                st->ring_head = (st->ring_head + 1) % st->ring_cap;
            } else {
                st->ring[(st->ring_head + st->ring_count++) % st->ring_cap] = now;
            }
        }
        st->taken += 1;
    }
    jm_share_unlock(s);
}

JM_HIDDEN void jm_share_hold(jm_share *s) {
    pthread_mutex_lock(&jm_share_mu);
    s->refs++;
    pthread_mutex_unlock(&jm_share_mu);
}

JM_HIDDEN void jm_share_drop(jm_share *s) {
    jm_share **p;
    pthread_mutex_lock(&jm_share_mu);
    if (--s->refs > 0) {
        pthread_mutex_unlock(&jm_share_mu);
        return;
    }
    for (p = &jm_shares; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    pthread_mutex_unlock(&jm_share_mu);
#ifdef JM_HIREDIS
    if (s->redis) jm_redis_close(s->redis);
#endif
    if (s->fd >= 0) {
        (void)munmap(s->st, sizeof *s->st);
        close(s->fd); /* after munmap: the mapping does not need the descriptor */
    } else {
        free(s->st);
    }
    free(s->where);
    free(s);
}

/* Opens (or finds, in this process) the share `where` named `id`: NULL with msg set when it cannot. */
static jm_share *jm_share_get(const char *where, const char *id, double lease, const char *rhost, int rport,
                              const char *rprefix, char *msg, size_t msgsz) {
    jm_share *s;
    int file = strcmp(where, "process") != 0;
    struct stat sb;
    pthread_mutex_lock(&jm_share_mu);
    for (s = jm_shares; s; s = s->next)
        if (strcmp(s->where, where) == 0 && strcmp(s->id, id) == 0) {
            s->refs++;
            if (lease < s->lease) s->lease = lease;
            pthread_mutex_unlock(&jm_share_mu);
            return s;
        }
    pthread_mutex_unlock(&jm_share_mu);
    s = calloc(1, sizeof *s);
    if (!s || !(s->where = strdup(where))) {
        free(s);
        snprintf(msg, msgsz, "out of memory");
        return NULL;
    }
    snprintf(s->id, sizeof s->id, "%s", id);
    s->refs = 1;
    s->lease = lease;
    s->fd = -1;
    if (rhost) {
#ifdef JM_HIREDIS
        if (!(s->redis = jm_redis_open(rhost, rport, rprefix, id, lease, msg, msgsz))) goto fail;
#else
        (void)rport;
        (void)rprefix;
        snprintf(msg, msgsz, "this jimeng was built without hiredis: a redis:// budget needs libhiredis-dev at build time");
        goto fail;
#endif
    } else if (!file) {
        if (!(s->st = calloc(1, sizeof *s->st))) {
            snprintf(msg, msgsz, "out of memory");
            goto fail;
        }
        s->st->magic = JM_SHARE_MAGIC;
        s->st->size = (uint32_t)sizeof *s->st;
        snprintf(s->st->id, sizeof s->st->id, "%s", id);
    } else {
        void *m;
        s->fd = open(where, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (s->fd < 0) {
            snprintf(msg, msgsz, "cannot open the budget file %.300s: %s", where, strerror(errno));
            goto fail;
        }
        while (flock(s->fd, LOCK_EX) != 0 && errno == EINTR) {
        }
        if (fstat(s->fd, &sb) != 0) {
            snprintf(msg, msgsz, "cannot read the budget file %.300s: %s", where, strerror(errno));
            goto fail;
        }
        if (!S_ISREG(sb.st_mode) || sb.st_uid != geteuid() || (sb.st_mode & 077) != 0) {
            snprintf(msg, msgsz, "the budget file %.300s must be a regular file of this user, mode 0600 (chmod 600 it, or "
                                 "remove it)", where);
            goto fail;
        }
        if (sb.st_size == 0 && ftruncate(s->fd, (off_t)sizeof *s->st) != 0) {
            snprintf(msg, msgsz, "cannot size the budget file %.300s: %s", where, strerror(errno));
            goto fail;
        }
        if (sb.st_size != 0 && sb.st_size != (off_t)sizeof *s->st) {
            snprintf(msg, msgsz, "%.300s is not a budget file of this jimeng (%lld bytes)", where, (long long)sb.st_size);
            goto fail;
        }
        m = mmap(NULL, sizeof *s->st, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
        if (m == MAP_FAILED) {
            snprintf(msg, msgsz, "cannot map the budget file %.300s: %s", where, strerror(errno));
            goto fail;
        }
        s->st = m;
        if (s->st->magic == 0) { /* new: a file of zeros */
            s->st->magic = JM_SHARE_MAGIC;
            s->st->size = (uint32_t)sizeof *s->st;
            snprintf(s->st->id, sizeof s->st->id, "%s", id);
        }
        if (s->st->magic != JM_SHARE_MAGIC || s->st->size != (uint32_t)sizeof *s->st) {
            snprintf(msg, msgsz, "%.300s is not a budget file of this jimeng", where);
            goto fail;
        }
        if (strncmp(s->st->id, id, sizeof s->st->id) != 0) {
            snprintf(msg, msgsz, "the budget file %.300s holds another account's budget (another key or base URL)", where);
            goto fail;
        }
        (void)flock(s->fd, LOCK_UN);
    }
    pthread_mutex_lock(&jm_share_mu);
    s->next = jm_shares;
    jm_shares = s;
    pthread_mutex_unlock(&jm_share_mu);
    return s;
fail:
    if (s->fd >= 0) {
        if (s->st) (void)munmap(s->st, sizeof *s->st);
        close(s->fd); /* releases the flock */
    } else {
        free(s->st);
    }
    free(s->where);
    free(s);
    return NULL;
}

/* A client's handle on a share: the slots it holds, returned when it is closed or collected. */
typedef struct {
    jm_share *s;
    double *tickets;
    int n, cap;
} jm_share_handle;

static jm_share_handle *jm_check_handle(lua_State *L) {
    jm_share_handle *h = luaL_checkudata(L, 1, JM_SHARE_HANDLE_MT);
    if (!h->s) luaL_error(L, "jimeng: the budget share is closed");
    return h;
}

JM_HIDDEN jm_share *jm_share_check(lua_State *L, int i) {
    jm_share_handle *h = luaL_checkudata(L, i, JM_SHARE_HANDLE_MT);
    if (!h->s) luaL_error(L, "jimeng: the budget share is closed");
    return h->s;
}

static int jm_release(jm_share *s, double ticket) {
    int i, found = 0;
#ifdef JM_HIREDIS
    if (s->redis) return jm_redis_release(s->redis, ticket);
#endif
    jm_share_lock(s);
    for (i = 0; i < JM_SHARE_SLOTS; i++) {
        jm_slot *sl = &s->st->slots[i];
        if (sl->used && sl->ticket == ticket) {
            memset(sl, 0, sizeof *sl);
            found = 1;
            break;
        }
    }
    jm_share_unlock(s);
    return found;
}

/* core.share_open{where = "process" | "local" | path, id = budget id, lease = seconds} -> share | nil, message.
 * "local": $XDG_RUNTIME_DIR/jimeng-budget-<id> (when it is this user's), else /tmp/jimeng-budget-<uid>-<id>. */
static int l_share_open(lua_State *L) {
    const char *where, *id;
    double lease;
    char msg[512], path[4096];
    const char *rhost, *rprefix;
    int rport;
    jm_share *s;
    jm_share_handle *h;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "where");
    lua_getfield(L, 1, "id");
    lua_getfield(L, 1, "lease");
    where = luaL_checkstring(L, -3);
    id = luaL_checkstring(L, -2);
    lease = luaL_optnumber(L, -1, 120);
    lua_getfield(L, 1, "host");
    lua_getfield(L, 1, "port");
    lua_getfield(L, 1, "prefix");
    rhost = lua_tostring(L, -3);
    rport = (int)lua_tointeger(L, -2);
    rprefix = lua_tostring(L, -1);
    if (rhost && (!rprefix || rport <= 0 || rport > 65535)) return luaL_error(L, "jimeng: share_open: bad redis");
    if (strcmp(where, "local") == 0) { /* this user's budgets on this machine: in the runtime dir, else /tmp */
        const char *dir = getenv("XDG_RUNTIME_DIR");
        struct stat db;
        if (dir && *dir == '/' && stat(dir, &db) == 0 && S_ISDIR(db.st_mode) && db.st_uid == geteuid())
            snprintf(path, sizeof path, "%s/jimeng-budget-%s", dir, id);
        else
            snprintf(path, sizeof path, "/tmp/jimeng-budget-%lu-%s", (unsigned long)geteuid(), id);
        where = path;
    }
    if (strlen(id) >= sizeof s->id || *where == '\0') return luaL_error(L, "jimeng: share_open: bad where or id");
    if (!(lease >= 0.1 && lease <= JM_MAX_LEASE)) return luaL_error(L, "jimeng: share_open: bad lease");
    h = lua_newuserdata(L, sizeof *h);
    memset(h, 0, sizeof *h);
    luaL_getmetatable(L, JM_SHARE_HANDLE_MT);
    lua_setmetatable(L, -2);
    s = jm_share_get(where, id, lease, rhost, rport, rprefix, msg, sizeof msg);
    if (!s) {
        lua_pushnil(L);
        lua_pushstring(L, msg);
        return 2;
    }
    h->s = s;
    return 1;
}

/* share:pace(rate[, burst[, count, window]]): the budget's rate from now (rate nil, 0 or inf: none), for every
 * sharer; count, window: at most count departures in any window seconds (as engine:pace; count above
 * JM_SHARE_RING: the bucket alone). */
static int l_share_pace(lua_State *L) {
    jm_share *s = jm_check_handle(L)->s;
    double rate = luaL_optnumber(L, 2, 0), burst = luaL_optnumber(L, 3, 1), now = jm_now();
    double count = luaL_optnumber(L, 4, 0), window = luaL_optnumber(L, 5, 1);
#ifdef JM_HIREDIS
    if (s->redis) {
        jm_redis_pace(s->redis, rate, burst);
        return 0;
    }
#endif
    jm_share_lock(s);
    jm_share_mend(s, now);
    if (!(rate > 0) || rate > 1e9) {
        s->st->rate = 0;
    } else {
        if (!(burst >= 1)) burst = 1;
        if (s->st->rate <= 0) { /* a pace from now: the burst is there at once */
            s->st->tokens = burst;
            s->st->at = now;
        } else { /* tokens earned at the old rate are kept */
            s->st->tokens += (now - s->st->at) * s->st->rate;
            s->st->at = now;
        }
        s->st->rate = rate;
        s->st->burst = burst;
        if (s->st->tokens > burst) s->st->tokens = burst;
        if (!(count >= 1) || count > JM_SHARE_RING) count = 0;
        if ((int32_t)count != s->st->ring_cap) { /* a new window: the departures it remembers start now */
            s->st->ring_cap = (int32_t)count;
            s->st->ring_head = s->st->ring_count = 0;
        }
        s->st->window = window > 0 && window <= 3600 ? window : 1;
    }
    jm_share_unlock(s);
    return 0;
}

/* share:max_tasks(n): the tasks in flight the budget allows from now (0: no limit), for every sharer. */
static int l_share_max_tasks(lua_State *L) {
    jm_share *s = jm_check_handle(L)->s;
    lua_Integer n = luaL_checkinteger(L, 2);
    if (n < 0 || n > JM_SHARE_SLOTS) return luaL_error(L, "jimeng: max_tasks from 0 to %d", JM_SHARE_SLOTS);
#ifdef JM_HIREDIS
    if (s->redis) {
        jm_redis_max_tasks(s->redis, (int)n);
        return 0;
    }
#endif
    jm_share_lock(s);
    s->st->max_tasks = (int32_t)n;
    jm_share_unlock(s);
    return 0;
}

/* share:acquire() -> ticket | nil | false: a slot for a task about to be created; nil: none free now; false:
 * the budget sets no limit and every slot counts a task already (go on, uncounted). */
static int l_share_acquire(lua_State *L) {
    jm_share_handle *h = jm_check_handle(L);
    jm_share *s = h->s;
    jm_share_state *st = s->st;
    double now = jm_now(), ticket = 0;
    int i, held = 0, free_i = -1, limit, unlimited;
    if (h->n == h->cap) { /* room first: a slot taken is always recorded in the handle */
        int cap = h->cap ? h->cap * 2 : 8;
        double *t = realloc(h->tickets, (size_t)cap * sizeof *t);
        if (!t) return luaL_error(L, "jimeng: out of memory");
        h->tickets = t;
        h->cap = cap;
    }
#ifdef JM_HIREDIS
    if (s->redis) {
        ticket = jm_redis_acquire(s->redis);
        if (ticket == 0) {
            lua_pushnil(L);
            return 1;
        }
        h->tickets[h->n++] = ticket;
        lua_pushnumber(L, ticket);
        return 1;
    }
#endif
    jm_share_lock(s);
    jm_share_mend(s, now);
    limit = st->max_tasks > 0 ? st->max_tasks : JM_SHARE_SLOTS;
    for (i = 0; i < JM_SHARE_SLOTS; i++) {
        jm_slot *sl = &st->slots[i];
        if (jm_slot_held(sl, now, JM_MAX_LEASE)) held++;
        else {
            if (sl->used) memset(sl, 0, sizeof *sl); /* a lease passed: its holder is gone */
            if (free_i < 0) free_i = i;
        }
    }
    if (held < limit && free_i >= 0) {
        jm_slot *sl = &st->slots[free_i];
        st->next_ticket += 1;
        ticket = st->next_ticket;
        sl->used = 1;
        sl->pid = (int32_t)getpid();
        sl->ticket = ticket;
        sl->lease_until = s->fd >= 0 ? now + s->lease : 0;
    }
    unlimited = st->max_tasks <= 0;
    jm_share_unlock(s);
    if (ticket == 0) {
        if (unlimited) lua_pushboolean(L, 0); /* no limit, and more in flight than slots can count */
        else lua_pushnil(L);
        return 1;
    }
    h->tickets[h->n++] = ticket;
    lua_pushnumber(L, ticket);
    return 1;
}

/* share:release(ticket) -> true | false (not held: already returned, or its lease passed) */
static int l_share_release(lua_State *L) {
    jm_share_handle *h = jm_check_handle(L);
    double ticket = luaL_checknumber(L, 2);
    int i;
    for (i = 0; i < h->n; i++)
        if (h->tickets[i] == ticket) {
            h->tickets[i] = h->tickets[--h->n];
            break;
        }
    lua_pushboolean(L, jm_release(h->s, ticket));
    return 1;
}

/* share:stats() -> {where=, rate=, burst=, tokens=, max_tasks=, in_flight=, mine=, taken=, lease=} */
static int l_share_stats(lua_State *L) {
    jm_share_handle *h = jm_check_handle(L);
    jm_share *s = h->s;
    jm_share_state *st = s->st;
    double now = jm_now(), rate, burst, tokens, taken;
    int i, held = 0, mine = 0, max_tasks;
#ifdef JM_HIREDIS
    if (s->redis) {
        jm_redis_facts f;
        jm_redis_stats(s->redis, &f);
        lua_createtable(L, 0, 10);
        jm_setstr(L, "where", s->where);
        jm_setbool(L, "up", f.up);
        if (!f.up) jm_setstr(L, "why", f.why);
        if (f.rate > 0) {
            lua_pushnumber(L, f.rate);
            lua_setfield(L, -2, "rate");
            lua_pushnumber(L, f.burst);
            lua_setfield(L, -2, "burst");
            lua_pushnumber(L, 0);
            lua_setfield(L, -2, "tokens");
        }
        if (f.max_tasks > 0) jm_setint(L, "max_tasks", f.max_tasks);
        jm_setint(L, "in_flight", f.in_flight);
        jm_setint(L, "mine", f.mine);
        jm_setint(L, "held_here", h->n);
        jm_setint(L, "processes", f.procs);
        lua_pushnumber(L, s->lease);
        lua_setfield(L, -2, "lease");
        return 1;
    }
#endif
    jm_share_lock(s);
    jm_share_mend(s, now);
    for (i = 0; i < JM_SHARE_SLOTS; i++)
        if (jm_slot_held(&st->slots[i], now, JM_MAX_LEASE)) {
            held++;
            if (st->slots[i].pid == (int32_t)getpid()) mine++;
        }
    rate = st->rate;
    burst = st->burst;
    tokens = st->rate > 0 ? fmin(st->burst, st->tokens + (now - st->at) * st->rate) : 0;
    taken = st->taken;
    max_tasks = st->max_tasks;
    jm_share_unlock(s);
    lua_createtable(L, 0, 9);
    jm_setstr(L, "where", s->where);
    if (rate > 0) {
        lua_pushnumber(L, rate);
        lua_setfield(L, -2, "rate");
        lua_pushnumber(L, burst);
        lua_setfield(L, -2, "burst");
        lua_pushnumber(L, tokens);
        lua_setfield(L, -2, "tokens");
    }
    if (max_tasks > 0) jm_setint(L, "max_tasks", max_tasks);
    jm_setint(L, "in_flight", held);
    jm_setint(L, "mine", mine);
    jm_setint(L, "held_here", h->n);
    lua_pushnumber(L, taken);
    lua_setfield(L, -2, "taken");
    lua_pushnumber(L, s->fd >= 0 ? s->lease : 0);
    lua_setfield(L, -2, "lease");
    return 1;
}

/* share:note() -> text | nil: what the budget's store has to say, once (a Redis gone away, or back). */
static int l_share_note(lua_State *L) {
    jm_share *s = jm_check_handle(L)->s;
#ifdef JM_HIREDIS
    char note[512];
    if (s->redis && jm_redis_note(s->redis, note, sizeof note)) {
        lua_pushstring(L, note);
        return 1;
    }
#else
    (void)s;
#endif
    lua_pushnil(L);
    return 1;
}

/* share:close(): returns the slots this handle holds and lets go of the share (also when collected). */
static int l_share_close(lua_State *L) {
    jm_share_handle *h = luaL_checkudata(L, 1, JM_SHARE_HANDLE_MT);
    int i;
    if (!h->s) return 0;
    for (i = 0; i < h->n; i++) (void)jm_release(h->s, h->tickets[i]);
    free(h->tickets);
    h->tickets = NULL;
    h->n = h->cap = 0;
    jm_share_drop(h->s);
    h->s = NULL;
    return 0;
}

/* core.budget_id(key, base_url) -> 32 hex digits: a budget's name, from which the key cannot be read back
 * (two FNV-1a 64 hashes with different seeds over key, NUL, base URL). */
static int l_budget_id(lua_State *L) {
    size_t kn, un, i;
    const char *k = luaL_checklstring(L, 1, &kn), *u = luaL_checklstring(L, 2, &un);
    uint64_t a = 14695981039346656037ULL, b = 0x9e3779b97f4a7c15ULL;
    char out[33];
    for (i = 0; i < kn + 1 + un; i++) {
        unsigned char c = (unsigned char)(i < kn ? k[i] : i == kn ? 0 : u[i - kn - 1]);
        a = (a ^ c) * 1099511628211ULL;
        b = (b ^ c ^ (b >> 29)) * 0x100000001b3ULL + 0x632be59bd9b4e019ULL;
    }
    snprintf(out, sizeof out, "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
    lua_pushstring(L, out);
    return 1;
}

JM_HIDDEN void jm_open_share(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"pace", l_share_pace},       {"max_tasks", l_share_max_tasks}, {"acquire", l_share_acquire},
        {"release", l_share_release}, {"stats", l_share_stats},         {"close", l_share_close},
        {"note", l_share_note},
        {NULL, NULL},
    };
    static const luaL_Reg fns[] = {{"share_open", l_share_open}, {"budget_id", l_budget_id}, {NULL, NULL}};
    jm_new_class(L, JM_SHARE_HANDLE_MT, methods, l_share_close, l_share_close);
    jm_setfuncs(L, fns, 0);
}
