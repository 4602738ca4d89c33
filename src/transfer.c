/* The transfer object (engine:request's answer): its methods, and its result, the table Lua judges an attempt
 * by (transfer:result): what happened, the failure's class, the headers Lua reads, the body. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine_internal.h"

static jm_transfer *jm_check_transfer(lua_State *L, int i) {
    return luaL_checkudata(L, i, JM_TRANSFER_MT);
}

/* The class of a failed transfer, from libcurl's code and what it saw: what Lua needs to decide, never a
 * bare libcurl number. NULL for a transfer that did not fail in transport. */
static const char *jm_failure_class(const jm_transfer *t) {
    if (t->journal_errno || t->ledger_errno) return "io";
    if (t->io_errno) return "io";
    if (t->too_large || t->head_too_large) return "too_large";
    if (t->cancelled) return "cancelled";
    if (t->info.connectcode >= 300) return "proxy";
    /* a header line over libcurl's own cap (CURL_MAX_HTTP_HEADER): older libcurl says "out of memory" */
    if (t->rc == CURLE_OUT_OF_MEMORY && (t->head.len > 0 || strstr(t->errbuf, "header"))) return "too_large";
    switch (t->rc) {
    case CURLE_OK: return NULL;
    case CURLE_COULDNT_RESOLVE_PROXY:
#if LIBCURL_VERSION_NUM >= 0x074900
    case CURLE_PROXY:
#endif
        return "proxy";
    case CURLE_COULDNT_RESOLVE_HOST: return "dns";
    case CURLE_COULDNT_CONNECT: return "connect";
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_BAD_CONTENT_ENCODING:
        return "refused";
    case CURLE_WRITE_ERROR:
    case CURLE_READ_ERROR:
    case CURLE_OUT_OF_MEMORY:
        return "io";
    case CURLE_FILESIZE_EXCEEDED: return "too_large";
    case CURLE_ABORTED_BY_CALLBACK: return "cancelled";
    case CURLE_FAILED_INIT: return "internal";
    default: return "reset"; /* the connection broke: sent nothing back, closed, reset, or an HTTP/2 stream error */
    }
}

static int l_transfer_gc(lua_State *L) {
    jm_transfer *t = jm_check_transfer(L, 1);
    jm_finish(L, t, CURLE_ABORTED_BY_CALLBACK);
    if (t->easy) curl_easy_cleanup(t->easy);
    t->easy = NULL;
    jm_drop_request(t);
    curl_slist_free_all(t->hdrs);
    t->hdrs = NULL;
    jm_buf_free(&t->body);
    jm_buf_free(&t->head);
    free(t->path);
    free(t->task_id);
    free(t->validator);
    free(t->journal);
    free(t->ledger);
    free(t->info.url);
    free(t->info.final_url);
    free(t->info.cert_expire);
    free(t->info.cert_names);
    free(t->proxy_where);
    free(t->refused_what);
    t->path = t->task_id = t->validator = t->journal = t->ledger = t->proxy_where = t->refused_what = NULL;
    t->info.url = t->info.final_url = t->info.cert_expire = t->info.cert_names = NULL;
    jm_drop_part(L, t);
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

/* transfer:handed_over() -> boolean: the request went to the wire (a paid one may have been acted on) */
static int l_transfer_handed_over(lua_State *L) {
    lua_pushboolean(L, jm_check_transfer(L, 1)->handed_over);
    return 1;
}

/* transfer:done() -> boolean */
static int l_transfer_done(lua_State *L) {
    lua_pushboolean(L, jm_check_transfer(L, 1)->state == JM_DONE);
    return 1;
}

/* transfer:progress() -> bytes of the file so far (including a resumed prefix), the whole video's length or nil */
static int l_transfer_progress(lua_State *L) {
    jm_transfer *t = jm_check_transfer(L, 1);
    curl_off_t got = t->sink == JM_SINK_FILE ? t->file_start + t->file_written : 0;
    lua_pushinteger(L, (lua_Integer)got);
    if (t->sink == JM_SINK_FILE && t->expected >= 0) lua_pushinteger(L, (lua_Integer)t->expected);
    else lua_pushnil(L);
    return 2;
}

/* The response headers the Lua layer reads (result.headers); the others are never turned into Lua strings. */
static const char *const jm_wanted_headers[JM_WANTED_HEADERS + 1] = {
    "x-request-id", "retry-after", "retry-after-ms", "x-should-retry", "content-type", "content-range", "etag",
    "location", "x-oneapi-request-id", "x-new-api-version", /* new-api's request id; its version: the gateway */
    NULL,
};

static const char *jm_wanted(const char *name, size_t n) { /* any case: as received */
    const char *const *w;
    for (w = jm_wanted_headers; *w; w++)
        if (strlen(*w) == n && strncasecmp(*w, name, n) == 0) return *w;
    return NULL;
}

static void jm_push_headers(lua_State *L, const jm_buf *h) {
    const char *cursor = h->p, *n, *v;
    size_t nlen, vlen;
    lua_createtable(L, 0, 4);
    while (jm_next_header(&cursor, &n, &nlen, &v, &vlen)) {
        const char *name = jm_wanted(n, nlen);
        if (!name) continue;
        lua_pushstring(L, name);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) { /* repeated header: join as HTTP allows */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, v, vlen);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, v, vlen);
        }
        lua_rawset(L, -3);
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

