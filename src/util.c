/* Helpers shared by the C files: the clock, Lua table setters, Lua 5.1 shims, UTF-8, "did you mean", and
 * the registration of a userdata class. It calls none of the other files. */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <string.h>
#include <time.h>

#include "jimeng.h"

double jm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void jm_setstr(lua_State *L, const char *k, const char *v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

void jm_setlstr(lua_State *L, const char *k, const char *v, size_t n) {
    lua_pushlstring(L, v, n);
    lua_setfield(L, -2, k);
}

void jm_setint(lua_State *L, const char *k, lua_Integer v) {
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

void jm_setbool(lua_State *L, const char *k, int v) {
    lua_pushboolean(L, v);
    lua_setfield(L, -2, k);
}

#if LUA_VERSION_NUM < 502
void jm_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#endif

/* Counts UTF-8 characters; returns -1 for invalid UTF-8 (overlongs, surrogates, > U+10FFFF). */
long jm_utf8_len(const unsigned char *s, size_t n) {
    size_t i = 0;
    long count = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned long cp;
        if (c < 0x80) {
            i++;
            count++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return -1;
        }
        if (i + len > n) return -1;
        {
            size_t k;
            for (k = 1; k < len; k++) {
                if ((s[i + k] & 0xC0) != 0x80) return -1;
                cp = (cp << 6) | (s[i + k] & 0x3F);
            }
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return -1;
        i += len;
        count++;
    }
    return count;
}

static size_t jm_edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), i, j, prev[64] = {0}, cur[64] = {0};
    if (la >= 63 || lb >= 63) return 99;
    for (j = 0; j <= lb; j++) prev[j] = j;
    for (i = 1; i <= la; i++) {
        cur[0] = i;
        for (j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof prev);
    }
    return prev[lb];
}

/* The known name nearest to s, or NULL when none is close enough to be a typo. */
const char *jm_nearest(const char *s, const char *const *names) {
    const char *best = NULL;
    size_t bestd = 99, limit = strlen(s) / 3 + 1;
    for (; *names; names++) {
        size_t d = jm_edit_distance(s, *names);
        if (d < bestd) {
            bestd = d;
            best = *names;
        }
    }
    if (limit < 2) limit = 2;
    return bestd <= limit ? best : NULL;
}

void jm_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc, lua_CFunction close) {
    luaL_newmetatable(L, name);
    lua_newtable(L);
    jm_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
#if LUA_VERSION_NUM >= 504
    if (close) {
        lua_pushcfunction(L, close);
        lua_setfield(L, -2, "__close");
    }
#else
    (void)close;
#endif
    lua_pop(L, 1);
}

/* core.now() -> monotonic seconds (float). */
static int l_now(lua_State *L) {
    lua_pushnumber(L, jm_now());
    return 1;
}

/* core.nearest(name, {names...}) -> the name nearest to `name` by edit distance, or nil when none is close
 * enough to be a typo of it: the one "did you mean" of the library and the command. */
static int l_nearest(lua_State *L) {
    const char *s = luaL_checkstring(L, 1);
    const char **names;
    const char *best;
    int i, n;
    luaL_checktype(L, 2, LUA_TTABLE);
    n = (int)jm_rawlen(L, 2);
    names = lua_newuserdata(L, ((size_t)n + 1) * sizeof *names);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        names[i - 1] = luaL_checkstring(L, -1); /* kept alive by the table */
        lua_pop(L, 1);
    }
    names[n] = NULL;
    best = jm_nearest(s, names);
    if (best) lua_pushstring(L, best);
    else lua_pushnil(L);
    return 1;
}

void jm_open_util(lua_State *L) {
    static const luaL_Reg fns[] = {{"now", l_now}, {"nearest", l_nearest}, {NULL, NULL}};
    jm_setfuncs(L, fns, 0);
}
