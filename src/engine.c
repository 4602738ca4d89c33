/* The HTTP engine: non-blocking libcurl transfers on one multi handle per client.
 *
 * Lua submits a transfer (engine:request), drives the multi handle (engine:perform, engine:poll) and
 * reads each finished transfer's result (transfer:result). C never calls Lua from a libcurl callback and
 * never yields, so the same loop works in a plain script, a coroutine scheduler, nginx and Neovim.
 *
 * A download streams its body into a partial file (a locked jm_part of files.c, which outlives the retries
 * of one call). Whether the body goes there is decided from the final response's status, headers and first
 * bytes: a 206 is appended only if its Content-Range starts at the requested offset, its validator (ETag,
 * else Last-Modified) is the one sent in If-Range and its total is the record's; a 200 restarts the file from
 * zero after the record (task id, validator, total) is written beside it. A video must come identity-encoded
 * and with a length. Anything else (an error status, or a body that is JSON, HTML or text by its type or by
 * its first bytes) is kept in memory so that Lua can report the server's message instead of saving it.
 */
#define _GNU_SOURCE /* sync_file_range on Linux; POSIX 2008 everywhere */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_acked (glibc's netinet/tcp.h lacks it) */
#include <netinet/in.h>
#endif

#include <curl/curl.h>

#include "jimeng.h"

#define JM_ENGINE_MT "jimeng.engine"
#define JM_TRANSFER_MT "jimeng.transfer"
#define JM_MAX_HEADER_BYTES ((size_t)64 * 1024)
#define JM_MAX_JSON_BODY ((double)8 * 1024 * 1024) /* an API answer: the one place this cap is set */
#define JM_MAX_ERROR_BODY ((double)1024 * 1024)   /* what a download keeps of a body that is not the video */
#define JM_CONNECT_TIMEOUT 10.0                    /* seconds: the default of jimeng.new's connect_timeout */
#define JM_MAX_REDIRECTS 5L                        /* a download's, to the storage host; API calls follow none */
#define JM_DOWNLOAD_BUFFER (256L * 1024)
#define JM_MAX_HOST_CONNECTIONS 64
#define JM_POOL 16 /* idle easy handles an engine keeps for its next transfers */
#define JM_WRITEBACK_EVERY ((curl_off_t)8 * 1024 * 1024)
#define JM_DEFAULT_MAX_CONNECTIONS 8
#define JM_STREAMS_PER_CONNECTION 16 /* well under nginx's default of 128 concurrent streams */

typedef struct jm_transfer jm_transfer;

/* A client's network settings, given once to core.engine and applied to every handle of its engine. */
typedef struct {
    char *user_agent, *cainfo, *capath, *proxy, *noproxy;
    char *api_key;     /* downloads: libcurl's bearer auth (never carried to another host on a redirect) */
    char *auth_header; /* API calls: "Authorization: Bearer <key>" (they follow no redirect) */
    long httpversion;
    long connect_ms;
    long stall_s; /* a download slower than 1 KiB/s for this long is cut (0: never) */
} jm_config;

typedef struct jm_engine {
    CURLM *multi;
    jm_transfer *head; /* transfers in flight: in the multi handle, or queued for a free slot */
    int nflight;       /* how many (engine:watch's in_flight): counted, not walked */
    jm_transfer *qhead, *qtail; /* queued: configured but holding no socket, their clocks not started */
    int running;                /* transfers in the multi handle */
    int *done, ndone, donecap;  /* registry refs of transfers finished since the last perform, in order */
    int max_running;            /* at most this many at once: so at most this many connections per host */
    int multiplexed;            /* its server was seen speaking HTTP/2: transfers share connections as streams */
    /* idle easy handles configured for API calls: creating, resetting and configuring a handle per request
     * costs more than a status poll itself, so an API call takes one configured and sets only its own options */
    CURL *pool[JM_POOL];
    int npool;
    int closed;
    jm_config cfg;
    /* a host event loop's view (engine:watch): what libcurl's socket and timer callbacks asked for since the
     * host last looked, recorded here because C never calls Lua from a libcurl callback */
    struct jm_want *want; /* one entry per socket changed since the last watch(), the latest wish wins */
    int nwant, wantcap;
    int want_oom;         /* a wish could not be recorded: watch() raises rather than lose a socket */
    struct jm_want *sock; /* every socket libcurl wants watched now, and how (engine:step_sockets) */
    int nsock, sockcap;
    double timer_at;      /* when libcurl wants socket_action_timeout (jm_now() seconds), < 0: never */
    /* the pace (engine:pace): a token bucket taken when a transfer leaves the queue for a connection, so
     * that no one-second window holds more than rate + burst requests however the queue fills and empties */
    double pace_rate;     /* tokens a second; 0: no pace */
    double pace_burst, pace_tokens, pace_at;
    double pace_next;     /* when the queue's head gets its token (jm_now() seconds); 0: not waiting for one */
    jm_share *share;      /* engine:share: a budget shared with other clients, whose bucket replaces the pace */
    /* and a sliding window: at most pace_cap departures in any pace_window seconds (the last pace_cap of
     * them, a ring), so that a burst never carries a second over its count, whatever the rate */
    double *pace_log, pace_window;
    int pace_cap, pace_head, pace_count;
} jm_engine;

typedef struct {
    char *p;
    size_t len, cap;
} jm_buf;

enum { JM_NEW, JM_RUNNING, JM_DONE };
/* API: a JSON call of the API, its handle pooled; DOWNLOAD: a video into a partial file, following redirects;
 * PROBE: a handshake that reads a refused certificate and sends nothing */
enum { JM_KIND_API, JM_KIND_DOWNLOAD, JM_KIND_PROBE };
/* SNIFF: a 200 whose first bytes are held in memory until they show whether it is a video or text */
enum { JM_SINK_UNDECIDED, JM_SINK_SNIFF, JM_SINK_FILE, JM_SINK_MEMORY };
#define JM_SNIFF_BYTES 64

struct jm_transfer {
    CURL *easy;
    struct curl_slist *hdrs;
    jm_engine *eng; /* NULL once the engine is gone */
    jm_transfer *prev, *next;
    jm_transfer *qnext; /* in the engine's queue */
    /* the request as given, kept while it is queued: its libcurl handle is taken and configured only when it
     * leaves the queue (jm_start), so that a long queue (a paced client) holds no handle, ~9 KiB each */
    char *req_url, *req_method, *req_body;
    size_t req_blen;
    int ref; /* registry reference while in flight, so the userdata outlives Lua's own references */
    int state;
    int queued;
    int in_multi;
    int cancelled;
    CURLcode rc;
    char errbuf[CURL_ERROR_SIZE];

    /* the clock starts when the transfer gets its slot, not when it is queued */
    long timeout_ms;
    double deadline; /* absolute (jm_now), 0: none */

    /* facts for the Lua layer's decision on a paid request, from libcurl and the OS */
    int handed_over;         /* the pre-request callback fired: connected (proxy tunnel, TLS done), request next */
    int paid;                /* closesocket callback armed: TCP_INFO is read before libcurl closes the socket */
    int acked_known;         /* the OS said how many request bytes the peer acknowledged */
    int kind;                /* JM_KIND_API, JM_KIND_DOWNLOAD, JM_KIND_PROBE */
    /* cppcheck-suppress unusedStructMember ; read under __linux__ only */
    long long acked_base;    /* bytes acked before the request (handshakes) */
    long long acked;         /* request bytes acknowledged by the peer */
    int reset_sent;          /* closed with a TCP reset: the request can never land */
    int req_accept_encoding; /* the request as given: see req_url */
    int want_head;           /* opts.head: the result carries the answer's header lines as received (-vv) */
    char *journal;           /* appended and fsynced at the moment of hand-over: "path\0line" */
    size_t journal_len;
    int journal_errno;
    char *ledger;            /* the same for the ledger ("path\0line"), appended under an flock */
    size_t ledger_len;
    int ledger_errno;

