/*
 * drop-matching: a Weir plugin in C, to show that ABI v1 is language-neutral.
 * Drops every event whose message contains the configured `needle`
 * (config: {"needle": "..."}; default "DEBUG") and keeps the others
 * unchanged. It carries its own small MessagePack reader and writer, so it
 * needs nothing but a C compiler targeting wasm32-wasi:
 *
 *   python3 -m ziglang cc --target=wasm32-wasi -O2 -mexec-model=reactor \
 *       -I ../../sdk/include -o drop_matching.wasm drop_matching.c
 */
#include "weir_abi.h"
#include <stdlib.h>
#include <string.h>

static char *needle;
static size_t needle_len;

/* ---- MessagePack reading: just enough to find strings and skip anything else. */

typedef struct { const uint8_t *p, *end; int ok; } reader;

static uint64_t be(reader *r, int n) {
    uint64_t v = 0;
    if (r->end - r->p < n) { r->ok = 0; return 0; }
    for (int i = 0; i < n; i++) v = (v << 8) | r->p[i];
    r->p += n;
    return v;
}

/* Reads a string header; returns its length and leaves p at the bytes, or -1 if not a string. */
static long read_str(reader *r) {
    if (r->p >= r->end) { r->ok = 0; return -1; }
    uint8_t t = *r->p;
    long n;
    if ((t & 0xe0) == 0xa0) { r->p++; n = t & 0x1f; }
    else if (t == 0xd9) { r->p++; n = (long)be(r, 1); }
    else if (t == 0xda) { r->p++; n = (long)be(r, 2); }
    else if (t == 0xdb) { r->p++; n = (long)be(r, 4); }
    else return -1;
    if (!r->ok || r->end - r->p < n) { r->ok = 0; return -1; }
    return n;
}

/* Map or array header: returns the count, or -1. */
static long read_container(reader *r, int want_map) {
    if (r->p >= r->end) { r->ok = 0; return -1; }
    uint8_t t = *r->p;
    if (want_map) {
        if ((t & 0xf0) == 0x80) { r->p++; return t & 0x0f; }
        if (t == 0xde) { r->p++; return (long)be(r, 2); }
        if (t == 0xdf) { r->p++; return (long)be(r, 4); }
    } else {
        if ((t & 0xf0) == 0x90) { r->p++; return t & 0x0f; }
        if (t == 0xdc) { r->p++; return (long)be(r, 2); }
        if (t == 0xdd) { r->p++; return (long)be(r, 4); }
    }
    return -1;
}

static void skip(reader *r, int depth) {
    if (!r->ok || r->p >= r->end || depth > 64) { r->ok = 0; return; }
    uint8_t t = *r->p++;
    uint64_t n = 0;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return; /* fixint, nil, bool */
    if ((t & 0xe0) == 0xa0) { n = t & 0x1f; goto bytes; }
    if ((t & 0xf0) == 0x90) { n = t & 0x0f; goto array; }
    if ((t & 0xf0) == 0x80) { n = (t & 0x0f) * 2ull; goto array; }
    switch (t) {
    case 0xcc: case 0xd0: n = 1; goto bytes;
    case 0xcd: case 0xd1: n = 2; goto bytes;
    case 0xca: case 0xce: case 0xd2: n = 4; goto bytes;
    case 0xcb: case 0xcf: case 0xd3: n = 8; goto bytes;
    case 0xd9: case 0xc4: n = be(r, 1); goto bytes;
    case 0xda: case 0xc5: n = be(r, 2); goto bytes;
    case 0xdb: case 0xc6: n = be(r, 4); goto bytes;
    case 0xdc: n = be(r, 2); goto array;
    case 0xdd: n = be(r, 4); goto array;
    case 0xde: n = be(r, 2) * 2; goto array;
    case 0xdf: n = be(r, 4) * 2; goto array;
    case 0xd4: n = 2; goto bytes; case 0xd5: n = 3; goto bytes; case 0xd6: n = 5; goto bytes;
    case 0xd7: n = 9; goto bytes; case 0xd8: n = 17; goto bytes;
    case 0xc7: n = be(r, 1) + 1; goto bytes;
    case 0xc8: n = be(r, 2) + 1; goto bytes;
    case 0xc9: n = be(r, 4) + 1; goto bytes;
    default: r->ok = 0; return;
    }
bytes:
    if ((uint64_t)(r->end - r->p) < n) { r->ok = 0; return; }
    r->p += n;
    return;
array:
    for (uint64_t i = 0; i < n && r->ok; i++) skip(r, depth + 1);
}

