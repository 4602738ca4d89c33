#define _GNU_SOURCE /* memmem */
/* libFuzzer target: the engine's response handling fed with arbitrary bytes, through the same libcurl
 * callbacks a transfer uses: header lines (status lines, redirects, Content-Range, Content-Type), the
 * choice between the file and memory sinks, the body, and the headers table Lua receives.
 * Input: [8 bytes: resume offset, record total and flags][header block]\n\n[body]. transfer.c is included for
 * its static jm_push_headers; the callbacks (callbacks.c) are linked. */
#include "../src/transfer.c"

#include <fcntl.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static char part_path[64], record_path[80];
static jm_part part = {-1, part_path, record_path};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    jm_transfer t;
    size_t i, start;
    const char *sep;
    uint64_t off = 0;
    if (!L) {
        L = luaL_newstate();
        snprintf(part_path, sizeof part_path, "/tmp/jimeng-fuzz-%d.part", (int)getpid());
        snprintf(record_path, sizeof record_path, "%s.json", part_path);
        part.fd = open(part_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (part.fd < 0 || unlink(part_path) != 0) abort(); /* the engine writes through the fd; nothing is left behind */
    }
    if (size < 8) return 0;
    for (i = 0; i < 8; i++) off = (off << 8) | data[i];
    data += 8;
    size -= 8;
    memset(&t, 0, sizeof t);
    t.fd = -1;
    t.max_body = 4096;
    t.offset = (curl_off_t)(off % 100000);
    t.total = (curl_off_t)((off >> 20) % 200000);
    t.expect_binary = (int)(off >> 63);
    t.validator = (off >> 61) & 1 ? "\"fuzz\"" : NULL;
    t.task_id = "fuzz";
    if ((off >> 62) & 1) {
        t.path = part_path;
        t.part = &part;
        t.fd = part.fd;
    }

    sep = memmem(data, size, "\n\n", 2);
    start = 0;
    for (i = 0; i < (sep ? (size_t)(sep - (const char *)data) : size); i++) {
        if (data[i] == '\n') {
            char line[4096];
            size_t n = i + 1 - start;
            if (n < sizeof line) {
                memcpy(line, data + start, n);
                if (jm_on_header(line, 1, n, &t) != n) break;
            }
            start = i + 1;
        }
    }
    if (sep) {
        size_t body = (size_t)(sep - (const char *)data) + 2;
        if (body < size) {
            char buf[8192];
            size_t n = size - body < sizeof buf ? size - body : sizeof buf;
            memcpy(buf, data + body, n);
            if (jm_on_body(buf, 1, n, &t) == n && t.sink == JM_SINK_SNIFF) (void)jm_sniffed(&t);
        }
    }
    {
        char v[256];
        jm_header_value(&t.head, "content-range", v, sizeof v);
        jm_header_value(&t.head, "content-type", v, sizeof v);
        jm_header_value(&t.head, "etag", v, sizeof v);
    }
    jm_push_headers(L, &t.head);
    lua_settop(L, 0);
    jm_buf_free(&t.body);
    jm_buf_free(&t.head);
    free(t.refused_what);
    if (ftruncate(part.fd, 0) != 0) abort();
    unlink(record_path);
    return 0;
}
