/* A budget held in Redis (budget = "redis://host:port/prefix"): every machine's clients of one account spend
 * one bucket and one set of task slots, kept atomically by one Lua script (EVALSHA) on the server.
 *
 * A host loop (nginx, Neovim, the scheduler) never waits on Redis: one thread per budget and process talks to
 * it, and the engine and the Lua layer only look at what that thread has brought in, under a mutex held for
 * a few arithmetic steps. Tokens come in small batches (what max_rps allows in LEASE_S), each batch good for
 * LEASE_S: a token leased but not spent in time is dropped, so a window the server counts holds at most
 * rate * (1 + LEASE_S) + burst; the rate asked of Redis is reduced by that much.
 *
 * When Redis cannot be reached the budget says so once (jm_redis_note) and goes on with a safe local share:
 * the rate divided by the number of processes Redis last saw sharing it (8 if it never answered), and no more
 * tasks than this process held when Redis went away (its own finished tasks' slots are reused; no new one is
 * taken from the others' share). Slots are held in Redis under a lease renewed by this thread; when Redis
 * comes back (restarted, empty), every holder asserts its slots again, and no new slot is granted for a grace
 * period long enough for all of them to have done so. */
#ifdef JM_HIREDIS
#define _GNU_SOURCE /* dladdr, RTLD_NODELETE */
#include <dlfcn.h>
#include <errno.h>
#include <hiredis.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "jimeng.h"
#include "share_redis.h"

#define LEASE_S 0.05      /* a leased token is good this long */
#define RETRY_S 0.5       /* reconnect attempts this often while Redis is away */
#define BEAT_S 0.5        /* the thread tells Redis it is alive at least this often */
#define GRACE_MS 3000     /* after Redis lost its state: assertions only, no new slot */
#define MAX_HELD 1024

/* KEYS: bucket, slots, procs, epoch, grace. ARGV: proc, lease_ms, want_tokens, rate, burst, slot_member ("" none),
 * max_tasks (0: none), grace_ms, debit (requests made without a token: redirect hops), n_assert, asserted
 * members..., released members... A debit is taken from the bucket at once, below zero if need be, so that
 * every sharer's next tokens wait for it.
 * -> {tokens granted, slot granted (0/1), slots held, processes sharing, fresh (1: Redis had no state)} */
static const char *const SCRIPT =
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local fresh = 0\n"
    "if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('SET', KEYS[4], '1')\n"
    "  redis.call('SET', KEYS[5], '1', 'PX', tonumber(ARGV[8])) fresh = 1 end\n"
    "local lease = tonumber(ARGV[2])\n"
    "redis.call('ZADD', KEYS[3], now + 3000, ARGV[1]) redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)\n"
    "local na = tonumber(ARGV[10])\n"
    "for i = 11, 10 + na do redis.call('ZADD', KEYS[2], now + lease, ARGV[i]) end\n"
    "for i = 11 + na, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end\n"
    "local want, rate, burst, debit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[9])\n"
    "local granted = 0\n"
    "if want > 0 or debit > 0 then\n"
    "  local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')\n"
    "  local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now\n"
    "  if at > now then at = now end\n"
    "  tokens = math.max(-64, math.min(burst, tokens + (now - at) / 1000 * rate) - debit)\n"
    "  granted = math.min(want, math.floor(tokens))\n"
    "  if granted < 0 then granted = 0 end\n"
    "  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - granted), 'at', tostring(now))\n"
    "  redis.call('PEXPIRE', KEYS[1], 60000)\n"
    "end\n"
    "local got, max = 0, tonumber(ARGV[7])\n"
    "if ARGV[6] ~= '' and redis.call('EXISTS', KEYS[5]) == 0 and (max == 0 or redis.call('ZCARD', KEYS[2]) < max) then\n"
    "  redis.call('ZADD', KEYS[2], now + lease, ARGV[6]) got = 1 end\n"
    "redis.call('PEXPIRE', KEYS[2], lease * 2 + 60000) redis.call('PEXPIRE', KEYS[3], 60000)\n"
    "return {granted, got, redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]), fresh}\n";

