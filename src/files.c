/* Files: local reference images (sniffed, checked, base64), the locked partial file of a download and its
 * record, atomic commit of downloads, durable appends. */
#define _DEFAULT_SOURCE /* flock: a lock per open file, so two downloads in one process exclude each other too */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jimeng.h"

#define JM_IMAGE_MAX_BYTES 4928307L /* 4.7 MiB, the API's limit for a reference image */
#define JM_IMAGE_MIN_SIDE 320
#define JM_IMAGE_MAX_SIDE 4096
#define JM_IMAGE_MAX_RATIO 3

static const char jm_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void jm_push_base64(lua_State *L, const unsigned char *s, size_t n) {
    luaL_Buffer b;
    size_t i;
    luaL_buffinit(L, &b);
    for (i = 0; i + 2 < n; i += 3) {
        char q[4];
        q[0] = jm_b64[s[i] >> 2];
        q[1] = jm_b64[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        q[2] = jm_b64[((s[i + 1] & 15) << 2) | (s[i + 2] >> 6)];
        q[3] = jm_b64[s[i + 2] & 63];
        luaL_addlstring(&b, q, 4);
    }
    if (i < n) {
        char q[4];
        q[0] = jm_b64[s[i] >> 2];
        if (i + 1 < n) {
            q[1] = jm_b64[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
            q[2] = jm_b64[(s[i + 1] & 15) << 2];
        } else {
            q[1] = jm_b64[(s[i] & 3) << 4];
            q[2] = '=';
        }
        q[3] = '=';
        luaL_addlstring(&b, q, 4);
    }
    luaL_pushresult(&b);
}

/* Reads width and height from a PNG or JPEG header; returns the MIME type or NULL. */
static const char *jm_sniff(const unsigned char *p, size_t n, long *w, long *h) {
    static const unsigned char png[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    *w = *h = 0;
    if (n >= 24 && memcmp(p, png, 8) == 0 && memcmp(p + 12, "IHDR", 4) == 0) {
        *w = ((long)p[16] << 24) | ((long)p[17] << 16) | ((long)p[18] << 8) | p[19];
        *h = ((long)p[20] << 24) | ((long)p[21] << 16) | ((long)p[22] << 8) | p[23];
        return "image/png";
    }
    if (n >= 4 && p[0] == 0xFF && p[1] == 0xD8) {
        size_t i = 2;
        while (i + 4 <= n) {
            unsigned m;
            size_t len;
            if (p[i] != 0xFF) return NULL;
            m = p[i + 1];
            if (m == 0xFF) { /* fill byte */
                i++;
                continue;
            }
            if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { /* markers without a length */
                i += 2;
                continue;
            }
            len = ((size_t)p[i + 2] << 8) | p[i + 3];
            if (len < 2) return NULL;
            if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
                if (i + 9 > n) return NULL;
                *h = ((long)p[i + 5] << 8) | p[i + 6];
                *w = ((long)p[i + 7] << 8) | p[i + 8];
                return "image/jpeg";
            }
            i += 2 + len;
        }
    }
    return NULL;
}

/* Reads a whole file; returns NULL with *err set. */
static unsigned char *jm_slurp(const char *path, long max, size_t *n, char *err, size_t errsz) {
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below as not a regular file) */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    unsigned char *buf;
    long size;
    struct stat st;
    if (!f) {
        snprintf(err, errsz, "cannot read image file %s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) { /* a device or a pipe could block or never end */
        snprintf(err, errsz, "image file %s is not a regular file", path);
        fclose(f);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        snprintf(err, errsz, "cannot read image file %s: %s", path, strerror(errno));
        fclose(f);
        return NULL;
    }
    if (size > max) {
        snprintf(err, errsz, "image file %s is %.1f MB; the API takes at most 4.7 MB", path,
                 (double)size / (1024.0 * 1024.0));
        fclose(f);
        return NULL;
    }
    buf = malloc(size ? (size_t)size : 1);
    if (!buf) {
        snprintf(err, errsz, "out of memory reading %s", path);
        fclose(f);
        return NULL;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        snprintf(err, errsz, "cannot read image file %s: short read", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *n = (size_t)size;
    return buf;
}

/* Pushes the data URL of a local image after checking it, or returns 0 with a message in err. */
int jm_image_data_url(lua_State *L, const char *path, char *err, size_t errsz) {
    size_t n = 0;
    long w, h, lo, hi;
    const char *mime;
    unsigned char *buf = jm_slurp(path, JM_IMAGE_MAX_BYTES, &n, err, errsz);
    if (!buf) return 0;
    mime = jm_sniff(buf, n, &w, &h);
    if (!mime) {
        snprintf(err, errsz, "image file %s is neither JPEG nor PNG", path);
        free(buf);
        return 0;
    }
    lo = w < h ? w : h;
    hi = w < h ? h : w;
    if (lo < JM_IMAGE_MIN_SIDE || hi > JM_IMAGE_MAX_SIDE) {
        snprintf(err, errsz, "image file %s is %ldx%ld; each side must be %d to %d pixels", path, w, h,
                 JM_IMAGE_MIN_SIDE, JM_IMAGE_MAX_SIDE);
        free(buf);
        return 0;
    }
    if (hi > JM_IMAGE_MAX_RATIO * lo) {
        snprintf(err, errsz, "image file %s is %ldx%ld; the long side may be at most %d times the short one", path,
                 w, h, JM_IMAGE_MAX_RATIO);
        free(buf);
        return 0;
    }
    lua_pushfstring(L, "data:%s;base64,", mime);
    jm_push_base64(L, buf, n);
    free(buf);
    lua_concat(L, 2);
    return 1;
}

static int jm_fail(lua_State *L, const char *what, const char *path) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s %s: %s", what, path, strerror(errno));
    return 2;
}

static int jm_fsync_path(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC), rc;
    if (fd < 0) return -1;
    rc = fsync(fd);
    if (close(fd) != 0) rc = -1;
    return rc;
}

static int jm_write_all(int fd, const char *s, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, s + done, n - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        done += (size_t)w;
    }
    return 0;
}

/* ---- the partial file of a download ---- */

static jm_part *jm_check_part(lua_State *L, int i) {
    jm_part *p = luaL_checkudata(L, i, JM_PART_MT);
    if (p->fd < 0) luaL_error(L, "jimeng: the partial file %s is closed", p->path ? p->path : "?");
    return p;
}

/* Whether p->path still names the file this part holds open (not renamed away, not replaced). */
static int jm_part_is_ours(const jm_part *p) {
    struct stat fst, lst;
    return fstat(p->fd, &fst) == 0 && lstat(p->path, &lst) == 0 && fst.st_dev == lst.st_dev && fst.st_ino == lst.st_ino;
}

/* Removes the .part's record when it is a file of its own: a link or a directory planted at its name is not
 * ours to remove (the record is written by renaming a new file onto the name, never through it). -> 0 | errno */
static int jm_part_remove_record(const jm_part *p) {
    struct stat st;
    if (lstat(p->record, &st) != 0) return errno == ENOENT ? 0 : errno;
    if (!S_ISREG(st.st_mode)) return 0;
    return unlink(p->record) != 0 && errno != ENOENT ? errno : 0;
}

static void jm_part_release(jm_part *p) {
    if (p->fd >= 0) (void)close(p->fd); /* releases the lock; nothing was written through it that is not fsynced or left to resume */
    p->fd = -1;
}

/* Copies s into out as the inside of a JSON string; -1 if it does not fit. */
static int jm_json_escape(char *out, size_t outsz, const char *s) {
    size_t j = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (j + 7 >= outsz) return -1;
        if (c == '"' || c == '\\') {
            out[j++] = '\\';
            out[j++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            j += (size_t)snprintf(out + j, outsz - j, "\\u%04x", c);
        } else {
            out[j++] = (char)c;
        }
    }
    out[j] = '\0';
    return 0;
}

int jm_part_write_record(const jm_part *p, const char *task_id, const char *validator, long long total) {
    char text[4096], tmp[4096], id[1100], val[2100];
    int fd, n, e;
    if (jm_json_escape(id, sizeof id, task_id) != 0 || (validator && jm_json_escape(val, sizeof val, validator) != 0))
        return EOVERFLOW;
    if (validator)
        n = snprintf(text, sizeof text, "{\"task_id\":\"%s\",\"validator\":\"%s\",\"total\":%lld}\n", id, val, total);
    else
        n = snprintf(text, sizeof text, "{\"task_id\":\"%s\",\"total\":%lld}\n", id, total);
    if (n < 0 || (size_t)n >= sizeof text) return EOVERFLOW;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", p->record) >= sizeof tmp) return ENAMETOOLONG;
    /* a temp file left by a killed process, or a planted link, is removed (never followed): the .part's lock
     * says no other download of this path is running */
    if (unlink(tmp) != 0 && errno != ENOENT) return errno;
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return errno;
    if (jm_write_all(fd, text, (size_t)n) != 0 || fsync(fd) != 0) {
        e = errno;
        (void)close(fd);
        (void)unlink(tmp);
        return e;
    }
    if (close(fd) != 0 || rename(tmp, p->record) != 0) {
        e = errno;
        (void)unlink(tmp);
        return e;
    }
    return 0;
}

/* core.part_open(part_path) -> part | nil, message
 * Opens (creating it) the partial file of a download without following a link, and locks it: a second
 * download to the same path is refused while this one holds it. */
static int l_part_open(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    size_t len = strlen(path);
    jm_part *p = lua_newuserdata(L, sizeof *p);
    int attempt;
    p->fd = -1;
    p->path = p->record = NULL;
    luaL_getmetatable(L, JM_PART_MT);
    lua_setmetatable(L, -2);
    p->path = malloc(len + 1);
    p->record = malloc(len + 6);
    if (!p->path || !p->record) return luaL_error(L, "jimeng: out of memory");
    memcpy(p->path, path, len + 1);
    memcpy(p->record, path, len);
    memcpy(p->record + len, ".json", 6);
    for (attempt = 0; attempt < 8; attempt++) {
        struct stat st;
        /* read too: its boxes are walked before the commit (mp4.c) */
        int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
        if (fd < 0) {
            if (errno == ELOOP) {
                lua_pushnil(L);
                lua_pushfstring(L, "%s is a symbolic link: refusing to write through it (remove it to download here)", path);
                return 2;
            }
            return jm_fail(L, "cannot open", path);
        }
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            (void)close(fd);
            lua_pushnil(L);
            lua_pushfstring(L, "%s is not a regular file: refusing to write to it", path);
            return 2;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            (void)close(fd);
            errno = e;
            if (e == EWOULDBLOCK) {
                lua_pushnil(L);
                lua_pushfstring(L, "another download is writing %s: wait for it to finish, or choose another path", path);
                return 2;
            }
            return jm_fail(L, "cannot lock", path);
        }
        p->fd = fd;
        /* the holder before us may have renamed this file onto its path while we waited: then it is no longer
         * the .part, and a new one is opened */
        if (jm_part_is_ours(p)) {
            int flags = fcntl(fd, F_GETFL);
            if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
                jm_part_release(p);
                return jm_fail(L, "cannot open", path);
            }
            return 1;
        }
        jm_part_release(p);
    }
    lua_pushnil(L);
    lua_pushfstring(L, "%s keeps being replaced by another program", path);
    return 2;
}