    jm_buf body;
    size_t max_body;
    int too_large;

    jm_buf head; /* header lines of the latest response (reset on each status line) */
    long hstatus;
    int hversion; /* its HTTP version from its status line: 10, 11, 20 (libcurl gives "HTTP/2 200"), 30 */
    int head_too_large;

    /* what libcurl knew when the transfer finished (its handle goes back to the pool then) */
    struct {
        long status, reqsize, connectcode, os_errno;
        long num_connects, http_version; /* for -v: 0 connects = a connection reused; the version spoken */
        curl_off_t content_length, connect_us, total_us;
        long verify;       /* the X509 verify result of a failed TLS handshake */
        char *url;         /* where a failed transfer was going (kept only on failure) */
        long redirects;    /* a download's redirects followed (-v shows the hop) */
        char *final_url;   /* where a redirected download ended (its query is redacted in Lua: a signature) */
        char *cert_expire, *cert_names; /* a certificate probe's findings */
    } info;

    /* the proxy this request goes through, derived as libcurl does (libcurl 7.88 cannot tell after) */
    int proxy_used;
    char proxy_where[256];
    int probe; /* a certificate probe: connect and handshake only, never pooled */

    /* file sink */
    char *path;     /* the partial file's path: set for a download */
    jm_part *part;  /* the partial file, kept alive by part_ref while the transfer holds it */
    int part_ref;
    int fd;         /* part->fd, borrowed */
    char *task_id;  /* what the record binds the bytes to */
    char *validator; /* sent in If-Range: a 206 must carry the same */
    curl_off_t offset; /* where a 206 must start: the size of the partial file */
    curl_off_t total;  /* the record's total: a 206 must have the same */
    curl_off_t expected; /* the whole video's length, once the response says it */
    curl_off_t file_start;
    curl_off_t file_written;
    curl_off_t written_back; /* bytes already handed to the disk's writeback */
    int sink;
    int expect_binary;
    const char *refused; /* why the body was refused: range, validator, total, length, encoding, format */
    char refused_what[160]; /* format: what the body is instead of an MP4 (mp4.c) */
    int io_errno;
};

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

static void jm_buf_free(jm_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Walks header lines "Name: value" of h from *cursor: gives the next line's name and value (trimmed) and
 * returns 1, or 0 at the end. The one reader of header lines, for jm_header_value and jm_push_headers. */
static int jm_next_header(const char **cursor, const char **name, size_t *nlen, const char **value, size_t *vlen) {
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
static int jm_header_value(const jm_buf *h, const char *name, char *out, size_t outsz) {
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

static size_t jm_on_header(char *ptr, size_t size, size_t nitems, void *ud) {
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
static int jm_sniffed(jm_transfer *t) {
    char v[1024];
    int e;
    if (t->expect_binary && jm_looks_textual((const unsigned char *)t->body.p, t->body.len)) {
        t->sink = JM_SINK_MEMORY;
        return 1;
    }
    /* a video that is not an MP4 (WebM, an image, ...) is refused before a byte of it is saved */
    if (t->expect_binary && jm_mp4_kind((const unsigned char *)t->body.p, t->body.len, t->refused_what,
                                        sizeof t->refused_what))
        return jm_refuse(t, "format");
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

static size_t jm_on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
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
    if (lock) {
        while (flock(fd, LOCK_EX) != 0) {
            if (errno != EINTR) {
                e = errno;
                close(fd);
                return e;
            }
        }
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
static void jm_pace_debit(jm_engine *e);

static int jm_on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
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
static int jm_on_closesocket(void *ud, curl_socket_t s) {
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

/* ---- transfers ---- */

static jm_transfer *jm_check_transfer(lua_State *L, int i) {
    return luaL_checkudata(L, i, JM_TRANSFER_MT);
}

static void jm_unlink(jm_transfer *t) { /* only jm_finish, of a transfer jm_submit linked */
    if (t->eng) t->eng->nflight--;
    if (t->prev) t->prev->next = t->next;
    else if (t->eng && t->eng->head == t) t->eng->head = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

/* Lets go of the partial file (its owner, the Lua part object, closes it). */
static void jm_drop_part(lua_State *L, jm_transfer *t) {
    t->fd = -1;
    t->part = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, t->part_ref);
    t->part_ref = LUA_NOREF;
}

/* Copies a certificate field's value ("Name:value" in libcurl's certinfo) into a new string. */
static char *jm_cert_field(const struct curl_slist *l, const char *name) {
    size_t n = strlen(name);
    for (; l; l = l->next)
        if (strncasecmp(l->data, name, n) == 0 && l->data[n] == ':') return strdup(l->data + n + 1);
    return NULL;
}

/* The server certificate's expiry and names, from a probe's certinfo (the first certificate is the server's). */
static void jm_capture_cert(jm_transfer *t) {
    struct curl_certinfo *ci = NULL;
    if (curl_easy_getinfo(t->easy, CURLINFO_CERTINFO, &ci) != CURLE_OK || !ci || ci->num_of_certs < 1) return;
    t->info.cert_expire = jm_cert_field(ci->certinfo[0], "Expire date");
    t->info.cert_names = jm_cert_field(ci->certinfo[0], "X509v3 Subject Alternative Name");
    if (!t->info.cert_names) t->info.cert_names = jm_cert_field(ci->certinfo[0], "Subject");
}

/* Copies what the result needs out of the easy handle. */
static void jm_capture(jm_transfer *t) {
    t->info.content_length = -1;
    if (!t->easy) return;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->info.status);
    curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &t->info.reqsize);
    curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &t->info.content_length);
    if (curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &t->info.num_connects) != CURLE_OK) t->info.num_connects = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &t->info.total_us) != CURLE_OK) t->info.total_us = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &t->info.http_version) != CURLE_OK) t->info.http_version = 0;
    if (t->eng && !t->eng->multiplexed && t->info.http_version >= CURL_HTTP_VERSION_2_0) t->eng->multiplexed = 1;
    if (t->kind == JM_KIND_DOWNLOAD) {
        char *u = NULL;
        if (curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_COUNT, &t->info.redirects) != CURLE_OK) t->info.redirects = 0;
        /* strdup failing leaves it NULL: the trace then shows the count without the place */
        if (t->info.redirects > 0 && curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &u) == CURLE_OK && u)
            t->info.final_url = strdup(u);
    }
    if (t->rc == CURLE_OK && !t->probe && !t->paid) return; /* a status poll stops here: nothing more to read */
    curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &t->info.connectcode);
    curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &t->info.os_errno);
    curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &t->info.connect_us);
    if (t->rc == CURLE_PEER_FAILED_VERIFICATION) curl_easy_getinfo(t->easy, CURLINFO_SSL_VERIFYRESULT, &t->info.verify);
    if (t->rc != CURLE_OK) {
        char *u = NULL;
        if (curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &u) == CURLE_OK && u) t->info.url = strdup(u);
    }
    if (t->probe) jm_capture_cert(t);
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

