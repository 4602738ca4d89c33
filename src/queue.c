/* The queue of an engine and the life of a transfer in it: queued (configured, holding no handle, its clocks
 * not started) until a slot is free and the pace gives a token, then started on a libcurl handle (from the
 * pool of idle configured ones for an API call), then finished: what libcurl knew copied out, the handle back
 * to the pool, the transfer on the list of finished ones that the next step hands back to Lua. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine_internal.h"

static void jm_unlink(jm_transfer *t) { /* only jm_finish, of a transfer jm_submit linked */
    if (t->eng) t->eng->nflight--;
    if (t->prev) t->prev->next = t->next;
    else if (t->eng && t->eng->head == t) t->eng->head = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

/* Lets go of the partial file (its owner, the Lua part object, closes it). */
void jm_drop_part(lua_State *L, jm_transfer *t) {
    t->fd = -1;
    t->part = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, t->part_ref);
    t->part_ref = LUA_NOREF;
}

/* Copies a certificate field's value ("Name:value" in libcurl's certinfo) into a new string. */
static char *jm_cert_field(const struct curl_slist *l, const char *name) {
    size_t n = strlen(name);
    for (; l; l = l->next)
        if (strncasecmp(l->data, name, n) == 0 && l->data[n] == ':') return strdup(l->data + n + 1);
    return NULL;
}

/* The server certificate's expiry and names, from a probe's certinfo (the first certificate is the server's). */
static void jm_capture_cert(jm_transfer *t) {
    struct curl_certinfo *ci = NULL;
    if (curl_easy_getinfo(t->easy, CURLINFO_CERTINFO, &ci) != CURLE_OK || !ci || ci->num_of_certs < 1) return;
    t->info.cert_expire = jm_cert_field(ci->certinfo[0], "Expire date");
    t->info.cert_names = jm_cert_field(ci->certinfo[0], "X509v3 Subject Alternative Name");
    if (!t->info.cert_names) t->info.cert_names = jm_cert_field(ci->certinfo[0], "Subject");
}

/* Copies what the result needs out of the easy handle. */
static void jm_capture(jm_transfer *t) {
    t->info.content_length = -1;
    if (!t->easy) return;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->info.status);
    curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &t->info.reqsize);
    curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &t->info.content_length);
    if (curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &t->info.num_connects) != CURLE_OK) t->info.num_connects = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &t->info.total_us) != CURLE_OK) t->info.total_us = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &t->info.http_version) != CURLE_OK) t->info.http_version = 0;
    if (t->eng && !t->eng->multiplexed && t->info.http_version >= CURL_HTTP_VERSION_2_0) t->eng->multiplexed = 1;
    if (t->kind == JM_KIND_DOWNLOAD) {
        char *u = NULL;
        if (curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_COUNT, &t->info.redirects) != CURLE_OK) t->info.redirects = 0;
        /* strdup failing leaves it NULL: the trace then shows the count without the place */
        if (t->info.redirects > 0 && curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &u) == CURLE_OK && u)
            t->info.final_url = strdup(u);
    }
    if (t->rc == CURLE_OK && !t->probe && !t->paid) return; /* a status poll stops here: nothing more to read */
    curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &t->info.connectcode);
    curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &t->info.os_errno);
    curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &t->info.connect_us);
    if (t->rc == CURLE_PEER_FAILED_VERIFICATION) curl_easy_getinfo(t->easy, CURLINFO_SSL_VERIFYRESULT, &t->info.verify);
    if (t->rc != CURLE_OK) {
        char *u = NULL;
        if (curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &u) == CURLE_OK && u) t->info.url = strdup(u);
    }
    if (t->probe) jm_capture_cert(t);
}

/* Gives the easy handle back to the engine's pool, configured as it is (its connections stay in the
 * multi handle) but holding no pointer into this transfer; cleaned up when the pool is full or the
 * engine gone. */
