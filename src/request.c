/* Requests: the one place that decides the JSON body of every request (response.c reads the answers).
 *
 * core.normalize(params[, kind]) -> body, warnings | nil, message, "invalid_argument", field
 *                                   (kind: "video" | "omni_human")
 * core.subject_body(which, image_url) -> body | nil, message, "invalid_argument", field
 *                                   (which: "detection" | "recognition"; another `which` is misuse: raised)
 *
 * Nothing here touches the network.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jimeng.h"

#define JM_PROMPT_MAX 800
#define JM_PROMPT_WARN 400
#define JM_OMNI_PROMPT_WARN 300
#define JM_MAX_MASKS 5
#define JM_SEED_MAX 4294967295.0

typedef struct {
    const char *model;
    const char *req_key;
    int min_images, max_images;
    int camera; /* only chosen when a camera move is asked for */
} jm_reqkey;

/* NULL-terminated: jm_nearest walks it to the end */
static const char *const jm_models[] = {"jimeng-video-3.0-pro", "jimeng-video-3.0-720P", "jimeng-video-3.0-1080P", NULL};
#define JM_NMODELS 3

static const jm_reqkey jm_reqkeys[] = {
    {"jimeng-video-3.0-pro", "jimeng_ti2v_v30_pro", 0, 1, 0},
    {"jimeng-video-3.0-720P", "jimeng_t2v_v30", 0, 0, 0},
    {"jimeng-video-3.0-720P", "jimeng_i2v_first_v30", 1, 1, 0},
    {"jimeng-video-3.0-720P", "jimeng_i2v_first_tail_v30", 2, 2, 0},
    {"jimeng-video-3.0-720P", "jimeng_i2v_recamera_v30", 1, 1, 1},
    {"jimeng-video-3.0-1080P", "jimeng_t2v_v30_1080p", 0, 0, 0},
    {"jimeng-video-3.0-1080P", "jimeng_i2v_first_v30_1080", 1, 1, 0},
    {"jimeng-video-3.0-1080P", "jimeng_i2v_first_tail_v30_1080", 2, 2, 0},
};
#define JM_NREQKEYS (sizeof jm_reqkeys / sizeof jm_reqkeys[0])

#define JM_OMNI_MODEL "OmniHuman_1.5"
#define JM_OMNI_REQ_KEY "jimeng_realman_avatar_picture_omni_v15"
#define JM_DETECT_REQ_KEY "jimeng_realman_avatar_object_detection"
#define JM_RECOG_REQ_KEY "jimeng_realman_avatar_picture_create_role_omni_v15"

static const struct {
    const char *name;
    double ratio;
} jm_ratios[] = {
    {"16:9", 16.0 / 9.0}, {"9:16", 9.0 / 16.0}, {"4:3", 4.0 / 3.0},
    {"3:4", 3.0 / 4.0},   {"1:1", 1.0},         {"21:9", 21.0 / 9.0},
};
#define JM_NRATIOS 6
#define JM_RATIO_LIST "16:9, 9:16, 4:3, 3:4, 1:1, 21:9"

static const char *const jm_video_names[] = {
    "model", "req_key", "prompt", "seed", "frames", "seconds", "size", "aspect_ratio", "image_urls",
    "images", "image", "content", "camera_move", "generation_type", "strict", NULL,
};
static const char *const jm_omni_names[] = {
    "model", "req_key", "prompt", "seed", "generation_type", "content", "mask_urls", "output_resolution",
    "pe_fast_mode", "image", "audio", "mask", "masks", "resolution", "fast", "strict", NULL,
};

/* Where a normalization runs: the params table, the body being built, the warnings array. */
typedef struct {
    lua_State *L;
    int params, body, warnings, images, audio, err; /* stack indexes (audio: nil until one is given) */
    int nwarn, nimages, strict, omni;
} jm_norm;

/* ---- errors and warnings ---- */

static void jm_push_invalid(lua_State *L, const char *field, const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    lua_newtable(L);
    jm_setstr(L, "kind", "invalid_argument");
    if (field) jm_setstr(L, "field", field);
    jm_setstr(L, "message", msg);
}

/* Returns the failure of a request function as nil, message, "invalid_argument", field (the error table at
 * the top of the stack, made by jm_push_invalid, unpacked): the shape of every runtime failure from C. */
static int jm_fail_from(lua_State *L, int err) {
    lua_pushnil(L);
    lua_getfield(L, err, "message");
    lua_pushliteral(L, "invalid_argument");
    lua_getfield(L, err, "field");
    return 4;
}

static int jm_invalid(lua_State *L, const char *field, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    jm_push_invalid(L, field, fmt, ap);
    va_end(ap);
    return jm_fail_from(L, lua_gettop(L));
}

