/* The HTTP engine: non-blocking libcurl transfers on one multi handle per client.
 *
 * Lua submits a transfer (engine:request), drives the multi handle (engine:perform, engine:poll) and
 * reads each finished transfer's result (transfer:result). C never calls Lua from a libcurl callback and
 * never yields, so the same loop works in a plain script, a coroutine scheduler, nginx and Neovim.
 *
 * A transfer with an output path streams its body to that file. Whether the body goes to the file is
 * decided on its first byte, from the final response's status and headers: a 206 whose Content-Range
 * starts at the requested offset is appended there, a 200 restarts the file from zero, and anything
 * else (an error status, or a JSON/HTML/text body where a binary was expected) is kept in memory so that
 * Lua can report the server's message instead of saving it as a video.
 */
#define _GNU_SOURCE /* sync_file_range on Linux; POSIX 2008 everywhere */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "jimeng.h"

#define JM_ENGINE_MT "jimeng.engine"
#define JM_TRANSFER_MT "jimeng.transfer"
#define JM_MAX_HEADER_BYTES ((size_t)64 * 1024)
#define JM_DEFAULT_MAX_BODY ((double)8 * 1024 * 1024)
#define JM_DOWNLOAD_BUFFER (256L * 1024)
#define JM_MAX_HOST_CONNECTIONS 64
#define JM_POOL 16 /* idle easy handles an engine keeps for its next transfers */
#define JM_WRITEBACK_EVERY ((curl_off_t)8 * 1024 * 1024)

typedef struct jm_transfer jm_transfer;

/* Idle easy handles, each remembering the profile it was configured for: creating, resetting and
 * configuring a handle per request costs more than a status poll itself, so a request of the same
 * profile (say, a client's JSON calls) takes a handle already configured and sets only its own options. */
typedef struct {
    CURL *easy;
    char *profile;
} jm_idle;

typedef struct {
    CURLM *multi;
    jm_transfer *head; /* transfers in flight */
    jm_idle pool[JM_POOL];
    int npool;
    int closed;
} jm_engine;

typedef struct {
    char *p;
    size_t len, cap;
} jm_buf;

enum { JM_NEW, JM_RUNNING, JM_DONE };
enum { JM_SINK_UNDECIDED, JM_SINK_FILE, JM_SINK_MEMORY };

struct jm_transfer {
    CURL *easy;
    char *profile; /* the profile its handle is configured for (goes back to the pool with it) */
    struct curl_slist *hdrs;
    jm_engine *eng; /* NULL once the engine is gone */
    jm_transfer *prev, *next;
    int ref; /* registry reference while in flight, so the userdata outlives Lua's own references */
    int state;
    int cancelled;
    CURLcode rc;
    char errbuf[CURL_ERROR_SIZE];

    jm_buf body;
    size_t max_body;
    int too_large;

    jm_buf head; /* header lines of the latest response (reset on each status line) */
    long hstatus;
    int head_too_large;

    /* what libcurl knew when the transfer finished (its handle goes back to the pool then) */
    struct {
        long status, reqsize;
        curl_off_t content_length;
        long proxy_status; /* the proxy's answer to CONNECT (0: none) */
        long verify;       /* the X509 verify result of a failed TLS handshake */
        char *url;         /* where a failed transfer was going (kept only on failure) */
        char *cert_expire, *cert_names; /* a certificate probe's findings */
    } info;

    /* the proxy this request goes through, derived as libcurl does (libcurl 7.88 cannot tell after) */
    int proxy_used;
    char proxy_where[256];
    int probe; /* a certificate probe: connect and handshake only, never pooled */

    /* file sink */
    char *path;
    int fd;
    curl_off_t offset; /* where a 206 must start: the size of the partial file */
    curl_off_t file_start;
    curl_off_t file_written;
    curl_off_t written_back; /* bytes already handed to the disk's writeback */
    int sink;
    int expect_binary;
    int range_mismatch;
    int io_errno;
};

/* ---- small buffers ---- */