static void jm_release_easy(jm_transfer *t) {
    jm_engine *e = t->eng;
    if (!t->easy) return;
    if (e && !e->closed && e->npool < JM_POOL && t->kind == JM_KIND_API &&
        curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_PRIVATE, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, NULL) == CURLE_OK &&
#if LIBCURL_VERSION_NUM >= 0x075000
        curl_easy_setopt(t->easy, CURLOPT_PREREQDATA, NULL) == CURLE_OK &&
#endif
        curl_easy_setopt(t->easy, CURLOPT_CLOSESOCKETDATA, NULL) == CURLE_OK) {
        e->pool[e->npool++] = t->easy;
    } else {
        curl_easy_cleanup(t->easy);
    }
    t->easy = NULL;
    curl_slist_free_all(t->hdrs);
    t->hdrs = NULL;
}

/* Takes an idle handle configured for API calls (returns 1: only the request's own options are left to set),
 * or a new one (returns 0). A download or probe always gets a new handle, and it is not pooled after:
 * libcurl refuses CURLOPT_BUFFERSIZE on a handle whose buffer is still allocated (as it is after a failed
 * transfer, reset or not), and a large buffer is not worth keeping idle. */
static int jm_acquire_easy(jm_engine *e, jm_transfer *t) {
    if (t->kind == JM_KIND_API && e->npool > 0) {
        t->easy = e->pool[--e->npool];
        return 1;
    }
    t->easy = curl_easy_init();
    return 0;
}

static void jm_unqueue(jm_transfer *t) {
    jm_engine *e = t->eng;
    jm_transfer *prev = NULL, *q;
    t->queued = 0;
    if (!e) return;
    for (q = e->qhead; q && q != t; q = q->qnext) prev = q;
    if (!q) return;
    if (prev) prev->qnext = t->qnext;
    else e->qhead = t->qnext;
    if (e->qtail == t) e->qtail = prev;
    t->qnext = NULL;
}

/* Takes a transfer off its engine (running or still queued): keeps its result, returns its handle,
 * releases the registry reference and closes the file. */
void jm_finish(lua_State *L, jm_transfer *t, CURLcode rc) {
    if (t->state != JM_RUNNING) return;
    if (t->queued) {
        jm_unqueue(t);
    } else if (t->in_multi && t->eng && t->eng->multi) {
        curl_multi_remove_handle(t->eng->multi, t->easy);
        t->eng->running--;
    }
    t->in_multi = 0;
    jm_unlink(t);
    /* a body shorter than the sniff sample is decided when it ends whole */
    if (t->sink == JM_SINK_SNIFF && rc == CURLE_OK && !jm_sniffed(t)) rc = CURLE_WRITE_ERROR;
    t->rc = rc;
    jm_capture(t);
    t->state = JM_DONE;
    jm_drop_part(L, t);
    jm_release_easy(t);
    /* the next engine:perform() reports it, however it ended (libcurl, a deadline in the queue, a cancel):
     * a scheduler wakes exactly the coroutine that waits for it, never scanning the others */
    if (t->eng && !t->eng->closed && t->ref != LUA_NOREF) {
        jm_engine *e = t->eng;
        if (e->ndone == e->donecap) {
            int cap = e->donecap ? e->donecap * 2 : 64;
            int *d = realloc(e->done, (size_t)cap * sizeof *d);
            if (d) {
                e->done = d;
                e->donecap = cap;
            }
        }
        if (e->ndone < e->donecap) {
            e->done[e->ndone++] = t->ref;
            t->ref = LUA_NOREF;
            return;
        }
    }
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
}

void jm_drop_request(jm_transfer *t) {
    free(t->req_url);
    free(t->req_method);
    free(t->req_body);
    t->req_url = t->req_method = t->req_body = NULL;
}

/* Takes a libcurl handle for a transfer leaving the queue and configures it (an idle API handle keeps the
 * engine's settings: only the request's own options are set). On failure errbuf says why. */