/* part:size() -> bytes it holds */
static int l_part_size(lua_State *L) {
    jm_part *p = jm_check_part(L, 1);
    struct stat st;
    if (fstat(p->fd, &st) != 0) return jm_fail(L, "cannot stat", p->path);
    lua_pushinteger(L, (lua_Integer)st.st_size);
    return 1;
}

/* part:record() -> the record's text | nil (none, a link, or not a small regular file) */
static int l_part_record(lua_State *L) {
    jm_part *p = jm_check_part(L, 1);
    char buf[4096];
    struct stat st;
    ssize_t n;
    size_t got = 0;
    int fd = open(p->record, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size >= (off_t)sizeof buf) {
        (void)close(fd);
        return 0;
    }
    while (got < sizeof buf && (n = read(fd, buf + got, sizeof buf - got)) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            (void)close(fd);
            return 0;
        }
        got += (size_t)n;
    }
    (void)close(fd);
    lua_pushlstring(L, buf, got);
    return 1;
}

/* part:reset() -> true | nil, message: empties the file and removes its record (a download from zero). */
static int l_part_reset(lua_State *L) {
    jm_part *p = jm_check_part(L, 1);
    int e = jm_part_remove_record(p);
    if (e != 0) {
        errno = e;
        return jm_fail(L, "cannot remove", p->record);
    }
    if (ftruncate(p->fd, 0) != 0) return jm_fail(L, "cannot truncate", p->path);
    lua_pushboolean(L, 1);
    return 1;
}

