/* Whether a downloaded file is a whole MP4 video, by its top-level ISO BMFF boxes (ISO/IEC 14496-12 4.2):
 * each box is a 32-bit big-endian size (including its header), a four-character type, then, when the size
 * is 1, a 64-bit size; a size of 0 means "to the end of the file". A whole MP4 begins with `ftyp`, holds
 * `moov` (the index) and `mdat` (the media), and its boxes' sizes add up to exactly the file's length.
 *
 * The transport cannot promise that: a gateway that streams a video chunked ends its body cleanly even when
 * its own upstream read failed midway (new-api's controller/video_proxy.go, VideoProxy: io.Copy's error is
 * only logged, under a 60 s context), so a cut video arrives with a valid end marker. The walk tells a file
 * cut short (a clean prefix: more bytes may complete it, so a download resumes it) from one no bytes can
 * mend (another format, a splice, garbage where a box header must be). It reads only the box headers.
 * Used by files.c (part:commit, core.mp4_check) and callbacks.c (the first bytes of a download). */
#include <stdio.h>
#include <string.h>

#include "jimeng.h"

static unsigned long long jm_be(const unsigned char *p, int n) {
    unsigned long long v = 0;
    int i;
    for (i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* A box type is four printable ASCII characters (QuickTime's user-data atoms start with 0xA9, "©"). */
static int jm_box_type_ok(const unsigned char *p) {
    int i;
    for (i = 0; i < 4; i++)
        if (!((p[i] >= 0x20 && p[i] < 0x7f) || (i == 0 && p[i] == 0xA9))) return 0;
    return 1;
}

/* Whether p[0..n) is text: printable ASCII, whitespace and well-formed UTF-8 (a sequence cut by the end of
 * the sample counts). Also the engine's test of an answer that is text (jm_looks_textual). */
int jm_is_text(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        size_t k, more;
        if (c == '\t' || c == '\r' || c == '\n' || (c >= 0x20 && c < 0x7f)) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) more = 1;
        else if (c >= 0xE0 && c <= 0xEF) more = 2;
        else if (c >= 0xF0 && c <= 0xF4) more = 3;
        else return 0;
        for (k = 1; k <= more && i + k < n; k++)
            if ((p[i + k] & 0xC0) != 0x80) return 0;
        i += more + 1;
    }
    return 1;
}

static int jm_has(const unsigned char *p, size_t n, const char *needle) {
    size_t k = strlen(needle), i;
    for (i = 0; i + k <= n; i++)
        if (memcmp(p + i, needle, k) == 0) return 1;
    return 0;
}

const char *jm_mp4_kind(const unsigned char *p, size_t n, char *out, size_t outsz) {
    size_t i = 0;
    if (n >= 8 && memcmp(p + 4, "ftyp", 4) == 0 && (jm_be(p, 4) >= 8 || jm_be(p, 4) == 1)) return NULL;
    if (n < 8 && (n <= 4 || memcmp(p + 4, "ftyp", n - 4) == 0)) return NULL; /* too few bytes to tell */
    if (n >= 4 && memcmp(p, "\x1a\x45\xdf\xa3", 4) == 0)
        snprintf(out, outsz, "%s", jm_has(p, n, "webm") ? "a WebM video" : "a Matroska (EBML) file");
    else if (n >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "AVI ", 4) == 0)
        snprintf(out, outsz, "an AVI video");
    else if (n >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0)
        snprintf(out, outsz, "a WebP image");
    else if (n >= 4 && memcmp(p, "OggS", 4) == 0)
        snprintf(out, outsz, "an Ogg file");
    else if (n >= 3 && memcmp(p, "FLV", 3) == 0)
        snprintf(out, outsz, "an FLV video");
    else if (n >= 189 && p[0] == 0x47 && p[188] == 0x47)
        snprintf(out, outsz, "an MPEG transport stream");
    else if (n >= 4 && memcmp(p, "\0\0\1\xba", 4) == 0)
        snprintf(out, outsz, "an MPEG program stream");
    else if (n >= 4 && memcmp(p, "GIF8", 4) == 0)
        snprintf(out, outsz, "a GIF image");
    else if (n >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0)
        snprintf(out, outsz, "a PNG image");
    else if (n >= 3 && memcmp(p, "\xff\xd8\xff", 3) == 0)
        snprintf(out, outsz, "a JPEG image");
    else if (n >= 2 && memcmp(p, "\x1f\x8b", 2) == 0)
        snprintf(out, outsz, "gzip-compressed data");
    else if (n >= 4 && memcmp(p, "PK\3\4", 4) == 0)
        snprintf(out, outsz, "a ZIP archive");
    else if (n >= 5 && memcmp(p, "%PDF-", 5) == 0)
        snprintf(out, outsz, "a PDF document");
    else {
        if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) i = 3;
        while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
        if (i < n && p[i] == '<' && jm_is_text(p, n))
            snprintf(out, outsz, "%s", jm_has(p, n, "html") || jm_has(p, n, "HTML") ? "an HTML page" : "XML or HTML text");
        else if (i < n && (p[i] == '{' || p[i] == '[') && jm_is_text(p, n))
            snprintf(out, outsz, "JSON text");
        else if (jm_is_text(p, n))
            snprintf(out, outsz, "text");
        else if (n >= 8 && jm_box_type_ok(p + 4) && jm_be(p, 4) != 0)
            snprintf(out, outsz, "an ISO BMFF file that does not begin with ftyp (it begins with '%.4s')",
                     (const char *)p + 4);
        else
            snprintf(out, outsz, "data of an unknown format (it begins %02x %02x %02x %02x %02x %02x %02x %02x)", p[0],
                     n > 1 ? p[1] : 0, n > 2 ? p[2] : 0, n > 3 ? p[3] : 0, n > 4 ? p[4] : 0, n > 5 ? p[5] : 0,
                     n > 6 ? p[6] : 0, n > 7 ? p[7] : 0);
    }
    return out;
}