/* Records the error of a normalization in its own stack slot (whatever the caller pops later); -1. */
static int jm_nfail(jm_norm *n, const char *field, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    jm_push_invalid(n->L, field, fmt, ap);
    va_end(ap);
    lua_replace(n->L, n->err);
    return -1;
}

#define JM_FAIL jm_nfail

static void jm_body_str(jm_norm *n, const char *k, const char *v) {
    lua_pushstring(n->L, v);
    lua_setfield(n->L, n->body, k);
}

static void jm_body_int(jm_norm *n, const char *k, lua_Integer v) {
    lua_pushinteger(n->L, v);
    lua_setfield(n->L, n->body, k);
}

static void jm_warn(jm_norm *n, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lua_pushstring(n->L, msg);
    lua_rawseti(n->L, n->warnings, ++n->nwarn);
}

/* ---- small helpers ---- */

static int jm_is_http_url(const char *s) {
    return strncmp(s, "https://", 8) == 0 || strncmp(s, "http://", 7) == 0;
}

/* Reads params[k] as an integer given as a number or a numeric string; 1 found, 0 absent, -1 error. */
static int jm_get_int(jm_norm *n, const char *k, double *out) {
    lua_State *L = n->L;
    int t;
    lua_getfield(L, n->params, k);
    t = lua_type(L, -1);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (t == LUA_TNUMBER) {
        *out = lua_tonumber(L, -1);
    } else if (t == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        char *end;
        *out = strtod(s, &end);
        while (*end == ' ') end++;
        if (end == s || *end != '\0') {
            lua_pop(L, 1);
            return JM_FAIL(n, k, "%s must be a whole number; got \"%s\"", k, s);
        }
    } else {
        lua_pop(L, 1);
        return JM_FAIL(n, k, "%s must be a whole number; got a %s", k, lua_typename(L, t));
    }
    lua_pop(L, 1);
    if (*out != floor(*out) || !isfinite(*out)) return JM_FAIL(n, k, "%s must be a whole number; got %g", k, *out);
    return 1;
}

/* Reads params[k] as a string; 1 found, 0 absent, -1 error. */
static int jm_get_str(jm_norm *n, const char *k, const char **out) {
    lua_State *L = n->L;
    lua_getfield(L, n->params, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (lua_type(L, -1) != LUA_TSTRING) {
        const char *tn = lua_typename(L, lua_type(L, -1));
        lua_pop(L, 1);
        return JM_FAIL(n, k, "%s must be a string; got a %s", k, tn);
    }
    {
        size_t len;
        *out = lua_tolstring(L, -1, &len); /* stays alive: params holds it */
        lua_pop(L, 1);
        if (memchr(*out, '\0', len)) /* C would cut it there: the paid request would say less than asked */
            return JM_FAIL(n, k, "%s contains a NUL byte", k);
    }
    return 1;
}

/* Reads params[k] as a boolean; 1 found, 0 absent, -1 error. */
static int jm_get_bool(jm_norm *n, const char *k, int *out) {
    lua_State *L = n->L;
    lua_getfield(L, n->params, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_isboolean(L, -1)) {
        const char *tn = lua_typename(L, lua_type(L, -1));
        lua_pop(L, 1);
        return JM_FAIL(n, k, "%s must be true or false; got a %s", k, tn);
    }
    *out = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return 1;
}

/* Checks that every key of params is a known name; the error suggests the nearest one. */
static int jm_check_names(jm_norm *n, const char *const *names) {
    lua_State *L = n->L;
    lua_pushnil(L);
    while (lua_next(L, n->params)) {
        const char *k, *const *p;
        int known = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            return JM_FAIL(n, NULL, "parameters are named: found a %s key", lua_typename(L, lua_type(L, -1)));
        }
        k = lua_tostring(L, -1);
        for (p = names; *p; p++)
            if (strcmp(k, *p) == 0) known = 1;
        if (!known) {
            const char *near = jm_nearest(k, names);
            lua_pop(L, 1);
            if (near) return JM_FAIL(n, k, "unknown parameter \"%s\": did you mean \"%s\"?", k, near);
            return JM_FAIL(n, k, "unknown parameter \"%s\" (strict=false sends unknown names as they are)", k);
        }
    }
    return 0;
}

/* Copies the parameters the client does not know onto the body (strict=false). */
static void jm_pass_unknown(jm_norm *n, const char *const *names) {
    lua_State *L = n->L;
    lua_pushnil(L);
    while (lua_next(L, n->params)) {
        int known = 0;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2), *const *p;
            for (p = names; *p; p++)
                if (strcmp(k, *p) == 0) known = 1;
        }
        if (!known) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, n->body);
        } else {
            lua_pop(L, 1);
        }
    }
}

/* ---- images, audio, masks ---- */