struct jm_redis {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int stop;
    char host[256];
    int port;
    char keys[5][200];
    char proc[96];
    char sha[48];
    redisContext *c;
    double lease;
    /* the budget as this process sets it */
    double rate, burst;
    int max_tasks;
    /* tokens leased from Redis, good until pool_until; the fallback bucket while Redis is away */
    double pool, pool_until, demand_at, fetch_after;
    double fb_tokens, fb_at;
    /* redirect hops libcurl made by itself, not told to Redis yet (the thread takes them from its bucket) */
    double debt;
    /* slots: held (tickets; member = proc:ticket), one granted and not yet claimed, released to tell Redis */
    double held[MAX_HELD];
    int nheld;
    double granted_ticket, granted_at, slot_asked_at, slot_after, next_ticket;
    double released[MAX_HELD];
    int nreleased;
    int cap_down; /* while Redis is away: the most slots this process may hold */
    /* what Redis said last */
    int up, ever_up, seen_procs, seen_held;
    double down_at, tried_at, beat_at, renewed_at;
    char why[256];
    char members[2 * MAX_HELD + 1][120]; /* the script's arguments, built by the thread alone */
    int noted; /* 0: nothing to say; 1: a change to say once; 2: said */
    char note[512];
};

static void jm_redis_member(const jm_redis *r, double ticket, char *out, size_t n) {
    snprintf(out, n, "%s:%.0f", r->proc, ticket);
}

/* Redis went away (or never came): the fallback from now, said once. Under r->mu. */
static void jm_redis_went_down(jm_redis *r, const char *why) {
    int n = r->ever_up ? (r->seen_procs > 0 ? r->seen_procs : 1) : 8;
    if (!r->up && r->down_at > 0) return;
    r->up = 0;
    r->down_at = jm_now();
    r->cap_down = r->nheld;
    r->fb_tokens = r->rate > 0 ? 1 : 0;
    r->fb_at = jm_now();
    snprintf(r->why, sizeof r->why, "%s", why);
    if (r->noted == 0) {
        char tasks[96] = "";
        if (r->max_tasks > 0)
            snprintf(tasks, sizeof tasks, "; no more tasks than the %d this process holds", r->nheld);
        snprintf(r->note, sizeof r->note,
                 "the budget's Redis at %s:%d cannot be reached (%s): going on with a safe local share (1/%d of "
                 "max_rps%s) until it answers",
                 r->host, r->port, why, n, tasks);
        r->noted = 1;
    }
}

static int jm_redis_connect(jm_redis *r) {
    struct timeval tv = {0, 200000};
    redisReply *rep;
    if (r->c) redisFree(r->c);
    r->c = redisConnectWithTimeout(r->host, r->port, tv);
    if (!r->c || r->c->err) {
        pthread_mutex_lock(&r->mu);
        jm_redis_went_down(r, r->c ? r->c->errstr : "out of memory");
        pthread_mutex_unlock(&r->mu);
        if (r->c) redisFree(r->c);
        r->c = NULL;
        return 0;
    }
    tv.tv_sec = 0;
    tv.tv_usec = 500000;
    (void)redisSetTimeout(r->c, tv);
    rep = redisCommand(r->c, "SCRIPT LOAD %s", SCRIPT);
    if (!rep || rep->type != REDIS_REPLY_STRING) {
        pthread_mutex_lock(&r->mu);
        jm_redis_went_down(r, rep && rep->type == REDIS_REPLY_ERROR ? rep->str : r->c->errstr);
        pthread_mutex_unlock(&r->mu);
        if (rep) freeReplyObject(rep);
        redisFree(r->c);
        r->c = NULL;
        return 0;
    }
    snprintf(r->sha, sizeof r->sha, "%s", rep->str);
    freeReplyObject(rep);
    return 1;
}

