/* A status answer read straight from its bytes: core.status_task(body) -> the task core.task would make of
 * the decoded body, with the body's request_id, or nil.
 *
 * A task is polled every few seconds for minutes, and each answer is a small object: {"id": "...", "object":
 * "video", "created_at": 1762776961, "status": "in_queue"} (the vendor page). Decoding it whole (a table of
 * every field, then core.task reading the fields it wants into the task) costs a table and its strings per poll
 * for nothing; here the fields the page documents and core.task reads (id, status, created_at, progress, error,
 * fail_reason, and request_id for the Lua layer) go into the task as the bytes are scanned, and every other
 * value is only checked to be JSON.
 *
 * The reader is a fast path, never a second opinion: it answers only a body that is strict JSON (RFC 8259,
 * nesting at most 32 deep: what the client's lua-cjson accepts and reads the same) and whose fields it reads
 * are plain (strings without escapes, a numeric id of digits alone, a number or null for progress); anything
 * else (a broken body, an escaped string, an "error" object, a duplicated field, a missing id or status) gives
 * nil, and the caller decodes the body and asks core.task as before, for the same task or the same error. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jimeng.h"

#define JM_STATUS_DEPTH 32 /* the client's lua-cjson: decode_max_depth(32) (lua/jimeng/init.lua) */

typedef struct {
    const char *p, *end;
} jm_scan;

/* A plain string's bytes (between the quotes), or a number's token. */
typedef struct {
    const char *s;
    size_t n;
    int kind; /* 0: none, 's': a string without escapes, 'S': a string with escapes, 'n': a number, 'z': null, 'o':
                 another value */
} jm_val;

static void jm_ws(jm_scan *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int jm_hex(char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* A string at its opening quote; v gets its bytes and whether it has escapes. 0: not a JSON string. */
static int jm_str(jm_scan *c, jm_val *v) {
    const char *s = ++c->p;
    int esc = 0;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            v->s = s;
            v->n = (size_t)(c->p - s);
            v->kind = esc ? 'S' : 's';
            c->p++;
            return 1;
        }
        if (ch < 0x20) return 0;
        if (ch == '\\') {
            esc = 1;
            if (++c->p >= c->end) return 0;
            ch = (unsigned char)*c->p;
            if (ch == 'u') {
                if (c->end - c->p < 5 || !jm_hex(c->p[1]) || !jm_hex(c->p[2]) || !jm_hex(c->p[3]) || !jm_hex(c->p[4]))
                    return 0;
                c->p += 4;
            } else if (!strchr("\"\\/bfnrt", ch) || ch == '\0') {
                return 0;
            }
        }
        c->p++;
    }
    return 0;
}

/* A number by the JSON grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int jm_num(jm_scan *c, jm_val *v) {
    const char *s = c->p;
    if (c->p < c->end && *c->p == '-') c->p++;
    if (c->p >= c->end) return 0;
    if (*c->p == '0') {
        c->p++;
    } else if (*c->p >= '1' && *c->p <= '9') {
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    } else {
        return 0;
    }
    if (c->p < c->end && *c->p == '.') {
        const char *d = ++c->p;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
        if (c->p == d) return 0;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        const char *d;
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        d = c->p;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
        if (c->p == d) return 0;
    }
    v->s = s;
    v->n = (size_t)(c->p - s);
    v->kind = 'n';
    return 1;
}

static int jm_lit(jm_scan *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return 0;
    c->p += n;
    return 1;
}

/* An object's key and its colon, from where the key's quote may start. */
static int jm_key(jm_scan *c) {
    jm_val k;
    jm_ws(c);
    if (c->p >= c->end || *c->p != '"' || !jm_str(c, &k)) return 0;
    jm_ws(c);
    return c->p < c->end && *c->p++ == ':';
}

/* A value that is no container, into v. */
static int jm_scalar(jm_scan *c, jm_val *v) {
    switch (*c->p) {
    case '"': return jm_str(c, v);
    case 't': v->kind = 'o'; return jm_lit(c, "true");
    case 'f': v->kind = 'o'; return jm_lit(c, "false");
    case 'n': v->kind = 'z'; return jm_lit(c, "null");
    default: return jm_num(c, v);
    }
}

/* One value of any kind, checked; v says what it was. Containers are walked without recursion, at most
 * JM_STATUS_DEPTH deep counting the `depth` that holds the value. 0: not JSON. */
static int jm_value(jm_scan *c, jm_val *v, int depth) {
    char close[JM_STATUS_DEPTH]; /* the closing bracket of each container open */
    int top = 0;
    jm_val inner;
    for (;;) {
        jm_ws(c); /* a value starts */
        if (c->p >= c->end) return 0;
        if (*c->p == '{' || *c->p == '[') {
            if (depth + top + 1 > JM_STATUS_DEPTH) return 0;
            if (top == 0) v->kind = 'o';
            close[top++] = *c->p == '{' ? '}' : ']';
            c->p++;
            jm_ws(c);
            if (c->p < c->end && *c->p == close[top - 1]) {
                c->p++;
                top--;
            } else {
                if (close[top - 1] == '}' && !jm_key(c)) return 0;
                continue; /* its first value */
            }
        } else if (!jm_scalar(c, top == 0 ? v : &inner)) {
            return 0;
        }
        for (;;) { /* a value ended: the containers it ends, up to the next value */
            if (top == 0) return 1;
            jm_ws(c);
            if (c->p >= c->end) return 0;
            if (*c->p == close[top - 1]) {
                c->p++;
                top--;
                continue;
            }
            if (*c->p++ != ',') return 0;
            if (close[top - 1] == '}' && !jm_key(c)) return 0;
            break;
        }
    }
}