/* Appends one reference image to the images list: {kind="url"|"data", value=...}. */
static int jm_add_image(jm_norm *n, const char *field, const char *v) {
    lua_State *L = n->L;
    const char *kind;
    if (n->omni) {
        if (!jm_is_http_url(v)) return JM_FAIL(n, field, "%s: the OmniHuman portrait must be an http or https URL", field);
        kind = "url";
        lua_pushstring(L, v);
    } else if (jm_is_http_url(v)) {
        kind = "url";
        lua_pushstring(L, v);
    } else if (strncmp(v, "data:image/", 11) == 0) {
        if (!strstr(v, ";base64,")) return JM_FAIL(n, field, "%s: a data URL must be base64 (data:image/...;base64,...)", field);
        kind = "data";
        lua_pushstring(L, v);
    } else if (strstr(v, "://")) {
        return JM_FAIL(n, field, "%s: only http and https image URLs (or local JPEG/PNG files) are accepted; got %s", field, v);
    } else {
        char err[512];
        if (!jm_image_data_url(L, v, err, sizeof err)) return JM_FAIL(n, field, "%s", err);
        kind = "data";
    }
    lua_newtable(L);
    jm_setstr(L, "kind", kind);
    lua_insert(L, -2);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, n->images, ++n->nimages);
    return 0;
}

/* Reads params[k] as one string or an array of strings, calling fn on each. */
static int jm_each_string(jm_norm *n, const char *k, int (*fn)(jm_norm *, const char *, const char *)) {
    lua_State *L = n->L;
    int i, len, rc = 0;
    lua_getfield(L, n->params, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t sl;
        const char *v = lua_tolstring(L, -1, &sl);
        if (memchr(v, '\0', sl)) {
            lua_pop(L, 1);
            return JM_FAIL(n, k, "%s contains a NUL byte", k);
        }
        rc = fn(n, k, v);
        lua_pop(L, 1);
        return rc;
    }
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return JM_FAIL(n, k, "%s must be a string or an array of strings", k);
    }
    len = (int)jm_rawlen(L, -1);
    if (len == 0) { /* {} (or a table with no array part) is not "no image": the caller meant some */
        lua_pop(L, 1);
        return JM_FAIL(n, k, "%s is an empty list: give at least one, or leave %s out", k, k);
    }
    for (i = 1; i <= len && rc == 0; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING || memchr(lua_tostring(L, -1), '\0', jm_rawlen(L, -1))) {
            lua_pop(L, 2);
            return JM_FAIL(n, k, "%s[%d] must be a string without NUL bytes", k, i);
        }
        rc = fn(n, k, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return rc;
}

/* Masks and audio go straight onto the body's arrays: mask_urls, and the omni content list. */
static int jm_add_mask(jm_norm *n, const char *field, const char *v) {
    lua_State *L = n->L;
    int len;
    if (!n->omni) return JM_FAIL(n, field, "%s: masks belong to OmniHuman requests (generation_type=\"omni_human\")", field);
    if (!jm_is_http_url(v)) return JM_FAIL(n, field, "%s: a mask must be an http or https URL; got %s", field, v);
    lua_getfield(L, n->body, "mask_urls");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, n->body, "mask_urls");
    }
    len = (int)jm_rawlen(L, -1);
    if (len >= JM_MAX_MASKS) {
        lua_pop(L, 1);
        return JM_FAIL(n, field, "at most %d masks (detection returns at most %d subjects)", JM_MAX_MASKS, JM_MAX_MASKS);
    }
    lua_pushstring(L, v);
    lua_rawseti(L, -2, len + 1);
    lua_pop(L, 1);
    return 0;
}

static int jm_set_audio(jm_norm *n, const char *field, const char *v) {
    lua_State *L = n->L;
    if (!n->omni) return JM_FAIL(n, field, "%s: audio belongs to OmniHuman requests (generation_type=\"omni_human\")", field);
    if (!jm_is_http_url(v)) return JM_FAIL(n, field, "%s: the audio must be an http or https URL; got %s", field, v);
    if (!lua_isnil(L, n->audio))
        return JM_FAIL(n, field, "%s: OmniHuman takes exactly one audio; a second one was given", field);
    lua_pushstring(L, v);
    lua_replace(L, n->audio);
    return 0;
}

/* Reads the url of a content item's image_url / audio_url member: {url="..."} or a plain string. */
static const char *jm_item_url(lua_State *L, int item, const char *member) {
    const char *url = NULL;
    size_t len = 0;
    lua_getfield(L, item, member);
    if (lua_type(L, -1) == LUA_TSTRING) {
        url = lua_tolstring(L, -1, &len);
    } else if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "url");
        if (lua_type(L, -1) == LUA_TSTRING) url = lua_tolstring(L, -1, &len);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (url && memchr(url, '\0', len)) return ""; /* refused as "not an http(s) URL" by every caller */
    return url; /* alive while the item is */
}

