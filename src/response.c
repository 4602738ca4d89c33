/* Responses: what the API's answers say, read from the JSON lua-cjson decoded (and, for an id that is a
 * number too large for a double, from the top level of the raw body).
 *
 * core.task(decoded[, raw])        -> task | nil, message          (status vocabularies, ids as strings)
 * core.raw_id(raw)                 -> the top-level "id" as text, or nil
 * core.detection(decoded)          -> {has_subject=, mask_urls=} | nil, message
 * core.recognition(decoded)        -> {has_subject=, task_id=} | nil, message
 * (the request id, body or header, is read by the Lua layer: http.request_id)
 * core.error_message(decoded, raw) -> message, code, type          (OpenAI, flat, plain text, HTML)
 * core.utf8_clean(s)               -> s with invalid UTF-8 replaced
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jimeng.h"

const char *jm_map_status(const char *s) {
    static const struct {
        const char *from, *to;
    } map[] = {
        {"in_queue", "in_queue"},     {"queued", "in_queue"},        {"pending", "in_queue"},
        {"submitted", "in_queue"},    {"processing", "processing"},  {"in_progress", "processing"},
        {"generating", "processing"}, {"running", "processing"},     {"completed", "completed"},
        {"done", "completed"},        {"succeeded", "completed"},    {"success", "completed"},
        {"failed", "failed"},         {"error", "failed"},           {"expired", "failed"},
        {"cancelled", "failed"},      {"canceled", "failed"},        {"not_found", "failed"},
    };
    size_t i;
    for (i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcasecmp(s, map[i].from) == 0) return map[i].to;
    return NULL;
}

/* Pushes a JSON id (string or number) as a string; returns 0 when it is neither. */
static int jm_push_id(lua_State *L, int idx) {
    if (lua_type(L, idx) == LUA_TSTRING) {
        lua_pushvalue(L, idx);
        return 1;
    }
    if (lua_type(L, idx) == LUA_TNUMBER) {
        char buf[64];
        double d = lua_tonumber(L, idx);
        if (d == floor(d) && fabs(d) < 1e300) snprintf(buf, sizeof buf, "%.0f", d);
        else snprintf(buf, sizeof buf, "%.17g", d);
        lua_pushstring(L, buf);
        return 1;
    }
    return 0;
}

/* Reads a message from a JSON value that may be a string or {message=...}. */
static const char *jm_message_of(lua_State *L, int idx) {
    if (lua_type(L, idx) == LUA_TSTRING) return lua_tostring(L, idx);
    if (lua_istable(L, idx)) {
        const char *m = NULL;
        lua_getfield(L, idx, "message");
        if (lua_type(L, -1) == LUA_TSTRING) m = lua_tostring(L, -1);
        lua_pop(L, 1);
        return m;
    }
    return NULL;
}

/* Skips a JSON string starting at its opening quote; returns the position after the closing quote. */
static const char *jm_skip_string(const char *q) {
    for (q++; *q && *q != '"'; q++)
        if (*q == '\\' && q[1]) q++;
    return *q ? q + 1 : q;
}

static const char *jm_skip_ws(const char *q) {
    while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n') q++;
    return q;
}

/* Skips one JSON value (any nesting); returns the position after it. */
static const char *jm_skip_value(const char *q) {
    int depth = 0;
    do {
        if (*q == '"') {
            q = jm_skip_string(q);
            continue;
        }
        if (*q == '{' || *q == '[') depth++;
        else if (*q == '}' || *q == ']') depth--;
        else if (depth == 0 && (*q == ',' || *q == '\0')) return q;
        if (*q) q++;
    } while (*q && depth > 0);
    if (depth == 0) {
        while (*q && *q != ',' && *q != '}' && *q != ']') q++;
    }
    return q;
}

/* The digits of the top-level object's "id" when it is a number, pushed as a string; 0 otherwise. A
 * number id past 2^53 loses digits in any JSON decoder that yields doubles, so the raw text is the
 * truth; an "id" inside a nested object ({"owner":{"id":42}}) is not the task's. */
