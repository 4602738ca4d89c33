/* jimeng.core: what the C files share. util.c (helpers) depends on nothing; signals.c, engine.c, request.c,
 * response.c, files.c and url.c use util.c and, where said below, each other; core.c only registers them.
 * The engine's own files (engine.c and its rooms) share engine_internal.h besides. */
#ifndef JIMENG_H
#define JIMENG_H

#include <stddef.h>
#include <lua.h>
#include <lauxlib.h>

/* The one source of the version: Lua reads it as jimeng.core._VERSION, the Makefile and the
 * version spec read it from this line. */
#define JM_VERSION "0.1.0"

/* Symbols shared between the C files: hidden, so only luaopen_jimeng_core is exported. */
#if defined(__GNUC__)
#define JM_HIDDEN __attribute__((visibility("hidden")))
#else
#define JM_HIDDEN
#endif

/* Lua 5.1 / LuaJIT shims under our own names, so they never collide with LuaJIT's own symbols. */
#if LUA_VERSION_NUM < 502
#define jm_rawlen(L, i) lua_objlen((L), (i))
JM_HIDDEN void jm_setfuncs(lua_State *L, const luaL_Reg *l, int nup);
#else
#define jm_rawlen(L, i) lua_rawlen((L), (i))
#define jm_setfuncs(L, l, n) luaL_setfuncs((L), (l), (n))
#endif

/* util.c: sets t[k] = v for the table at the top of the stack. */
JM_HIDDEN void jm_setstr(lua_State *L, const char *k, const char *v);
JM_HIDDEN void jm_setlstr(lua_State *L, const char *k, const char *v, size_t n);
JM_HIDDEN void jm_setint(lua_State *L, const char *k, lua_Integer v);
JM_HIDDEN void jm_setbool(lua_State *L, const char *k, int v);

/* util.c: monotonic seconds; the number of UTF-8 characters (-1: invalid UTF-8); the name of `names`
 * (NULL-terminated) nearest to s by edit distance, or NULL when none is close enough to be a typo; a
 * userdata class (metatable `name` with methods as __index, and __gc / __close when given). */
JM_HIDDEN double jm_now(void);
JM_HIDDEN long jm_utf8_len(const unsigned char *s, size_t n);
JM_HIDDEN const char *jm_nearest(const char *s, const char *const *names);
JM_HIDDEN void jm_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                            lua_CFunction close);

/* signals.c: the signal number caught since the trap was set (0: none); the read end of the self-pipe a
 * trapped signal writes to (-1: no trap), for every wait to watch; a wait's milliseconds made sane. */
JM_HIDDEN int jm_interrupted(void);
JM_HIDDEN int jm_insisted(void); /* a second signal came after the first (core.insisted) */
JM_HIDDEN int jm_signal_fd(void);
JM_HIDDEN double jm_wait_cap(double ms);

/* host.c, for loop.c (the blocking wait on libcurl's sockets and timer): the engine at stack index i
 * (raises if it is not one or is closed); the sockets libcurl wants watched, into fds (up to cap; returns how
 * many there are); milliseconds until it wants a step with no socket ready (-1: never); one socket action
 * (fd < 0: its timer, if due; returns whether one ran); the finished transfers, pushed as engine:perform's
 * running, finished | nil. */
struct jm_engine;
struct pollfd;
JM_HIDDEN struct jm_engine *jm_engine_check(lua_State *L, int i);
JM_HIDDEN int jm_engine_pollfds(const struct jm_engine *e, struct pollfd *fds, int cap);
JM_HIDDEN double jm_engine_due_ms(const struct jm_engine *e);
JM_HIDDEN int jm_engine_act(lua_State *L, struct jm_engine *e, int fd, int mask);
JM_HIDDEN int jm_engine_collect(lua_State *L, struct jm_engine *e);
/* Registration of each C file's functions into the module table at the top of the stack. */
JM_HIDDEN void jm_open_util(lua_State *L);
JM_HIDDEN void jm_open_signals(lua_State *L);
JM_HIDDEN void jm_open_engine(lua_State *L);
JM_HIDDEN void jm_open_request(lua_State *L);
JM_HIDDEN void jm_open_response(lua_State *L);
JM_HIDDEN void jm_open_files(lua_State *L);
JM_HIDDEN void jm_open_url(lua_State *L);
JM_HIDDEN void jm_open_share(lua_State *L);
JM_HIDDEN void jm_open_loop(lua_State *L);
JM_HIDDEN void jm_open_status(lua_State *L);