/* Walks the content array: text -> *text, images -> images list, audio and masks -> body. */
static int jm_read_content(jm_norm *n, const char **text) {
    lua_State *L = n->L;
    int i, len;
    lua_getfield(L, n->params, "content");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return JM_FAIL(n, "content", "content must be an array of items ({type=\"text\", text=...}, ...)");
    }
    len = (int)jm_rawlen(L, -1);
    for (i = 1; i <= len; i++) {
        char field[32];
        const char *type, *role = NULL, *url;
        int item, rc = 0;
        snprintf(field, sizeof field, "content[%d]", i);
        lua_rawgeti(L, -1, i);
        item = lua_gettop(L);
        if (!lua_istable(L, item)) {
            lua_settop(L, item - 2);
            return JM_FAIL(n, field, "%s must be a table with a type", field);
        }
        lua_getfield(L, item, "type");
        type = lua_tostring(L, -1);
        lua_getfield(L, item, "role");
        if (lua_type(L, -1) == LUA_TSTRING) role = lua_tostring(L, -1);
        lua_settop(L, item); /* type and role stay referenced by the item */
        if (!type) {
            lua_settop(L, item - 2);
            return JM_FAIL(n, field, "%s has no type (text, image_url, image_base64 or audio_url)", field);
        }
        if (strcmp(type, "text") == 0) {
            lua_getfield(L, item, "text");
            if (lua_type(L, -1) != LUA_TSTRING) {
                lua_settop(L, item - 2);
                return JM_FAIL(n, field, "%s is a text item without a text string", field);
            }
            if (*text) {
                lua_settop(L, item - 2);
                return JM_FAIL(n, field, "content holds more than one text item; put the whole prompt in one");
            }
            *text = lua_tostring(L, -1);
            lua_pop(L, 1);
        } else if (strcmp(type, "image_url") == 0 || strcmp(type, "image_base64") == 0) {
            url = jm_item_url(L, item, "image_url");
            if (!url) {
                lua_settop(L, item - 2);
                return JM_FAIL(n, field, "%s needs image_url = {url = \"...\"}", field);
            }
            if (role && strcmp(role, "mask_image") == 0) rc = jm_add_mask(n, field, url);
            else if (role) rc = JM_FAIL(n, field, "%s: unknown role \"%s\" (only \"mask_image\")", field, role);
            else if (strcmp(type, "image_base64") == 0 && strncmp(url, "data:image/", 11) != 0)
                rc = JM_FAIL(n, field, "%s: an image_base64 item needs a data:image/...;base64, URL", field);
            else if (strcmp(type, "image_url") == 0 && !jm_is_http_url(url))
                rc = JM_FAIL(n, field, "%s: an image_url item needs an http or https URL (local files go in images)", field);
            else rc = jm_add_image(n, field, url);
        } else if (strcmp(type, "audio_url") == 0) {
            url = jm_item_url(L, item, "audio_url");
            rc = url ? jm_set_audio(n, field, url) : JM_FAIL(n, field, "%s needs audio_url = {url = \"...\"}", field);
        } else {
            lua_settop(L, item - 2);
            return JM_FAIL(n, field, "%s has an unknown type \"%s\" (text, image_url, image_base64 or audio_url)", field, type);
        }
        if (rc) {
            lua_settop(L, item - 2);
            return -1;
        }
        lua_settop(L, item - 1);
    }
    lua_pop(L, 1); /* the content table: its strings stay alive through params */
    return 0;
}

/* The length in bytes of the character at s when it shows nothing: Unicode's White_Space (U+0009-U+000D,
 * U+0020, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000) or a format
 * character that is invisible (U+180E, U+200B-U+200D, U+2060, U+FEFF); else 0. */
static size_t jm_invisible(const unsigned char *s) {
    unsigned cp;
    size_t len;
    if (s[0] < 0x80) return (s[0] == ' ' || (s[0] >= 0x09 && s[0] <= 0x0D)) ? 1 : 0;
    if ((s[0] & 0xE0) == 0xC0 && (s[1] & 0xC0) == 0x80) {
        cp = ((unsigned)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
        len = 2;
    } else if ((s[0] & 0xF0) == 0xE0 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
        cp = ((unsigned)(s[0] & 0x0F) << 12) | ((unsigned)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        len = 3;
    } else {
        return 0; /* four bytes (no such character among them) or not UTF-8 (said by the length check) */
    }
    if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || cp == 0x180E || (cp >= 0x2000 && cp <= 0x200D) ||
        cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x2060 || cp == 0x3000 || cp == 0xFEFF)
        return len;
    return 0;
}

/* Whether s shows nothing: only white space and invisible format characters (jm_invisible). */
static int jm_blank(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t len = jm_invisible(p);
        if (!len) return 0;
        p += len;
    }
    return 1;
}

