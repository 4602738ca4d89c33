/* URLs as libcurl reads them: the base URL is checked with the parser that will connect, never a pattern.
 *
 * core.parse_url(s) splits a URL with libcurl's URL API (curl_url) and tells whether its host is loopback,
 * judged on the host libcurl normalized (127.1, 0x7f.0.0.1 and 2130706433 are all 127.0.0.1 to it).
 * core.noproxy_match(host, list) answers whether a no-proxy list (libcurl's syntax: names with their
 * subdomains, IPs, CIDR ranges, "*") covers a host; the engine uses it to report whether a proxy was used.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "jimeng.h"

/* core.parse_url(s) -> {url=, scheme=, host=, port=, path=, query=, fragment=, user=, password=,
 * loopback=} | nil, message. `host` is what libcurl connects to (brackets kept for IPv6), `url` the
 * normalized URL, `port` a number (the scheme's default when none is written). */
static int l_parse_url(lua_State *L);
/* core.noproxy_match(host, list) -> boolean */
static int l_noproxy_match(lua_State *L);

void jm_open_url(lua_State *L) {
    lua_pushcfunction(L, l_parse_url);
    lua_setfield(L, -2, "parse_url");
    lua_pushcfunction(L, l_noproxy_match);
    lua_setfield(L, -2, "noproxy_match");
}

/* ---- loopback ---- */

/* Copies a host without its IPv6 brackets and zone id into out (lower case); 1 if it was bracketed. */
static int jm_bare_host(const char *host, char *out, size_t outsz) {
    size_t n = strlen(host), i;
    int v6 = 0;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        host++;
        n -= 2;
        v6 = 1;
    }
    if (n >= outsz) n = outsz - 1;
    for (i = 0; i < n; i++) out[i] = (char)tolower((unsigned char)host[i]);
    out[n] = '\0';
    if (v6) {
        char *zone = strchr(out, '%');
        if (zone) *zone = '\0';
    }
    return v6;
}

int jm_host_is_loopback(const char *host) {
    char bare[256];
    unsigned char a[16];
    size_t n;
    jm_bare_host(host, bare, sizeof bare);
    n = strlen(bare);
    if (n > 0 && bare[n - 1] == '.') bare[--n] = '\0'; /* "localhost." is localhost */
    if (strcmp(bare, "localhost") == 0) return 1;
    if (inet_pton(AF_INET, bare, a) == 1) return a[0] == 127;
    if (inet_pton(AF_INET6, bare, a) == 1) {
        static const unsigned char loop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, loop6, 16) == 0) return 1;
        return memcmp(a, mapped, 12) == 0 && a[12] == 127; /* ::ffff:127.x.y.z */
    }
    return 0;
}

/* ---- no_proxy ---- */

/* Whether the address `a` (len 4 or 16 bytes) lies in the prefix p/bits. */
static int jm_prefix_match(const unsigned char *a, const unsigned char *p, size_t len, long bits) {
    size_t whole;
    if (bits < 0 || (size_t)bits > len * 8) return 0;
    whole = (size_t)bits / 8;
    if (memcmp(a, p, whole) != 0) return 0;
    if (bits % 8) {
        unsigned char mask = (unsigned char)(0xff << (8 - bits % 8));
        if ((a[whole] & mask) != (p[whole] & mask)) return 0;
    }
    return 1;
}

