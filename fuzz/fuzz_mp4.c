/* libFuzzer target: the MP4 box walk (src/mp4.c) over arbitrary files, read through the same read_at callback
 * shape part:commit uses, and the naming of a body's first bytes (jm_mp4_kind, as the engine calls it on a
 * download's first 64 bytes). Every verdict but OK comes with its reason. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jimeng.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    const uint8_t *p;
    size_t n;
} jm_mem;

static size_t jm_mem_read(void *ud, unsigned long long off, unsigned char *buf, size_t n) {
    const jm_mem *m = ud;
    if (off >= m->n) return 0;
    if (n > m->n - off) n = (size_t)(m->n - off);
    memcpy(buf, m->p + off, n);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char why[512], kind[160];
    jm_mem m = {data, size};
    int v = jm_mp4_walk(jm_mem_read, &m, size, why, sizeof why);
    if (v != JM_MP4_OK && v != JM_MP4_SHORT && v != JM_MP4_BAD) abort();
    if (v != JM_MP4_OK && (why[0] == '\0' || strlen(why) >= sizeof why)) abort();
    (void)jm_mp4_kind(data, size < 64 ? size : 64, kind, sizeof kind);
    return 0;
}