/* Chooses the prompt (content text wins over prompt, as the API does) and checks its length. */
static int jm_prompt(jm_norm *n, const char *content_text, int required) {
    const char *prompt = NULL;
    long chars;
    int warn_at = n->omni ? JM_OMNI_PROMPT_WARN : JM_PROMPT_WARN;
    if (jm_get_str(n, "prompt", &prompt) < 0) return -1;
    if (content_text) {
        if (prompt && strcmp(prompt, content_text) != 0)
            jm_warn(n, "prompt is ignored: the text in content wins, as the API does");
        prompt = content_text;
    }
    if (!prompt || !*prompt) {
        if (!required) return 0;
        return JM_FAIL(n, "prompt", "prompt is required: describe the video (up to %d characters; %d or fewer work best)",
                       JM_PROMPT_MAX, JM_PROMPT_WARN);
    }
    if (jm_blank(prompt))
        return JM_FAIL(n, "prompt", "prompt is only white space or invisible characters: describe the video (up to %d "
                       "characters)", JM_PROMPT_MAX);
    /* a byte order mark in front (a prompt read from a file some editors wrote) is no part of the prompt */
    if (strncmp(prompt, "\xEF\xBB\xBF", 3) == 0) prompt += 3;
    chars = jm_utf8_len((const unsigned char *)prompt, strlen(prompt));
    if (chars < 0) return JM_FAIL(n, "prompt", "prompt is not valid UTF-8");
    if (chars > JM_PROMPT_MAX) return JM_FAIL(n, "prompt", "prompt is %ld characters; the API takes at most %d", chars, JM_PROMPT_MAX);
    if (chars > warn_at) jm_warn(n, "prompt is %ld characters; the API advises at most %d", chars, warn_at);
    jm_body_str(n, "prompt", prompt);
    return 0;
}

static int jm_seed(jm_norm *n) {
    double seed = -1;
    int rc = jm_get_int(n, "seed", &seed);
    if (rc < 0) return -1;
    if (seed != -1 && (seed < 0 || seed > JM_SEED_MAX))
        return JM_FAIL(n, "seed", "seed must be -1 (random) or 0..4294967295; got %.0f", seed);
    jm_body_int(n, "seed", (lua_Integer)seed);
    return 0;
}

/* ---- video bodies ---- */

static const char *jm_canonical_model(const char *m) {
    int i;
    for (i = 0; i < JM_NMODELS; i++)
        if (strcasecmp(m, jm_models[i]) == 0) return jm_models[i];
    return NULL;
}

static const jm_reqkey *jm_find_reqkey(const char *k) {
    size_t i;
    for (i = 0; i < JM_NREQKEYS; i++)
        if (strcmp(k, jm_reqkeys[i].req_key) == 0) return &jm_reqkeys[i];
    return NULL;
}

static int jm_frames(jm_norm *n) {
    double frames = 0, seconds = 0;
    int hf = jm_get_int(n, "frames", &frames), hs;
    if (hf < 0) return -1;
    hs = jm_get_int(n, "seconds", &seconds);
    if (hs < 0) return -1;
    if (hf && frames != 121 && frames != 241)
        return JM_FAIL(n, "frames", "frames must be 121 (5 s) or 241 (10 s); got %.0f", frames);
    if (hs) {
        double from_seconds;
        if (seconds != 5 && seconds != 10) return JM_FAIL(n, "seconds", "seconds must be 5 or 10; got %.0f", seconds);
        from_seconds = seconds == 5 ? 121 : 241;
        if (hf && frames != from_seconds)
            return JM_FAIL(n, "frames", "frames %.0f and seconds %.0f disagree (%.0f s is %.0f frames)", frames, seconds,
                           seconds, from_seconds);
        frames = from_seconds;
    }
    jm_body_int(n, "frames", hf || hs ? (lua_Integer)frames : 121);
    return 0;
}