static int jm_buf_add(jm_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *p;
        while (cap < b->len + n + 1) cap *= 2;
        p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void jm_buf_free(jm_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Finds header `name` (lower case) in the raw header lines; copies its trimmed value into out. */
static int jm_header_value(const jm_buf *h, const char *name, char *out, size_t outsz) {
    size_t nlen = strlen(name);
    const char *line = h->p;
    if (!line) return 0;
    while (*line) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        if (len > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1, *end = line + len;
            size_t n;
            while (v < end && (*v == ' ' || *v == '\t')) v++;
            while (end > v && isspace((unsigned char)end[-1])) end--;
            n = (size_t)(end - v);
            if (n >= outsz) n = outsz - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return 1;
        }
        if (!eol) break;
        line = eol + 1;
    }
    return 0;
}

/* ---- libcurl callbacks ---- */

/* Keeps n more bytes in b unless that passes cap (sets *over) or memory runs out; 0 aborts the transfer. */
static int jm_keep(jm_transfer *t, jm_buf *b, const char *p, size_t n, size_t cap, int *over) {
    if (b->len + n > cap) {
        *over = 1;
        return 0;
    }
    if (jm_buf_add(b, p, n) != 0) {
        t->io_errno = ENOMEM;
        return 0;
    }
    return 1;
}

static size_t jm_on_header(char *ptr, size_t size, size_t nitems, void *ud) {
    jm_transfer *t = ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) { /* a new response (redirect, 100-continue, final) */
        const char *sp = memchr(ptr, ' ', n);
        t->head.len = 0;
        if (t->head.p) t->head.p[0] = '\0';
        t->hstatus = sp ? strtol(sp + 1, NULL, 10) : 0;
        return n;
    }
    return jm_keep(t, &t->head, ptr, n, JM_MAX_HEADER_BYTES, &t->head_too_large) ? n : 0;
}

static int jm_is_textual(const char *ctype) {
    return strstr(ctype, "json") || strstr(ctype, "html") || strncasecmp(ctype, "text/", 5) == 0;
}

/* Decides where the body of the final response goes; returns 0 to abort the transfer. */
static int jm_choose_sink(jm_transfer *t) {
    char v[256] = {0};
    long status = t->hstatus;
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC;
    if (status == 206) {
        long long start = -1;
        if (jm_header_value(&t->head, "content-range", v, sizeof v) && strncmp(v, "bytes ", 6) == 0 &&
            isdigit((unsigned char)v[6])) {
            char *end;
            errno = 0;
            start = strtoll(v + 6, &end, 10);
            if (errno || *end != '-') start = -1;
        }
        if (start != (long long)t->offset) {
            t->range_mismatch = 1;
            return 0;
        }
        t->file_start = t->offset;
    } else if (status == 200) {
        if (t->expect_binary && jm_header_value(&t->head, "content-type", v, sizeof v) && jm_is_textual(v)) {
            t->sink = JM_SINK_MEMORY;
            return 1;
        }
        flags |= O_TRUNC;
        t->file_start = 0;
    } else {
        t->sink = JM_SINK_MEMORY;
        return 1;
    }
    t->fd = open(t->path, flags, 0644);
    if (t->fd < 0) {
        t->io_errno = errno;
        return 0;
    }
    if (t->file_start > 0 &&
        (ftruncate(t->fd, (off_t)t->file_start) != 0 || lseek(t->fd, (off_t)t->file_start, SEEK_SET) < 0)) {
        t->io_errno = errno;
        return 0;
    }
    t->sink = JM_SINK_FILE;
    return 1;
}

static size_t jm_on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
    jm_transfer *t = ud;
    size_t n = size * nmemb, done = 0;
    if (t->path && t->sink == JM_SINK_UNDECIDED && !jm_choose_sink(t)) return 0;
    if (t->sink != JM_SINK_FILE) return jm_keep(t, &t->body, ptr, n, t->max_body, &t->too_large) ? n : 0;
    while (done < n) {
        ssize_t w = write(t->fd, ptr + done, n - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            t->io_errno = errno;
            return 0;
        }
        done += (size_t)w;
    }
    t->file_written += (curl_off_t)n;
#ifdef __linux__
    /* start writing back what has arrived, so that the fsync before the rename finds little left to do and
     * the disk works while the network does (a hint: its failure changes nothing) */
    if (t->file_written - t->written_back >= JM_WRITEBACK_EVERY) {
        (void)sync_file_range(t->fd, (off_t)(t->file_start + t->written_back), (off_t)(t->file_written - t->written_back),
                              SYNC_FILE_RANGE_WRITE);
        t->written_back = t->file_written;
    }
#endif
    return n;
}

/* ---- transfers ---- */

static jm_transfer *jm_check_transfer(lua_State *L, int i) {
    return luaL_checkudata(L, i, JM_TRANSFER_MT);
}

