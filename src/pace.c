/* The pace of an engine (engine:pace): a token bucket taken when a transfer leaves the queue for a connection,
 * and a sliding window of the last departures, so that no window holds more requests than it may however the
 * queue fills and empties; or a shared budget's bucket (engine:share, share.c) in its place. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>

#include "engine_internal.h"

/* Takes a token of the pace for the transfer about to start (1), or says when the next one comes (0). */
int jm_pace_take(jm_engine *e) {
    double now;
    if (e->share) return jm_share_take(e->share, &e->pace_next);
    if (e->pace_rate <= 0) return 1;
    now = jm_now();
    e->pace_tokens += (now - e->pace_at) * e->pace_rate;
    if (e->pace_tokens > e->pace_burst) e->pace_tokens = e->pace_burst;
    e->pace_at = now;
    if (e->pace_cap > 0 && e->pace_count == e->pace_cap) {
        double oldest = e->pace_log[e->pace_head]; /* the departure pace_cap ago: a window from it must pass */
        if (now - oldest < e->pace_window) {
            e->pace_next = oldest + e->pace_window;
            return 0;
        }
    }
    if (e->pace_tokens >= 1) {
        e->pace_tokens -= 1;
        e->pace_next = 0;
        if (e->pace_cap > 0) {
            int at = (e->pace_head + e->pace_count) % e->pace_cap;
            if (e->pace_count == e->pace_cap) {
                at = e->pace_head;
                e->pace_head = (e->pace_head + 1) % e->pace_cap;
            } else {
                e->pace_count++;
            }
            e->pace_log[at] = now;
        }
        return 1;
    }
    e->pace_next = now + (1 - e->pace_tokens) / e->pace_rate;
    return 0;
}

/* A request libcurl makes by itself (a redirect's next hop) takes its token after the fact: the bucket may go
 * below zero, and the next transfers wait for it. */
void jm_pace_debit(jm_engine *e) {
    double now;
    if (e && e->share) {
        jm_share_debit(e->share);
        return;
    }
    if (!e || e->pace_rate <= 0) return;
    now = jm_now();
    e->pace_tokens += (now - e->pace_at) * e->pace_rate;
    if (e->pace_tokens > e->pace_burst) e->pace_tokens = e->pace_burst;
    e->pace_at = now;
    e->pace_tokens -= 1;
    if (e->pace_cap > 0) {
        if (e->pace_count == e->pace_cap) {
            e->pace_log[e->pace_head] = now;
            e->pace_head = (e->pace_head + 1) % e->pace_cap;
        } else {
            e->pace_log[(e->pace_head + e->pace_count++) % e->pace_cap] = now;
        }
    }
}

/* Milliseconds until a paced queue may start its next transfer (capping a wait), or -1: nothing to wait for. */
double jm_pace_wait_ms(const jm_engine *e) {
    double ms;
    if (!e->qhead || e->pace_next <= 0) return -1;
    ms = (e->pace_next - jm_now()) * 1000;
    return ms > 0 ? ms + 1 : 0;
}

/* Sets the pace (engine:pace, whose arguments it takes as given): rate <= 0 or > 1e9: none. Returns 0, or
 * -1 when out of memory, with nothing changed. */
int jm_pace_set(jm_engine *e, double rate, double burst, double count, double window) {
    if (!(rate > 0) || rate > 1e9) {
        e->pace_rate = 0;
        e->pace_next = 0;
        e->pace_count = e->pace_head = 0;
        return 0;
    }
    if (!(burst >= 1)) burst = 1;
    if (!(count >= 1) || count > 1e6) count = 0;
    if (!(window > 0) || window > 3600) window = 1;
    if ((int)count != e->pace_cap) { /* a new ring, keeping the latest departures that fit */
        int cap = (int)count, n = 0;
        double *log = NULL;
        if (cap > 0) {
            int i;
            log = malloc((size_t)cap * sizeof *log);
            if (!log) return -1;
            for (i = e->pace_count > cap ? e->pace_count - cap : 0; i < e->pace_count; i++)
                log[n++] = e->pace_log[(e->pace_head + i) % e->pace_cap];
        }
        free(e->pace_log);
        e->pace_log = log;
        e->pace_cap = cap;
        e->pace_head = 0;
        e->pace_count = n;
    }
    e->pace_window = window;
    if (e->pace_rate <= 0) { /* a pace from now: the burst is there at once */
        e->pace_tokens = burst;
        e->pace_at = jm_now();
    }
    e->pace_rate = rate;
    e->pace_burst = burst;
    if (e->pace_tokens > burst) e->pace_tokens = burst;
    return 0;
}