static int jm_aspect(jm_norm *n) {
    const char *ar = NULL, *size = NULL, *from_size = NULL;
    int i;
    if (jm_get_str(n, "aspect_ratio", &ar) < 0 || jm_get_str(n, "size", &size) < 0) return -1;
    if (ar) {
        int ok = 0;
        for (i = 0; i < JM_NRATIOS; i++)
            if (strcmp(ar, jm_ratios[i].name) == 0) ok = 1;
        if (!ok) return JM_FAIL(n, "aspect_ratio", "aspect_ratio must be one of %s; got \"%s\"", JM_RATIO_LIST, ar);
    }
    if (size) {
        char *p, *q;
        long w, h;
        double r, best = 1e9;
        errno = 0;
        w = isdigit((unsigned char)size[0]) ? strtol(size, &p, 10) : 0;
        h = w > 0 && (*p == 'x' || *p == 'X' || *p == '*') && isdigit((unsigned char)p[1]) ? strtol(p + 1, &q, 10) : 0;
        if (w <= 0 || h <= 0 || errno || *q != '\0')
            return JM_FAIL(n, "size", "size must be WIDTHxHEIGHT, like \"1280x720\"; got \"%s\"", size);
        r = (double)w / (double)h;
        for (i = 0; i < JM_NRATIOS; i++) {
            double d = fabs(r - jm_ratios[i].ratio) / jm_ratios[i].ratio;
            if (d <= 0.03 && d < best) {
                best = d;
                from_size = jm_ratios[i].name;
            }
        }
        if (!from_size)
            return JM_FAIL(n, "size", "size %s is not near a supported aspect ratio (%s)", size, JM_RATIO_LIST);
        if (ar && strcmp(ar, from_size) != 0)
            return JM_FAIL(n, "aspect_ratio", "aspect_ratio %s and size %s (%s) disagree", ar, size, from_size);
        ar = from_size;
    }
    jm_body_str(n, "aspect_ratio", ar ? ar : "16:9");
    return 0;
}

/* Picks or checks model and req_key for the number of reference images. */
static int jm_model_reqkey(jm_norm *n) {
    const char *model = NULL, *req_key = NULL, *canon = NULL;
    const jm_reqkey *rk = NULL;
    int camera = 0, count = n->nimages;
    if (jm_get_str(n, "model", &model) < 0 || jm_get_str(n, "req_key", &req_key) < 0) return -1;
    if (jm_get_bool(n, "camera_move", &camera) < 0) return -1;
    if (model && !(canon = jm_canonical_model(model))) {
        if (!n->strict) { /* a model newer than this client: sent as given, req_key required */
            if (!req_key) return JM_FAIL(n, "req_key", "req_key is required with model \"%s\", which this client does not know", model);
            jm_body_str(n, "model", model);
            jm_body_str(n, "req_key", req_key);
            return 0;
        }
        {
            const char *near = jm_nearest(model, jm_models);
            return JM_FAIL(n, "model", "unknown model \"%s\"%s%s%s; models: jimeng-video-3.0-pro, jimeng-video-3.0-720P, jimeng-video-3.0-1080P",
                           model, near ? " (did you mean \"" : "", near ? near : "", near ? "\"?)" : "");
        }
    }
    if (req_key) {
        rk = jm_find_reqkey(req_key);
        if (!rk) {
            if (!n->strict && canon) {
                jm_body_str(n, "model", canon);
                jm_body_str(n, "req_key", req_key);
                return 0;
            }
            return JM_FAIL(n, "req_key", "unknown req_key \"%s\" for model %s", req_key, canon ? canon : "(any)");
        }
        if (canon && strcmp(rk->model, canon) != 0)
            return JM_FAIL(n, "req_key", "req_key %s belongs to model %s, not to model %s", req_key, rk->model, canon);
        if (camera && !rk->camera)
            return JM_FAIL(n, "req_key", "camera_move needs req_key jimeng_i2v_recamera_v30 (model jimeng-video-3.0-720P), not %s", req_key);
    } else {
        if (!canon) canon = camera ? "jimeng-video-3.0-720P" : jm_models[0];
        for (size_t i = 0; i < JM_NREQKEYS && !rk; i++) {
            const jm_reqkey *c = &jm_reqkeys[i];
            if (strcmp(c->model, canon) == 0 && c->camera == camera && count >= c->min_images && count <= c->max_images) rk = c;
        }
        if (!rk) {
            if (camera)
                return JM_FAIL(n, "camera_move", "a camera move needs model jimeng-video-3.0-720P and exactly 1 image; got %s with %d", canon, count);
            return JM_FAIL(n, "images", "model %s takes %s reference images; got %d", canon,
                           strcmp(canon, jm_models[0]) == 0 ? "0 or 1" : "0, 1 (first frame) or 2 (first and last frame)", count);
        }
    }
    if (count < rk->min_images || count > rk->max_images) {
        if (rk->min_images == rk->max_images)
            return JM_FAIL(n, "images", "req_key %s (model %s) takes exactly %d reference image%s; got %d", rk->req_key, rk->model,
                           rk->min_images, rk->min_images == 1 ? "" : "s", count);
        return JM_FAIL(n, "images", "req_key %s (model %s) takes %d to %d reference images; got %d", rk->req_key, rk->model,
                       rk->min_images, rk->max_images, count);
    }
    jm_body_str(n, "model", rk->model);
    jm_body_str(n, "req_key", rk->req_key);
    return 0;
}

/* Puts the reference images on the body: image_urls when all are URLs; otherwise all of them, in order,
 * as content items (with the prompt as the text item), the form the page shows for base64 images. */