static void jm_unlink(jm_transfer *t) {
    if (t->prev) t->prev->next = t->next;
    else if (t->eng && t->eng->head == t) t->eng->head = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

static void jm_close_file(jm_transfer *t) {
    if (t->fd >= 0) {
        if (close(t->fd) != 0 && !t->io_errno) t->io_errno = errno;
        t->fd = -1;
    }
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
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->info.status);
    curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &t->info.reqsize);
    curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &t->info.content_length);
    if (t->rc == CURLE_OK && !t->probe) return; /* a status poll stops here: nothing more to read */
    curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &t->info.proxy_status);
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
    if (e && !e->closed && e->npool < JM_POOL && !t->path && !t->probe &&
        curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_PRIVATE, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, NULL) == CURLE_OK) {
        e->pool[e->npool].easy = t->easy;
        e->pool[e->npool].profile = t->profile;
        e->npool++;
    } else {
        curl_easy_cleanup(t->easy);
        free(t->profile);
    }
    t->easy = NULL;
    t->profile = NULL;
    curl_slist_free_all(t->hdrs);
    t->hdrs = NULL;
}

/* Takes an idle handle configured for `profile` (returns 1), or any idle handle reset to its defaults,
 * or a new one (returns 0: every option must be set). A download always gets a new handle, and it is not
 * pooled after: libcurl refuses CURLOPT_BUFFERSIZE on a handle whose buffer is still allocated (as it is
 * after a failed transfer, reset or not), and a large buffer is not worth keeping idle. */
static int jm_acquire_easy(jm_engine *e, jm_transfer *t, const char *profile) {
    if (t->path) {
        t->easy = curl_easy_init();
        t->profile = NULL;
        return 0;
    }
    if (profile) {
        for (int i = e->npool - 1; i >= 0; i--) {
            if (e->pool[i].profile && strcmp(e->pool[i].profile, profile) == 0) {
                t->easy = e->pool[i].easy;
                t->profile = e->pool[i].profile;
                e->pool[i] = e->pool[--e->npool];
                return 1;
            }
        }
    }
    if (e->npool > 0) {
        jm_idle *idle = &e->pool[--e->npool];
        t->easy = idle->easy;
        free(idle->profile);
        curl_easy_reset(t->easy);
    } else {
        t->easy = curl_easy_init();
    }
    t->profile = profile ? strdup(profile) : NULL;
    return 0;
}

/* Takes a running transfer off its engine: keeps its result, returns its handle, releases the registry
 * reference and closes the file. */
static void jm_finish(lua_State *L, jm_transfer *t, CURLcode rc) {
    if (t->state != JM_RUNNING) return;
    if (t->eng && t->eng->multi) curl_multi_remove_handle(t->eng->multi, t->easy);
    jm_unlink(t);
    t->rc = rc;
    t->state = JM_DONE;
    jm_close_file(t);
    jm_capture(t);
    jm_release_easy(t);
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
}

static int l_transfer_gc(lua_State *L) {
    jm_transfer *t = jm_check_transfer(L, 1);
    jm_finish(L, t, CURLE_ABORTED_BY_CALLBACK);
    if (t->easy) curl_easy_cleanup(t->easy);
    t->easy = NULL;
    free(t->profile);
    t->profile = NULL;
    curl_slist_free_all(t->hdrs);
    t->hdrs = NULL;
    jm_buf_free(&t->body);
    jm_buf_free(&t->head);
    free(t->path);
    t->path = NULL;
    free(t->info.url);
    free(t->info.cert_expire);
    free(t->info.cert_names);
    t->info.url = t->info.cert_expire = t->info.cert_names = NULL;
    jm_close_file(t);
    return 0;
}

/* transfer:cancel(): stops a transfer in flight; its result says cancelled. */
static int l_transfer_cancel(lua_State *L) {
    jm_transfer *t = jm_check_transfer(L, 1);
    if (t->state == JM_RUNNING) {
        t->cancelled = 1;
        jm_finish(L, t, CURLE_ABORTED_BY_CALLBACK);
    }
    return 0;
}

/* transfer:done() -> boolean */
static int l_transfer_done(lua_State *L) {
    lua_pushboolean(L, jm_check_transfer(L, 1)->state == JM_DONE);
    return 1;
}

/* transfer:progress() -> bytes of the file so far (including a resumed prefix), expected total or nil */
static int l_transfer_progress(lua_State *L) {
    jm_transfer *t = jm_check_transfer(L, 1);
    curl_off_t cl = t->info.content_length, got = t->sink == JM_SINK_FILE ? t->file_start + t->file_written : 0;
    if (t->easy && t->state == JM_RUNNING) curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    lua_pushinteger(L, (lua_Integer)got);
    if (cl >= 0 && t->sink == JM_SINK_FILE) lua_pushinteger(L, (lua_Integer)t->file_start + (lua_Integer)cl);
    else lua_pushnil(L);
    return 2;
}

/* The response headers the Lua layer reads; the others are never turned into Lua strings (this table
 * is built for every status poll). */
static const char *const jm_wanted_headers[] = {
    "x-request-id", "retry-after", "retry-after-ms", "x-should-retry", "content-type", "content-range", "etag",
    "location", NULL,
};

