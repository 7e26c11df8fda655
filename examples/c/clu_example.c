/* A C program using the cluster calls: creates a cluster, writes, commits, grows it, aborts a
 * change, unmaps, maps it again and checks what persisted. Prints "clu_example: ok <id>".
 *
 *   cc examples/c/clu_example.c -Iclient/include -Ltarget/release -l:libclu.a -lpthread -ldl -lm
 */
#include <clu.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CHECK(call)                                                                    \
    do {                                                                               \
        int err_ = (call);                                                             \
        if (err_ != 0) {                                                               \
            fprintf(stderr, "clu_example: %s: %s (%d)\n", #call, clu_strerror(err_), err_); \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

int main(void) {
    clu_id_t id;
    void *addr, *more;
    size_t npages;
    const char *msg = "persistent hello from C";

    uint32_t owner;

    CHECK(clu_CreateMap(1, 4, CLU_SHAREABLE, &id, &addr));
    CHECK(clu_Owner(id, &owner));
    if (owner != (uint32_t)getuid()) {
        fprintf(stderr, "clu_example: owner %u, expected %u\n", owner, (unsigned)getuid());
        return 1;
    }
    strcpy((char *)addr, msg);
    CHECK(clu_Commit(id));

    CHECK(clu_Resize(id, 2, &more));
    strcpy((char *)more, "second region");
    CHECK(clu_Commit(id));

    strcpy((char *)addr, "not committed");
    CHECK(clu_Abort(id));
    if (strcmp((char *)addr, msg) != 0) {
        fprintf(stderr, "clu_example: abort did not restore the committed text\n");
        return 1;
    }
    CHECK(clu_Unmap(id));

    CHECK(clu_Map(id, CLU_RDONLY, &addr, &npages));
    if (npages != 6 || strcmp((char *)addr, msg) != 0 ||
        strcmp((char *)addr + 4 * 4096, "second region") != 0) {
        fprintf(stderr, "clu_example: wrong contents after remapping (%zu pages)\n", npages);
        return 1;
    }
    CHECK(clu_Unmap(id));

    int err = clu_Map(0x7fff0000u, CLU_RDWR, &addr, &npages);
    if (err != CLU_ENOTFOUND) {
        fprintf(stderr, "clu_example: mapping a foreign id gave %d (%s)\n", err, clu_strerror(err));
        return 1;
    }
    printf("clu_example: ok %04x:%04x\n", id >> 16, id & 0xffff);
    return 0;
}