static CURLcode jm_start(jm_engine *e, jm_transfer *t) {
    CURLcode rc;
    int reuse = jm_acquire_easy(e, t);
    if (!t->easy) {
        snprintf(t->errbuf, sizeof t->errbuf, "libcurl could not make a handle (out of memory)");
        return CURLE_OUT_OF_MEMORY;
    }
    rc = reuse ? CURLE_OK : jm_configure_shared(&e->cfg, t);
    if (rc == CURLE_OK && !reuse) rc = jm_configure_kind(&e->cfg, t);
    if (rc == CURLE_OK)
        rc = jm_configure_request(&e->cfg, t, t->req_url, t->req_method, t->req_body, t->req_blen,
                                  t->req_accept_encoding);
    if (rc != CURLE_OK)
        snprintf(t->errbuf, sizeof t->errbuf, "libcurl refused an option: %s", curl_easy_strerror(rc));
    jm_drop_request(t); /* libcurl copied what it keeps (COPYPOSTFIELDS, the URL) */
    return rc;
}

/* Starts queued transfers while the engine has free slots (and the pace a token). A transfer's clocks (its
 * timeout) start now, so time spent queued never eats them; one whose deadline already passed ends as a
 * timeout, unsent. */
void jm_pump(lua_State *L, jm_engine *e) {
    /* over HTTP/1.1 one transfer is one connection; over HTTP/2 they are streams of the same few connections
     * (libcurl waits to multiplex rather than open more, and never opens more than max_running per host) */
    int cap = e->multiplexed ? e->max_running * JM_STREAMS_PER_CONNECTION : e->max_running;
    e->pace_next = 0;
    while (e->qhead && e->running < cap) {
        jm_transfer *t = e->qhead;
        long ms = t->timeout_ms;
        CURLMcode mrc;
        int expired = t->deadline > 0 && (t->deadline - jm_now()) * 1000 < 1;
        if (!t->cancelled && !expired && !jm_pace_take(e)) break; /* the next token: pace_next */
        jm_unqueue(t);
        if (t->cancelled) continue;
        if (t->deadline > 0) {
            double left = (t->deadline - jm_now()) * 1000;
            if (left < 1) {
                snprintf(t->errbuf, sizeof t->errbuf, "the deadline passed while the request waited for a connection");
                jm_finish(L, t, CURLE_OPERATION_TIMEDOUT);
                continue;
            }
            if (ms == 0 || left < (double)ms) ms = (long)left;
        }
        if (jm_start(e, t) != CURLE_OK || curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, ms) != CURLE_OK) {
            jm_finish(L, t, CURLE_FAILED_INIT);
            continue;
        }
        mrc = curl_multi_add_handle(e->multi, t->easy);
        if (mrc != CURLM_OK) {
            snprintf(t->errbuf, sizeof t->errbuf, "libcurl could not start the transfer: %s", curl_multi_strerror(mrc));
            jm_finish(L, t, CURLE_FAILED_INIT);
            continue;
        }
        t->in_multi = 1;
        e->running++;
    }
}

/* Links a configured transfer into its engine and queues it; it starts when a slot is free. */
void jm_submit(lua_State *L, jm_engine *e, jm_transfer *t) {
    t->eng = e;
    t->state = JM_RUNNING;
    t->next = e->head;
    if (e->head) e->head->prev = t;
    e->head = t;
    e->nflight++;
    lua_pushvalue(L, -1);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->queued = 1;
    if (e->qtail) e->qtail->qnext = t;
    else e->qhead = t;
    e->qtail = t;
    jm_pump(L, e);
}

/* What engine:perform() returns, after a socket action: running, finished | nil. */
int jm_collect(lua_State *L, jm_engine *e, int running) {
    int left = 0, i;
    CURLMsg *m;
    while ((m = curl_multi_info_read(e->multi, &left)) != NULL) {
        char *priv = NULL;
        if (m->msg != CURLMSG_DONE) continue;
        if (curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv) != CURLE_OK || !priv) continue;
        jm_finish(L, (jm_transfer *)(void *)priv, m->data.result);
    }
    jm_pump(L, e);
    lua_pushinteger(L, running + (e->qhead ? 1 : 0));
    if (e->ndone == 0) {
        lua_pushnil(L);
        return 2;
    }
    lua_createtable(L, e->ndone, 0);
    for (i = 0; i < e->ndone; i++) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, e->done[i]);
        lua_rawseti(L, -2, i + 1);
        luaL_unref(L, LUA_REGISTRYINDEX, e->done[i]);
    }
    e->ndone = 0;
    return 2;
}