/* result.headers: a table whose fields are read from the transfer's header lines when indexed (h[1] is the
 * transfer), so that a status poll turns into Lua strings only the headers it reads (its request id, a
 * Retry-After), and builds no table of them. h[name], name one of jm_wanted_headers in lower case: the value,
 * repeated headers joined with ", " as HTTP allows; any other name: nil. core.headers(h) gives the plain
 * table of them all (for pairs). */
#define JM_RESULT_MT "jimeng.result"
#define JM_HEADERS_MT "jimeng.headers"

/* The index in jm_wanted_headers of the name s (its case too: the table's keys are the lower-case names), or -1. */
static int jm_wanted_exact(const char *s) {
    int i;
    for (i = 0; i < JM_WANTED_HEADERS; i++)
        if (strcmp(jm_wanted_headers[i], s) == 0) return i;
    return -1;
}

/* Finds, once, where each wanted header's first value is in the header lines, and how often each came. */
static void jm_index_headers(jm_transfer *t) {
    const char *cursor = t->head.p, *n, *v;
    size_t nlen, vlen;
    memset(t->hcount, 0, sizeof t->hcount);
    while (jm_next_header(&cursor, &n, &nlen, &v, &vlen)) {
        int i;
        for (i = 0; i < JM_WANTED_HEADERS; i++) {
            const char *w = jm_wanted_headers[i];
            if (strlen(w) != nlen || strncasecmp(w, n, nlen) != 0) continue;
            if (t->hcount[i]++ == 0) {
                t->hoff[i] = (unsigned int)(v - t->head.p);
                t->hlen[i] = (unsigned int)vlen;
            }
            if (t->hcount[i] > 2) t->hcount[i] = 2; /* one, or more */
            break;
        }
    }
    t->hindexed = 1;
}

static int l_headers_index(lua_State *L) {
    int w = lua_type(L, 2) == LUA_TSTRING ? jm_wanted_exact(lua_tostring(L, 2)) : -1;
    const char *cursor, *n, *v;
    size_t nlen, vlen;
    jm_transfer *t;
    int found = 0;
    if (w < 0) return 0;
    lua_rawgeti(L, 1, 1);
    t = jm_check_transfer(L, -1);
    if (!t->hindexed) jm_index_headers(t);
    if (t->hcount[w] == 0) return 0;
    if (t->hcount[w] == 1) {
        lua_pushlstring(L, t->head.p + t->hoff[w], t->hlen[w]);
        return 1;
    }
    cursor = t->head.p; /* repeated: joined as HTTP allows */
    while (jm_next_header(&cursor, &n, &nlen, &v, &vlen)) {
        if (nlen != strlen(jm_wanted_headers[w]) || strncasecmp(n, jm_wanted_headers[w], nlen) != 0) continue;
        if (found) lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, vlen);
        if (found) lua_concat(L, 3);
        found = 1;
    }
    return found;
}