/* Gives the easy handle back to the engine's pool, configured as it is (its connections stay in the
 * multi handle) but holding no pointer into this transfer; cleaned up when the pool is full or the
 * engine gone. */
static void jm_release_easy(jm_transfer *t) {
    jm_engine *e = t->eng;
    if (!t->easy) return;
    if (e && !e->closed && e->npool < JM_POOL && t->kind == JM_KIND_API &&
        curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_PRIVATE, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, NULL) == CURLE_OK &&
        curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, NULL) == CURLE_OK &&
#if LIBCURL_VERSION_NUM >= 0x075000
        curl_easy_setopt(t->easy, CURLOPT_PREREQDATA, NULL) == CURLE_OK &&
#endif
        curl_easy_setopt(t->easy, CURLOPT_CLOSESOCKETDATA, NULL) == CURLE_OK) {
        e->pool[e->npool++] = t->easy;
    } else {
        curl_easy_cleanup(t->easy);
    }
    t->easy = NULL;
    curl_slist_free_all(t->hdrs);
    t->hdrs = NULL;
}

/* Takes an idle handle configured for API calls (returns 1: only the request's own options are left to set),
 * or a new one (returns 0). A download or probe always gets a new handle, and it is not pooled after:
 * libcurl refuses CURLOPT_BUFFERSIZE on a handle whose buffer is still allocated (as it is after a failed
 * transfer, reset or not), and a large buffer is not worth keeping idle. */
static int jm_acquire_easy(jm_engine *e, jm_transfer *t) {
    if (t->kind == JM_KIND_API && e->npool > 0) {
        t->easy = e->pool[--e->npool];
        return 1;
    }
    t->easy = curl_easy_init();
    return 0;
}

static void jm_unqueue(jm_transfer *t) {
    jm_engine *e = t->eng;
    jm_transfer *prev = NULL, *q;
    t->queued = 0;
    if (!e) return;
    for (q = e->qhead; q && q != t; q = q->qnext) prev = q;
    if (!q) return;
    if (prev) prev->qnext = t->qnext;
    else e->qhead = t->qnext;
    if (e->qtail == t) e->qtail = prev;
    t->qnext = NULL;
}

/* Takes a transfer off its engine (running or still queued): keeps its result, returns its handle,
 * releases the registry reference and closes the file. */
static void jm_finish(lua_State *L, jm_transfer *t, CURLcode rc) {
    if (t->state != JM_RUNNING) return;
    if (t->queued) {
        jm_unqueue(t);
    } else if (t->in_multi && t->eng && t->eng->multi) {
        curl_multi_remove_handle(t->eng->multi, t->easy);
        t->eng->running--;
    }
    t->in_multi = 0;
    jm_unlink(t);
    /* a body shorter than the sniff sample is decided when it ends whole */
    if (t->sink == JM_SINK_SNIFF && rc == CURLE_OK && !jm_sniffed(t)) rc = CURLE_WRITE_ERROR;
    t->rc = rc;
    jm_capture(t);
    t->state = JM_DONE;
    jm_drop_part(L, t);
    jm_release_easy(t);
    /* the next engine:perform() reports it, however it ended (libcurl, a deadline in the queue, a cancel):
     * a scheduler wakes exactly the coroutine that waits for it, never scanning the others */
    if (t->eng && !t->eng->closed && t->ref != LUA_NOREF) {
        jm_engine *e = t->eng;
        if (e->ndone == e->donecap) {
            int cap = e->donecap ? e->donecap * 2 : 64;
            int *d = realloc(e->done, (size_t)cap * sizeof *d);
            if (d) {
                e->done = d;
                e->donecap = cap;
            }
        }
        if (e->ndone < e->donecap) {
            e->done[e->ndone++] = t->ref;
            t->ref = LUA_NOREF;
            return;
        }
    }
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
}

static CURLcode jm_configure_shared(const jm_config *c, jm_transfer *t);
static CURLcode jm_configure_kind(const jm_config *c, jm_transfer *t);
static CURLcode jm_configure_request(const jm_config *c, jm_transfer *t, const char *url, const char *method,
                                     const char *body, size_t blen, int accept_encoding);

static void jm_drop_request(jm_transfer *t) {
    free(t->req_url);
    free(t->req_method);
    free(t->req_body);
    t->req_url = t->req_method = t->req_body = NULL;
}

/* Takes a libcurl handle for a transfer leaving the queue and configures it (an idle API handle keeps the
 * engine's settings: only the request's own options are set). On failure errbuf says why. */
static CURLcode jm_start(jm_engine *e, jm_transfer *t) {
    CURLcode rc;
    int reuse = jm_acquire_easy(e, t);
    if (!t->easy) {
        snprintf(t->errbuf, sizeof t->errbuf, "libcurl could not make a handle (out of memory)");
        return CURLE_OUT_OF_MEMORY;
    }
    rc = reuse ? CURLE_OK : jm_configure_shared(&e->cfg, t);
    if (rc == CURLE_OK && !reuse) rc = jm_configure_kind(&e->cfg, t);
    if (rc == CURLE_OK)
        rc = jm_configure_request(&e->cfg, t, t->req_url, t->req_method, t->req_body, t->req_blen,
                                  t->req_accept_encoding);
    if (rc != CURLE_OK)
        snprintf(t->errbuf, sizeof t->errbuf, "libcurl refused an option: %s", curl_easy_strerror(rc));
    jm_drop_request(t); /* libcurl copied what it keeps (COPYPOSTFIELDS, the URL) */
    return rc;
}

/* Takes a token of the pace for the transfer about to start (1), or says when the next one comes (0). */
static int jm_pace_take(jm_engine *e) {
    double now;
    if (e->share) return jm_share_take(e->share, &e->pace_next);
    if (e->pace_rate <= 0) return 1;
    now = jm_now();
    e->pace_tokens += (now - e->pace_at) * e->pace_rate;
    if (e->pace_tokens > e->pace_burst) e->pace_tokens = e->pace_burst;
    e->pace_at = now;
    if (e->pace_cap > 0 && e->pace_count == e->pace_cap) {
        double oldest = e->pace_log[e->pace_head]; /* the departure pace_cap ago: a window from it must pass */
        if (now - oldest < e->pace_window) {
            e->pace_next = oldest + e->pace_window;
            return 0;
        }
    }
    if (e->pace_tokens >= 1) {
        e->pace_tokens -= 1;
        e->pace_next = 0;
        if (e->pace_cap > 0) {
            int at = (e->pace_head + e->pace_count) % e->pace_cap;
            if (e->pace_count == e->pace_cap) {
                at = e->pace_head;
                e->pace_head = (e->pace_head + 1) % e->pace_cap;
            } else {
                e->pace_count++;
            }
            e->pace_log[at] = now;
        }
        return 1;
    }
    e->pace_next = now + (1 - e->pace_tokens) / e->pace_rate;
    return 0;
}

/* A request libcurl makes by itself (a redirect's next hop) takes its token after the fact: the bucket may go
 * below zero, and the next transfers wait for it. */