static int jm_push_raw_id_of(lua_State *L, const char *s, int strings) {
    const char *q = jm_skip_ws(s);
    if (*q++ != '{') return 0;
    for (;;) {
        const char *k;
        int is_id;
        q = jm_skip_ws(q);
        if (*q != '"') return 0;
        k = q;
        q = jm_skip_string(q);
        is_id = (size_t)(q - k) == 4 && strncmp(k, "\"id\"", 4) == 0;
        q = jm_skip_ws(q);
        if (*q++ != ':') return 0;
        q = jm_skip_ws(q);
        if (is_id) {
            const char *d = q;
            if (strings && *q == '"') { /* a plain string id, as the API sends it (no escapes: ids never need them) */
                const char *e = jm_skip_string(q);
                if (e > q + 2 && e[-1] == '"' && !memchr(q + 1, '\\', (size_t)(e - q - 2))) {
                    lua_pushlstring(L, q + 1, (size_t)(e - q - 2));
                    return 1;
                }
                return 0;
            }
            if (*q == '-') q++;
            while (*q >= '0' && *q <= '9') q++;
            if (q > d && *q != '.' && *q != 'e' && *q != 'E') {
                lua_pushlstring(L, d, (size_t)(q - d));
                return 1;
            }
            return 0;
        }
        q = jm_skip_value(q);
        q = jm_skip_ws(q);
        if (*q++ != ',') return 0;
    }
}

static int jm_push_raw_id(lua_State *L, const char *s) {
    return jm_push_raw_id_of(L, s, 0);
}

/* core.raw_id(text) -> the top-level "id" of a JSON object text, read even from a broken or truncated
 * one (the answer to a create that cut off still names the task it made), or nil. */
static int l_raw_id(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    if (!jm_push_raw_id_of(L, s, 1)) return 0;
    return 1;
}

/* core.utf8_clean(s) -> s with every byte that does not start a valid UTF-8 sequence replaced by U+FFFD:
 * text from a server may be anything, and a JSON document printed from it must stay valid. */
static int l_utf8_clean(lua_State *L) {
    size_t n, i = 0;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    if (jm_utf8_len(s, n) >= 0) {
        lua_settop(L, 1);
        return 1;
    }
    luaL_buffinit(L, &b);
    while (i < n) {
        size_t len = s[i] < 0x80 ? 1 : s[i] >= 0xC2 && s[i] <= 0xDF ? 2 : s[i] >= 0xE0 && s[i] <= 0xEF ? 3
                     : s[i] >= 0xF0 && s[i] <= 0xF4 ? 4 : 0;
        if (len && i + len <= n && jm_utf8_len(s + i, len) == 1) {
            luaL_addlstring(&b, (const char *)s + i, len);
            i += len;
        } else {
            luaL_addstring(&b, "\xEF\xBF\xBD");
            i++;
        }
    }
    luaL_pushresult(&b);
    return 1;
}

