/* clu.h: the cluster calls of the clu-pager interface component (C ABI).
 *
 * Link with target/release/libclu.a (or libclu.so) from `cargo build --release`:
 *   cc prog.c -Iclient/include -Ltarget/release -l:libclu.a -lpthread -ldl -lm
 *
 * The pager must be running (`pager serve`). The socket is $CLU_PAGER_SOCKET, or
 * /run/clu-pager.sock; the connection opens on first use, one per process.
 *
 * Every call returns 0 or a negative CLU_E* code; clu_strerror() describes it.
 * Cluster memory is shared with other processes and with the pager: the addresses returned stay
 * valid until clu_Unmap. If the pager dies, calls return CLU_EUNAVAIL and an access to a page of
 * the cluster that this process has not touched yet raises SIGBUS (never a silent zero page).
 */
#ifndef CLU_H
#define CLU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint32_t clu_id_t;              /* vol_id << 16 | clu_id */

#define CLU_PROTECTED 0                 /* kinds: the owner, root and uids granted map it */
#define CLU_SHAREABLE 1                 /* anyone maps it read-only; the owner read-write */
#define CLU_TEMPORARY 2                 /* never stored (gone at pager restart) unless promoted */

#define CLU_RDWR   0                    /* modes */
#define CLU_RDONLY 1

#define CLU_ENOTFOUND  (-2)             /* no such cluster or volume, or not mapped here */
#define CLU_EIO        (-5)             /* I/O error in the pager's storage */
#define CLU_EACCES     (-13)            /* access denied */
#define CLU_EBUSY      (-16)            /* busy (e.g. already mapped in this process) */
#define CLU_EINVAL     (-22)            /* invalid argument */
#define CLU_ENOSPC     (-28)            /* no space in the volume or on the disk */
#define CLU_EPROTO     (-71)            /* client and pager do not understand each other */
#define CLU_EUNAVAIL   (-107)           /* the pager is not running or the connection was lost */
#define CLU_EREMOTE    (-66)            /* the cluster's image is held on another site: clu_Where names it */

/* Creates a cluster of npages zero pages in volume vol_id, owned by the caller, and maps it. */
int clu_CreateMap(uint16_t vol_id, size_t npages, int kind, clu_id_t *id, void **addr);
/* Maps the whole current cluster; pages load on demand. */
int clu_Map(clu_id_t id, int mode, void **addr, size_t *npages);
/* Unmaps it here. The last unmap on the machine writes the cluster back atomically. */
int clu_Unmap(clu_id_t id);
/* Grows the cluster by add_npages zero pages, mapped here as a new region. */
int clu_Resize(clu_id_t id, size_t add_npages, void **region);
/* Maps here the pages other processes added; *npages = 0 when nothing new. */
int clu_Extend(clu_id_t id, void **region, size_t *npages);
/* Writes every modified page back atomically; returns once the journal has validated it. */
int clu_Commit(clu_id_t id);
/* Commits every modified page of the n clusters atomically, as one snapshot of them all:
 * after it returns 0 all of them are committed, after it fails (a negative code) none is,
 * whatever crashes. Each must be mapped read-write here and named once; 1 <= n <=
 * CLU_MAX_GROUP. Clusters of several local volumes of the site: two-phase commit. */
#define CLU_MAX_GROUP 256
int clu_CommitGroup(const clu_id_t *ids, size_t n);
/* Discards every modification since the last commit. */
int clu_Abort(clu_id_t id);
/* A static description of a code. */
const char *clu_strerror(int err);

/* The owner (or root) lets uid map the cluster in mode (CLU_RDWR or CLU_RDONLY). */
int clu_Grant(clu_id_t id, uint32_t uid, int mode);
/* The owner (or root) withdraws uid's grant. */
int clu_Revoke(clu_id_t id, uint32_t uid);
/* A temporary cluster becomes persistent now; its current image is committed. */
int clu_Promote(clu_id_t id);
/* The uid owning the cluster (a map refused with CLU_EACCES: ask this uid for a grant). */
int clu_Owner(clu_id_t id, uint32_t *uid);
/* Writes into site (len bytes at most, NUL-terminated) the name of the site holding the
 * cluster's image now, or "" if none; 0 or a negative code. */
int clu_Where(clu_id_t id, char *site, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* CLU_H */
