/* share_redis.c: a budget held in Redis, talked to by a thread of its own (hiredis); every call here only looks
 * at what that thread brought in. Built when hiredis is found (JM_HIREDIS). */
#ifndef JIMENG_SHARE_REDIS_H
#define JIMENG_SHARE_REDIS_H

#include <stddef.h>

typedef struct jm_redis jm_redis;
typedef struct {
    int up, max_tasks, in_flight, mine, procs;
    double rate, burst;
    char why[256];
} jm_redis_facts;

/* NULL with msg set when the thread cannot start; an unreachable Redis is not an error (the fallback). */
JM_HIDDEN jm_redis *jm_redis_open(const char *host, int port, const char *prefix, const char *id, double lease,
                                  char *msg, size_t msgsz);
/* Stops the thread (which returns this process's slots and frees r): never waits. */
JM_HIDDEN void jm_redis_close(jm_redis *r);
JM_HIDDEN int jm_redis_take(jm_redis *r, double *next);
JM_HIDDEN void jm_redis_debit(jm_redis *r);
JM_HIDDEN void jm_redis_pace(jm_redis *r, double rate, double burst);
JM_HIDDEN void jm_redis_max_tasks(jm_redis *r, int n);
/* A slot's ticket, or 0: none yet (asked for; ask again soon). */
JM_HIDDEN double jm_redis_acquire(jm_redis *r);
JM_HIDDEN int jm_redis_release(jm_redis *r, double ticket);
JM_HIDDEN void jm_redis_stats(jm_redis *r, jm_redis_facts *f);
/* 1 and out set: something to say once (Redis went away, or came back). */
JM_HIDDEN int jm_redis_note(jm_redis *r, char *out, size_t n);

#endif