/* One entry of a no-proxy list against a host (both lower case, no brackets). */
static int jm_noproxy_entry(const char *host, int host_is_ip, const char *entry, size_t elen) {
    char e[256];
    size_t hlen = strlen(host);
    if (elen == 0 || elen >= sizeof e) return 0;
    memcpy(e, entry, elen);
    e[elen] = '\0';
    if (e[0] == '[' && e[elen - 1] == ']') { /* [::1] */
        memmove(e, e + 1, elen - 2);
        e[elen - 2] = '\0';
        elen -= 2;
    }
    if (host_is_ip) {
        unsigned char a[16], p[16];
        long bits = -1;
        int af = strchr(host, ':') ? AF_INET6 : AF_INET;
        char *slash = strchr(e, '/');
        if (slash) {
            char *end;
            *slash = '\0';
            bits = strtol(slash + 1, &end, 10);
            if (*end || end == slash + 1) return 0;
        }
        if (inet_pton(af, host, a) != 1 || inet_pton(af, e, p) != 1) return 0;
        return jm_prefix_match(a, p, af == AF_INET ? 4 : 16, bits < 0 ? (af == AF_INET ? 32 : 128) : bits);
    }
    if (e[0] == '.') { /* ".example.com" means example.com and its subdomains, as "example.com" does */
        memmove(e, e + 1, elen);
        elen--;
    }
    if (elen > 0 && e[elen - 1] == '.') e[--elen] = '\0';
    if (elen == 0 || hlen < elen) return 0;
    if (strcasecmp(host + hlen - elen, e) != 0) return 0;
    return hlen == elen || host[hlen - elen - 1] == '.';
}

int jm_noproxy_match(const char *host, const char *list) {
    char bare[256];
    unsigned char a[16];
    int is_ip;
    size_t n;
    const char *p = list;
    if (!list || !host) return 0;
    while (*p == ' ' || *p == '\t') p++;
    if (p[0] == '*' && (p[1] == '\0' || p[1] == ' ' || p[1] == ',')) return 1;
    jm_bare_host(host, bare, sizeof bare);
    n = strlen(bare);
    if (n > 0 && bare[n - 1] == '.') bare[--n] = '\0';
    is_ip = inet_pton(AF_INET, bare, a) == 1 || inet_pton(AF_INET6, bare, a) == 1;
    while (*p) {
        const char *start;
        while (*p == ',' || *p == ' ' || *p == '\t') p++;
        start = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t') p++;
        if (p > start && jm_noproxy_entry(bare, is_ip, start, (size_t)(p - start))) return 1;
    }
    return 0;
}

static int l_noproxy_match(lua_State *L) {
    lua_pushboolean(L, jm_noproxy_match(luaL_checkstring(L, 1), luaL_optstring(L, 2, "")));
    return 1;
}

/* ---- parse ---- */

/* Sets t[k] to the URL part, when the URL has it. */
static int jm_url_part(lua_State *L, CURLU *u, CURLUPart part, const char *k, unsigned flags) {
    char *v = NULL;
    if (curl_url_get(u, part, &v, flags) != CURLUE_OK || !v) return 0;
    jm_setstr(L, k, v);
    curl_free(v);
    return 1;
}

static int l_parse_url(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    CURLU *u;
    CURLUcode uc;
    char *host = NULL, *port = NULL;
    if (strlen(s) != len) {
        lua_pushnil(L);
        lua_pushliteral(L, "the URL contains a NUL byte");
        return 2;
    }
    u = curl_url();
    if (!u) return luaL_error(L, "jimeng: out of memory");
    /* no default scheme (a URL must say it); any scheme parses, so the caller can say which it wants */
    uc = curl_url_set(u, CURLUPART_URL, s, CURLU_NON_SUPPORT_SCHEME);
    if (uc != CURLUE_OK) {
        curl_url_cleanup(u);
        lua_pushnil(L);
        lua_pushstring(L, curl_url_strerror(uc));
        return 2;
    }
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host || !*host) {
        curl_free(host);
        curl_url_cleanup(u);
        lua_pushnil(L);
        lua_pushliteral(L, "the URL has no host");
        return 2;
    }
    {
        /* the normalized URL is what every request uses: it must parse again to the same host (libcurl
         * normalizes some odd hosts, "0x%7f.0.", into URLs it then refuses) */
        char *norm = NULL, *again_host = NULL;
        CURLU *again = curl_url();
        int same = 0;
        if (again && curl_url_get(u, CURLUPART_URL, &norm, 0) == CURLUE_OK && norm &&
            curl_url_set(again, CURLUPART_URL, norm, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
            curl_url_get(again, CURLUPART_HOST, &again_host, 0) == CURLUE_OK && again_host)
            same = strcmp(again_host, host) == 0;
        curl_free(norm);
        curl_free(again_host);
        curl_url_cleanup(again);
        if (!same) {
            curl_free(host);
            curl_url_cleanup(u);
            lua_pushnil(L);
            lua_pushliteral(L, "the URL's host does not survive libcurl's own normalization");
            return 2;
        }
    }
    lua_createtable(L, 0, 10);
    jm_setstr(L, "host", host);
    jm_setbool(L, "loopback", jm_host_is_loopback(host));
    curl_free(host);
    if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK && port) {
        jm_setint(L, "port", (lua_Integer)strtol(port, NULL, 10));
        curl_free(port);
    }
    jm_url_part(L, u, CURLUPART_URL, "url", 0);
    jm_url_part(L, u, CURLUPART_SCHEME, "scheme", 0);
    jm_url_part(L, u, CURLUPART_PATH, "path", 0);
    jm_url_part(L, u, CURLUPART_QUERY, "query", 0);
    jm_url_part(L, u, CURLUPART_FRAGMENT, "fragment", 0);
    jm_url_part(L, u, CURLUPART_USER, "user", 0);
    jm_url_part(L, u, CURLUPART_PASSWORD, "password", 0);
    jm_url_part(L, u, CURLUPART_OPTIONS, "options", 0);
    curl_url_cleanup(u);
    return 1;
}