/* Reads a map key (of any type) and tells whether it is the string `key`. */
static int key_is(reader *r, const char *key) {
    const uint8_t *save = r->p;
    long n = read_str(r);
    if (n < 0) { r->p = save; skip(r, 0); return 0; }
    int eq = (size_t)n == strlen(key) && memcmp(r->p, key, n) == 0;
    r->p += n;
    return eq;
}

static int contains(const uint8_t *hay, size_t n) {
    if (needle_len == 0) return 1;
    for (size_t i = 0; i + needle_len <= n; i++)
        if (memcmp(hay + i, needle, needle_len) == 0) return 1;
    return 0;
}

/* ---- The ABI. */

int32_t weir_abi_version(void) { return WEIR_ABI_VERSION; }

/* Only the message is read: the host sends nothing else. */
int32_t weir_fields(void) { return WEIR_FIELD_MESSAGE; }

void *weir_alloc(int32_t len) { return malloc(len > 0 ? (size_t)len : 1); }

void weir_free(void *ptr, int32_t len) { (void)len; free(ptr); }

static int64_t error(const char *msg) {
    size_t n = strlen(msg);
    char *out = malloc(n);
    memcpy(out, msg, n);
    return WEIR_PACK(out, n);
}

int64_t weir_init(void *config, int32_t len) {
    reader r = { config, (const uint8_t *)config + len, 1 };
    const char *fallback = "DEBUG";
    free(needle);
    needle = NULL;
    if (len > 0 && *r.p != 0xc0) { /* nil: defaults */
        long pairs = read_container(&r, 1);
        if (pairs < 0) { free(config); return error("config must be a map like {needle: \"...\"}"); }
        for (long i = 0; i < pairs && r.ok; i++) {
            if (key_is(&r, "needle")) {
                long n = read_str(&r);
                if (n < 0) { free(config); return error("`needle` must be a string"); }
                needle = malloc(n ? n : 1);
                memcpy(needle, r.p, n);
                needle_len = n;
                r.p += n;
            } else {
                skip(&r, 0); /* its value */
            }
        }
        if (!r.ok) { free(config); return error("config is not valid MessagePack"); }
    }
    if (!needle) {
        needle_len = strlen(fallback);
        needle = malloc(needle_len);
        memcpy(needle, fallback, needle_len);
    }
    free(config);
    weir_log(WEIR_INFO, "drop-matching ready", 19);
    return 0;
}

int64_t weir_process(void *batch, int32_t len) {
    reader r = { batch, (const uint8_t *)batch + len, 1 };
    long n = -1;
    long pairs = read_container(&r, 1);
    for (long i = 0; i < pairs && r.ok; i++) {
        if (key_is(&r, "events")) { n = read_container(&r, 0); break; }
        skip(&r, 0);
    }
    if (n < 0 || !r.ok) { free(batch); __builtin_trap(); } /* a malformed batch fails it (on_error applies) */

    /* {"results": [ {"verdict": "keep"|"drop"}, ... ]}: at most 14 bytes per entry plus headers. */
    uint8_t *out = malloc(16 + (size_t)n * 14);
    uint8_t *w = out;
    *w++ = 0x81;
    *w++ = 0xa7; memcpy(w, "results", 7); w += 7;
    *w++ = 0xdd; *w++ = n >> 24; *w++ = n >> 16; *w++ = n >> 8; *w++ = n;
    long dropped = 0;
    for (long e = 0; e < n; e++) {
        int drop = 0;
        long fields = read_container(&r, 1);
        if (fields < 0) { r.ok = 0; break; }
        for (long f = 0; f < fields && r.ok; f++) {
            if (key_is(&r, "message")) {
                long m = read_str(&r);
                if (m >= 0) { drop = contains(r.p, (size_t)m); r.p += m; }
                else skip(&r, 0);
            } else {
                skip(&r, 0);
            }
        }
        *w++ = 0x81;
        *w++ = 0xa7; memcpy(w, "verdict", 7); w += 7;
        if (drop) { *w++ = 0xa4; memcpy(w, "drop", 4); w += 4; dropped++; }
        else { *w++ = 0xa4; memcpy(w, "keep", 4); w += 4; }
    }
    free(batch);
    if (!r.ok) { free(out); __builtin_trap(); }
    if (dropped) weir_counter_add("dropped", 7, dropped);
    return WEIR_PACK(out, w - out);
}