/* core.headers(h) -> a plain table of the headers result.headers reads (a plain table is given back as is). */
static int l_headers(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!lua_getmetatable(L, 1)) {
        lua_settop(L, 1);
        return 1;
    }
    luaL_getmetatable(L, JM_HEADERS_MT);
    if (!lua_rawequal(L, -1, -2)) {
        lua_settop(L, 1);
        return 1;
    }
    lua_rawgeti(L, 1, 1);
    jm_push_headers(L, &jm_check_transfer(L, -1)->head);
    return 1;
}

/* What a result reads from its transfer (r[1]) only when indexed: the headers (then kept in the result), and
 * what only a trace reads (-v): request_size, content_length, num_connects, http_version, total_time. */
static int l_result_index(lua_State *L) {
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    const jm_transfer *t;
    if (!k) return 0;
    lua_rawgeti(L, 1, 1);
    t = jm_check_transfer(L, -1);
    if (strcmp(k, "headers") == 0) {
        lua_createtable(L, 1, 0);
        lua_pushvalue(L, -2);
        lua_rawseti(L, -2, 1);
        luaL_getmetatable(L, JM_HEADERS_MT);
        lua_setmetatable(L, -2);
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -2);
        lua_rawset(L, 1);
        return 1;
    }
    if (strcmp(k, "request_size") == 0) { /* 0: not a byte of the request left this machine */
        lua_pushinteger(L, (lua_Integer)t->info.reqsize);
    } else if (strcmp(k, "content_length") == 0) {
        if (t->info.content_length < 0) return 0;
        lua_pushinteger(L, (lua_Integer)t->info.content_length);
    } else if (strcmp(k, "num_connects") == 0) { /* new connections made for this transfer (0: one reused) */
        lua_pushinteger(L, (lua_Integer)t->info.num_connects);
    } else if (strcmp(k, "http_version") == 0) {
        if (!t->info.http_version) return 0;
        lua_pushstring(L, t->info.http_version == CURL_HTTP_VERSION_1_0   ? "1.0"
                          : t->info.http_version == CURL_HTTP_VERSION_1_1 ? "1.1"
                          : t->info.http_version == CURL_HTTP_VERSION_2_0 ? "2"
                                                                          : "3");
    } else if (strcmp(k, "total_time") == 0) {
        lua_pushnumber(L, (lua_Number)t->info.total_us / 1e6);
    } else {
        return 0;
    }
    return 1;
}

/* transfer:result() -> table describing what happened (see the Lua layer for how it is judged):
 * ok, status, headers, body, and only when they apply: curl_code and curl_error (a failure), the facts of a
 * paid request, the flags of the sinks and limits. Lean, as it is built for every poll: what a caller reads
 * of every answer is set; the headers and the facts only a trace reads come from the transfer when indexed
 * (l_result_index; r[1] is the transfer). A new table each call: a result kept never changes. */