static const char *jm_wanted(const char *name, size_t n) {
    const char *const *w;
    for (w = jm_wanted_headers; *w; w++)
        if (strlen(*w) == n && strncasecmp(*w, name, n) == 0) return *w;
    return NULL;
}

static void jm_push_headers(lua_State *L, const jm_buf *h) {
    const char *line = h->p;
    lua_createtable(L, 0, 4);
    if (!line) return;
    while (*line) {
        const char *eol = strchr(line, '\n');
        const char *end = eol ? eol : line + strlen(line);
        const char *colon = memchr(line, ':', (size_t)(end - line));
        const char *name = colon && colon > line ? jm_wanted(line, (size_t)(colon - line)) : NULL;
        if (name) {
            const char *v = colon + 1, *vend = end;
            while (v < vend && (*v == ' ' || *v == '\t')) v++;
            while (vend > v && isspace((unsigned char)vend[-1])) vend--;
            lua_pushstring(L, name);
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (lua_isstring(L, -1)) { /* repeated header: join as HTTP allows */
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(vend - v));
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(vend - v));
            }
            lua_rawset(L, -3);
        }
        if (!eol) break;
        line = eol + 1;
    }
}

/* Why a certificate did not verify, from OpenSSL's verify result (X509_V_ERR_*) and libcurl's message: libcurl
 * checks the host name itself, after OpenSSL accepted the chain, so a wrong host is known by its message. */
static void jm_push_tls(lua_State *L, const jm_transfer *t) {
    const char *reason = "other";
    switch (t->info.verify) {
    case 10: /* X509_V_ERR_CERT_HAS_EXPIRED */
        reason = "expired";
        break;
    case 2:  /* X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT */
    case 18: /* X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT */
    case 19: /* X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN */
    case 20: /* X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY */
    case 21: /* X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE */
        reason = "unknown_issuer";
        break;
    default: /* libcurl reports its own host check with result 0 or 1 (X509_V_ERR_UNSPECIFIED) */
        if (strstr(t->errbuf, "subject name") || strstr(t->errbuf, "does not match")) reason = "wrong_host";
        break;
    }
    jm_setstr(L, "tls_reason", reason);
    jm_setint(L, "tls_verify", t->info.verify);
}

/* transfer:result() -> table describing what happened (see the Lua layer for how it is judged):
 * ok, status, headers, body, and only when they apply: curl_code and curl_error (a failure),
 * request_size, content_length, the flags of the sinks and limits. Lean: it is built for every poll. */
static int l_transfer_result(lua_State *L) {
    jm_transfer *t = jm_check_transfer(L, 1);
    long status = t->info.status;
    int ok = t->rc == CURLE_OK && !t->cancelled;
    if (t->state != JM_DONE) return luaL_error(L, "jimeng: transfer still running");
    lua_createtable(L, 0, 8);
    jm_setbool(L, "ok", ok);
    if (!ok) {
        jm_setint(L, "curl_code", (lua_Integer)t->rc);
        jm_setstr(L, "curl_error", t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->rc));
    }
    if (t->cancelled) jm_setbool(L, "cancelled", 1);
    if (status == 0 && t->hstatus) status = t->hstatus;
    if (t->proxy_used || t->info.proxy_status) {
        jm_setbool(L, "proxy_used", 1);
        if (t->proxy_where[0]) jm_setstr(L, "proxy", t->proxy_where);
        if (t->info.proxy_status) jm_setint(L, "proxy_status", t->info.proxy_status);
    }
    if (t->info.url) jm_setstr(L, "url", t->info.url);
    if (t->rc == CURLE_PEER_FAILED_VERIFICATION) jm_push_tls(L, t);
    if (t->info.cert_expire) jm_setstr(L, "cert_expire", t->info.cert_expire);
    if (t->info.cert_names) jm_setstr(L, "cert_names", t->info.cert_names);
    jm_setint(L, "status", status);
    jm_setint(L, "request_size", t->info.reqsize); /* 0: not a byte of the request left this machine */
    if (t->info.content_length >= 0) jm_setint(L, "content_length", (lua_Integer)t->info.content_length);
    jm_push_headers(L, &t->head);
    lua_setfield(L, -2, "headers");
    if (t->body.len || t->sink == JM_SINK_MEMORY || !t->path) jm_setlstr(L, "body", t->body.p ? t->body.p : "", t->body.len);
    if (t->too_large) jm_setbool(L, "too_large", 1);
    if (t->head_too_large) jm_setbool(L, "headers_too_large", 1);
    if (t->range_mismatch) jm_setbool(L, "range_mismatch", 1);
    if (t->io_errno) jm_setstr(L, "io_error", strerror(t->io_errno));
    if (t->path) {
        jm_setstr(L, "sink", t->sink == JM_SINK_FILE ? "file" : t->sink == JM_SINK_MEMORY ? "memory" : "none");
        if (t->sink == JM_SINK_FILE) {
            jm_setint(L, "file_start", (lua_Integer)t->file_start);
            jm_setint(L, "file_bytes", (lua_Integer)t->file_start + (lua_Integer)t->file_written);
        }
    }
    return 1;
}