/* core.task(decoded[, raw_body]) -> task | nil, message */
static int l_task(lua_State *L) {
    const char *raw, *mapped;
    int t;
    if (!lua_istable(L, 1)) {
        lua_pushnil(L);
        lua_pushliteral(L, "the task response is not a JSON object");
        return 2;
    }
    lua_settop(L, 2);
    lua_createtable(L, 0, 8); /* its fields, then request_id, warnings, retry_after from the Lua layer */
    lua_insert(L, 2);         /* 1 decoded, 2 task, 3 raw body */
    lua_getfield(L, 1, "id"); /* 4 */
    if (lua_type(L, 4) == LUA_TNUMBER && lua_type(L, 3) == LUA_TSTRING && jm_push_raw_id(L, lua_tostring(L, 3))) {
        lua_replace(L, 4);
    }
    if (!jm_push_id(L, 4) || jm_rawlen(L, -1) == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "the task response has no id");
        return 2;
    }
    lua_setfield(L, 2, "id");
    lua_settop(L, 2);
    lua_getfield(L, 1, "status");
    t = lua_type(L, -1);
    if (t != LUA_TSTRING) {
        lua_pushnil(L);
        lua_pushliteral(L, "the task response has no status");
        return 2;
    }
    raw = lua_tostring(L, -1);
    mapped = jm_map_status(raw);
    if (!mapped) mapped = "unknown"; /* a status newer than this client: the task exists; waiting goes on */
    lua_pushstring(L, mapped);
    lua_setfield(L, 2, "status");
    lua_pushstring(L, raw);
    lua_setfield(L, 2, "raw_status");
    lua_pop(L, 1);
    lua_getfield(L, 1, "created_at");
    if (lua_type(L, -1) == LUA_TNUMBER) {
        double at = lua_tonumber(L, -1);
        if (at == floor(at) && fabs(at) < 9e15) {
            lua_pushinteger(L, (lua_Integer)at); /* seconds since the epoch: 1762776961, not 1762776961.0 */
            lua_setfield(L, 2, "created_at");
        } else if (at - at == 0) { /* finite: 1e400 or NaN would break every JSON encoder downstream */
            lua_setfield(L, 2, "created_at");
        }
    }
    lua_settop(L, 2);
    /* progress 0-100: new-api's OpenAIVideo.progress (dto/openai_video.go), a number; "40%" read too */
    lua_getfield(L, 1, "progress");
    {
        double p = -1;
        if (lua_type(L, -1) == LUA_TNUMBER) {
            p = lua_tonumber(L, -1);
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            const char *ps = lua_tostring(L, -1);
            char *end;
            p = strtod(ps, &end);
            if (end == ps || (*end != '\0' && strcmp(end, "%") != 0)) p = -1;
        }
        if (p >= 0 && p <= 100) { /* NaN fails both */
            lua_pushinteger(L, (lua_Integer)floor(p));
            lua_setfield(L, 2, "progress");
        }
    }
    lua_settop(L, 2);
    lua_getfield(L, 1, "error");
    {
        const char *m = jm_message_of(L, -1);
        if (!m) {
            lua_getfield(L, 1, "fail_reason");
            m = jm_message_of(L, -1);
            lua_pop(L, 1);
        }
        if (m) {
            lua_pushstring(L, m);
            lua_setfield(L, 2, "error");
        }
    }
    lua_settop(L, 2);
    return 1;
}

/* Reads the subject verdict of a detection or recognition answer: status 0/1 (or a boolean). */
static int jm_has_subject(lua_State *L, int decoded, int *out) {
    int ok = 1;
    lua_getfield(L, decoded, "status");
    if (lua_type(L, -1) == LUA_TNUMBER && (lua_tonumber(L, -1) == 0 || lua_tonumber(L, -1) == 1))
        *out = lua_tonumber(L, -1) == 1;
    else if (lua_isboolean(L, -1))
        *out = lua_toboolean(L, -1);
    else
        ok = 0;
    lua_pop(L, 1);
    return ok;
}

static void jm_copy_string(lua_State *L, int from, int to, const char *k) {
    lua_getfield(L, from, k);
    if (lua_type(L, -1) == LUA_TSTRING) lua_setfield(L, to, k);
    else if (lua_type(L, -1) == LUA_TNUMBER && jm_push_id(L, lua_gettop(L))) lua_setfield(L, to, k), lua_pop(L, 1);
    else lua_pop(L, 1);
}

/* core.detection(decoded) -> {has_subject=, mask_urls={...}} | nil, message
 * mask_urls keep the server's order: by mask area, largest first. */
static int l_detection(lua_State *L) {
    int has = 0;
    if (!lua_istable(L, 1) || !jm_has_subject(L, 1, &has)) {
        lua_pushnil(L);
        lua_pushliteral(L, "the detection answer has no status 0 or 1");
        return 2;
    }
    lua_settop(L, 1);
    lua_newtable(L); /* 2 */
    lua_pushboolean(L, has);
    lua_setfield(L, 2, "has_subject");
    lua_newtable(L); /* 3: mask_urls, always an array (possibly empty) */
    lua_getfield(L, 1, "mask_urls");
    if (lua_istable(L, 4)) {
        int n = (int)jm_rawlen(L, 4), k = 0;
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, 4, i);
            if (lua_type(L, -1) == LUA_TSTRING) lua_rawseti(L, 3, ++k);
            else lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, 4)) {
        lua_pushnil(L);
        lua_pushliteral(L, "the detection answer's mask_urls is not an array");
        return 2;
    }
    lua_settop(L, 3);
    lua_setfield(L, 2, "mask_urls");
    return 1;
}

