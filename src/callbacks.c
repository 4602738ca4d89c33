/* A transfer's libcurl callbacks: where the answer's header lines and body go (the sinks), the moment a
 * request is handed to the wire, and the close of a paid request's socket. They never call Lua.
 *
 * A download streams its body into a partial file (a locked jm_part of files.c, which outlives the retries
 * of one call). Whether the body goes there is decided from the final response's status, headers and first
 * bytes: a 206 is appended only if its Content-Range starts at the requested offset, its validator (ETag,
 * else Last-Modified) is the one sent in If-Range and its total is the record's; a 200 restarts the file from
 * zero after the record (task id, validator, total) is written beside it. A video must come identity-encoded
 * and with a length. Anything else (an error status, or a body that is JSON, HTML or text by its type or by
 * its first bytes) is kept in memory so that Lua can report the server's message instead of saving it. */
#define _GNU_SOURCE /* sync_file_range on Linux; POSIX 2008 everywhere */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_acked (glibc's netinet/tcp.h lacks it) */
#include <netinet/in.h>
#endif

#include "engine_internal.h"

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

void jm_buf_free(jm_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Walks header lines "Name: value" of h from *cursor: gives the next line's name and value (trimmed) and
 * returns 1, or 0 at the end. The one reader of header lines, for jm_header_value and jm_push_headers. */
int jm_next_header(const char **cursor, const char **name, size_t *nlen, const char **value, size_t *vlen) {
    const char *line = *cursor;
    while (line && *line) {
        const char *eol = strchr(line, '\n');
        const char *end = eol ? eol : line + strlen(line);
        const char *colon = memchr(line, ':', (size_t)(end - line));
        *cursor = eol ? eol + 1 : end;
        if (colon && colon > line) {
            const char *v = colon + 1, *vend = end;
            while (v < vend && (*v == ' ' || *v == '\t')) v++;
            while (vend > v && isspace((unsigned char)vend[-1])) vend--;
            *name = line;
            *nlen = (size_t)(colon - line);
            *value = v;
            *vlen = (size_t)(vend - v);
            return 1;
        }
        line = *cursor;
    }
    return 0;
}

/* Finds header `name` (lower case) in the raw header lines; copies its trimmed value into out. */
int jm_header_value(const jm_buf *h, const char *name, char *out, size_t outsz) {
    size_t want = strlen(name), nlen, vlen;
    const char *cursor = h->p, *n, *v;
    while (jm_next_header(&cursor, &n, &nlen, &v, &vlen)) {
        if (nlen == want && strncasecmp(n, name, nlen) == 0) {
            if (vlen >= outsz) vlen = outsz - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return 1;
        }
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

size_t jm_on_header(char *ptr, size_t size, size_t nitems, void *ud) {
    jm_transfer *t = ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) { /* a new response (redirect, 100-continue, final) */
        const char *sp = memchr(ptr, ' ', n);
        t->hversion = n > 5 && isdigit((unsigned char)ptr[5]) ? (ptr[5] - '0') * 10 : 0;
        if (n > 7 && ptr[6] == '.' && isdigit((unsigned char)ptr[7])) t->hversion += ptr[7] - '0';
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

static int jm_refuse(jm_transfer *t, const char *why) {
    t->refused = why;
    return 0;
}

/* A non-negative decimal size, or -1. */
static long long jm_parse_size(const char *v) {
    char *end;
    long long n;
    if (!isdigit((unsigned char)*v)) return -1;
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno || *end) return -1;
    return n;
}

/* The response's validator: its ETag, else its Last-Modified. A weak ETag (W/"...") cannot serve in If-Range
 * (servers answer it with the whole body), so a Last-Modified wins over it. */
static int jm_validator(const jm_transfer *t, char *out, size_t outsz) {
    if (jm_header_value(&t->head, "etag", out, outsz) && strncmp(out, "W/", 2) != 0) return 1;
    if (jm_header_value(&t->head, "last-modified", out, outsz)) return 1;
    return jm_header_value(&t->head, "etag", out, outsz);
}

/* Whether the first bytes of a body are JSON, HTML/XML or text rather than a video: an opening {, [, < or ",
 * or nothing but printable ASCII and well-formed UTF-8 (a sequence cut by the end of the sample counts). */
static int jm_looks_textual(const unsigned char *p, size_t n) {
    size_t i = 0;
    if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) i = 3; /* UTF-8 byte order mark */
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
    if (i < n && (p[i] == '{' || p[i] == '[' || p[i] == '<' || p[i] == '"')) return 1;
    if (n == 0) return 0;
    return jm_is_text(p + i, n - i);
}

/* Decides where the body of the final response goes; returns 0 to abort the transfer.
 * How the body ends decides whether it may come without a length: a chunked body (RFC 9112 7.1) ends with
 * its zero-length chunk and an HTTP/2 or HTTP/3 stream with its END_STREAM flag, and libcurl fails a
 * transfer that closes before either (CURLE_PARTIAL_FILE, CURLE_HTTP2_STREAM); only an HTTP/1.x body with
 * neither a length nor chunked framing ends wherever the connection closes, a cut one as "whole" as a whole
 * one. Whatever the framing, the file is walked as an MP4 before it is committed (mp4.c, part:commit). */
static int jm_choose_sink(jm_transfer *t) {
    char v[1024] = {0};
    long status = t->hstatus;
    long long length = -1;
    int framed = t->hversion >= 20;
    if (status != 200 && status != 206) {
        t->sink = JM_SINK_MEMORY;
        return 1;
    }
    if (t->expect_binary && jm_header_value(&t->head, "content-type", v, sizeof v) && jm_is_textual(v)) {
        t->sink = JM_SINK_MEMORY;
        return 1;
    }
    /* a video is saved as its bytes: an encoded one would be saved encoded, or decoded past every check */
    if (jm_header_value(&t->head, "content-encoding", v, sizeof v) && strcasecmp(v, "identity") != 0)
        return jm_refuse(t, "encoding");
    if (jm_header_value(&t->head, "transfer-encoding", v, sizeof v)) {
        /* chunked, alone: libcurl removes it (and asks for no other transfer coding); a Content-Length beside
         * it means nothing (RFC 9112 6.3) */
        if (strcasecmp(v, "chunked") != 0) return jm_refuse(t, "encoding");
        framed = t->hversion >= 11; /* HTTP/1.0 has no chunked framing */
    } else if (jm_header_value(&t->head, "content-length", v, sizeof v)) {
        length = jm_parse_size(v);
    }
    if (status == 206) {
        long long start = -1, total = -1;
        char *end;
        if (jm_header_value(&t->head, "content-range", v, sizeof v) && strncmp(v, "bytes ", 6) == 0 &&
            isdigit((unsigned char)v[6])) {
            errno = 0;
            start = strtoll(v + 6, &end, 10);
            if (errno || *end != '-') start = -1;
            end = strchr(v, '/');
            if (end) total = jm_parse_size(end + 1);
        }
        if (start < 0 || start != (long long)t->offset) return jm_refuse(t, "range");
        if (!t->validator || !jm_validator(t, v, sizeof v) || strcmp(v, t->validator) != 0) return jm_refuse(t, "validator");
        if (total < 0 && length >= 0) total = start + length;
        if (total < 0 && !framed) return jm_refuse(t, "length");
        if (total < 0) total = (long long)t->total; /* framed: it ends where it says, the record says the whole */
        /* a record without a total (its bytes came without a length) takes whatever total the 206 says */
        if (t->total >= 0 && total != (long long)t->total) return jm_refuse(t, "total");
        t->expected = (curl_off_t)total;
        if (ftruncate(t->fd, (off_t)t->offset) != 0 || lseek(t->fd, (off_t)t->offset, SEEK_SET) < 0) {
            t->io_errno = errno;
            return 0;
        }
        t->file_start = t->offset;
        t->sink = JM_SINK_FILE;
        return 1;
    }
    /* a body without a length or a framing of its own ends where the connection happens to close */
    if (length < 0 && !framed) return jm_refuse(t, "length");
    t->expected = (curl_off_t)length; /* -1: not known until the body ends */
    t->sink = JM_SINK_SNIFF;
    return 1;
}

static int jm_write_file(jm_transfer *t, const char *p, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(t->fd, p + done, n - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            t->io_errno = errno;
            return 0;
        }
        done += (size_t)w;
    }
    t->file_written += (curl_off_t)n;
    return 1;
}

/* The sniffed first bytes of a 200 decide: text stays in memory; a video starts the file from zero, its
 * record written before its first byte. Returns 0 to abort the transfer. */
int jm_sniffed(jm_transfer *t) {
    char v[1024], what[160];
    int e;
    if (t->expect_binary && jm_looks_textual((const unsigned char *)t->body.p, t->body.len)) {
        t->sink = JM_SINK_MEMORY;
        return 1;
    }
    /* a video that is not an MP4 (WebM, an image, ...) is refused before a byte of it is saved (what it is
     * instead is kept for the message: out of memory, the refusal stands without it) */
    if (t->expect_binary && jm_mp4_kind((const unsigned char *)t->body.p, t->body.len, what, sizeof what)) {
        free(t->refused_what);
        t->refused_what = strdup(what);
        return jm_refuse(t, "format");
    }
    if (ftruncate(t->fd, 0) != 0 || lseek(t->fd, 0, SEEK_SET) < 0) {
        t->io_errno = errno;
        return 0;
    }
    if ((e = jm_part_write_record(t->part, t->task_id ? t->task_id : "", jm_validator(t, v, sizeof v) ? v : NULL,
                                  (long long)t->expected)) != 0) {
        t->io_errno = e;
        return 0;
    }
    t->file_start = 0;
    t->sink = JM_SINK_FILE;
    if (!jm_write_file(t, t->body.p ? t->body.p : "", t->body.len)) return 0;
    t->body.len = 0;
    if (t->body.p) t->body.p[0] = '\0';
    return 1;
}

size_t jm_on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
    jm_transfer *t = ud;
    size_t n = size * nmemb;
    if (t->path && t->sink == JM_SINK_UNDECIDED && !jm_choose_sink(t)) return 0;
    if (t->sink == JM_SINK_SNIFF) {
        if (!jm_keep(t, &t->body, ptr, n, t->max_body, &t->too_large)) return 0;
        if (t->body.len < JM_SNIFF_BYTES) return n;
        return jm_sniffed(t) ? n : 0;
    }
    if (t->sink != JM_SINK_FILE) return jm_keep(t, &t->body, ptr, n, t->max_body, &t->too_large) ? n : 0;
    if (!jm_write_file(t, ptr, n)) return 0;
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

/* Appends the line of "path\0line" (buf, len in all) to path and fsyncs it: 0, or the errno. `lock`: under an
 * exclusive flock, so that the lines of processes sharing the file (the ledger) never mix, and a new file is
 * its owner's only (prompts are private). */
static int jm_append_line(const char *buf, size_t len, int lock) {
    const char *line = buf + strlen(buf) + 1;
    size_t n = len - strlen(buf) - 1, done = 0;
    int e = 0, fd = open(buf, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, lock ? 0600 : 0644);
    if (fd < 0) return errno;
    if (lock && (e = jm_flock_wait(fd, buf)) != 0) { /* a trapped signal ends the wait: the request is not sent */
        close(fd);
        return e;
    }
    while (done < n) {
        ssize_t w = write(fd, line + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            e = w < 0 ? errno : EIO;
            break;
        }
        done += (size_t)w;
    }
    if (!e && fsync(fd) != 0) e = errno;
    if (close(fd) != 0 && !e) e = errno; /* closing releases the flock */
    return e;
}

/* The moment of truth for a paid request: connected (through any proxy tunnel, TLS done) and the request
 * about to be written. From here on the server may act on it; before, it cannot have. A journal line
 * given with the request is made durable now, before the first request byte leaves. */
#if LIBCURL_VERSION_NUM >= 0x075000
int jm_on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                        int conn_local_port) {
    jm_transfer *t = ud;
    (void)conn_primary_ip;
    (void)conn_local_ip;
    (void)conn_primary_port;
    (void)conn_local_port;
    if (t->journal && (t->journal_errno = jm_append_line(t->journal, t->journal_len, 0)) != 0)
        return CURL_PREREQFUNC_ABORT;
    if (t->ledger && (t->ledger_errno = jm_append_line(t->ledger, t->ledger_len, 1)) != 0)
        return CURL_PREREQFUNC_ABORT;
    if (t->handed_over) jm_pace_debit(t->eng); /* a second request of this transfer: a redirect's hop */
    t->handed_over = 1;
#ifdef __linux__
    if (t->paid) {
        curl_socket_t s = CURL_SOCKET_BAD;
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        memset(&ti, 0, sizeof ti);
        if (curl_easy_getinfo(t->easy, CURLINFO_ACTIVESOCKET, &s) == CURLE_OK && s != CURL_SOCKET_BAD &&
            getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && len >= offsetof(struct tcp_info, tcpi_bytes_acked) + 8)
            t->acked_base = (long long)ti.tcpi_bytes_acked;
        else
            t->acked_base = -1;
    }
#endif
    return CURL_PREREQFUNC_OK;
}
#endif

/* Called by libcurl as it closes a paid request's connection (never reused: it closes when the transfer
 * ends, so `ud` is still alive). Reads from the OS how many request bytes the peer acknowledged; when
 * none were and no answer came, closes with a reset so that the request can never land later. */
int jm_on_closesocket(void *ud, curl_socket_t s) {
    jm_transfer *t = ud;
#ifdef __linux__
    if (t && t->state == JM_RUNNING && t->handed_over && t->acked_base >= 0) {
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        memset(&ti, 0, sizeof ti);
        if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
            len >= offsetof(struct tcp_info, tcpi_bytes_acked) + 8) {
            t->acked = (long long)ti.tcpi_bytes_acked - t->acked_base;
            t->acked_known = 1;
            if (t->acked <= 0 && t->hstatus == 0) {
                struct linger lg;
                lg.l_onoff = 1;
                lg.l_linger = 0;
                if (setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0) t->reset_sent = 1;
            }
        }
    }
#else
    (void)t;
#endif
    return close(s);
}