/* part:write_record(task_id, validator | nil, total | nil) -> true | nil, message: binds the bytes it holds to
 * a task again (no total: their length is not known, and a resume asks for what follows them). */
static int l_part_write_record(lua_State *L) {
    jm_part *p = jm_check_part(L, 1);
    const char *id = luaL_checkstring(L, 2), *validator = luaL_optstring(L, 3, NULL);
    int e = jm_part_write_record(p, id, validator, (long long)luaL_optnumber(L, 4, -1));
    if (e != 0) {
        errno = e;
        return jm_fail(L, "cannot write", p->record);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* part:forget() -> true | nil, message: removes the record, keeping the bytes; the next download of the path
 * starts from zero. */
static int l_part_forget(lua_State *L) {
    jm_part *p = jm_check_part(L, 1);
    int e = jm_part_remove_record(p);
    if (e != 0) {
        errno = e;
        return jm_fail(L, "cannot remove", p->record);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static size_t jm_pread_at(void *ud, unsigned long long off, unsigned char *buf, size_t n) {
    int fd = *(const int *)ud;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    return got;
}

/* Walks the boxes of the open file fd; pushes nothing and returns 0 when it is a whole MP4, else pushes nil,
 * the reason, "short" or "bad" (mp4.c) and returns 3. */
static int jm_push_mp4_verdict(lua_State *L, int fd, const char *path) {
    char why[512];
    struct stat st;
    int verdict;
    if (fstat(fd, &st) != 0) return jm_fail(L, "cannot stat", path);
    verdict = jm_mp4_walk(jm_pread_at, &fd, (unsigned long long)st.st_size, why, sizeof why);
    if (verdict == JM_MP4_OK) return 0;
    lua_pushnil(L);
    lua_pushstring(L, why);
    lua_pushstring(L, verdict == JM_MP4_SHORT ? "short" : "bad");
    return 3;
}

/* part:commit(path) -> true | nil, message[, "short" | "bad"]
 * Makes a finished download durable: checks that it is a whole MP4 (mp4.c; else nil, why, and whether more
 * bytes may complete it: "short", or not: "bad", the .part and its record left as they are), fsync the file,
 * rename it onto path (only if the .part is still the file this call wrote), fsync the directory, remove the
 * record; then the lock is released. */
static int l_part_commit(lua_State *L) {
    jm_part *p = jm_check_part(L, 1);
    const char *path = luaL_checkstring(L, 2);
    const char *slash = strrchr(path, '/');
    int n;
    if (!jm_part_is_ours(p)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s was moved or replaced during the download: not renaming it onto %s", p->path, path);
        return 2;
    }
    if ((n = jm_push_mp4_verdict(L, p->fd, p->path)) != 0) return n;
    if (fsync(p->fd) != 0) return jm_fail(L, "cannot fsync", p->path);
    if (rename(p->path, path) != 0) return jm_fail(L, "cannot rename onto", path);
    if (slash) {
        lua_pushlstring(L, path, slash == path ? 1 : (size_t)(slash - path));
        if (jm_fsync_path(lua_tostring(L, -1), O_RDONLY | O_DIRECTORY) != 0) return jm_fail(L, "cannot fsync directory", lua_tostring(L, -1));
        lua_pop(L, 1);
    } else if (jm_fsync_path(".", O_RDONLY | O_DIRECTORY) != 0) {
        return jm_fail(L, "cannot fsync directory", ".");
    }
    (void)jm_part_remove_record(p); /* a record left without its .part binds nothing: an empty .part restarts */
    jm_part_release(p);
    lua_pushboolean(L, 1);
    return 1;
}

/* part:discard(): removes the .part (if it is still this one) and its record, and releases the lock. */
static int l_part_discard(lua_State *L) {
    jm_part *p = jm_check_part(L, 1);
    if (jm_part_is_ours(p)) {
        (void)unlink(p->path);
        (void)jm_part_remove_record(p);
    }
    jm_part_release(p);
    return 0;
}

/* part:close() (also __gc, __close): releases the lock and keeps the files for the next call. */
static int l_part_close(lua_State *L) {
    jm_part *p = luaL_checkudata(L, 1, JM_PART_MT);
    jm_part_release(p);
    return 0;
}

static int l_part_gc(lua_State *L) {
    jm_part *p = luaL_checkudata(L, 1, JM_PART_MT);
    jm_part_release(p);
    free(p->path);
    free(p->record);
    p->path = p->record = NULL;
    return 0;
}

/* core.mp4_check(path) -> true | nil, why[, "short" | "bad"]: whether the file is a whole MP4 video (mp4.c) */
static int l_mp4_check(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC), n;
    if (fd < 0) return jm_fail(L, "cannot open", path);
    n = jm_push_mp4_verdict(L, fd, path);
    (void)close(fd);
    if (n != 0) return n;
    lua_pushboolean(L, 1);
    return 1;
}

/* core.file_size(path) -> bytes | nil (absent, or not a regular file: a link is not followed) */
static int l_file_size(lua_State *L) {
    struct stat st;
    if (lstat(luaL_checkstring(L, 1), &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    lua_pushinteger(L, (lua_Integer)st.st_size);
    return 1;
}

/* core.file_mode(path) -> permission bits (of what a link points to) | nil: a key file readable by others is refused */
static int l_file_mode(lua_State *L) {
    struct stat st;
    if (stat(luaL_checkstring(L, 1), &st) != 0) return 0;
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    return 1;
}

/* Takes an exclusive flock on fd (the file at path) and waits for it as long as another process holds it, but
 * never past a trapped signal (Ctrl-C, SIGTERM): a blocking flock(2) would be restarted by a retry on EINTR and
 * wait forever. Tries without blocking, then sleeps 50 ms at a time (on the signals' self-pipe while no signal
 * is caught); after 3 s says once on stderr what it waits for. The signal that ends it is one that comes during
 * the wait: after a first Ctrl-C (a paid answer being recorded) it waits on for a holder that lets go, until a
 * second one (core.insisted). -> 0 | errno (EINTR: a signal ended the wait). */
int jm_flock_wait(int fd, const char *path) {
    double start = jm_now();
    int said = 0, caught_before = jm_interrupted() != 0, insisted_before = jm_insisted();
    for (;;) {
        struct pollfd pfd;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) return 0;
        if (errno == EINTR) continue;
        if (errno != EWOULDBLOCK) return errno;
        if (insisted_before || (caught_before ? jm_insisted() : jm_interrupted() != 0)) return EINTR;
        if (!said && jm_now() - start >= 3.0) {
            fprintf(stderr, "jimeng: waiting for the lock on %s: another process holds it (Ctrl-C to stop)\n", path);
            said = 1;
        }
        /* the self-pipe wakes the sleep at a signal; once one was caught it may hold a byte no one drains */
        pfd.fd = caught_before ? -1 : jm_signal_fd();
        pfd.events = POLLIN;
        pfd.revents = 0;
        (void)poll(&pfd, 1, 50);
    }
}

/* core.append_durable(path, data[, locked]) -> true | nil, message: one append and an fsync (journals).
 * locked: under an exclusive flock (a file that processes share, the ledger: their lines never mix), never
 * through a link, and a new file is its owner's only (0600). */
static int l_append_durable(lua_State *L) {
    size_t n;
    const char *path = luaL_checkstring(L, 1), *data = luaL_checklstring(L, 2, &n);
    int locked = lua_toboolean(L, 3);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (locked ? O_NOFOLLOW : 0), locked ? 0600 : 0644);
    if (fd < 0) return jm_fail(L, "cannot open", path);
    if (locked) {
        int e = jm_flock_wait(fd, path);
        if (e) {
            close(fd);
            errno = e;
            return jm_fail(L, e == EINTR ? "interrupted while waiting for the lock on" : "cannot lock", path);
        }
    }
    if (jm_write_all(fd, data, n) != 0) {
        close(fd);
        return jm_fail(L, "cannot write", path);
    }
    if (fsync(fd) != 0) {
        close(fd);
        return jm_fail(L, "cannot fsync", path);
    }
    if (close(fd) != 0) return jm_fail(L, "cannot close", path);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.wait_lock(path) -> true | nil, message: waits (jm_flock_wait: Ctrl-C ends it, a long wait is said on
 * stderr) until no other process holds the flock of the file at path, then lets it go; true at once when no
 * file opens there (the ledger line itself then says why). Before a paid create: the ledger line written at
 * hand-over takes that lock, and waiting for it there, inside libcurl's callback, is waiting where nothing can
 * be said or stopped. */
static int l_wait_lock(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int e, fd = open(path, O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { /* nothing to wait for (absent), or no file to write (a directory, a FIFO): the line says so */
        lua_pushboolean(L, 1);
        return 1;
    }
    e = jm_flock_wait(fd, path);
    (void)close(fd); /* releases the flock */
    if (e) {
        errno = e;
        return jm_fail(L, e == EINTR ? "interrupted while waiting for the lock on" : "cannot lock", path);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.file_id(path) -> "dev:inode:size:mtime_ns" | nil: which file is at path, as the ledger binds a saved
 * video to it (a file replaced, rewritten or touched has another); a link is not followed. */
static int l_file_id(lua_State *L) {
    struct stat st;
    char out[96];
    if (lstat(luaL_checkstring(L, 1), &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    snprintf(out, sizeof out, "%llu:%llu:%lld:%lld%09ld", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
             (long long)st.st_size, (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec);
    lua_pushstring(L, out);
    return 1;
}

/* core.sniff_image(bytes) -> mime, width, height | nil */
static int l_sniff_image(lua_State *L) {
    size_t n;
    long w, h;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *mime = jm_sniff((const unsigned char *)s, n, &w, &h);
    if (!mime) return 0;
    lua_pushstring(L, mime);
    lua_pushinteger(L, w);
    lua_pushinteger(L, h);
    return 3;
}

/* core.isatty(fd) -> boolean: whether a progress bar may redraw its line there. */
static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* core.fingerprint(s) -> 32 hex digits: two independent 64-bit FNV-1a hashes of s (one over the bytes,
 * one over them in reverse with another offset). A stable identity for batch jobs, not a security hash. */
static int l_fingerprint(lua_State *L) {
    size_t n, i;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    unsigned long long a = 14695981039346656037ULL, b = 0x84222325cbf29ce4ULL;
    const unsigned long long prime = 1099511628211ULL;
    char out[33];
    for (i = 0; i < n; i++) {
        a = (a ^ s[i]) * prime;
        b = (b ^ s[n - 1 - i]) * prime;
    }
    b ^= (unsigned long long)n;
    snprintf(out, sizeof out, "%016llx%016llx", a, b);
    lua_pushstring(L, out);
    return 1;
}

/* ---- output paths, checked before anything is paid for ---- */

/* core.check_output(path[, beside]) -> "absent" | "file", or nil, message: whether a video can be saved at path.
 * The path itself must be absent or a regular file (not a directory, a link or a device); its directory
 * must exist and be writable by us. The longest name written next to it, path .. beside (default
 * ".part.json.tmp": a download's record being replaced; "" for a file appended to), must fit the directory's
 * NAME_MAX and PATH_MAX: refused now, not after a create was paid for. Nothing is created. */
#define JM_LONGEST_BESIDE ".part.json.tmp"
static int l_check_output(lua_State *L) {
    size_t n, bn = 0, name;
    const char *path = luaL_checklstring(L, 1, &n), *slash;
    const char *beside = luaL_optlstring(L, 2, JM_LONGEST_BESIDE, &bn);
    struct stat st;
    const char *state = "absent";
    long name_max;
    if (n == 0 || memchr(path, 0, n)) {
        lua_pushnil(L);
        lua_pushliteral(L, "the output path is empty or contains NUL");
        return 2;
    }
    if (path[n - 1] == '/') {
        lua_pushnil(L);
        lua_pushfstring(L, "%s names a directory, not a file", path);
        return 2;
    }
    slash = strrchr(path, '/');
    name = slash ? n - (size_t)(slash + 1 - path) : n;
    if (slash) lua_pushlstring(L, path, slash == path ? 1 : (size_t)(slash - path));
    else lua_pushliteral(L, ".");
    name_max = pathconf(lua_tostring(L, -1), _PC_NAME_MAX);
    if (name_max <= 0) name_max = NAME_MAX;
    lua_pop(L, 1);
    if (name + bn > (size_t)name_max) {
        lua_pushnil(L);
        if (bn) lua_pushfstring(L, "the file name of %s is too long: at most %d bytes, and the name of what is "
                               "written beside it (<name>%s) would be %d", path, (int)(name_max - (long)bn), beside,
                               (int)(name + bn));
        else lua_pushfstring(L, "the file name of %s is too long: at most %d bytes, it has %d", path, (int)name_max,
                             (int)name);
        return 2;
    }
    if (n + bn >= PATH_MAX) {
        lua_pushnil(L);
        lua_pushfstring(L, "the path %s is too long: at most %d bytes, and the path of what is written beside it "
                        "(<path>%s) would be %d", path, (int)(PATH_MAX - 1 - bn), beside, (int)(n + bn));
        return 2;
    }
    if (lstat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            lua_pushnil(L);
            lua_pushfstring(L, "%s is a directory, not a file", path);
            return 2;
        }
        if (!S_ISREG(st.st_mode)) {
            lua_pushnil(L);
            lua_pushfstring(L, "%s exists and is not a regular file (a link, a device or a pipe)", path);
            return 2;
        }
        state = "file";
    } else if (errno != ENOENT) {
        return jm_fail(L, "cannot check", path);
    }
    if (slash) lua_pushlstring(L, path, slash == path ? 1 : (size_t)(slash - path));
    else lua_pushliteral(L, ".");
    if (stat(lua_tostring(L, -1), &st) != 0) {
        if (errno == ENOENT) {
            lua_pushnil(L);
            lua_pushfstring(L, "the directory %s does not exist (for %s)", lua_tostring(L, -2), path);
            return 2;
        }
        return jm_fail(L, "cannot check directory", lua_tostring(L, -1));
    }
    if (!S_ISDIR(st.st_mode)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s is not a directory (for %s)", lua_tostring(L, -2), path);
        return 2;
    }
    if (access(lua_tostring(L, -1), W_OK | X_OK) != 0) return jm_fail(L, "cannot write in directory", lua_tostring(L, -1));
    lua_pushstring(L, state);
    return 1;
}

/* core.canonical_path(path) -> the absolute path with its directory resolved (links, ".", ".."), or nil when
 * the directory does not exist: one file, whatever the spelling ("same.mp4", "./same.mp4", "a/../same.mp4"). */
static int l_canonical_path(lua_State *L) {
    size_t n;
    const char *path = luaL_checklstring(L, 1, &n), *slash = strrchr(path, '/');
    char *dir;
    if (n == 0 || memchr(path, 0, n) || path[n - 1] == '/') return 0;
    if (slash) lua_pushlstring(L, path, slash == path ? 1 : (size_t)(slash - path));
    else lua_pushliteral(L, ".");
    dir = realpath(lua_tostring(L, -1), NULL);
    if (!dir) return 0;
    lua_pushfstring(L, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, slash ? slash + 1 : path);
    free(dir);
    return 1;
}

/* core.mkdirs(dir) -> true | nil, message: makes dir and its missing parents (mode 0755). */
static int l_mkdirs(lua_State *L) {
    size_t n, i;
    const char *dir = luaL_checklstring(L, 1, &n);
    char *p;
    struct stat st;
    if (n == 0 || memchr(dir, 0, n)) {
        lua_pushnil(L);
        lua_pushliteral(L, "the directory name is empty or contains NUL");
        return 2;
    }
    p = malloc(n + 1);
    if (!p) return luaL_error(L, "jimeng: out of memory");
    memcpy(p, dir, n + 1);
    for (i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        p[i] = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int e = errno;
            lua_pushnil(L);
            lua_pushfstring(L, "cannot make directory %s: %s", p, strerror(e));
            free(p);
            return 2;
        }
        if (i < n) p[i] = '/';
    }
    free(p);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s is not a directory", dir);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.write_atomic(path, data) -> true | nil, message
 * Replaces path with data whole: written to path.tmp, opened as a .part is (a file or link left there is
 * removed, never followed: O_EXCL | O_NOFOLLOW), then renamed onto path. For the files a locked run rewrites
 * (the gallery, results.json, takes.json): its lock says no other writer of path.tmp is ours. */
static int l_write_atomic(lua_State *L) {
    size_t n;
    const char *path = luaL_checkstring(L, 1), *data = luaL_checklstring(L, 2, &n), *tmp;
    int fd;
    lua_pushfstring(L, "%s.tmp", path);
    tmp = lua_tostring(L, -1);
    if (unlink(tmp) != 0 && errno != ENOENT) return jm_fail(L, "cannot remove", tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return jm_fail(L, "cannot create", tmp);
    if (jm_write_all(fd, data, n) != 0) {
        int e = errno;
        (void)close(fd);
        (void)unlink(tmp);
        errno = e;
        return jm_fail(L, "cannot write", tmp);
    }
    if (close(fd) != 0) {
        int e = errno;
        (void)unlink(tmp);
        errno = e;
        return jm_fail(L, "cannot write", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        (void)unlink(tmp);
        errno = e;
        return jm_fail(L, "cannot rename onto", path);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- locks: one process at a time on a journal ---- */

#define JM_LOCK_MT "jimeng.lock"

typedef struct {
    int fd;
} jm_lock;

/* core.lock(path) -> lock | nil, message, "locked": an exclusive flock on path (created if absent, never
 * through a link), held until lock:unlock() or the lock is collected. Refuses at once if another holds it. */
static int l_lock(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    jm_lock *lk = lua_newuserdata(L, sizeof *lk);
    lk->fd = -1;
    luaL_getmetatable(L, JM_LOCK_MT);
    lua_setmetatable(L, -2);
    lk->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (lk->fd < 0) return jm_fail(L, "cannot open", path);
    if (flock(lk->fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(lk->fd);
        lk->fd = -1;
        lua_pushnil(L);
        if (e == EWOULDBLOCK) {
            lua_pushfstring(L, "%s is in use by another run (it holds the lock)", path);
            lua_pushliteral(L, "locked");
            return 3;
        }
        lua_pushfstring(L, "cannot lock %s: %s", path, strerror(e));
        return 2;
    }
    return 1;
}

static int l_unlock(lua_State *L) {
    jm_lock *lk = luaL_checkudata(L, 1, JM_LOCK_MT);
    if (lk->fd >= 0) close(lk->fd); /* closing the descriptor releases the flock */
    lk->fd = -1;
    return 0;
}

void jm_open_files(lua_State *L) {
    static const luaL_Reg part_m[] = {
        {"size", l_part_size},       {"record", l_part_record}, {"reset", l_part_reset}, {"commit", l_part_commit},
        {"discard", l_part_discard}, {"close", l_part_close},   {"write_record", l_part_write_record},
        {"forget", l_part_forget},   {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"part_open", l_part_open}, {"file_size", l_file_size}, {"file_id", l_file_id}, {"file_mode", l_file_mode},
        {"append_durable", l_append_durable}, {"wait_lock", l_wait_lock},
        {"sniff_image", l_sniff_image}, {"isatty", l_isatty},
        {"fingerprint", l_fingerprint}, {"check_output", l_check_output}, {"mkdirs", l_mkdirs},
        {"canonical_path", l_canonical_path},
        {"lock", l_lock}, {"mp4_check", l_mp4_check}, {"write_atomic", l_write_atomic}, {NULL, NULL},
    };
    static const luaL_Reg lock_m[] = {{"unlock", l_unlock}, {NULL, NULL}};
    jm_new_class(L, JM_PART_MT, part_m, l_part_gc, l_part_close);
    jm_new_class(L, JM_LOCK_MT, lock_m, l_unlock, NULL);
    jm_setfuncs(L, fns, 0);
}