/* A number token as a double (the token is short: longer ones are left to the slow path). */
static int jm_num_value(const jm_val *v, double *out) {
    char buf[64];
    if (v->n >= sizeof buf) return 0;
    memcpy(buf, v->s, v->n);
    buf[v->n] = '\0';
    *out = strtod(buf, NULL);
    return 1;
}

enum { F_ID, F_STATUS, F_CREATED, F_PROGRESS, F_ERROR, F_FAIL, F_REQUEST, F_N };

static int l_status_task(lua_State *L) {
    static const char *const names[F_N] = {"id", "status", "created_at", "progress", "error", "fail_reason",
                                           "request_id"};
    size_t len;
    const char *body = luaL_checklstring(L, 1, &len);
    jm_scan c = {body, body + len};
    jm_val f[F_N];
    const jm_val *msg = NULL;
    char status[64];
    const char *mapped;
    memset(f, 0, sizeof f);
    jm_ws(&c);
    if (c.p >= c.end || *c.p++ != '{') return 0;
    jm_ws(&c);
    if (c.p < c.end && *c.p == '}') return 0; /* no id: the slow path says so */
    for (;;) {
        jm_val key, v;
        int i;
        jm_ws(&c);
        if (c.p >= c.end || *c.p != '"' || !jm_str(&c, &key) || key.kind != 's') return 0;
        jm_ws(&c);
        if (c.p >= c.end || *c.p++ != ':') return 0;
        memset(&v, 0, sizeof v);
        if (!jm_value(&c, &v, 1)) return 0;
        for (i = 0; i < F_N; i++) {
            if (strlen(names[i]) == key.n && memcmp(names[i], key.s, key.n) == 0) {
                if (f[i].kind) return 0; /* twice: the slow path takes the last, as the decoder does */
                f[i] = v;
                break;
            }
        }
        jm_ws(&c);
        if (c.p >= c.end) return 0;
        if (*c.p == ',') {
            c.p++;
            continue;
        }
        if (*c.p++ != '}') return 0;
        break;
    }
    jm_ws(&c);
    if (c.p != c.end) return 0;

    /* the fields as core.task reads them; anything it would read otherwise, or refuse, is the slow path's */
    if (f[F_STATUS].kind != 's' || f[F_STATUS].n >= sizeof status || memchr(f[F_STATUS].s, '\0', f[F_STATUS].n))
        return 0;
    if (f[F_ID].kind == 'n') { /* a numeric id: its digits are the id (core.task reads them from the raw body) */
        size_t k = f[F_ID].s[0] == '-' ? 1 : 0;
        for (; k < f[F_ID].n; k++)
            if (f[F_ID].s[k] < '0' || f[F_ID].s[k] > '9') return 0;
    } else if (f[F_ID].kind != 's' || f[F_ID].n == 0) {
        return 0;
    }
    if (f[F_PROGRESS].kind && f[F_PROGRESS].kind != 'n' && f[F_PROGRESS].kind != 'z') return 0;
    if (f[F_ERROR].kind == 'S' || f[F_ERROR].kind == 'o' || f[F_FAIL].kind == 'S' || f[F_FAIL].kind == 'o' ||
        f[F_REQUEST].kind == 'S')
        return 0; /* an escaped string, or an {"message": ...} object, or true/false/[...] (read as no message) */
    if (f[F_ERROR].kind == 's') msg = &f[F_ERROR];
    else if (f[F_FAIL].kind == 's') msg = &f[F_FAIL];
    if ((msg && memchr(msg->s, '\0', msg->n)) || (f[F_ID].kind == 's' && memchr(f[F_ID].s, '\0', f[F_ID].n)))
        return 0;

    lua_createtable(L, 0, 8); /* the task: its fields, then request_id, warnings, retry_after from the Lua layer */
    lua_pushlstring(L, f[F_ID].s, f[F_ID].n);
    lua_setfield(L, -2, "id");
    memcpy(status, f[F_STATUS].s, f[F_STATUS].n);
    status[f[F_STATUS].n] = '\0';
    mapped = jm_map_status(status);
    lua_pushstring(L, mapped ? mapped : "unknown"); /* a status newer than this client: waiting goes on */
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, f[F_STATUS].s, f[F_STATUS].n);
    lua_setfield(L, -2, "raw_status");
    if (f[F_CREATED].kind == 'n') {
        double at;
        if (!jm_num_value(&f[F_CREATED], &at)) return 0;
        if (at == floor(at) && fabs(at) < 9e15) { /* seconds since the epoch: 1762776961, not 1762776961.0 */
            lua_pushinteger(L, (lua_Integer)at);
            lua_setfield(L, -2, "created_at");
        } else if (at - at == 0) { /* finite */
            lua_pushnumber(L, (lua_Number)at);
            lua_setfield(L, -2, "created_at");
        }
    }
    if (f[F_PROGRESS].kind == 'n') {
        double p;
        if (!jm_num_value(&f[F_PROGRESS], &p)) return 0;
        if (p >= 0 && p <= 100) {
            lua_pushinteger(L, (lua_Integer)floor(p));
            lua_setfield(L, -2, "progress");
        }
    }
    if (msg) {
        lua_pushlstring(L, msg->s, msg->n);
        lua_setfield(L, -2, "error");
    }
    if (f[F_REQUEST].kind == 's') {
        lua_pushlstring(L, f[F_REQUEST].s, f[F_REQUEST].n);
        lua_setfield(L, -2, "request_id");
    }
    return 1;
}

void jm_open_status(lua_State *L) {
    lua_pushcfunction(L, l_status_task);
    lua_setfield(L, -2, "status_task");
}
