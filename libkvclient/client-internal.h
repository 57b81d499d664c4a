/* SPDX-License-Identifier: MIT */
/* Private to libkvclient: what client.c, stats.c, keys.c and pool.c share. */
#pragma once

#include "kvdrive/client.h"
#include "kvdrive.pb-c.h"

#define _public_ __attribute__((visibility("default")))

struct kvc_pool_dev {
        uint8_t *slot0;         /* device pointer of the allocation's first slot */
        uint32_t first_slot;
};

struct kvc_pool {
        void *base;             /* MAP_SHARED mapping of the memfd; MAP_FAILED for CUDA */
        size_t map_bytes;       /* slot_count * slot_bytes rounded up to a page */
        uint32_t id;
        uint32_t slot_count;
        uint64_t slot_bytes;
        struct kvc_pool_dev *dev; /* CUDA pools: one per allocation, else NULL */
        uint32_t n_dev;
};

/*
 * Sends req (its id is assigned here) with fd (if >= 0) as SCM_RIGHTS and
 * waits for the reply to it, recording replies to other requests meanwhile.
 * On success *ret holds a reply whose body is expect; the caller frees it
 * with kvdrive__response__free_unpacked(). A wire Error becomes
 * -(KVC_E_BASE + code) and its message kvc_last_error(); a reply of another
 * body -EBADMSG.
 */
int kvc__call(kvc_client *c, Kvdrive__Request *req, int fd,
              Kvdrive__Response__BodyCase expect, Kvdrive__Response **ret);