/* core.recognition(decoded) -> {has_subject=, task_id=} | nil, message */
static int l_recognition(lua_State *L) {
    int has = 0;
    if (!lua_istable(L, 1) || !jm_has_subject(L, 1, &has)) {
        lua_pushnil(L);
        lua_pushliteral(L, "the recognition answer has no status 0 or 1");
        return 2;
    }
    lua_settop(L, 1);
    lua_newtable(L);
    lua_pushboolean(L, has);
    lua_setfield(L, 2, "has_subject");
    jm_copy_string(L, 1, 2, "task_id");
    return 1;
}

/* Strips tags from an HTML page, keeping its title or first text, whitespace folded. */
static void jm_push_html_text(lua_State *L, const char *s, size_t n) {
    luaL_Buffer b;
    const char *title = NULL, *p, *end = s + n;
    size_t i;
    int in_tag = 0, space = 1, count = 0;
    for (i = 0; i + 7 <= n; i++)
        if (strncasecmp(s + i, "<title>", 7) == 0) {
            title = s + i + 7;
            break;
        }
    luaL_buffinit(L, &b);
    for (p = title ? title : s; p < end && count < 300; p++) {
        if (*p == '<') {
            if (title) break;
            in_tag = 1;
            continue;
        }
        if (in_tag) {
            if (*p == '>') in_tag = 0;
            continue;
        }
        if (isspace((unsigned char)*p)) {
            if (!space) luaL_addchar(&b, ' '), count++;
            space = 1;
        } else {
            luaL_addchar(&b, *p);
            count++;
            space = 0;
        }
    }
    luaL_pushresult(&b);
}

/* core.error_message(decoded_or_nil, raw_body) -> message, code, type
 * {"error":{"message","type","code"}} (OpenAI), {"message","code"} or {"error":"..."} (flat),
 * an HTML page (its title), or plain text. */
static int l_error_message(lua_State *L) {
    size_t n = 0;
    const char *raw = luaL_optlstring(L, 2, "", &n);
    lua_settop(L, 2);
    if (lua_istable(L, 1)) {
        const char *m = NULL;
        lua_getfield(L, 1, "error"); /* 3 */
        if (lua_istable(L, 3)) {
            m = jm_message_of(L, 3);
            lua_getfield(L, 3, "code");  /* 4 */
            lua_getfield(L, 3, "type");  /* 5 */
        } else {
            m = jm_message_of(L, 1);
            if (!m && lua_type(L, 3) == LUA_TSTRING) m = lua_tostring(L, 3);
            lua_getfield(L, 1, "code");
            lua_getfield(L, 1, "type");
        }
        if (m) {
            lua_pushstring(L, m);
            if (lua_type(L, 4) == LUA_TNUMBER) { /* codes are strings: 401, not 401.0 */
                char buf[64];
                snprintf(buf, sizeof buf, "%.0f", (double)lua_tonumber(L, 4));
                lua_pushstring(L, buf);
            } else {
                lua_pushvalue(L, 4);
            }
            lua_pushvalue(L, 5);
            if (!lua_isstring(L, -1)) lua_pop(L, 1), lua_pushnil(L);
            return 3;
        }
        lua_settop(L, 2);
    }
    if (n == 0) {
        lua_pushnil(L);
        return 1;
    }
    {
        size_t i = 0;
        while (i < n && isspace((unsigned char)raw[i])) i++;
        while (n > i && isspace((unsigned char)raw[n - 1])) n--;
        if (i >= n) lua_pushnil(L);
        else if (raw[i] == '<') jm_push_html_text(L, raw + i, n - i);
        else lua_pushlstring(L, raw + i, n - i > 300 ? 300 : n - i);
    }
    return 1;
}

void jm_open_response(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"task", l_task},
        {"raw_id", l_raw_id},
        {"utf8_clean", l_utf8_clean},
        {"error_message", l_error_message},
        {"detection", l_detection},
        {"recognition", l_recognition},
        {NULL, NULL},
    };
    jm_setfuncs(L, fns, 0);
}
