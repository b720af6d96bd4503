/*
 * Weir plugin ABI, version 1, for C (and any language with a C ABI).
 * The contract is sdk/ABI.md; this header only names its pieces.
 *
 * A plugin exports the functions below and its `memory`. Data crosses the
 * boundary as MessagePack: the host writes the config and each batch into a
 * buffer it got from weir_alloc (the plugin then owns and frees it); the
 * plugin returns its output as a buffer packed with WEIR_PACK(ptr, len),
 * which the host copies and hands back through weir_free.
 */
#ifndef WEIR_ABI_H
#define WEIR_ABI_H

#include <stdint.h>
#include <stddef.h>

#define WEIR_ABI_VERSION 1

#define WEIR_EXPORT(name) __attribute__((export_name(#name)))
#define WEIR_IMPORT(name) __attribute__((import_module("weir"), import_name(#name)))

/* (ptr << 32) | len, both unsigned 32-bit; len 0 means "no buffer". */
#define WEIR_PACK(ptr, len) ((int64_t)(((uint64_t)(uint32_t)(uintptr_t)(ptr) << 32) | (uint32_t)(len)))

/* Guest exports. */
WEIR_EXPORT(weir_abi_version) int32_t weir_abi_version(void);
WEIR_EXPORT(weir_alloc) void *weir_alloc(int32_t len);
WEIR_EXPORT(weir_free) void weir_free(void *ptr, int32_t len);
/* Returns 0 on success, or WEIR_PACK of a UTF-8 error message. */
WEIR_EXPORT(weir_init) int64_t weir_init(void *config_msgpack, int32_t len);
/*
 * Optional: the event fields the plugin sees and may change, as WEIR_FIELD_*
 * bits (without this export: all of them). The others are not sent, and
 * changes to them in a returned event are ignored.
 */
#define WEIR_FIELD_TIMESTAMP 1
#define WEIR_FIELD_MESSAGE 2
#define WEIR_FIELD_HOST 4
#define WEIR_FIELD_SERVICE 8
#define WEIR_FIELD_SOURCE 16
#define WEIR_FIELD_STATUS 32
#define WEIR_FIELD_TAGS 64
#define WEIR_FIELD_ATTRIBUTES 128
WEIR_EXPORT(weir_fields) int32_t weir_fields(void);
/* Returns WEIR_PACK of the MessagePack result {"results": [{"verdict": ..., "event": ...}, ...]}. */
WEIR_EXPORT(weir_process) int64_t weir_process(void *batch_msgpack, int32_t len);

/* Host imports (module "weir"). */
enum weir_log_level { WEIR_ERROR = 0, WEIR_WARN = 1, WEIR_INFO = 2, WEIR_DEBUG = 3 };
WEIR_IMPORT(log) void weir_log(int32_t level, const char *msg, int32_t len);
WEIR_IMPORT(now_ms) int64_t weir_now_ms(void);
WEIR_IMPORT(counter_add) void weir_counter_add(const char *name, int32_t name_len, int64_t delta);

#endif