/* One call of the script with what the thread gathered; applies its answer. 0: Redis failed. */
static int jm_redis_round(jm_redis *r, int want_tokens, int want_slot, int renew) {
    const char *argv[20 + 2 * MAX_HELD]; /* 18 fixed, then the asserted and the released */
    size_t lens[20 + 2 * MAX_HELD];
    char a_lease[32], a_want[32], a_rate[48], a_burst[32], a_max[32], a_grace[32], a_debit[32], a_na[32];
    double ticket = 0, asserted[MAX_HELD], releasing[MAX_HELD];
    int na = 0, nr = 0, i, argc = 0, m = 0;
    redisReply *rep;
    double rate, burst, debited;
    pthread_mutex_lock(&r->mu);
    rate = r->rate / (1 + LEASE_S);
    burst = r->burst;
    if (want_slot) {
        r->next_ticket += 1;
        ticket = r->next_ticket;
    }
    if (renew)
        for (i = 0; i < r->nheld; i++) asserted[na++] = r->held[i];
    for (i = 0; i < r->nreleased; i++) releasing[nr++] = r->released[i];
    snprintf(a_max, sizeof a_max, "%d", r->max_tasks);
    snprintf(a_debit, sizeof a_debit, "%.0f", r->debt);
    debited = r->debt;
    pthread_mutex_unlock(&r->mu);
    snprintf(a_lease, sizeof a_lease, "%.0f", r->lease * 1000);
    snprintf(a_want, sizeof a_want, "%d", want_tokens);
    snprintf(a_rate, sizeof a_rate, "%.6f", rate);
    snprintf(a_burst, sizeof a_burst, "%.0f", burst);
    snprintf(a_grace, sizeof a_grace, "%d", GRACE_MS);
    snprintf(a_na, sizeof a_na, "%d", na);
    argv[argc++] = "EVALSHA";
    argv[argc++] = r->sha;
    argv[argc++] = "5";
    for (i = 0; i < 5; i++) argv[argc++] = r->keys[i];
    argv[argc++] = r->proc;
    argv[argc++] = a_lease;
    argv[argc++] = a_want;
    argv[argc++] = a_rate;
    argv[argc++] = a_burst;
    if (want_slot) jm_redis_member(r, ticket, r->members[m], sizeof r->members[m]);
    else r->members[m][0] = '\0';
    argv[argc++] = r->members[m++];
    argv[argc++] = a_max;
    argv[argc++] = a_grace;
    argv[argc++] = a_debit;
    argv[argc++] = a_na;
    for (i = 0; i < na; i++) {
        jm_redis_member(r, asserted[i], r->members[m], sizeof r->members[m]);
        argv[argc++] = r->members[m++];
    }
    for (i = 0; i < nr; i++) {
        jm_redis_member(r, releasing[i], r->members[m], sizeof r->members[m]);
        argv[argc++] = r->members[m++];
    }
    for (i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    rep = redisCommandArgv(r->c, argc, argv, lens);
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 5) {
        pthread_mutex_lock(&r->mu);
        jm_redis_went_down(r, rep && rep->type == REDIS_REPLY_ERROR ? rep->str : r->c->errstr);
        pthread_mutex_unlock(&r->mu);
        if (rep) freeReplyObject(rep);
        redisFree(r->c);
        r->c = NULL;
        return 0;
    }
    pthread_mutex_lock(&r->mu);
    if (!r->up && r->noted == 2) { /* back: said once too */
        snprintf(r->note, sizeof r->note, "the budget's Redis at %s:%d answers again: the shared budget is back",
                 r->host, r->port);
        r->noted = 1;
    }
    r->up = 1;
    r->ever_up = 1;
    r->down_at = 0;
    r->debt -= debited; /* told: Redis took them from the bucket (new ones may have come meanwhile) */
    if (rep->element[0]->integer > 0) {
        r->pool = (double)rep->element[0]->integer;
        r->pool_until = jm_now() + LEASE_S;
    } else if (want_tokens > 0 && r->rate > 0) { /* none yet: ask again when one may have come, not at once */
        r->fetch_after = jm_now() + fmin(0.5 / r->rate, 0.05);
    }
    if (rep->element[1]->integer == 1) {
        r->granted_ticket = ticket;
        r->granted_at = jm_now();
    } else if (want_slot) { /* every slot taken (or the grace after a restart): ask again a little later */
        r->slot_after = jm_now() + 0.02;
    }
    r->seen_held = (int)rep->element[2]->integer;
    r->seen_procs = (int)rep->element[3]->integer;
    /* the releases told are forgotten (new ones may have come meanwhile: only the first nr go) */
    memmove(r->released, r->released + nr, (size_t)(r->nreleased - nr) * sizeof r->released[0]);
    r->nreleased -= nr;
    if (renew) r->renewed_at = jm_now();
    r->beat_at = jm_now();
    pthread_mutex_unlock(&r->mu);
    freeReplyObject(rep);
    return 1;
}

