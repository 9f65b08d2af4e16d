/*
 * protocol.c: Gearman's binary protocol: a 12-byte header ("\0REQ" or "\0RES", the type,
 * the size) and a body.
 */
#include "protocol.h"

#include <string.h>

uint32_t get_be32(const char *p)
{
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

void put_be32(char *p, uint32_t v)
{
  p[0] = (char)(v >> 24);
  p[1] = (char)(v >> 16);
  p[2] = (char)(v >> 8);
  p[3] = (char)v;
}

/* The next response packet from c. */
enum io conn_read(struct conn *c, struct packet *p, int64_t deadline)
{
  enum io r = conn_fill(c, HEADER_SIZE, deadline);
  if (r != IO_OK)
    return r;
  const char *h = c->in + c->in_start;
  if (memcmp(h, "\0RES", 4) != 0)
    return IO_PROTOCOL;
  p->type = get_be32(h + 4);
  p->size = get_be32(h + 8);
  if (p->size > MAX_PACKET)
    return IO_PROTOCOL;
  r = conn_fill(c, HEADER_SIZE + p->size, deadline);
  if (r != IO_OK)
    return r;
  p->body = c->in + c->in_start + HEADER_SIZE;
  c->in_start += HEADER_SIZE + p->size;
  if (c->in_start == c->in_end)
    c->in_start = c->in_end = 0;
  return IO_OK;
}