static void jm_pace_debit(jm_engine *e) {
    double now;
    if (e && e->share) {
        jm_share_debit(e->share);
        return;
    }
    if (!e || e->pace_rate <= 0) return;
    now = jm_now();
    e->pace_tokens += (now - e->pace_at) * e->pace_rate;
    if (e->pace_tokens > e->pace_burst) e->pace_tokens = e->pace_burst;
    e->pace_at = now;
    e->pace_tokens -= 1;
    if (e->pace_cap > 0) {
        if (e->pace_count == e->pace_cap) {
            e->pace_log[e->pace_head] = now;
            e->pace_head = (e->pace_head + 1) % e->pace_cap;
        } else {
            e->pace_log[(e->pace_head + e->pace_count++) % e->pace_cap] = now;
        }
    }
}

/* Milliseconds until a paced queue may start its next transfer (capping a wait), or -1: nothing to wait for. */
static double jm_pace_wait_ms(const jm_engine *e) {
    double ms;
    if (!e->qhead || e->pace_next <= 0) return -1;
    ms = (e->pace_next - jm_now()) * 1000;
    return ms > 0 ? ms + 1 : 0;
}

/* Starts queued transfers while the engine has free slots (and the pace a token). A transfer's clocks (its
 * timeout) start now, so time spent queued never eats them; one whose deadline already passed ends as a
 * timeout, unsent. */