/* ---- which proxy a request goes through ---- */

/* The proxy libcurl reads from the environment for a scheme, as libcurl 7.88 does (url.c detect_proxy):
 * <scheme>_proxy, its upper-case form except for http (HTTP_PROXY can be set by a CGI request), then
 * all_proxy and ALL_PROXY. */
static const char *jm_env_proxy(const char *scheme) {
    char name[32];
    const char *v;
    size_t i, n = strlen(scheme);
    if (n + sizeof "_proxy" > sizeof name) return NULL;
    for (i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)scheme[i]);
    memcpy(name + n, "_proxy", sizeof "_proxy");
    v = getenv(name);
    if (!v && strcmp(name, "http_proxy") != 0) {
        char upper[32];
        for (i = 0; name[i]; i++) upper[i] = (char)toupper((unsigned char)name[i]);
        upper[i] = '\0';
        v = getenv(upper);
    }
    if (!v) v = getenv("all_proxy");
    if (!v) v = getenv("ALL_PROXY");
    return v;
}

int jm_proxy_for(const char *url, const char *proxy, const char *noproxy, char *where, size_t wheresz) {
    CURLU *u;
    char *host = NULL, *phost = NULL, *pport = NULL;
    int used = 0;
    if (!proxy) { /* the scheme as written picks the variable; no URL parse on the common path */
        char scheme[16];
        const char *sep = strstr(url, "://");
        size_t n = sep ? (size_t)(sep - url) : 0;
        if (n == 0 || n >= sizeof scheme) return 0;
        memcpy(scheme, url, n);
        scheme[n] = '\0';
        proxy = jm_env_proxy(scheme);
    }
    if (!proxy || !*proxy) return 0;
    if (!noproxy) noproxy = getenv("no_proxy");
    if (!noproxy) noproxy = getenv("NO_PROXY");
    u = curl_url();
    if (!u) return 0;
    if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        used = !jm_noproxy_match(host, noproxy);
    /* where: the proxy's host:port, never its credentials (they may be in the proxy URL) */
    if (used && wheresz > 0) {
        where[0] = '\0';
        if (curl_url_set(u, CURLUPART_URL, proxy, CURLU_DEFAULT_SCHEME | CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_HOST, &phost, 0) == CURLUE_OK) {
            if (curl_url_get(u, CURLUPART_PORT, &pport, CURLU_DEFAULT_PORT) == CURLUE_OK)
                snprintf(where, wheresz, "%s:%s", phost, pport);
            else
                snprintf(where, wheresz, "%s", phost);
        }
    }
    curl_free(host);
    curl_free(phost);
    curl_free(pport);
    curl_url_cleanup(u);
    return used;
}