static void *jm_redis_main(void *arg) {
    jm_redis *r = arg;
    for (;;) {
        double now;
        int want_tokens = 0, want_slot = 0, renew = 0, busy;
        pthread_mutex_lock(&r->mu);
        if (r->stop) {
            /* the slots this process still holds go back: its client was closed */
            int i;
            for (i = 0; i < r->nheld && r->nreleased < MAX_HELD; i++) r->released[r->nreleased++] = r->held[i];
            r->nheld = 0;
            pthread_mutex_unlock(&r->mu);
            if (r->c && r->up) (void)jm_redis_round(r, 0, 0, 0);
            break;
        }
        now = jm_now();
        if (r->granted_ticket > 0 && now - r->granted_at > 2) { /* granted, never claimed: the waiter gave up */
            if (r->nreleased < MAX_HELD) r->released[r->nreleased++] = r->granted_ticket;
            r->granted_ticket = 0;
        }
        if (r->rate > 0 && (r->pool < 1 || now > r->pool_until) && now - r->demand_at < 0.1 && now >= r->fetch_after) {
            want_tokens = (int)fmax(1, floor(r->rate * LEASE_S));
        }
        want_slot = r->granted_ticket == 0 && now - r->slot_asked_at < 0.5 && r->nheld < MAX_HELD &&
                    now >= r->slot_after;
        renew = (r->nheld > 0 && now - r->renewed_at > r->lease / 4) || (!r->up && r->nheld > 0);
        busy = want_tokens || want_slot || renew || r->nreleased > 0 || r->debt >= 1 || now - r->beat_at > BEAT_S;
        if (!busy || (!r->c && now - r->tried_at < RETRY_S)) {
            struct timespec ts;
            /* soon while someone waits for a token or a slot; else a tenth of a second (a signal wakes it) */
            long ns = now - r->demand_at < 0.1 || now - r->slot_asked_at < 0.5 ? 5000000 : 100000000;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += ns;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            (void)pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            pthread_mutex_unlock(&r->mu);
            continue;
        }
        pthread_mutex_unlock(&r->mu);
        if (!r->c) {
            r->tried_at = now;
            if (!jm_redis_connect(r)) continue;
            renew = 1; /* after a reconnect: every slot held is asserted again */
        }
        (void)jm_redis_round(r, want_tokens, want_slot, renew);
    }
    if (r->c) redisFree(r->c);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
    return NULL;
}

/* A thread of ours may still be running when Lua closes its state and unloads this library (a client
 * collected at exit): the library is pinned in memory from the first Redis budget on. */