static void jm_emit_images(jm_norm *n) {
    lua_State *L = n->L;
    int i, all_urls = 1;
    if (n->nimages == 0) return;
    for (i = 1; i <= n->nimages; i++) {
        lua_rawgeti(L, n->images, i);
        lua_getfield(L, -1, "kind");
        if (strcmp(lua_tostring(L, -1), "url") != 0) all_urls = 0;
        lua_pop(L, 2);
    }
    lua_newtable(L);
    if (all_urls) {
        for (i = 1; i <= n->nimages; i++) {
            lua_rawgeti(L, n->images, i);
            lua_getfield(L, -1, "value");
            lua_rawseti(L, -3, i);
            lua_pop(L, 1);
        }
        lua_setfield(L, n->body, "image_urls");
        return;
    }
    lua_newtable(L); /* text item */
    jm_setstr(L, "type", "text");
    lua_getfield(L, n->body, "prompt");
    lua_setfield(L, -2, "text");
    lua_rawseti(L, -2, 1);
    for (i = 1; i <= n->nimages; i++) {
        int is_url;
        lua_rawgeti(L, n->images, i); /* {kind, value} */
        lua_getfield(L, -1, "kind");
        is_url = strcmp(lua_tostring(L, -1), "url") == 0;
        lua_pop(L, 1);
        lua_newtable(L); /* the content item */
        jm_setstr(L, "type", is_url ? "image_url" : "image_base64");
        lua_newtable(L);
        lua_getfield(L, -3, "value");
        lua_setfield(L, -2, "url");
        lua_setfield(L, -2, "image_url");
        lua_rawseti(L, -3, i + 1);
        lua_pop(L, 1);
    }
    lua_setfield(L, n->body, "content");
    lua_pushnil(L);
    lua_setfield(L, n->body, "prompt");
}

static int jm_video(jm_norm *n) {
    const char *text = NULL, *gt = NULL;
    if (n->strict && jm_check_names(n, jm_video_names)) return -1;
    if (jm_get_str(n, "generation_type", &gt) < 0) return -1;
    if (gt && n->strict)
        return JM_FAIL(n, "generation_type", "generation_type \"%s\" is not one the API has: use \"omni_human\" for an OmniHuman video, or leave it out", gt);
    if (jm_each_string(n, "image_urls", jm_add_image) || jm_each_string(n, "images", jm_add_image) ||
        jm_each_string(n, "image", jm_add_image) || jm_read_content(n, &text))
        return -1;
    if (jm_model_reqkey(n) || jm_prompt(n, text, 1) || jm_seed(n) || jm_frames(n) || jm_aspect(n)) return -1;
    jm_emit_images(n);
    if (!n->strict) jm_pass_unknown(n, jm_video_names);
    return 0;
}

/* ---- OmniHuman bodies ---- */