int jm_mp4_walk(jm_read_at read_at, void *ud, unsigned long long size, char *why, size_t whysz) {
    unsigned char h[256];
    unsigned long long off = 0;
    int moov = 0, mdat = 0;
    size_t n = read_at(ud, 0, h, size < sizeof h ? (size_t)size : sizeof h);
    char kind[160];
    if (n < (size < sizeof h ? (size_t)size : sizeof h)) {
        snprintf(why, whysz, "the file could not be read");
        return JM_MP4_BAD;
    }
    if (size == 0) {
        snprintf(why, whysz, "the file is empty");
        return JM_MP4_SHORT;
    }
    if (jm_mp4_kind(h, n, kind, sizeof kind)) {
        snprintf(why, whysz, "it is %s, not an MP4 video", kind);
        return JM_MP4_BAD;
    }
    while (off < size) {
        unsigned long long left = size - off, box;
        unsigned header = 8;
        char type[5];
        if (left < 8 || read_at(ud, off, h, 8) != 8) {
            snprintf(why, whysz, "it ends inside the header of a box at byte %llu", off);
            return JM_MP4_SHORT;
        }
        memcpy(type, h + 4, 4);
        type[4] = '\0';
        if (!jm_box_type_ok(h + 4)) {
            snprintf(why, whysz, "there is no box at byte %llu, where the boxes before it end (a splice or damage)", off);
            return JM_MP4_BAD;
        }
        box = jm_be(h, 4);
        if (box == 1) { /* the 64-bit size follows the type */
            if (left < 16 || read_at(ud, off + 8, h + 8, 8) != 8) {
                snprintf(why, whysz, "it ends inside the header of box '%s' at byte %llu", type, off);
                return JM_MP4_SHORT;
            }
            box = jm_be(h + 8, 8);
            header = 16;
        } else if (box == 0) { /* to the end of the file: the last box */
            box = left;
        }
        if (box < header) {
            snprintf(why, whysz, "box '%s' at byte %llu claims %llu bytes, less than its own header", type, off, box);
            return JM_MP4_BAD;
        }
        if (strcmp(type, "moov") == 0) moov = 1;
        if (strcmp(type, "mdat") == 0) mdat = 1;
        if (box > left) {
            snprintf(why, whysz, "it is cut short: box '%s' at byte %llu is %llu bytes, the file ends %llu bytes into it",
                     type, off, box, left);
            return JM_MP4_SHORT;
        }
        off += box;
    }
    if (!moov || !mdat) {
        const char *missing = "'moov' and 'mdat'";
        if (moov) missing = "'mdat' (the media)";
        if (mdat) missing = "'moov' (the index)";
        snprintf(why, whysz, "its boxes end at byte %llu without %s: it is cut short at a box boundary", off, missing);
        return JM_MP4_SHORT;
    }
    return JM_MP4_OK;
}
