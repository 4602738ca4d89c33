/* What the engine's files share (engine.c, configure.c, queue.c, pace.c, callbacks.c, transfer.c, host.c):
 * the engine, the transfer, their caps and defaults, and the functions one of them gives another. Private to
 * them: the rest of the C sees an engine through jimeng.h's jm_engine_* (loop.c) only. */
#ifndef JIMENG_ENGINE_INTERNAL_H
#define JIMENG_ENGINE_INTERNAL_H

#include <stddef.h>

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
#define JM_WANTED_HEADERS 10 /* the response headers the Lua layer reads (transfer.c: jm_wanted_headers) */

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
    /* where each header result.headers reads is in head (transfer.c), found at its first lookup: the first
     * value's offset and length, and how many times it came */
    int hindexed;
    unsigned int hoff[JM_WANTED_HEADERS], hlen[JM_WANTED_HEADERS];
    unsigned char hcount[JM_WANTED_HEADERS];

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
    char *proxy_where; /* its host:port (NULL: none known): allocated only for a request that takes a proxy */
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
    char *refused_what; /* format: what the body is instead of an MP4 (mp4.c); allocated only then */
    int io_errno;
};

/* The engine at stack index i, raising if it is not one or is closed. */
static inline jm_engine *jm_check_engine(lua_State *L, int i) {
    jm_engine *e = luaL_checkudata(L, i, JM_ENGINE_MT);
    if (e->closed) luaL_error(L, "jimeng: engine is closed");
    return e;
}

/* callbacks.c: a transfer's buffers and header lines (jm_next_header: the one reader of header lines, the
 * next "Name: value" from *cursor; jm_header_value: the value of header `name`, lower case); libcurl's
 * callbacks of a transfer; jm_sniffed: the sniffed first bytes of a 200 decide where the body goes (0 aborts). */
JM_HIDDEN void jm_buf_free(jm_buf *b);
JM_HIDDEN int jm_next_header(const char **cursor, const char **name, size_t *nlen, const char **value, size_t *vlen);
JM_HIDDEN int jm_header_value(const jm_buf *h, const char *name, char *out, size_t outsz);
JM_HIDDEN size_t jm_on_header(char *ptr, size_t size, size_t nitems, void *ud);
JM_HIDDEN size_t jm_on_body(char *ptr, size_t size, size_t nmemb, void *ud);
JM_HIDDEN int jm_sniffed(jm_transfer *t);
#if LIBCURL_VERSION_NUM >= 0x075000
JM_HIDDEN int jm_on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                           int conn_local_port);
#endif
JM_HIDDEN int jm_on_closesocket(void *ud, curl_socket_t s);

/* pace.c: a token for the transfer about to leave the queue (1), or 0 with e->pace_next set; a token taken
 * after the fact (a redirect's hop); milliseconds until a paced queue may start its next transfer (-1:
 * nothing to wait for); engine:pace's setting (0, or -1 out of memory with nothing changed). */
JM_HIDDEN int jm_pace_take(jm_engine *e);
JM_HIDDEN void jm_pace_debit(jm_engine *e);
JM_HIDDEN double jm_pace_wait_ms(const jm_engine *e);
JM_HIDDEN int jm_pace_set(jm_engine *e, double rate, double burst, double count, double window);

/* configure.c: options of a Lua table (a wrong type raises); a client's settings into e->cfg; the libcurl
 * options of every handle, of a kind, of one request; a request's header lines, its hand-over lines, a
 * download's part; the check that every option of engine:request is known. */
JM_HIDDEN double jm_optnum(lua_State *L, int idx, const char *k, double def);
JM_HIDDEN const char *jm_optstr(lua_State *L, int idx, const char *k, size_t *len);
JM_HIDDEN int jm_optbool(lua_State *L, int idx, const char *k);
JM_HIDDEN int jm_has_crlf(const char *s);
JM_HIDDEN void jm_config_free(jm_config *c);
JM_HIDDEN void jm_config_read(lua_State *L, int idx, jm_engine *e);
JM_HIDDEN CURLcode jm_configure_shared(const jm_config *c, jm_transfer *t);
JM_HIDDEN CURLcode jm_configure_kind(const jm_config *c, jm_transfer *t);
JM_HIDDEN CURLcode jm_configure_request(const jm_config *c, jm_transfer *t, const char *url, const char *method,
                                        const char *body, size_t blen, int accept_encoding);
JM_HIDDEN const char *jm_build_headers(lua_State *L, int opts, jm_engine *e, jm_transfer *t, int post);
JM_HIDDEN void jm_take_line(lua_State *L, int opts, const char *pfield, const char *lfield, char **out,
                            size_t *outlen);
JM_HIDDEN void jm_take_part(lua_State *L, int opts, jm_transfer *t);
JM_HIDDEN void jm_check_request_options(lua_State *L, int opts);

/* queue.c: a transfer's life on its engine: submitted (the userdata at the top of the stack), started by the
 * pump, finished; its file and its request let go of; the finished ones collected (engine:perform's results). */
JM_HIDDEN void jm_submit(lua_State *L, jm_engine *e, jm_transfer *t);
JM_HIDDEN void jm_pump(lua_State *L, jm_engine *e);
JM_HIDDEN void jm_finish(lua_State *L, jm_transfer *t, CURLcode rc);
JM_HIDDEN void jm_drop_part(lua_State *L, jm_transfer *t);
JM_HIDDEN void jm_drop_request(jm_transfer *t);
JM_HIDDEN int jm_collect(lua_State *L, jm_engine *e, int running);

/* transfer.c: the transfer class. */
JM_HIDDEN void jm_open_transfer(lua_State *L);

/* host.c: libcurl's socket and timer callbacks set on a new engine, their records freed with it; the engine's
 * methods by which a host drives it. */
JM_HIDDEN int jm_watch_setup(jm_engine *e);
JM_HIDDEN void jm_watch_free(jm_engine *e);
JM_HIDDEN int l_engine_perform(lua_State *L);
JM_HIDDEN int l_engine_poll(lua_State *L);
JM_HIDDEN int l_engine_watch(lua_State *L);
JM_HIDDEN int l_engine_socket_action(lua_State *L);
JM_HIDDEN int l_engine_socket_action_timeout(lua_State *L);
JM_HIDDEN int l_engine_step_sockets(lua_State *L);

#endif