static void jm_pin_library(void) {
    Dl_info info;
    if (dladdr((void *)jm_pin_library, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static pthread_once_t jm_pin_once = PTHREAD_ONCE_INIT;

JM_HIDDEN jm_redis *jm_redis_open(const char *host, int port, const char *prefix, const char *id, double lease,
                                  char *msg, size_t msgsz) {
    jm_redis *r = calloc(1, sizeof *r);
    char hn[64] = "host";
    int i;
    static const char *const names[5] = {"bucket", "slots", "procs", "epoch", "grace"};
    if (!r) {
        snprintf(msg, msgsz, "out of memory");
        return NULL;
    }
    snprintf(r->host, sizeof r->host, "%s", host);
    r->port = port;
    r->lease = lease;
    r->burst = 1;
    for (i = 0; i < 5; i++) snprintf(r->keys[i], sizeof r->keys[i], "%.100s:%.48s:%s", prefix, id, names[i]);
    (void)gethostname(hn, sizeof hn - 1);
    snprintf(r->proc, sizeof r->proc, "%.60s:%ld:%lx", hn, (long)getpid(), (unsigned long)random());
    if (pthread_mutex_init(&r->mu, NULL) != 0 || pthread_cond_init(&r->cv, NULL) != 0) {
        snprintf(msg, msgsz, "cannot make a mutex");
        free(r);
        return NULL;
    }
    (void)pthread_once(&jm_pin_once, jm_pin_library);
    if (pthread_create(&r->thread, NULL, jm_redis_main, r) != 0) {
        snprintf(msg, msgsz, "cannot start the budget's Redis thread: %s", strerror(errno));
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return NULL;
    }
    (void)pthread_detach(r->thread);
    return r;
}

JM_HIDDEN void jm_redis_close(jm_redis *r) {
    pthread_mutex_lock(&r->mu);
    r->stop = 1; /* the thread returns the slots held, then frees r: nobody waits for it */
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

JM_HIDDEN int jm_redis_take(jm_redis *r, double *next) {
    double now = jm_now();
    int got = 0;
    pthread_mutex_lock(&r->mu);
    if (r->rate <= 0) {
        got = 1;
    } else if (!r->up && r->down_at <= 0) { /* not reached yet: the first answer comes within milliseconds */
        r->demand_at = now;
        pthread_cond_signal(&r->cv);
    } else if (r->up) {
        if (r->pool >= 1 && now <= r->pool_until) {
            r->pool -= 1;
            got = 1;
        } else {
            r->demand_at = now;
            pthread_cond_signal(&r->cv);
        }
    } else { /* away: the local share, rate / processes last seen (8 if none ever was) */
        double rate = r->rate / (r->ever_up ? (r->seen_procs > 0 ? r->seen_procs : 1) : 8);
        r->fb_tokens = fmin(1, r->fb_tokens + (now - r->fb_at) * rate);
        r->fb_at = now;
        if (r->fb_tokens >= 1) {
            r->fb_tokens -= 1;
            got = 1;
        }
        r->demand_at = now;
        pthread_cond_signal(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    *next = got ? 0 : now + 0.005;
    return got;
}

/* A request libcurl made by itself (a redirect's next hop) takes its token after the fact: from the tokens
 * leased, else told to Redis at once, which takes it from the bucket (below zero if need be) so that every
 * sharer's next tokens wait for it; from the fallback bucket while Redis is away. */
JM_HIDDEN void jm_redis_debit(jm_redis *r) {
    double now = jm_now();
    pthread_mutex_lock(&r->mu);
    if (r->rate > 0) {
        if (r->up && r->pool >= 1 && now <= r->pool_until) {
            r->pool -= 1;
        } else if (!r->up && r->down_at > 0) {
            if (r->fb_tokens > -64) r->fb_tokens -= 1;
        } else if (r->debt < 64) {
            r->debt += 1;
            pthread_cond_signal(&r->cv);
        }
    }
    pthread_mutex_unlock(&r->mu);
}

JM_HIDDEN void jm_redis_pace(jm_redis *r, double rate, double burst) {
    pthread_mutex_lock(&r->mu);
    r->rate = rate > 0 && rate <= 1e9 ? rate : 0;
    r->burst = burst >= 1 ? burst : 1;
    pthread_mutex_unlock(&r->mu);
}

JM_HIDDEN void jm_redis_max_tasks(jm_redis *r, int n) {
    pthread_mutex_lock(&r->mu);
    r->max_tasks = n;
    pthread_mutex_unlock(&r->mu);
}

JM_HIDDEN double jm_redis_acquire(jm_redis *r) {
    double ticket = 0;
    pthread_mutex_lock(&r->mu);
    if (r->up && r->granted_ticket > 0) {
        ticket = r->granted_ticket;
        r->granted_ticket = 0;
    } else if (!r->up && r->down_at > 0 && (r->max_tasks == 0 || r->nheld < r->cap_down)) {
        /* away: a slot of its own (reused; no limit set: nothing to keep), counted when Redis is back */
        r->next_ticket += 1;
        ticket = r->next_ticket;
    } else {
        r->slot_asked_at = jm_now();
        pthread_cond_signal(&r->cv);
    }
    if (ticket > 0) r->held[r->nheld++] = ticket;
    pthread_mutex_unlock(&r->mu);
    return ticket;
}

JM_HIDDEN int jm_redis_release(jm_redis *r, double ticket) {
    int i, found = 0;
    pthread_mutex_lock(&r->mu);
    for (i = 0; i < r->nheld; i++)
        if (r->held[i] == ticket) {
            r->held[i] = r->held[--r->nheld];
            found = 1;
            if (r->nreleased < MAX_HELD) r->released[r->nreleased++] = ticket;
            pthread_cond_signal(&r->cv);
            break;
        }
    pthread_mutex_unlock(&r->mu);
    return found;
}

JM_HIDDEN void jm_redis_stats(jm_redis *r, jm_redis_facts *f) {
    pthread_mutex_lock(&r->mu);
    f->up = r->up;
    f->rate = r->rate;
    f->burst = r->burst;
    f->max_tasks = r->max_tasks;
    f->in_flight = r->seen_held;
    f->mine = r->nheld;
    f->procs = r->seen_procs;
    snprintf(f->why, sizeof f->why, "%s", r->up ? "" : r->ever_up || r->down_at > 0 ? r->why : "not reached yet");
    pthread_mutex_unlock(&r->mu);
}

JM_HIDDEN int jm_redis_note(jm_redis *r, char *out, size_t n) {
    int said = 0;
    pthread_mutex_lock(&r->mu);
    if (r->noted == 1) {
        snprintf(out, n, "%s", r->note);
        r->noted = 2;
        said = 1;
    }
    pthread_mutex_unlock(&r->mu);
    return said;
}
#else
typedef int jm_no_redis; /* built without hiredis: share.c refuses redis:// budgets */
#endif