static int jm_omni(jm_norm *n) {
    lua_State *L = n->L;
    const char *text = NULL, *model = NULL, *req_key = NULL, *gt = NULL;
    double res = 1080;
    int fast = 0, has_res, has_fast;
    if (n->strict && jm_check_names(n, jm_omni_names)) return -1;
    if (jm_get_str(n, "model", &model) < 0 || jm_get_str(n, "req_key", &req_key) < 0 ||
        jm_get_str(n, "generation_type", &gt) < 0)
        return -1;
    if (gt && strcmp(gt, "omni_human") != 0)
        return JM_FAIL(n, "generation_type", "generation_type must be \"omni_human\" for an OmniHuman video; got \"%s\"", gt);
    if (model && strcasecmp(model, JM_OMNI_MODEL) != 0 && n->strict)
        return JM_FAIL(n, "model", "OmniHuman videos use model %s; got \"%s\"", JM_OMNI_MODEL, model);
    if (req_key && strcmp(req_key, JM_OMNI_REQ_KEY) != 0 && n->strict)
        return JM_FAIL(n, "req_key", "OmniHuman videos use req_key %s; got \"%s\"", JM_OMNI_REQ_KEY, req_key);
    jm_body_str(n, "model", model && !n->strict ? model : JM_OMNI_MODEL);
    jm_body_str(n, "req_key", req_key && !n->strict ? req_key : JM_OMNI_REQ_KEY);
    jm_body_str(n, "generation_type", "omni_human");
    if (jm_each_string(n, "image", jm_add_image) || jm_each_string(n, "audio", jm_set_audio) ||
        jm_each_string(n, "mask_urls", jm_add_mask) || jm_each_string(n, "masks", jm_add_mask) ||
        jm_each_string(n, "mask", jm_add_mask) || jm_read_content(n, &text))
        return -1;
    if (n->nimages != 1)
        return JM_FAIL(n, "image", "OmniHuman takes exactly one portrait image (an http or https URL); got %d", n->nimages);
    if (lua_isnil(L, n->audio)) return JM_FAIL(n, "audio", "OmniHuman needs one audio URL (http or https, under 60 s)");
    lua_pushvalue(L, n->audio);
    /* content: the portrait, then the audio, as the page shows them */
    lua_newtable(L);
    lua_newtable(L);
    jm_setstr(L, "type", "image_url");
    lua_newtable(L);
    lua_rawgeti(L, n->images, 1);
    lua_getfield(L, -1, "value");
    lua_setfield(L, -3, "url");
    lua_pop(L, 1);
    lua_setfield(L, -2, "image_url");
    lua_rawseti(L, -2, 1);
    lua_newtable(L);
    jm_setstr(L, "type", "audio_url");
    lua_newtable(L);
    lua_pushvalue(L, -4);
    lua_setfield(L, -2, "url");
    lua_setfield(L, -2, "audio_url");
    lua_rawseti(L, -2, 2);
    lua_setfield(L, n->body, "content");
    lua_pop(L, 1);

    if (jm_prompt(n, text, 0) || jm_seed(n)) return -1;
    if ((has_res = jm_get_int(n, "output_resolution", &res)) < 0) return -1;
    {
        double r2 = 0;
        int has_res2 = jm_get_int(n, "resolution", &r2);
        if (has_res2 < 0) return -1;
        if (has_res2) {
            if (has_res && r2 != res) return JM_FAIL(n, "resolution", "resolution %.0f and output_resolution %.0f disagree", r2, res);
            res = r2;
        }
    }
    if (res != 720 && res != 1080)
        return JM_FAIL(n, has_res ? "output_resolution" : "resolution", "output_resolution must be 720 or 1080; got %.0f", res);
    jm_body_int(n, "output_resolution", (lua_Integer)res);
    if ((has_fast = jm_get_bool(n, "pe_fast_mode", &fast)) < 0) return -1;
    if (!has_fast && jm_get_bool(n, "fast", &fast) < 0) return -1;
    if (fast && res == 1080) jm_warn(n, "pe_fast_mode with output_resolution 1080: fast mode trades quality for speed; 720 suits it better");
    lua_pushboolean(L, fast);
    lua_setfield(L, n->body, "pe_fast_mode");
    if (!n->strict) jm_pass_unknown(n, jm_omni_names);
    return 0;
}

/* core.normalize(params[, kind]) -> body, warnings | nil, err */
static int l_normalize(lua_State *L) {
    jm_norm n;
    const char *kind = luaL_optstring(L, 2, NULL);
    int rc;
    if (!lua_istable(L, 1)) return jm_invalid(L, NULL, "parameters must be a table; got a %s", luaL_typename(L, 1));
    lua_settop(L, 2);
    memset(&n, 0, sizeof n);
    n.L = L;
    n.params = 1;
    lua_getfield(L, 1, "strict");
    n.strict = !(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, 1, "generation_type");
    n.omni = (kind && strcmp(kind, "omni_human") == 0) ||
             (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "omni_human") == 0);
    lua_pop(L, 1);
    lua_newtable(L);
    n.body = lua_gettop(L);
    lua_newtable(L);
    n.warnings = lua_gettop(L);
    lua_newtable(L);
    n.images = lua_gettop(L);
    lua_pushnil(L);
    n.audio = lua_gettop(L);
    lua_pushnil(L);
    n.err = lua_gettop(L);
    rc = n.omni ? jm_omni(&n) : jm_video(&n);
    if (rc) return jm_fail_from(L, n.err);
    lua_pushvalue(L, n.body);
    lua_pushvalue(L, n.warnings);
    return 2;
}

/* core.subject_body(which, image_url) -> body | nil, err */
static int l_subject_body(lua_State *L) {
    const char *which = luaL_checkstring(L, 1);
    const char *url = lua_tostring(L, 2);
    const char *req_key;
    if (strcmp(which, "detection") == 0) req_key = JM_DETECT_REQ_KEY;
    else if (strcmp(which, "recognition") == 0) req_key = JM_RECOG_REQ_KEY;
    else return luaL_error(L, "jimeng: unknown subject call %s", which);
    if (lua_type(L, 2) != LUA_TSTRING || !jm_is_http_url(url))
        return jm_invalid(L, "image_url", "%s needs the portrait as an http or https URL", which);
    lua_newtable(L);
    jm_setstr(L, "model", JM_OMNI_MODEL);
    jm_setstr(L, "req_key", req_key);
    jm_setstr(L, "image_url", url);
    return 1;
}

void jm_open_request(lua_State *L) {
    static const luaL_Reg fns[] = {{"normalize", l_normalize}, {"subject_body", l_subject_body}, {NULL, NULL}};
    jm_setfuncs(L, fns, 0);
}