static int l_transfer_result(lua_State *L) {
    jm_transfer *t = jm_check_transfer(L, 1);
    long status = t->info.status;
    int ok = t->rc == CURLE_OK && !t->cancelled;
    if (t->state != JM_DONE) return luaL_error(L, "jimeng: transfer still running");
    lua_settop(L, 1);
    lua_createtable(L, 1, 6); /* a status poll's: ok, connected, handed_over, status, body, headers */
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    luaL_getmetatable(L, JM_RESULT_MT);
    lua_setmetatable(L, -2);
    jm_setbool(L, "ok", ok);
    if (!ok) {
        const char *cls = jm_failure_class(t);
        jm_setint(L, "curl_code", (lua_Integer)t->rc);
        jm_setstr(L, "curl_error", t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->rc));
        if (cls) jm_setstr(L, "class", cls);
        if (t->info.os_errno) jm_setstr(L, "os_error", strerror((int)t->info.os_errno));
    }
    /* how far the request got, as libcurl and the OS saw it */
    if (t->info.connect_us > 0 || t->handed_over) jm_setbool(L, "connected", 1);
    if (t->handed_over) jm_setbool(L, "handed_over", 1);
    if (t->acked_known) jm_setint(L, "acked", (lua_Integer)t->acked);
    if (t->reset_sent) jm_setbool(L, "reset_sent", 1);
    if (t->journal_errno) jm_setstr(L, "journal_error", strerror(t->journal_errno));
    if (t->ledger_errno) jm_setstr(L, "ledger_error", strerror(t->ledger_errno));
    if (t->cancelled) jm_setbool(L, "cancelled", 1);
    if (status == 0 && t->hstatus) status = t->hstatus;
    if (t->proxy_used || t->info.connectcode) {
        jm_setbool(L, "proxy_used", 1);
        if (t->proxy_where) jm_setstr(L, "proxy", t->proxy_where);
        if (t->info.connectcode) jm_setint(L, "proxy_status", t->info.connectcode);
    }
    if (t->info.url) jm_setstr(L, "url", t->info.url);
    if (t->info.redirects > 0) jm_setint(L, "redirects", t->info.redirects);
    if (t->info.final_url) jm_setstr(L, "final_url", t->info.final_url);
    if (t->rc == CURLE_PEER_FAILED_VERIFICATION) jm_push_tls(L, t);
    if (t->info.cert_expire) jm_setstr(L, "cert_expire", t->info.cert_expire);
    if (t->info.cert_names) jm_setstr(L, "cert_names", t->info.cert_names);
    jm_setint(L, "status", status);
    if (t->want_head) jm_setlstr(L, "head", t->head.p ? t->head.p : "", t->head.len);
    if (t->body.len || t->sink == JM_SINK_MEMORY || !t->path) jm_setlstr(L, "body", t->body.p ? t->body.p : "", t->body.len);
    if (t->too_large) jm_setbool(L, "too_large", 1);
    if (t->head_too_large) jm_setbool(L, "headers_too_large", 1);
    if (t->refused) jm_setstr(L, "refused", t->refused);
    if (t->refused_what) jm_setstr(L, "refused_what", t->refused_what);
    if (t->io_errno) jm_setstr(L, "io_error", strerror(t->io_errno));
    if (t->path) {
        jm_setstr(L, "sink", t->sink == JM_SINK_FILE ? "file" : t->sink == JM_SINK_MEMORY ? "memory" : "none");
        if (t->sink == JM_SINK_FILE) {
            jm_setint(L, "file_start", (lua_Integer)t->file_start);
            jm_setint(L, "file_bytes", (lua_Integer)t->file_start + (lua_Integer)t->file_written);
            if (t->expected >= 0) jm_setint(L, "total", (lua_Integer)t->expected);
        }
    }
    return 1;
}

/* transfer:paid() -> boolean: a create (never re-sent on a reused connection; its answer names a task) */
static int l_transfer_paid(lua_State *L) {
    lua_pushboolean(L, jm_check_transfer(L, 1)->paid);
    return 1;
}

void jm_open_transfer(lua_State *L) {
    static const luaL_Reg transfer_m[] = {
        {"result", l_transfer_result}, {"done", l_transfer_done}, {"progress", l_transfer_progress},
        {"cancel", l_transfer_cancel}, {"handed_over", l_transfer_handed_over}, {"paid", l_transfer_paid},
        {NULL, NULL},
    };
    jm_new_class(L, JM_TRANSFER_MT, transfer_m, l_transfer_gc, NULL);
    luaL_newmetatable(L, JM_RESULT_MT);
    lua_pushcfunction(L, l_result_index);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, JM_HEADERS_MT);
    lua_pushcfunction(L, l_headers_index);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_headers);
    lua_setfield(L, -2, "headers"); /* core.headers */
}
