/* How a request becomes a configured libcurl handle: a client's settings, read once (core.engine{...}), the
 * options every handle of the engine shares and those of each kind (api, download, probe), and a request's
 * own options as engine:request reads and checks them (its header lines, its journal and ledger lines, a
 * download's partial file). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine_internal.h"

/* Reads opts[k] as a number, or def when absent (another type is misuse: raised). */
double jm_optnum(lua_State *L, int idx, const char *k, double def) {
    double v = def;
    lua_getfield(L, idx, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "jimeng: %s must be a number", k);
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}


const char *jm_optstr(lua_State *L, int idx, const char *k, size_t *len) {
    const char *v = NULL;
    lua_getfield(L, idx, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "jimeng: %s must be a string", k);
        v = lua_tolstring(L, -1, len);
    }
    lua_pop(L, 1); /* the string stays referenced by the options table for the call */
    return v;
}

int jm_optbool(lua_State *L, int idx, const char *k) {
    int v;
    lua_getfield(L, idx, k);
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

int jm_has_crlf(const char *s) {
    return strpbrk(s, "\r\n") != NULL;
}

void jm_config_free(jm_config *c) {
    free(c->user_agent);
    free(c->cainfo);
    free(c->capath);
    free(c->proxy);
    free(c->noproxy);
    free(c->api_key);
    free(c->auth_header);
    memset(c, 0, sizeof *c);
}

/* Copies opts[k] (a string without CR or LF) into *out; NULL when absent. Raises on misuse. */
static void jm_config_str(lua_State *L, int idx, const char *k, char **out) {
    const char *v = jm_optstr(L, idx, k, NULL);
    if (!v) return;
    if (jm_has_crlf(v)) luaL_error(L, "jimeng: %s contains CR or LF", k);
    if (!(*out = strdup(v))) luaL_error(L, "jimeng: out of memory");
}

/* Reads a client's settings into e->cfg (e is already the userdata at the top: a raise frees it by __gc). */
void jm_config_read(lua_State *L, int idx, jm_engine *e) {
    jm_config *c = &e->cfg;
    double ct = JM_CONNECT_TIMEOUT, stall = 0;
    c->httpversion = CURL_HTTP_VERSION_2TLS;
    if (lua_istable(L, idx)) {
        const char *httpv;
        jm_config_str(L, idx, "user_agent", &c->user_agent);
        jm_config_str(L, idx, "cainfo", &c->cainfo);
        jm_config_str(L, idx, "capath", &c->capath);
        jm_config_str(L, idx, "proxy", &c->proxy);
        jm_config_str(L, idx, "no_proxy", &c->noproxy);
        jm_config_str(L, idx, "api_key", &c->api_key);
        httpv = jm_optstr(L, idx, "http_version", NULL);
        if (httpv && strcmp(httpv, "1.1") == 0) c->httpversion = CURL_HTTP_VERSION_1_1;
        else if (httpv && strcmp(httpv, "2") == 0) c->httpversion = CURL_HTTP_VERSION_2_0;
        else if (httpv && strcmp(httpv, "auto") != 0) luaL_error(L, "jimeng: http_version must be auto, 1.1 or 2");
        ct = jm_optnum(L, idx, "connect_timeout", JM_CONNECT_TIMEOUT);
        stall = jm_optnum(L, idx, "stall_timeout", 0);
        if (!(ct > 0 && ct <= 86400) || !(stall >= 0 && stall <= 86400))
            luaL_error(L, "jimeng: connect_timeout and stall_timeout are seconds up to a day");
    }
    c->connect_ms = (long)(ct * 1000);
    c->stall_s = (long)stall;
    if (c->api_key) {
        size_t n = strlen(c->api_key) + sizeof "Authorization: Bearer ";
        if (!(c->auth_header = malloc(n))) luaL_error(L, "jimeng: out of memory");
        snprintf(c->auth_header, n, "Authorization: Bearer %s", c->api_key);
    }
}

#define JM_SET(opt, val)                                                                                      \
    do {                                                                                                      \
        if (rc == CURLE_OK && (rc = curl_easy_setopt(t->easy, opt, val)) != CURLE_OK) bad_opt = (int)(opt);   \
    } while (0)

/* The options every handle of the engine shares, from its settings: set once per handle (a pooled API handle
 * keeps them). */
CURLcode jm_configure_shared(const jm_config *c, jm_transfer *t) {
    CURLcode rc = CURLE_OK;
    int bad_opt = 0;
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
    if (c->cainfo) JM_SET(CURLOPT_CAINFO, c->cainfo);
    if (c->capath) JM_SET(CURLOPT_CAPATH, c->capath);
    if (c->proxy) JM_SET(CURLOPT_PROXY, c->proxy); /* "" means none; NULL leaves libcurl to the environment */
    if (c->noproxy) JM_SET(CURLOPT_NOPROXY, c->noproxy);
    JM_SET(CURLOPT_HTTP_VERSION, c->httpversion);
    JM_SET(CURLOPT_CONNECTTIMEOUT_MS, c->connect_ms);
    if (c->user_agent) JM_SET(CURLOPT_USERAGENT, c->user_agent);
    JM_SET(CURLOPT_HEADERFUNCTION, jm_on_header);
    JM_SET(CURLOPT_WRITEFUNCTION, jm_on_body);
    (void)bad_opt;
    return rc;
}

/* The options of a download or a certificate probe (never pooled: set on a new handle each time). */
CURLcode jm_configure_kind(const jm_config *c, jm_transfer *t) {
    CURLcode rc = CURLE_OK;
    int bad_opt = 0;
    if (t->kind == JM_KIND_PROBE) {
        /* a certificate probe after a failed verification, to say why: it connects and handshakes, reads
         * the certificate, and sends no request (no header, no key), so verification can be off */
        JM_SET(CURLOPT_CONNECT_ONLY, 1L);
        JM_SET(CURLOPT_SSL_VERIFYPEER, 0L);
        JM_SET(CURLOPT_SSL_VERIFYHOST, 0L);
        JM_SET(CURLOPT_CERTINFO, 1L);
        JM_SET(CURLOPT_FRESH_CONNECT, 1L);
        JM_SET(CURLOPT_FORBID_REUSE, 1L);
    } else if (t->kind == JM_KIND_DOWNLOAD) {
        JM_SET(CURLOPT_FOLLOWLOCATION, 1L); /* to the storage host */
        JM_SET(CURLOPT_MAXREDIRS, JM_MAX_REDIRECTS);
        if (c->stall_s > 0) {
            JM_SET(CURLOPT_LOW_SPEED_LIMIT, 1024L);
            JM_SET(CURLOPT_LOW_SPEED_TIME, c->stall_s);
        }
        if (c->api_key) {
            /* libcurl owns the Authorization header: it is never sent to another host on a redirect */
            JM_SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
            JM_SET(CURLOPT_XOAUTH2_BEARER, c->api_key);
        }
        JM_SET(CURLOPT_BUFFERSIZE, (long)JM_DOWNLOAD_BUFFER);
    }
    (void)bad_opt;
    return rc;
}

/* Appends a header line to the transfer's list; 0 when out of memory. */
static int jm_add_header(jm_transfer *t, const char *h) {
    struct curl_slist *nl = curl_slist_append(t->hdrs, h);
    if (!nl) return 0;
    t->hdrs = nl;
    return 1;
}

/* The header lines of a request: an API call's own (JSON, the key), then the caller's opts.headers.
 * Returns NULL, or why the headers were refused (a line with CR or LF). Raises on out of memory. */
const char *jm_build_headers(lua_State *L, int opts, jm_engine *e, jm_transfer *t, int post) {
    int ok = 1, i, n;
    if (t->kind == JM_KIND_API) {
        ok = jm_add_header(t, "Accept: application/json") && (!post || jm_add_header(t, "Content-Type: application/json")) &&
             (!e->cfg.auth_header || jm_add_header(t, e->cfg.auth_header));
    }
    if (ok && post) ok = jm_add_header(t, "Expect:"); /* no 100-continue round trip */
    lua_getfield(L, opts, "headers");
    n = lua_istable(L, -1) ? (int)jm_rawlen(L, -1) : 0;
    for (i = 1; ok && i <= n; i++) {
        const char *h;
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "jimeng: headers must be strings");
        h = lua_tostring(L, -1);
        if (jm_has_crlf(h)) {
            lua_pop(L, 2);
            return "a header value contains CR or LF";
        }
        ok = jm_add_header(t, h);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (!ok) luaL_error(L, "jimeng: out of memory");
    return NULL;
}

/* Copies "path\0line" from opts[pfield] and opts[lfield] for a line written at the moment of hand-over (a
 * paid request's journal or ledger line); *out stays NULL when either is absent. */
void jm_take_line(lua_State *L, int opts, const char *pfield, const char *lfield, char **out, size_t *outlen) {
    size_t plen = 0, llen = 0;
    const char *jpath = jm_optstr(L, opts, pfield, &plen), *jline = jm_optstr(L, opts, lfield, &llen);
    if (!jpath || !jline) return;
    if (memchr(jpath, 0, plen)) luaL_error(L, "jimeng: %s path contains NUL", pfield);
    *outlen = plen + 1 + llen;
    *out = malloc(*outlen + 1);
    if (!*out) {
        luaL_error(L, "jimeng: out of memory"); /* raises: does not return */
        return;
    }
    memcpy(*out, jpath, plen + 1);
    memcpy(*out + plen + 1, jline, llen);
    (*out)[*outlen] = '\0';
}

/* A download's file and what its bytes must match (see jm_choose_sink). Raises on misuse. */
void jm_take_part(lua_State *L, int opts, jm_transfer *t) {
    const char *task_id = jm_optstr(L, opts, "task_id", NULL), *validator = jm_optstr(L, opts, "validator", NULL);
    jm_part *part;
    lua_getfield(L, opts, "part");
    part = luaL_checkudata(L, -1, JM_PART_MT);
    if (part->fd < 0) luaL_error(L, "jimeng: the partial file is closed");
    t->part = part;
    t->fd = part->fd;
    t->part_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* the transfer keeps its file alive */
    if (!(t->path = strdup(part->path)) || (task_id && !(t->task_id = strdup(task_id))) ||
        (validator && !(t->validator = strdup(validator))))
        luaL_error(L, "jimeng: out of memory");
    t->offset = (curl_off_t)jm_optnum(L, opts, "offset", 0);
    t->total = (curl_off_t)jm_optnum(L, opts, "total", -1);
    t->expect_binary = 1;
    t->max_body = (size_t)JM_MAX_ERROR_BODY;
}

/* The options of this request alone: where it goes, what it sends, whose callbacks' data, whether it is paid. */
CURLcode jm_configure_request(const jm_config *c, jm_transfer *t, const char *url, const char *method,
                                     const char *body, size_t blen, int accept_encoding) {
    CURLcode rc = CURLE_OK;
    int bad_opt = 0;
    JM_SET(CURLOPT_URL, url);
    JM_SET(CURLOPT_PRIVATE, (void *)t);
    JM_SET(CURLOPT_ERRORBUFFER, t->errbuf);
    JM_SET(CURLOPT_HEADERDATA, (void *)t);
    JM_SET(CURLOPT_WRITEDATA, (void *)t);
#if LIBCURL_VERSION_NUM >= 0x075000
    JM_SET(CURLOPT_PREREQFUNCTION, jm_on_prereq);
    JM_SET(CURLOPT_PREREQDATA, (void *)t);
#endif
    /* libcurl silently re-sends a request whose reused connection turns out dead, POST included: a paid
     * request takes a fresh connection, so that it is never sent twice without Lua deciding it, and closes
     * it when done, so that the OS can tell (TCP_INFO) how much of the request the peer acknowledged. */
    if (t->kind == JM_KIND_API) {
        JM_SET(CURLOPT_FRESH_CONNECT, t->paid ? 1L : 0L);
        JM_SET(CURLOPT_FORBID_REUSE, t->paid ? 1L : 0L);
    }
    JM_SET(CURLOPT_CLOSESOCKETFUNCTION, t->paid ? jm_on_closesocket : NULL);
    JM_SET(CURLOPT_CLOSESOCKETDATA, t->paid ? (void *)t : NULL);
    JM_SET(CURLOPT_CUSTOMREQUEST, NULL);
    if (method && strcmp(method, "POST") == 0) {
        JM_SET(CURLOPT_POST, 1L);
        JM_SET(CURLOPT_POSTFIELDSIZE, (long)blen);
        JM_SET(CURLOPT_COPYPOSTFIELDS, body ? body : "");
    } else {
        JM_SET(CURLOPT_HTTPGET, 1L);
        if (method && strcmp(method, "GET") != 0) JM_SET(CURLOPT_CUSTOMREQUEST, method);
    }
    JM_SET(CURLOPT_HTTPHEADER, t->hdrs);
    JM_SET(CURLOPT_ACCEPT_ENCODING, accept_encoding ? "" : NULL);
    /* over https, many transfers started at once wait for the first connection to say whether it
     * multiplexes (HTTP/2, known at its TLS handshake) rather than each opening its own: 2,000 waiting tasks
     * share a few connections, not 2,000 sockets. Over plain http there is no HTTP/2 to wait for, and libcurl
     * would learn it only from the first answer: one slow answer held every other request back, then let
     * them all go at once (seen as a burst past the server's rate limit) */
    JM_SET(CURLOPT_PIPEWAIT, c->httpversion != CURL_HTTP_VERSION_1_1 && strncasecmp(url, "https:", 6) == 0 ? 1L : 0L);
    (void)bad_opt;
    return rc;
}

/* engine:request(opts) -> transfer | nil, message, class
 * The engine's settings (core.engine) apply; opts holds only this request's own fields:
 *   kind: "api" (default: a JSON call of the API, with its key, following no redirect, its answer capped at
 *         8 MiB), "download" (into opts.part, following redirects) or "probe" (handshake only, to read the
 *         certificate of a failed verification: cert_expire, cert_names)
 *   url, method ("GET" | "POST" | another), body, headers (array of "Name: value", after the kind's own),
 *   timeout (seconds, from when it leaves the queue), deadline (absolute, core.now), accept_encoding,
 *   max_body (API calls: a smaller or larger cap), paid (a create: see the facts in the result),
 *   journal + journal_line (a paid request's line, fsynced when it is handed to the wire), ledger +
 *   ledger_line (the same, appended under an flock: a file shared by processes), head (the answer's header
 *   lines kept whole, for a trace),
 *   for a download: part (core.part_open), task_id (written in its record), offset (where a 206 must
 *   start), validator and total (what a 206 must carry).
 * A URL or header with CR or LF is refused as nil, message, "invalid_argument"; an option libcurl refuses
 * as nil, message, "internal"; misuse (a wrong type, a closed part, an option not named above) raises. */
static const char *const jm_request_options[] = {
    "kind", "url", "method", "body", "headers", "timeout", "deadline", "accept_encoding", "max_body", "paid",
    "journal", "journal_line", "ledger", "ledger_line", "head", "part", "task_id", "offset", "validator", "total",
    NULL,
};

/* An option this function does not know is misuse (a stale name would be ignored silently): raised, with
 * the known name nearest to it. */
void jm_check_request_options(lua_State *L, int opts) {
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        const char *const *o;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        lua_pop(L, 1);
        if (!k) {
            luaL_error(L, "jimeng: request options are named (a %s key was given)", luaL_typename(L, -1));
            return; /* raises: does not return */
        }
        for (o = jm_request_options; *o && strcmp(*o, k) != 0; o++) {
        }
        if (!*o) {
            const char *near = jm_nearest(k, jm_request_options);
            if (near) luaL_error(L, "jimeng: request has no option %s (did you mean %s?)", k, near);
            luaL_error(L, "jimeng: request has no option %s", k);
        }
    }
}