/* response.c: the client's status word for the API's (in_queue, processing, completed, failed), or NULL. */
JM_HIDDEN const char *jm_map_status(const char *s);

/* files.c: an exclusive flock on fd (the file at path), waited for until a trapped signal: 0 | errno (EINTR:
 * interrupted). Every wait for a shared file's lock (the ledger) goes through it. */
JM_HIDDEN int jm_flock_wait(int fd, const char *path);

/* files.c: a download's partial file, <path>.part, opened without following a link and locked (flock) from
 * core.part_open until it is committed or closed; its record <path>.part.json says whose bytes it holds. */
#define JM_PART_MT "jimeng.part"
typedef struct {
    int fd;       /* open for writing and locked; -1 once closed */
    char *path;   /* <path>.part */
    char *record; /* <path>.part.json */
} jm_part;
/* files.c: replaces the record (temp file, fsync, rename: never through a link); returns 0 or an errno. */
JM_HIDDEN int jm_part_write_record(const jm_part *p, const char *task_id, const char *validator, long long total);

/* mp4.c: whether a file is a whole MP4 by its top-level boxes. read_at reads n bytes at off into buf and
 * returns how many it read. JM_MP4_SHORT: a clean prefix that more bytes may complete; JM_MP4_BAD: another
 * format, or boxes no more bytes can mend; why gets the reason either way. */
enum { JM_MP4_OK, JM_MP4_SHORT, JM_MP4_BAD };
typedef size_t (*jm_read_at)(void *ud, unsigned long long off, unsigned char *buf, size_t n);
JM_HIDDEN int jm_mp4_walk(jm_read_at read_at, void *ud, unsigned long long size, char *why, size_t whysz);
/* mp4.c: NULL when the first n bytes begin an MP4 (an ftyp box) or are too few to tell; else what they are
 * ("a WebM video", "an HTML page", ...), written into out. */
JM_HIDDEN const char *jm_mp4_kind(const unsigned char *p, size_t n, char *out, size_t outsz);
JM_HIDDEN int jm_is_text(const unsigned char *p, size_t n);

/* files.c: base64 of a buffer, pushed as a Lua string (raises only on memory exhaustion). */
JM_HIDDEN void jm_push_base64(lua_State *L, const unsigned char *src, size_t n);
/* files.c: pushes the data URL of a checked local JPEG/PNG, or returns 0 with a message in err. */
JM_HIDDEN int jm_image_data_url(lua_State *L, const char *path, char *err, size_t errsz);

/* url.c: whether a host (as libcurl gives it: IPv6 in brackets) is loopback; whether a no-proxy list
 * (libcurl's syntax) covers it. */
JM_HIDDEN int jm_host_is_loopback(const char *host);
JM_HIDDEN int jm_noproxy_match(const char *host, const char *list);
/* url.c: whether a request to url goes through a proxy: `proxy` (NULL: libcurl's environment variables) unless
 * `noproxy` (NULL: no_proxy / NO_PROXY) covers its host; when it does, `where` gets the proxy's host:port. */
JM_HIDDEN int jm_proxy_for(const char *url, const char *proxy, const char *noproxy, char *where, size_t wheresz);

/* share.c: a budget shared by clients (core.share_open): the engine takes a request's token from it
 * (jm_share_take: 1, or 0 with *next = when the next token comes), and holds it while attached. */
typedef struct jm_share jm_share;
JM_HIDDEN int jm_share_take(jm_share *s, double *next);
JM_HIDDEN void jm_share_debit(struct jm_share *s);
JM_HIDDEN void jm_share_hold(jm_share *s);
JM_HIDDEN void jm_share_drop(jm_share *s);
JM_HIDDEN jm_share *jm_share_check(lua_State *L, int i);

#endif