/* ---- engine ---- */

static jm_engine *jm_check_engine(lua_State *L, int i) {
    jm_engine *e = luaL_checkudata(L, i, JM_ENGINE_MT);
    if (e->closed) luaL_error(L, "jimeng: engine is closed");
    return e;
}

/* core.engine() -> a new engine (one multi handle: its connections and TLS sessions are reused). */
static int l_engine_new(lua_State *L) {
    jm_engine *e = lua_newuserdata(L, sizeof *e);
    memset(e, 0, sizeof *e);
    e->multi = curl_multi_init();
    if (!e->multi) return luaL_error(L, "jimeng: curl_multi_init failed");
    luaL_getmetatable(L, JM_ENGINE_MT);
    lua_setmetatable(L, -2);
    if (curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) != CURLM_OK)
        return luaL_error(L, "jimeng: cannot enable HTTP/2 multiplexing");
    /* libcurl's default of 100 streams per connection would open a new connection for every transfer past
     * the hundredth started at once; the server's own limit (SETTINGS_MAX_CONCURRENT_STREAMS) still holds */
    (void)curl_multi_setopt(e->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, 4096L);
    /* and past JM_MAX_HOST_CONNECTIONS connections to one host, transfers wait for one to be free: 2,000
     * polls at once hold at most that many sockets (HTTP/1.1), or share that many HTTP/2 connections */
    if (curl_multi_setopt(e->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)JM_MAX_HOST_CONNECTIONS) != CURLM_OK)
        return luaL_error(L, "jimeng: cannot limit connections per host");
    /* and keeps that many idle: libcurl's default cache (4 per transfer in flight) shrinks to nothing between
     * two rounds of polls, so HTTP/1.1 connections would be closed and opened again every round */
    (void)curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)JM_MAX_HOST_CONNECTIONS);
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
    while (e->npool > 0) {
        e->npool--;
        curl_easy_cleanup(e->pool[e->npool].easy);
        free(e->pool[e->npool].profile);
    }
    if (e->multi) curl_multi_cleanup(e->multi);
    e->multi = NULL;
    e->closed = 1;
    return 0;
}

