/*
 * protocol.c: Gearman's binary protocol: a 12-byte header ("\0REQ" or "\0RES", the type,
 * the size) and a body of NUL-separated arguments, parsed and encoded from the one table
 * of packet types in protocol.h.
 */
#include "protocol.h"

#include <string.h>

struct packet_kind {
  const char *name;
  uint32_t type;
  unsigned nargs;
  bool data;
};

#define PACKET_KIND(name, number, nargs, data) { #name, number, nargs, data },
static const struct packet_kind packet_kinds[] = { GEARMAN_PACKETS(PACKET_KIND) };
#undef PACKET_KIND

static const struct packet_kind *packet_kind(uint32_t type)
{
  for (size_t k = 0; k < sizeof packet_kinds / sizeof packet_kinds[0]; k++)
    if (packet_kinds[k].type == type)
      return &packet_kinds[k];
  return NULL;
}

static uint32_t get_be32(const char *p)
{
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static void put_be32(char *p, uint32_t v)
{
  p[0] = (char)(v >> 24);
  p[1] = (char)(v >> 16);
  p[2] = (char)(v >> 8);
  p[3] = (char)v;
}

const char *packet_name(uint32_t type)
{
  const struct packet_kind *k = packet_kind(type);
  return k ? k->name : NULL;
}

bool packet_split(const struct packet *p, struct packet_args *out)
{
  const struct packet_kind *k = packet_kind(p->type);
  if (k == NULL)
    return false;
  const char *s = p->body, *end = p->body + p->size;
  out->n = k->nargs;
  for (unsigned a = 0; a + 1 < k->nargs; a++) {
    const char *nul = memchr(s, '\0', (size_t)(end - s));
    if (nul == NULL)
      return false;
    out->arg[a] = s;
    out->len[a] = (size_t)(nul - s);
    s = nul + 1;
  }
  out->arg[k->nargs - 1] = s;
  out->len[k->nargs - 1] = (size_t)(end - s);
  return true;
}

const char *packet_error_text(const struct packet *p, char *echo)
{
  struct packet_args a;
  if (!packet_split(p, &a)) /* no code: the whole body is the text */
    return shown(p->body, p->size, echo);
  return shown(a.arg[1], a.len[1], echo);
}

int packet_frame(const char *buf, size_t n, size_t max, struct packet *p)
{
  if (n < HEADER_SIZE)
    return 0;
  if (memcmp(buf, "\0RES", 4) != 0)
    return -1;
  p->type = get_be32(buf + 4);
  p->size = get_be32(buf + 8);
  p->body = buf + HEADER_SIZE;
  if (p->size > max)
    return -1;
  return n - HEADER_SIZE >= p->size;
}

enum io conn_read(struct conn *c, struct packet *p, int64_t deadline)
{
  enum io r = conn_fill(c, HEADER_SIZE, deadline);
  if (r != IO_OK)
    return r;
  if (packet_frame(c->in + c->in_start, c->in_end - c->in_start, MAX_PACKET, p) < 0)
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

/* The request's header (in head) and arguments as iov[0, return value); 0 if it cannot be
 * encoded (an unknown type, the wrong argument count, or over MAX_PACKET). */
static int packet_iov(uint32_t type, const struct packet_args *args, char *head,
                      struct iovec *iov)
{
  static const char nul[1] = { '\0' };
  const struct packet_kind *k = packet_kind(type);
  int n = 1;
  size_t size = 0;
  if (k == NULL || args->n != k->nargs)
    return 0;
  for (unsigned a = 0; a < args->n; a++) {
    if (args->len[a] > 0)
      iov[n++] = (struct iovec){ (void *)args->arg[a], args->len[a] };
    size += args->len[a];
    if (a + 1 < args->n) {
      iov[n++] = (struct iovec){ (void *)nul, 1 };
      size++;
    }
  }
  if (size > MAX_PACKET)
    return 0;
  memcpy(head, "\0REQ", 4);
  put_be32(head + 4, type);
  put_be32(head + 8, (uint32_t)size);
  iov[0] = (struct iovec){ head, HEADER_SIZE };
  return n;
}

enum io packet_send(struct conn *c, uint32_t type, const struct packet_args *args,
                    int64_t deadline)
{
  char head[HEADER_SIZE];
  struct iovec iov[1 + 2 * MAX_ARGS];
  int n = packet_iov(type, args, head, iov);
  if (n == 0)
    return IO_PROTOCOL;
  return conn_send(c, iov, n, deadline);
}

enum io packet_append(struct conn *c, uint32_t type, const struct packet_args *args)
{
  char head[HEADER_SIZE];
  struct iovec iov[1 + 2 * MAX_ARGS];
  int n = packet_iov(type, args, head, iov);
  if (n == 0)
    return IO_PROTOCOL;
  size_t size = 0;
  for (int k = 0; k < n; k++)
    size += iov[k].iov_len;
  if (!out_reserve(c, size))
    return IO_NO_MEMORY;
  for (int k = 0; k < n; k++) {
    memcpy(c->out + c->out_len, iov[k].iov_base, iov[k].iov_len);
    c->out_len += iov[k].iov_len;
  }
  return IO_OK;
}
