/*
 * The one wiping allocator of kvp11: heap blocks that held secrets are wiped
 * before they go back to malloc. Used for libcurl's global allocators
 * (backend/keyvault/kv_http.c: request buffers with the Authorization header,
 * token responses) and OpenSSL's memory functions in the kvp11 command
 * (tool/wipe.c). Blocks stay plain malloc blocks: glibc's malloc_usable_size()
 * gives the size to wipe.
 */
#ifndef KVP_CORE_WIPEMEM_H
#define KVP_CORE_WIPEMEM_H

#include <stddef.h>

/* Wipe n bytes at p (a heap block: aligned to 16 bytes); cheaper than OPENSSL_cleanse for
 * whole blocks, and not optimised away. */
void kvp_wipe_block(void *p, size_t n);
/* Wipe the whole block, then free it. NULL is ignored. */
void kvp_wipe_free(void *p);
/*
 * realloc that never leaves an unwiped copy behind: a block that must move is
 * copied, wiped and freed; a shrunk block's tail is wiped. A moved block gets
 * at least min_size bytes, so that buffers grown by doubling from small sizes
 * move (and are wiped) less often.
 */
void *kvp_wipe_realloc(void *p, size_t n, size_t min_size);

#endif