/* Reads opts[k] as a number, or def when absent. */
static double jm_optnum(lua_State *L, int idx, const char *k, double def) {
    double v = def;
    lua_getfield(L, idx, k);
    if (!lua_isnil(L, -1)) v = luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static const char *jm_optstr(lua_State *L, int idx, const char *k, size_t *len) {
    const char *v = NULL;
    lua_getfield(L, idx, k);
    if (!lua_isnil(L, -1)) v = luaL_checklstring(L, -1, len);
    lua_pop(L, 1); /* the string stays referenced by the options table for the call */
    return v;
}

static int jm_has_crlf(const char *s) {
    return strpbrk(s, "\r\n") != NULL;
}

#define JM_SET(opt, val)                                                                                      \
    do {                                                                                                      \
        if (rc == CURLE_OK && (rc = curl_easy_setopt(t->easy, opt, val)) != CURLE_OK) bad_opt = (int)(opt);   \
    } while (0)

/* engine:request(opts) -> transfer | nil, message
 * opts: url, method ("GET"|"POST"), body, headers (array of "Name: value"), bearer, timeout,
 * connect_timeout, low_speed_time, max_body, follow (max redirects), cainfo, user_agent,
 * output (file path), offset (size of the partial file), expect_binary, accept_encoding, fresh_connect,
 * capath, proxy ("" for none; absent: the environment's), no_proxy, http_version ("auto"|"1.1"|"2"),
 * probe_cert (handshake only, to read the certificate of a failed verification: cert_expire, cert_names),
 * profile: requests with the same profile must pass the same values for every option but url, method,
 * body, headers, timeout and fresh_connect; they then share configured handles. */
static int l_engine_request(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    jm_transfer *t;
    CURLcode rc = CURLE_OK;
    CURLMcode mrc;
    size_t blen = 0;
    const char *url, *method, *body, *bearer, *cainfo, *capath, *proxy, *noproxy, *httpv, *ua, *output, *profile;
    long httpversion = CURL_HTTP_VERSION_2TLS;
    int reuse, bad_opt = 0;
    double timeout, ctimeout, lowtime;
    long follow;
    int i, n;
    luaL_checktype(L, 2, LUA_TTABLE);
    url = jm_optstr(L, 2, "url", NULL);
    if (!url) return luaL_error(L, "jimeng: request needs a url");
    method = jm_optstr(L, 2, "method", NULL);
    body = jm_optstr(L, 2, "body", &blen);
    bearer = jm_optstr(L, 2, "bearer", NULL);
    cainfo = jm_optstr(L, 2, "cainfo", NULL);
    capath = jm_optstr(L, 2, "capath", NULL);
    proxy = jm_optstr(L, 2, "proxy", NULL);
    noproxy = jm_optstr(L, 2, "no_proxy", NULL);
    httpv = jm_optstr(L, 2, "http_version", NULL);
    ua = jm_optstr(L, 2, "user_agent", NULL);
    output = jm_optstr(L, 2, "output", NULL);
    profile = jm_optstr(L, 2, "profile", NULL);
    timeout = jm_optnum(L, 2, "timeout", 0);
    ctimeout = jm_optnum(L, 2, "connect_timeout", 10);
    lowtime = jm_optnum(L, 2, "low_speed_time", 0);
    follow = (long)jm_optnum(L, 2, "follow", 0);
    if (jm_has_crlf(url) || (bearer && jm_has_crlf(bearer)) || (ua && jm_has_crlf(ua))) {
        lua_pushnil(L);
        lua_pushliteral(L, "a URL or header value contains CR or LF");
        return 2;
    }

    t = lua_newuserdata(L, sizeof *t);
    memset(t, 0, sizeof *t);
    t->fd = -1;
    t->ref = LUA_NOREF;
    luaL_getmetatable(L, JM_TRANSFER_MT);
    lua_setmetatable(L, -2);
    t->max_body = (size_t)jm_optnum(L, 2, "max_body", JM_DEFAULT_MAX_BODY);
    t->offset = (curl_off_t)jm_optnum(L, 2, "offset", 0);
    lua_getfield(L, 2, "expect_binary");
    t->expect_binary = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (output && !(t->path = strdup(output))) return luaL_error(L, "jimeng: out of memory");
    lua_getfield(L, 2, "probe_cert");
    t->probe = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (httpv && strcmp(httpv, "1.1") == 0) httpversion = CURL_HTTP_VERSION_1_1;
    else if (httpv && strcmp(httpv, "2") == 0) httpversion = CURL_HTTP_VERSION_2_0;
    t->proxy_used = jm_proxy_for(url, proxy, noproxy, t->proxy_where, sizeof t->proxy_where);

    reuse = jm_acquire_easy(e, t, profile);
    if (!t->easy) return luaL_error(L, "jimeng: curl_easy_init failed");

    lua_getfield(L, 2, "headers");
    n = lua_istable(L, -1) ? (int)jm_rawlen(L, -1) : 0;
    for (i = 1; i <= n; i++) {
        struct curl_slist *nl;
        const char *h;
        lua_rawgeti(L, -1, i);
        h = luaL_checkstring(L, -1);
        if (jm_has_crlf(h)) {
            lua_pushnil(L);
            lua_pushliteral(L, "a header value contains CR or LF");
            return 2;
        }
        nl = curl_slist_append(t->hdrs, h);
        if (!nl) return luaL_error(L, "jimeng: out of memory");
        t->hdrs = nl;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    /* per request: where it goes, what it sends, whose callbacks' data */
    JM_SET(CURLOPT_URL, url);
    JM_SET(CURLOPT_PRIVATE, (void *)t);
    JM_SET(CURLOPT_ERRORBUFFER, t->errbuf);
    JM_SET(CURLOPT_HEADERDATA, (void *)t);
    JM_SET(CURLOPT_WRITEDATA, (void *)t);
    JM_SET(CURLOPT_TIMEOUT_MS, timeout > 0 ? (long)(timeout * 1000) : 0L);
    {
        long fresh = 0;
        lua_getfield(L, 2, "fresh_connect");
        fresh = lua_toboolean(L, -1) ? 1L : 0L;
        lua_pop(L, 1);
        /* libcurl silently re-sends a request whose reused connection turns out dead, POST included: a paid
         * request takes a fresh connection so that it can never be sent twice without Lua deciding it. */
        JM_SET(CURLOPT_FRESH_CONNECT, fresh);
    }
    if (method && strcmp(method, "POST") == 0) {
        struct curl_slist *nl = curl_slist_append(t->hdrs, "Expect:"); /* no 100-continue round trip */
        if (!nl) return luaL_error(L, "jimeng: out of memory");
        t->hdrs = nl;
        JM_SET(CURLOPT_POST, 1L);
        JM_SET(CURLOPT_POSTFIELDSIZE, (long)blen);
        JM_SET(CURLOPT_COPYPOSTFIELDS, body ? body : "");
    } else if (method && strcmp(method, "GET") != 0) {
        JM_SET(CURLOPT_CUSTOMREQUEST, method);
    } else {
        JM_SET(CURLOPT_HTTPGET, 1L);
    }
    JM_SET(CURLOPT_HTTPHEADER, t->hdrs);
    if (reuse) goto configured;

    /* per profile: the same for every request of a client's kind of call */
    JM_SET(CURLOPT_NOSIGNAL, 1L);
    JM_SET(CURLOPT_TCP_KEEPALIVE, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    JM_SET(CURLOPT_PROTOCOLS_STR, "http,https");
    JM_SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    JM_SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    JM_SET(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    JM_SET(CURLOPT_SSL_VERIFYPEER, 1L);
    JM_SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (cainfo) JM_SET(CURLOPT_CAINFO, cainfo);
    if (capath) JM_SET(CURLOPT_CAPATH, capath);
    if (proxy) JM_SET(CURLOPT_PROXY, proxy); /* "" means none; NULL leaves libcurl to the environment */
    if (noproxy) JM_SET(CURLOPT_NOPROXY, noproxy);
    JM_SET(CURLOPT_HTTP_VERSION, httpversion);
    /* many transfers started at once wait for the first connection to say whether it multiplexes (HTTP/2)
     * rather than each opening its own: 2,000 waiting tasks share a few connections, not 2,000 sockets */
    if (httpversion != CURL_HTTP_VERSION_1_1) JM_SET(CURLOPT_PIPEWAIT, 1L);
    if (t->probe) {
        /* a certificate probe after a failed verification, to say why: it connects and handshakes, reads
         * the certificate, and sends no request (no header, no key), so verification can be off */
        JM_SET(CURLOPT_CONNECT_ONLY, 1L);
        JM_SET(CURLOPT_SSL_VERIFYPEER, 0L);
        JM_SET(CURLOPT_SSL_VERIFYHOST, 0L);
        JM_SET(CURLOPT_CERTINFO, 1L);
        JM_SET(CURLOPT_FRESH_CONNECT, 1L);
        JM_SET(CURLOPT_FORBID_REUSE, 1L);
    }
    JM_SET(CURLOPT_FOLLOWLOCATION, follow > 0 ? 1L : 0L);
    JM_SET(CURLOPT_MAXREDIRS, follow);
    JM_SET(CURLOPT_CONNECTTIMEOUT_MS, (long)(ctimeout * 1000));
    if (lowtime > 0) {
        JM_SET(CURLOPT_LOW_SPEED_LIMIT, 1024L);
        JM_SET(CURLOPT_LOW_SPEED_TIME, (long)lowtime);
    }
    if (ua) JM_SET(CURLOPT_USERAGENT, ua);
    if (bearer) {
        /* libcurl owns the Authorization header: it is never sent to another host on a redirect. */
        JM_SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
        JM_SET(CURLOPT_XOAUTH2_BEARER, bearer);
    }
    lua_getfield(L, 2, "accept_encoding");
    if (lua_toboolean(L, -1)) JM_SET(CURLOPT_ACCEPT_ENCODING, "");
    lua_pop(L, 1);
    JM_SET(CURLOPT_HEADERFUNCTION, jm_on_header);
    JM_SET(CURLOPT_WRITEFUNCTION, jm_on_body);
    if (output) JM_SET(CURLOPT_BUFFERSIZE, (long)JM_DOWNLOAD_BUFFER);
configured:
    if (rc != CURLE_OK) {
        lua_pushnil(L);
        lua_pushfstring(L, "libcurl refused option %d: %s", bad_opt, curl_easy_strerror(rc));
        return 2;
    }

    mrc = curl_multi_add_handle(e->multi, t->easy);
    if (mrc != CURLM_OK) {
        lua_pushnil(L);
        lua_pushfstring(L, "libcurl could not start the transfer: %s", curl_multi_strerror(mrc));
        return 2;
    }
    t->eng = e;
    t->state = JM_RUNNING;
    t->next = e->head;
    if (e->head) e->head->prev = t;
    e->head = t;
    lua_pushvalue(L, -1);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

/* engine:perform() -> running, finished (an array of transfers, or nil). Never blocks. */
static int l_engine_perform(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    int running = 0, left = 0, nd = 0;
    CURLMsg *m;
    CURLMcode mrc = curl_multi_perform(e->multi, &running);
    if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_perform: %s", curl_multi_strerror(mrc));
    lua_pushinteger(L, running);
    lua_pushnil(L);
    while ((m = curl_multi_info_read(e->multi, &left)) != NULL) {
        char *priv = NULL;
        jm_transfer *t;
        if (m->msg != CURLMSG_DONE) continue;
        if (curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv) != CURLE_OK || !priv) continue;
        t = (jm_transfer *)(void *)priv;
        if (nd == 0) {
            lua_pop(L, 1);
            lua_newtable(L);
        }
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
        lua_rawseti(L, -2, ++nd);
        jm_finish(L, t, m->data.result);
    }
    return 2;
}

/* engine:poll(ms) -> number of sockets with activity. Waits for activity on any transfer, or ms. */
static int l_engine_poll(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    lua_Number ms = luaL_optnumber(L, 2, 1000);
    int numfds = 0;
    CURLMcode mrc = curl_multi_poll(e->multi, NULL, 0, ms < 0 ? 0 : (int)ms, &numfds);
    if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_poll: %s", curl_multi_strerror(mrc));
    lua_pushinteger(L, numfds);
    return 1;
}

/* core.wait_all({engine, ...}, ms) -> number of sockets with activity. Waits for activity on any transfer of
 * any of the engines, or for the nearest of their timers, or ms: the scheduler's one wait when coroutines
 * use several clients. The first engine polls with the others' sockets as extra descriptors. */
static int l_wait_all(lua_State *L) {
    struct curl_waitfd extra[64];
    unsigned n = 0;
    int i, count, numfds = 0;
    long ms;
    jm_engine *first;
    CURLMcode mrc;
    luaL_checktype(L, 1, LUA_TTABLE);
    ms = (long)luaL_optnumber(L, 2, 1000);
    count = (int)jm_rawlen(L, 1);
    if (count < 1) return luaL_error(L, "jimeng: wait_all needs at least one engine");
    lua_rawgeti(L, 1, 1);
    first = jm_check_engine(L, -1);
    lua_pop(L, 1);
    for (i = 2; i <= count; i++) {
        jm_engine *e;
        fd_set r, w, x;
        int maxfd = -1, fd;
        long tmo = -1;
        lua_rawgeti(L, 1, i);
        e = jm_check_engine(L, -1);
        lua_pop(L, 1);
        if (curl_multi_timeout(e->multi, &tmo) == CURLM_OK && tmo >= 0 && tmo < ms) ms = tmo;
        FD_ZERO(&r);
        FD_ZERO(&w);
        FD_ZERO(&x);
        if (curl_multi_fdset(e->multi, &r, &w, &x, &maxfd) != CURLM_OK) continue;
        for (fd = 0; fd <= maxfd && n < sizeof extra / sizeof extra[0]; fd++) {
            short events = (short)((FD_ISSET(fd, &r) ? CURL_WAIT_POLLIN : 0) | (FD_ISSET(fd, &w) ? CURL_WAIT_POLLOUT : 0) |
                                   (FD_ISSET(fd, &x) ? CURL_WAIT_POLLPRI : 0));
            if (!events) continue;
            extra[n].fd = fd;
            extra[n].events = events;
            extra[n].revents = 0;
            n++;
        }
    }
    mrc = curl_multi_poll(first->multi, extra, n, ms < 0 ? 0 : (int)ms, &numfds);
    if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_poll: %s", curl_multi_strerror(mrc));
    lua_pushinteger(L, numfds);
    return 1;
}

void jm_open_engine(lua_State *L) {
    static const luaL_Reg engine_m[] = {
        {"request", l_engine_request}, {"perform", l_engine_perform}, {"poll", l_engine_poll},
        {"close", l_engine_close},     {NULL, NULL},
    };
    static const luaL_Reg transfer_m[] = {
        {"result", l_transfer_result}, {"done", l_transfer_done}, {"progress", l_transfer_progress},
        {"cancel", l_transfer_cancel}, {NULL, NULL},
    };
    luaL_newmetatable(L, JM_ENGINE_MT);
    lua_newtable(L);
    jm_setfuncs(L, engine_m, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_engine_close);
    lua_setfield(L, -2, "__gc");
#if LUA_VERSION_NUM >= 504
    lua_pushcfunction(L, l_engine_close);
    lua_setfield(L, -2, "__close");
#endif
    lua_pop(L, 1);

    luaL_newmetatable(L, JM_TRANSFER_MT);
    lua_newtable(L);
    jm_setfuncs(L, transfer_m, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_transfer_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    lua_pushcfunction(L, l_engine_new);
    lua_setfield(L, -2, "engine");
    lua_pushcfunction(L, l_wait_all);
    lua_setfield(L, -2, "wait_all");
}