static void jm_pump(lua_State *L, jm_engine *e) {
    /* over HTTP/1.1 one transfer is one connection; over HTTP/2 they are streams of the same few connections
     * (libcurl waits to multiplex rather than open more, and never opens more than max_running per host) */
    int cap = e->multiplexed ? e->max_running * JM_STREAMS_PER_CONNECTION : e->max_running;
    e->pace_next = 0;
    while (e->qhead && e->running < cap) {
        jm_transfer *t = e->qhead;
        long ms = t->timeout_ms;
        CURLMcode mrc;
        int expired = t->deadline > 0 && (t->deadline - jm_now()) * 1000 < 1;
        if (!t->cancelled && !expired && !jm_pace_take(e)) break; /* the next token: pace_next */
        jm_unqueue(t);
        if (t->cancelled) continue;
        if (t->deadline > 0) {
            double left = (t->deadline - jm_now()) * 1000;
            if (left < 1) {
                snprintf(t->errbuf, sizeof t->errbuf, "the deadline passed while the request waited for a connection");
                jm_finish(L, t, CURLE_OPERATION_TIMEDOUT);
                continue;
            }
            if (ms == 0 || left < (double)ms) ms = (long)left;
        }
        if (jm_start(e, t) != CURLE_OK || curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, ms) != CURLE_OK) {
            jm_finish(L, t, CURLE_FAILED_INIT);
            continue;
        }
        mrc = curl_multi_add_handle(e->multi, t->easy);
        if (mrc != CURLM_OK) {
            snprintf(t->errbuf, sizeof t->errbuf, "libcurl could not start the transfer: %s", curl_multi_strerror(mrc));
            jm_finish(L, t, CURLE_FAILED_INIT);
            continue;
        }
        t->in_multi = 1;
        e->running++;
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
    t->path = t->task_id = t->validator = t->journal = t->ledger = NULL;
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

/* The response headers the Lua layer reads; the others are never turned into Lua strings (this table
 * is built for every status poll). */
static const char *const jm_wanted_headers[] = {
    "x-request-id", "retry-after", "retry-after-ms", "x-should-retry", "content-type", "content-range", "etag",
    "location", "x-oneapi-request-id", "x-new-api-version", /* new-api's request id; its version: the gateway */
    NULL,
};

static const char *jm_wanted(const char *name, size_t n) {
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

/* transfer:result() -> table describing what happened (see the Lua layer for how it is judged):
 * ok, status, headers, body, and only when they apply: curl_code and curl_error (a failure),
 * request_size, content_length, the flags of the sinks and limits. Lean: it is built for every poll. */
static int l_transfer_result(lua_State *L) {
    jm_transfer *t = jm_check_transfer(L, 1);
    long status = t->info.status;
    int ok = t->rc == CURLE_OK && !t->cancelled;
    if (t->state != JM_DONE) return luaL_error(L, "jimeng: transfer still running");
    lua_createtable(L, 0, 8);
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
        if (t->proxy_where[0]) jm_setstr(L, "proxy", t->proxy_where);
        if (t->info.connectcode) jm_setint(L, "proxy_status", t->info.connectcode);
    }
    if (t->info.url) jm_setstr(L, "url", t->info.url);
    if (t->info.redirects > 0) jm_setint(L, "redirects", t->info.redirects);
    if (t->info.final_url) jm_setstr(L, "final_url", t->info.final_url);
    if (t->rc == CURLE_PEER_FAILED_VERIFICATION) jm_push_tls(L, t);
    if (t->info.cert_expire) jm_setstr(L, "cert_expire", t->info.cert_expire);
    if (t->info.cert_names) jm_setstr(L, "cert_names", t->info.cert_names);
    jm_setint(L, "status", status);
    jm_setint(L, "request_size", t->info.reqsize); /* 0: not a byte of the request left this machine */
    if (t->info.content_length >= 0) jm_setint(L, "content_length", (lua_Integer)t->info.content_length);
    /* what -v shows: new connections made for this transfer (0: one reused), the HTTP version, the time */
    jm_setint(L, "num_connects", t->info.num_connects);
    if (t->info.http_version) {
        const char *hv = t->info.http_version == CURL_HTTP_VERSION_1_0 ? "1.0"
                         : t->info.http_version == CURL_HTTP_VERSION_1_1 ? "1.1"
                         : t->info.http_version == CURL_HTTP_VERSION_2_0 ? "2" : "3";
        jm_setstr(L, "http_version", hv);
    }
    lua_pushnumber(L, (lua_Number)t->info.total_us / 1e6);
    lua_setfield(L, -2, "total_time");
    jm_push_headers(L, &t->head);
    lua_setfield(L, -2, "headers");
    if (t->want_head) jm_setlstr(L, "head", t->head.p ? t->head.p : "", t->head.len);
    if (t->body.len || t->sink == JM_SINK_MEMORY || !t->path) jm_setlstr(L, "body", t->body.p ? t->body.p : "", t->body.len);
    if (t->too_large) jm_setbool(L, "too_large", 1);
    if (t->head_too_large) jm_setbool(L, "headers_too_large", 1);
    if (t->refused) jm_setstr(L, "refused", t->refused);
    if (t->refused_what[0]) jm_setstr(L, "refused_what", t->refused_what);
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

/* ---- engine ---- */

static jm_engine *jm_check_engine(lua_State *L, int i) {
    jm_engine *e = luaL_checkudata(L, i, JM_ENGINE_MT);
    if (e->closed) luaL_error(L, "jimeng: engine is closed");
    return e;
}

/* Reads opts[k] as a number, or def when absent (another type is misuse: raised). */
static double jm_optnum(lua_State *L, int idx, const char *k, double def) {
    double v = def;
    lua_getfield(L, idx, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "jimeng: %s must be a number", k);
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}
static int jm_watch_setup(jm_engine *e);
static void jm_watch_free(jm_engine *e);

static const char *jm_optstr(lua_State *L, int idx, const char *k, size_t *len) {
    const char *v = NULL;
    lua_getfield(L, idx, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "jimeng: %s must be a string", k);
        v = lua_tolstring(L, -1, len);
    }
    lua_pop(L, 1); /* the string stays referenced by the options table for the call */
    return v;
}

static int jm_optbool(lua_State *L, int idx, const char *k) {
    int v;
    lua_getfield(L, idx, k);
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static int jm_has_crlf(const char *s) {
    return strpbrk(s, "\r\n") != NULL;
}

static void jm_config_free(jm_config *c) {
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
static void jm_config_read(lua_State *L, int idx, jm_engine *e) {
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

/* core.engine([settings]) -> a new engine: one multi handle (its connections and TLS sessions are reused)
 * with a client's settings, applied to every request it makes. settings: max_connections (8),
 * connect_timeout (seconds, 10), user_agent, cainfo, capath, proxy ("" for none; absent: the environment's),
 * no_proxy, http_version ("auto" | "1.1" | "2"), api_key (sent to the API, and to the host of a download
 * only: never to a host a redirect leads to), stall_timeout (a download slower than 1 KiB/s for this
 * many seconds is cut). At most max_connections transfers run at once, so at most that many connections are
 * open to a host: the rest wait in the engine's queue, holding no socket, their timeouts not yet running. */
static int l_engine_new(lua_State *L) {
    long maxc = JM_DEFAULT_MAX_CONNECTIONS;
    jm_engine *e;
    if (lua_istable(L, 1)) {
        double v = jm_optnum(L, 1, "max_connections", (double)JM_DEFAULT_MAX_CONNECTIONS);
        if (!(v >= 1 && v <= 1024)) return luaL_error(L, "jimeng: max_connections must be 1 to 1024");
        maxc = (long)v;
    }
    e = lua_newuserdata(L, sizeof *e);
    memset(e, 0, sizeof *e);
    e->max_running = (int)maxc;
    e->multi = curl_multi_init();
    if (!e->multi) return luaL_error(L, "jimeng: curl_multi_init failed");
    luaL_getmetatable(L, JM_ENGINE_MT);
    lua_setmetatable(L, -2);
    if (jm_watch_setup(e) != 0) return luaL_error(L, "jimeng: cannot set libcurl's socket and timer callbacks");
    jm_config_read(L, 1, e);
    if (curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) != CURLM_OK)
        return luaL_error(L, "jimeng: cannot enable HTTP/2 multiplexing");
    /* libcurl's default of 100 streams per connection would open a new connection for every transfer past
     * the hundredth started at once; the server's own limit (SETTINGS_MAX_CONCURRENT_STREAMS) still holds */
    (void)curl_multi_setopt(e->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, 4096L);
    /* a backstop: libcurl itself never opens more (it closes an idle connection to make room) */
    if (curl_multi_setopt(e->multi, CURLMOPT_MAX_HOST_CONNECTIONS, maxc) != CURLM_OK)
        return luaL_error(L, "jimeng: cannot limit connections per host");
    /* and keeps enough idle: libcurl's default cache (4 per transfer in flight) shrinks to nothing between
     * two rounds of polls, so HTTP/1.1 connections would be closed and opened again every round */
    (void)curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)JM_MAX_HOST_CONNECTIONS);
    return 1;
}

/* engine:closed() -> whether engine:close() was called (a scheduler stops driving it, and wakes its waiters) */
static int l_engine_closed(lua_State *L) {
    jm_engine *e = luaL_checkudata(L, 1, JM_ENGINE_MT);
    lua_pushboolean(L, e->closed);
    return 1;
}

static int l_engine_close(lua_State *L) {
    jm_engine *e = luaL_checkudata(L, 1, JM_ENGINE_MT);
    if (e->closed) return 0;
    e->closed = 1; /* handles of the transfers finished below are cleaned up, not pooled */
    while (e->head) {
        jm_transfer *t = e->head;
        t->cancelled = 1;
        jm_finish(L, t, CURLE_ABORTED_BY_CALLBACK);
        t->eng = NULL;
    }
    while (e->npool > 0) curl_easy_cleanup(e->pool[--e->npool]);
    jm_config_free(&e->cfg);
    while (e->ndone > 0) luaL_unref(L, LUA_REGISTRYINDEX, e->done[--e->ndone]);
    free(e->done);
    e->done = NULL;
    e->donecap = 0;
    free(e->pace_log);
    e->pace_log = NULL;
    e->pace_cap = e->pace_count = e->pace_head = 0;
    if (e->multi) curl_multi_cleanup(e->multi);
    e->multi = NULL;
    jm_watch_free(e); /* after the cleanup: its last socket callbacks still record into it */
    if (e->share) jm_share_drop(e->share);
    e->share = NULL;
    e->closed = 1;
    return 0;
}

#define JM_SET(opt, val)                                                                                      \
    do {                                                                                                      \
        if (rc == CURLE_OK && (rc = curl_easy_setopt(t->easy, opt, val)) != CURLE_OK) bad_opt = (int)(opt);   \
    } while (0)

/* The options every handle of the engine shares, from its settings: set once per handle (a pooled API handle
 * keeps them). */
static CURLcode jm_configure_shared(const jm_config *c, jm_transfer *t) {
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
static CURLcode jm_configure_kind(const jm_config *c, jm_transfer *t) {
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
static const char *jm_build_headers(lua_State *L, int opts, jm_engine *e, jm_transfer *t, int post) {
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
static void jm_take_line(lua_State *L, int opts, const char *pfield, const char *lfield, char **out, size_t *outlen) {
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
static void jm_take_part(lua_State *L, int opts, jm_transfer *t) {
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
static CURLcode jm_configure_request(const jm_config *c, jm_transfer *t, const char *url, const char *method,
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

/* Links a configured transfer into its engine and queues it; it starts when a slot is free. */
static void jm_submit(lua_State *L, jm_engine *e, jm_transfer *t) {
    t->eng = e;
    t->state = JM_RUNNING;
    t->next = e->head;
    if (e->head) e->head->prev = t;
    e->head = t;
    e->nflight++;
    lua_pushvalue(L, -1);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->queued = 1;
    if (e->qtail) e->qtail->qnext = t;
    else e->qhead = t;
    e->qtail = t;
    jm_pump(L, e);
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
static void jm_check_request_options(lua_State *L, int opts) {
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

static int l_engine_request(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    jm_transfer *t;
    size_t blen = 0;
    const char *url, *method, *body, *kind, *why;
    luaL_checktype(L, 2, LUA_TTABLE);
    jm_check_request_options(L, 2);
    url = jm_optstr(L, 2, "url", NULL);
    if (!url) return luaL_error(L, "jimeng: request needs a url");
    method = jm_optstr(L, 2, "method", NULL);
    body = jm_optstr(L, 2, "body", &blen);
    kind = jm_optstr(L, 2, "kind", NULL);
    if (jm_has_crlf(url)) {
        lua_pushnil(L);
        lua_pushliteral(L, "a URL contains CR or LF");
        lua_pushliteral(L, "invalid_argument");
        return 3;
    }

    t = lua_newuserdata(L, sizeof *t);
    memset(t, 0, sizeof *t);
    t->fd = -1;
    t->ref = LUA_NOREF;
    t->part_ref = LUA_NOREF;
    luaL_getmetatable(L, JM_TRANSFER_MT);
    lua_setmetatable(L, -2);
    if (!kind || strcmp(kind, "api") == 0) t->kind = JM_KIND_API;
    else if (strcmp(kind, "download") == 0) t->kind = JM_KIND_DOWNLOAD;
    else if (strcmp(kind, "probe") == 0) t->kind = JM_KIND_PROBE;
    else return luaL_error(L, "jimeng: request kind must be api, download or probe");
    t->probe = t->kind == JM_KIND_PROBE;
    {
        double timeout = jm_optnum(L, 2, "timeout", 0);
        t->timeout_ms = timeout > 0 ? (long)(timeout * 1000) : 0L;
    }
    t->deadline = jm_optnum(L, 2, "deadline", 0);
    t->max_body = (size_t)jm_optnum(L, 2, "max_body", JM_MAX_JSON_BODY);
    t->total = -1;
    t->paid = t->kind == JM_KIND_API && jm_optbool(L, 2, "paid");
    if (t->kind == JM_KIND_DOWNLOAD) jm_take_part(L, 2, t);
    if (t->paid) {
        jm_take_line(L, 2, "journal", "journal_line", &t->journal, &t->journal_len);
        jm_take_line(L, 2, "ledger", "ledger_line", &t->ledger, &t->ledger_len);
    }
    t->proxy_used = jm_proxy_for(url, e->cfg.proxy, e->cfg.noproxy, t->proxy_where, sizeof t->proxy_where);

    why = jm_build_headers(L, 2, e, t, method && strcmp(method, "POST") == 0);
    if (why) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        lua_pushliteral(L, "invalid_argument");
        return 3;
    }
    t->req_accept_encoding = jm_optbool(L, 2, "accept_encoding");
    t->want_head = jm_optbool(L, 2, "head");
    t->req_blen = blen;
    if (!(t->req_url = strdup(url)) || (method && !(t->req_method = strdup(method))) ||
        (body && !(t->req_body = malloc(blen + 1))))
        return luaL_error(L, "jimeng: out of memory");
    if (body) memcpy(t->req_body, body, blen);
    jm_submit(L, e, t);
    return 1;
}

/* What engine:perform() returns, after a socket action: running, finished | nil. */
static int jm_collect(lua_State *L, jm_engine *e, int running) {
    int left = 0, i;
    CURLMsg *m;
    while ((m = curl_multi_info_read(e->multi, &left)) != NULL) {
        char *priv = NULL;
        if (m->msg != CURLMSG_DONE) continue;
        if (curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv) != CURLE_OK || !priv) continue;
        jm_finish(L, (jm_transfer *)(void *)priv, m->data.result);
    }
    jm_pump(L, e);
    lua_pushinteger(L, running + (e->qhead ? 1 : 0));
    if (e->ndone == 0) {
        lua_pushnil(L);
        return 2;
    }
    lua_createtable(L, e->ndone, 0);
    for (i = 0; i < e->ndone; i++) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, e->done[i]);
        lua_rawseti(L, -2, i + 1);
        luaL_unref(L, LUA_REGISTRYINDEX, e->done[i]);
    }
    e->ndone = 0;
    return 2;
}

/* engine:perform() -> running, finished (an array of the transfers finished since the last call, or nil).
 * Never blocks. */
static int l_engine_perform(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    int running = 0;
    CURLMcode mrc = curl_multi_perform(e->multi, &running);
    if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_perform: %s", curl_multi_strerror(mrc));
    return jm_collect(L, e, running);
}

/* engine:pace(rate[, burst[, count, window]]): at most `burst` transfers at once and `rate` a second on
 * average leave the queue for a connection (so no one-second window holds more than rate + burst), and, with
 * count, at most `count` in any `window` seconds (default 1); rate nil, 0 or inf: no pace. Tokens already
 * earned are kept, up to the new burst; the departures already counted, up to the new count. */
static int l_engine_pace(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    double rate = luaL_optnumber(L, 2, 0), burst = luaL_optnumber(L, 3, 1);
    double count = luaL_optnumber(L, 4, 0), window = luaL_optnumber(L, 5, 1);
    if (!(rate > 0) || rate > 1e9) {
        e->pace_rate = 0;
        e->pace_next = 0;
        e->pace_count = e->pace_head = 0;
        jm_pump(L, e);
        return 0;
    }
    if (!(burst >= 1)) burst = 1;
    if (!(count >= 1) || count > 1e6) count = 0;
    if (!(window > 0) || window > 3600) window = 1;
    if ((int)count != e->pace_cap) { /* a new ring, keeping the latest departures that fit */
        int cap = (int)count, n = 0;
        double *log = NULL;
        if (cap > 0) {
            int i;
            log = malloc((size_t)cap * sizeof *log);
            if (!log) return luaL_error(L, "jimeng: out of memory");
            for (i = e->pace_count > cap ? e->pace_count - cap : 0; i < e->pace_count; i++)
                log[n++] = e->pace_log[(e->pace_head + i) % e->pace_cap];
        }
        free(e->pace_log);
        e->pace_log = log;
        e->pace_cap = cap;
        e->pace_head = 0;
        e->pace_count = n;
    }
    e->pace_window = window;
    if (e->pace_rate <= 0) { /* a pace from now: the burst is there at once */
        e->pace_tokens = burst;
        e->pace_at = jm_now();
    }
    e->pace_rate = rate;
    e->pace_burst = burst;
    if (e->pace_tokens > burst) e->pace_tokens = burst;
    jm_pump(L, e);
    return 0;
}

/* engine:share(share | nil): requests take their tokens from a shared budget (core.share_open) instead of
 * the engine's own pace, from the next transfer that leaves the queue; nil: the engine's own pace again. */
static int l_engine_share(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    jm_share *s = lua_isnoneornil(L, 2) ? NULL : jm_share_check(L, 2);
    if (s) jm_share_hold(s);
    if (e->share) jm_share_drop(e->share);
    e->share = s;
    e->pace_next = 0;
    jm_pump(L, e);
    return 0;
}

/* engine:poll(ms) -> number of sockets with activity. Waits for activity on any transfer, or ms. */
static int l_engine_poll(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    lua_Number ms = jm_wait_cap(luaL_optnumber(L, 2, 1000));
    double pace = jm_pace_wait_ms(e);
    int numfds = 0, sfd = jm_signal_fd();
    struct curl_waitfd sig;
    CURLMcode mrc;
    sig.fd = sfd;
    sig.events = CURL_WAIT_POLLIN;
    sig.revents = 0;
    if (pace >= 0 && pace < ms) ms = pace; /* a token comes: the next perform starts a queued transfer */
    mrc = curl_multi_poll(e->multi, sfd >= 0 ? &sig : NULL, sfd >= 0 ? 1 : 0, (int)ms, &numfds);
    if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_poll: %s", curl_multi_strerror(mrc));
    lua_pushinteger(L, numfds);
    return 1;
}

/* ---- the host's event loop: libcurl's socket and timer callbacks, seen from outside ----
 *
 * A host with its own loop (Neovim's libuv, nginx) watches exactly libcurl's sockets and one timer instead of
 * polling: libcurl's callbacks only record what it wants (they never call Lua), engine:watch() hands the
 * changes over, and engine:socket_action(fd, events) / engine:socket_action_timeout() drive the transfers,
 * returning the finished ones as engine:perform() does. The blocking path (perform, poll) ignores the records. */

struct jm_want {
    curl_socket_t fd;
    int what; /* CURL_POLL_IN, _OUT, _INOUT or _REMOVE */
};

/* Keeps the set of sockets libcurl wants watched now (engine:step_sockets polls exactly those). */
static int jm_track_socket(jm_engine *e, curl_socket_t s, int what) {
    int i;
    for (i = 0; i < e->nsock; i++) {
        if (e->sock[i].fd == s) break;
    }
    if (what == CURL_POLL_REMOVE) {
        if (i < e->nsock) e->sock[i] = e->sock[--e->nsock];
        return 0;
    }
    if (i == e->nsock) {
        if (e->nsock == e->sockcap) {
            int cap = e->sockcap ? e->sockcap * 2 : 16;
            struct jm_want *w = realloc(e->sock, (size_t)cap * sizeof *w);
            if (!w) return -1;
            e->sock = w;
            e->sockcap = cap;
        }
        e->sock[e->nsock++].fd = s;
    }
    e->sock[i].what = what;
    return 0;
}

/* CURLMOPT_SOCKETFUNCTION: remembers the latest wish for the socket. A socket closed and another opened with
 * the same number before the host looked shows as the new wish: the host re-arms its watcher either way. */
static int jm_on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    jm_engine *e = userp;
    int i;
    (void)easy;
    (void)socketp;
    if (jm_track_socket(e, s, what) != 0) {
        e->want_oom = 1;
        return -1;
    }
    for (i = 0; i < e->nwant; i++) {
        if (e->want[i].fd == s) {
            e->want[i].what = what;
            return 0;
        }
    }
    if (e->nwant == e->wantcap) {
        int cap = e->wantcap ? e->wantcap * 2 : 16;
        struct jm_want *w = realloc(e->want, (size_t)cap * sizeof *w);
        if (!w) {
            e->want_oom = 1;
            return -1; /* libcurl 7.88 ignores it; newer ones fail the transfer */
        }
        e->want = w;
        e->wantcap = cap;
    }
    e->want[e->nwant].fd = s;
    e->want[e->nwant].what = what;
    e->nwant++;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: when libcurl wants socket_action_timeout, as an absolute time (the host may look
 * later than libcurl asked). */
static int jm_on_timer(CURLM *multi, long timeout_ms, void *userp) {
    jm_engine *e = userp;
    (void)multi;
    e->timer_at = timeout_ms < 0 ? -1 : jm_now() + (double)timeout_ms / 1000;
    return 0;
}

static int jm_watch_setup(jm_engine *e) {
    e->timer_at = -1;
    if (curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, jm_on_socket) != CURLM_OK) return -1;
    if (curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, (void *)e) != CURLM_OK) return -1;
    if (curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, jm_on_timer) != CURLM_OK) return -1;
    if (curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, (void *)e) != CURLM_OK) return -1;
    return 0;
}

static void jm_watch_free(jm_engine *e) {
    free(e->want);
    e->want = NULL;
    e->nwant = e->wantcap = 0;
    free(e->sock);
    e->sock = NULL;
    e->nsock = e->sockcap = 0;
    e->timer_at = -1;
}

/* engine:watch() -> changes | nil, timeout_ms | nil, in_flight. changes: fd -> "in" | "out" | "inout" |
 * "remove", the sockets whose wish changed since the last call; timeout_ms: when to call
 * socket_action_timeout (0: now; nil: no timer wanted); in_flight: transfers running or queued. A closed
 * engine answers false. */
static int l_engine_watch(lua_State *L) {
    jm_engine *e = luaL_checkudata(L, 1, JM_ENGINE_MT);
    if (e->closed) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (e->want_oom) {
        e->want_oom = 0;
        return luaL_error(L, "jimeng: out of memory recording libcurl's sockets");
    }
    if (e->nwant == 0) {
        lua_pushnil(L);
    } else {
        lua_createtable(L, 0, e->nwant);
        for (int i = 0; i < e->nwant; i++) {
            int w = e->want[i].what;
            lua_pushstring(L, w == CURL_POLL_IN      ? "in"
                              : w == CURL_POLL_OUT   ? "out"
                              : w == CURL_POLL_INOUT ? "inout"
                                                     : "remove");
            lua_rawseti(L, -2, (int)e->want[i].fd);
        }
        e->nwant = 0;
    }
    {
        double pace = jm_pace_wait_ms(e), ms = (e->timer_at - jm_now()) * 1000; /* pace < 0: not waiting */
        if (ms < 0) ms = 0;
        if (e->timer_at < 0 && pace < 0) lua_pushnil(L);
        else if (e->timer_at < 0 || (pace >= 0 && pace < ms)) lua_pushnumber(L, pace); /* a token comes: step */
        else lua_pushnumber(L, ms);
    }
    lua_pushinteger(L, e->nflight);
    return 3;
}

/* events as luv's poll callback spells them ("r", "w", "rw"), or "in", "out", "inout", "err", or a number of
 * CURL_CSELECT_* bits; nothing known: 0 (libcurl looks at the socket itself). */
static int jm_event_mask(lua_State *L, int i) {
    const char *s;
    int mask = 0;
    if (lua_type(L, i) == LUA_TNUMBER) return (int)lua_tointeger(L, i);
    s = luaL_optstring(L, i, "");
    if (strstr(s, "in") || strstr(s, "out") || strstr(s, "err")) {
        if (strstr(s, "in")) mask |= CURL_CSELECT_IN;
        if (strstr(s, "out")) mask |= CURL_CSELECT_OUT;
        if (strstr(s, "err")) mask |= CURL_CSELECT_ERR;
        return mask;
    }
    for (; *s; s++) {
        if (*s == 'r' || *s == 'd' || *s == 'p') mask |= CURL_CSELECT_IN;
        else if (*s == 'w') mask |= CURL_CSELECT_OUT;
        else if (*s == 'e') mask |= CURL_CSELECT_ERR;
    }
    return mask;
}


static int jm_socket_action(lua_State *L, jm_engine *e, curl_socket_t fd, int mask) {
    int running = 0;
    CURLMcode mrc = curl_multi_socket_action(e->multi, fd, mask, &running);
    /* a socket libcurl closed meanwhile is not an error: the host learns of it in the next watch() */
    long tmo = -1;
    if (mrc != CURLM_OK && mrc != CURLM_BAD_SOCKET)
        return luaL_error(L, "jimeng: curl_multi_socket_action: %s", curl_multi_strerror(mrc));
    /* libcurl calls the timer callback only when its next expiry changes: one that fired a little early and
     * is still due would be lost, so the timer is read back from libcurl after every action */
    if (curl_multi_timeout(e->multi, &tmo) == CURLM_OK) e->timer_at = tmo < 0 ? -1 : jm_now() + (double)tmo / 1000;
    return jm_collect(L, e, running);
}

/* engine:socket_action(fd, events) -> running, finished | nil: the host saw events on one of libcurl's
 * sockets. Never blocks. */
static int l_engine_socket_action(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    lua_Integer fd = luaL_checkinteger(L, 2);
    if (fd < 0) return luaL_argerror(L, 2, "a socket");
    return jm_socket_action(L, e, (curl_socket_t)fd, jm_event_mask(L, 3));
}

/* engine:socket_action_timeout() -> running, finished | nil: libcurl's timer (watch's timeout_ms) expired. */
static int l_engine_socket_action_timeout(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    return jm_socket_action(L, e, CURL_SOCKET_TIMEOUT, 0);
}

/* engine:step_sockets() -> running, finished | nil, ready: one step for a host that cannot watch sockets
 * itself (nginx): a poll(2) without waiting over exactly the sockets libcurl asked to watch, a socket action
 * for each ready one and for libcurl's timer when due. Its cost grows with the sockets that are ready, not
 * with the transfers in flight (curl_multi_perform looks at every transfer's socket). ready: the actions run. */
static int l_engine_step_sockets(lua_State *L) {
    jm_engine *e = jm_check_engine(L, 1);
    struct pollfd few[64], *fds = few;
    int n = e->nsock, ready = 0, running = e->running, i, nret;
    long tmo = -1;
    CURLMcode mrc;
    if (e->want_oom) {
        e->want_oom = 0;
        return luaL_error(L, "jimeng: out of memory recording libcurl's sockets");
    }
    if (n > (int)(sizeof few / sizeof few[0])) {
        fds = malloc((size_t)n * sizeof *fds);
        if (!fds) return luaL_error(L, "jimeng: out of memory");
    }
    for (i = 0; i < n; i++) {
        fds[i].fd = (int)e->sock[i].fd;
        fds[i].events = (short)(((e->sock[i].what & CURL_POLL_IN) ? POLLIN : 0) | ((e->sock[i].what & CURL_POLL_OUT) ? POLLOUT : 0));
        fds[i].revents = 0;
    }
    if (n > 0 && poll(fds, (nfds_t)n, 0) < 0 && errno != EINTR) {
        int err = errno;
        if (fds != few) free(fds);
        return luaL_error(L, "jimeng: poll: %s", strerror(err));
    }
    /* the copy in fds stays valid while the actions change e->sock */
    for (i = 0; i < n; i++) {
        int mask = 0;
        if (!fds[i].revents) continue;
        if (fds[i].revents & (POLLIN | POLLHUP)) mask |= CURL_CSELECT_IN;
        if (fds[i].revents & POLLOUT) mask |= CURL_CSELECT_OUT;
        if (fds[i].revents & (POLLERR | POLLNVAL)) mask |= CURL_CSELECT_ERR;
        mrc = curl_multi_socket_action(e->multi, (curl_socket_t)fds[i].fd, mask, &running);
        if (mrc != CURLM_OK && mrc != CURLM_BAD_SOCKET) {
            if (fds != few) free(fds);
            return luaL_error(L, "jimeng: curl_multi_socket_action: %s", curl_multi_strerror(mrc));
        }
        ready++;
    }
    if (fds != few) free(fds);
    if (e->timer_at >= 0 && e->timer_at <= jm_now()) {
        mrc = curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        if (mrc != CURLM_OK) return luaL_error(L, "jimeng: curl_multi_socket_action: %s", curl_multi_strerror(mrc));
        ready++;
    }
    if (ready > 0 && curl_multi_timeout(e->multi, &tmo) == CURLM_OK)
        e->timer_at = tmo < 0 ? -1 : jm_now() + (double)tmo / 1000;
    nret = jm_collect(L, e, running);
    lua_pushinteger(L, ready);
    return nret + 1;
}

/* ---- for the blocking wait (src/loop.c): an engine's sockets, when it next wants a step, one action ---- */

jm_engine *jm_engine_check(lua_State *L, int i) {
    return jm_check_engine(L, i);
}

/* The sockets libcurl wants watched now, into fds (as many as fit in cap); returns how many there are. */
int jm_engine_pollfds(const jm_engine *e, struct pollfd *fds, int cap) {
    int i;
    for (i = 0; i < e->nsock && i < cap; i++) {
        fds[i].fd = (int)e->sock[i].fd;
        fds[i].events = (short)(((e->sock[i].what & CURL_POLL_IN) ? POLLIN : 0) | ((e->sock[i].what & CURL_POLL_OUT) ? POLLOUT : 0));
        fds[i].revents = 0;
    }
    return e->nsock;
}

/* Milliseconds until the engine wants a step without any socket being ready: libcurl's timer, the pace's
 * next token, or finished transfers not yet handed back (0); -1: none. */
double jm_engine_due_ms(const jm_engine *e) {
    double due = -1, pace;
    if (e->ndone > 0 || e->want_oom) return 0;
    if (e->timer_at >= 0) {
        due = (e->timer_at - jm_now()) * 1000;
        if (due < 0) due = 0;
    }
    pace = jm_pace_wait_ms(e);
    if (pace >= 0 && (due < 0 || pace < due)) due = pace;
    return due;
}

/* One socket action: fd ready with CURL_CSELECT_* mask, or (fd < 0) libcurl's timer when it is due. Returns
 * whether an action ran; raises on a libcurl error. */
int jm_engine_act(lua_State *L, jm_engine *e, int fd, int mask) {
    int running = 0;
    CURLMcode mrc;
    if (e->want_oom) {
        e->want_oom = 0;
        return luaL_error(L, "jimeng: out of memory recording libcurl's sockets");
    }
    if (fd < 0 && !(e->timer_at >= 0 && e->timer_at <= jm_now())) return 0;
    mrc = curl_multi_socket_action(e->multi, fd < 0 ? CURL_SOCKET_TIMEOUT : (curl_socket_t)fd, mask, &running);
    if (mrc != CURLM_OK && mrc != CURLM_BAD_SOCKET)
        return luaL_error(L, "jimeng: curl_multi_socket_action: %s", curl_multi_strerror(mrc));
    return 1;
}

/* After the actions of one wake-up: libcurl's timer read back (see jm_socket_action), the finished transfers
 * collected, the queue pumped. Pushes running, finished | nil (as engine:perform). */
int jm_engine_collect(lua_State *L, jm_engine *e) {
    long tmo = -1;
    if (curl_multi_timeout(e->multi, &tmo) == CURLM_OK) e->timer_at = tmo < 0 ? -1 : jm_now() + (double)tmo / 1000;
    return jm_collect(L, e, e->running);
}

/* transfer:paid() -> boolean: a create (never re-sent on a reused connection; its answer names a task) */
static int l_transfer_paid(lua_State *L) {
    lua_pushboolean(L, jm_check_transfer(L, 1)->paid);
    return 1;
}

void jm_open_engine(lua_State *L) {
    static const luaL_Reg engine_m[] = {
        {"request", l_engine_request}, {"perform", l_engine_perform}, {"poll", l_engine_poll}, {"pace", l_engine_pace},
        {"share", l_engine_share},
        {"close", l_engine_close},     {"closed", l_engine_closed}, {"watch", l_engine_watch},
        {"socket_action", l_engine_socket_action},
        {"socket_action_timeout", l_engine_socket_action_timeout}, {"step_sockets", l_engine_step_sockets},
        {NULL, NULL},
    };
    static const luaL_Reg transfer_m[] = {
        {"result", l_transfer_result}, {"done", l_transfer_done}, {"progress", l_transfer_progress},
        {"cancel", l_transfer_cancel}, {"handed_over", l_transfer_handed_over}, {"paid", l_transfer_paid},
        {NULL, NULL},
    };
    jm_new_class(L, JM_ENGINE_MT, engine_m, l_engine_close, l_engine_close);
    jm_new_class(L, JM_TRANSFER_MT, transfer_m, l_transfer_gc, NULL);

    lua_pushcfunction(L, l_engine_new);
    lua_setfield(L, -2, "engine");
    /* core.limits: the engine's defaults and caps, for the Lua layer to state (never to define again) */
    lua_newtable(L);
    jm_setint(L, "connect_timeout", (lua_Integer)JM_CONNECT_TIMEOUT);
    jm_setint(L, "max_connections", JM_DEFAULT_MAX_CONNECTIONS);
    jm_setint(L, "max_json_body", (lua_Integer)JM_MAX_JSON_BODY);
    jm_setint(L, "max_header_bytes", (lua_Integer)JM_MAX_HEADER_BYTES);
    jm_setint(L, "max_redirects", JM_MAX_REDIRECTS);
    lua_setfield(L, -2, "limits");
}
