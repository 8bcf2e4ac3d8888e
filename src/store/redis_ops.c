/*
 * redis_ops.c: the store requests of the redis backend: key names, the Lua
 * scripts, and one function per request that builds the command and one
 * that turns the reply into the store.h callback. The connection, the
 * FIFO of commands in flight and the timeouts are redis.c's.
 *
 * Threads: the loop that owns the handle. Callbacks run from hiredis's
 * reply callback on that loop, or synchronously with IMGW_EBUSY when the
 * loop's connection is not ready (store.h allows both).
 *
 * Keys (protocol.md section 6, plus our own; docs/store.md has the table):
 *   IM-SEQ-{u}    string counter        the timeline's max seq, PX
 *                                       retention + seq_idle_days, refreshed
 *                                       by append, sync, max_seq and
 *                                       route_refresh
 *   IM-EPOCH-{u}  string                the timeline's epoch (store.h): the
 *                                       id of the message that got seq 1;
 *                                       set when INCR of IM-SEQ gives 1,
 *                                       same PX as IM-SEQ, refreshed with it
 *   IM-TL-{u}     zset score = seq      member "<message_id>:<stored_ms>:"
 *                                       + entry bytes (unique per message)
 *   IM-DEDUP-{u}:{client_msg_id}        "<message_id>:<seq>", EX dedupe_ttl
 *   IM-MSG-{id}   hash sender conv ts revoked, PX retention
 *   IM-GROUP-{g}  set of members
 *   IM-USER-{u}   hash platform -> broker_id, EX route ttl
 *   IM-POS-{u}    hash device -> "<stamp>:<seq>", "" -> stamp counter
 *   IM-READ-{u}   hash conv -> "<stamp>:<message_id>", "" -> stamp counter
 *   IM-PWATCH-{u} hash broker_id -> broker_id: nodes with presence
 *                 subscribers of u, EX route ttl (refreshed by them)
 *   IM-CONV-{u}   zset score = the last message's seq in u's timeline,
 *                 member = "s:<peer>" (1:1) or "g:<gid>" (group); at most
 *                 store.max_conversations, the lowest score dropped first
 *   IM-CONVE-{u}  hash member -> "<last_message_id>:<last_seq>:<type>:
 *                 <unread>:<read_seq>:<updated_ms>:<sender>:<preview>",
 *                 "" -> the sum of the unread counts; both PX IM-SEQ's ttl,
 *                 refreshed by append, list, read and delete
 *
 * Every key is a fixed prefix and at most one value, except IM-DEDUP, which
 * joins two: the sender and the client_msg_id. The separator is ':', which
 * user ids cannot contain (idsyntax.h, enforced by store.c for every
 * request), so the first ':' after the prefix ends the sender and two
 * different (sender, client_msg_id) pairs never share a key. (The
 * contract's '-' did not: "eve" + "x-1" and "eve-x" + "1" collided.) The
 * members and values that join several parts lead with digits and ':'
 * ("<message_id>:<stored_ms>:", "<stamp>:"), which the readers split at
 * the first ':' or two; the rest may hold anything.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "log.h"
#include "redis_impl.h"

#define K_SEQ "IM-SEQ-"
#define K_TL "IM-TL-"
#define K_EPOCH "IM-EPOCH-"
#define K_DEDUP "IM-DEDUP-"
#define K_MSG "IM-MSG-"
#define K_GROUP "IM-GROUP-"
#define K_USER "IM-USER-"
#define K_POS "IM-POS-"
#define K_READ "IM-READ-"
#define K_PWATCH "IM-PWATCH-"
#define K_CONV "IM-CONV-"
#define K_CONVE "IM-CONVE-"

/* A key: prefix + id (+ ":" + id2), in a caller buffer of KEY_MAX bytes. */
#define KEY_MAX (16 + 2 * (IMGW__STORE_ID_MAX + 1) + 1)

/* ---- Lua ----------------------------------------------------------------- */

/*
 * Redis < 7 replicates scripts verbatim unless told otherwise, and then
 * refuses writes after TIME; effects replication (the only mode of 7.x)
 * makes TIME safe.
 */
#define LUA_PROLOGUE                                                         \
    "if redis.replicate_commands then redis.replicate_commands() end\n"

/* now: Redis's clock in ms, one clock for every node of the cluster. */
#define LUA_NOW                                                              \
    "local tm = redis.call('TIME')\n"                                        \
    "local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / "     \
    "1000)\n"

/*
 * Age trimming. Entries join a timeline at its tail with Redis's clock in
 * their member, so stored times grow along the ranks and the aged entries
 * are a prefix: a binary search over ranks finds its end with O(log n)
 * single-member ZRANGEs, however many entries there are.
 */
#define LUA_TRIM_AGE                                                         \
    "local function aged(tk, r, cutoff)\n"                                   \
    "  local m = redis.call('ZRANGE', tk, r, r)[1]\n"                        \
    "  local t = m and string.match(m, '^%d+:(%d+):')\n"                     \
    "  return t ~= nil and tonumber(t) <= cutoff\n"                          \
    "end\n"                                                                  \
    "local function trim_age(tk, cutoff)\n"                                  \
    "  if not aged(tk, 0, cutoff) then return end\n"                         \
    "  local lo, hi = 0, redis.call('ZCARD', tk)\n"                          \
    "  while hi - lo > 1 do\n"                                               \
    "    local mid = math.floor((lo + hi) / 2)\n"                            \
    "    if aged(tk, mid, cutoff) then lo = mid else hi = mid end\n"         \
    "  end\n"                                                                \
    "  redis.call('ZREMRANGEBYRANK', tk, 0, lo)\n"                           \
    "end\n"

#define LUA_CHECK_HASH                                                       \
    "local ty = redis.call('TYPE', KEYS[1])['ok']\n"                         \
    "if ty ~= 'none' and ty ~= 'hash' then\n"                                \
    "  return redis.error_reply('IMGW ' .. KEYS[1] .. ' is not a hash')\n"   \
    "end\n"

/* Positions: values are "<stamp>:<value>" and the field "" counts stamps,
 * so a full hash forgets its least recently updated field (the memory
 * backend's LRU). HLEN counts the "" field too. */
#define LUA_LRU                                                              \
    "local function evict_lru(k)\n"                                          \
    "  local all = redis.call('HGETALL', k)\n"                               \
    "  local lf, ls\n"                                                       \
    "  for i = 1, #all, 2 do\n"                                              \
    "    if all[i] ~= '' then\n"                                             \
    "      local s = tonumber(string.match(all[i + 1], '^(%d+):')) or 0\n"   \
    "      if ls == nil or s < ls then lf, ls = all[i], s end\n"             \
    "    end\n"                                                              \
    "  end\n"                                                                \
    "  if lf then redis.call('HDEL', k, lf) end\n"                           \
    "end\n"

/* Conversation entries (IM-CONV / IM-CONVE): drops one, keeping the ""
 * total of unread counts; returns its value or nil. */
#define LUA_CONV_DROP                                                        \
    "local function conv_drop(ck, ek, f)\n"                                  \
    "  local v = redis.call('HGET', ek, f)\n"                                \
    "  if v then\n"                                                          \
    "    local un = tonumber(string.match(v, '^%d+:%d+:%-?%d+:(%d+):')) "    \
    "or 0\n"                                                                 \
    "    if un > 0 then redis.call('HINCRBY', ek, '', -un) end\n"            \
    "    redis.call('HDEL', ek, f)\n"                                        \
    "  end\n"                                                                \
    "  redis.call('ZREM', ck, f)\n"                                          \
    "  return v\n"                                                           \
    "end\n"

/*
 * append. KEYS: dedupe key, message key, then per user its IM-SEQ, IM-TL,
 * IM-EPOCH, IM-CONV and IM-CONVE. ARGV: message id, sender, conversation,
 * server time, retention count, retention ms, dedupe ttl s, entry, dedupe flag,
 * IM-SEQ ttl ms (longer than retention: the counter outlives every entry it
 * numbered, so a seq is never reused while a timeline holds one), conversation
 * kind
 * ("0": no conversation state), message type, preview (cut by the
 * caller), max conversations, then per user its conversation member
 * ("s:<peer>" / "g:<gid>"). The sender (users[0], the first) does not
 * count its own message as unread. Everything that
 * can fail is checked before the first write, so an error reply means
 * nothing was written and a script that gets past the checks writes all.
 * A counter that INCR starts at 1 (new, flushed or expired) starts a new
 * epoch: this message's id.
 * Returns {0, seq...}, {1, "<id>:<seq>"} (duplicate) or {2} (id in use).
 */
static const char lua_append[] =
    LUA_PROLOGUE LUA_TRIM_AGE LUA_CONV_DROP
    "local nu = (#KEYS - 2) / 5\n"
    "local dd = ARGV[9] == '1'\n"
    "local cv = ARGV[11] ~= '0'\n"
    "if dd then\n"
    "  local d = redis.call('GET', KEYS[1])\n"
    "  if d then return {1, d} end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then return {2} end\n"
    "for i = 1, nu do\n"
    "  local b = 5 * i - 2\n"
    "  local v = redis.call('GET', KEYS[b])\n"
    "  if v and not string.match(v, '^%d+$') then\n"
    "    return redis.error_reply('IMGW ' .. KEYS[b] .. "
    "' is not a counter')\n"
    "  end\n"
    "  local t = redis.call('TYPE', KEYS[b + 1])['ok']\n"
    "  if t ~= 'none' and t ~= 'zset' then\n"
    "    return redis.error_reply('IMGW ' .. KEYS[b + 1] .. "
    "' is not a sorted set')\n"
    "  end\n"
    "  if cv then\n"
    "    t = redis.call('TYPE', KEYS[b + 3])['ok']\n"
    "    local t2 = redis.call('TYPE', KEYS[b + 4])['ok']\n"
    "    if (t ~= 'none' and t ~= 'zset') or (t2 ~= 'none' and t2 ~= "
    "'hash') then\n"
    "      return redis.error_reply('IMGW ' .. KEYS[b + 3] .. "
    "' has the wrong type')\n"
    "    end\n"
    "  end\n"
    "end\n" LUA_NOW "local rc = tonumber(ARGV[5])\n"
    "local rms = tonumber(ARGV[6])\n"
    "local nows = string.format('%.0f', now)\n"
    "local member = ARGV[1] .. ':' .. nows .. ':' .. ARGV[8]\n"
    "local mc = tonumber(ARGV[14])\n"
    "local out = {0}\n"
    "for i = 1, nu do\n"
    "  local b = 5 * i - 2\n"
    "  local tk = KEYS[b + 1]\n"
    "  local s = redis.call('INCR', KEYS[b])\n"
    "  redis.call('PEXPIRE', KEYS[b], ARGV[10])\n"
    "  if s == 1 then redis.call('SET', KEYS[b + 2], ARGV[1]) end\n"
    "  redis.call('PEXPIRE', KEYS[b + 2], ARGV[10])\n"
    "  redis.call('ZADD', tk, s, member)\n"
    "  local n = redis.call('ZCARD', tk)\n"
    "  if n > rc then redis.call('ZREMRANGEBYRANK', tk, 0, n - rc - 1) end\n"
    "  trim_age(tk, now - rms)\n"
    "  redis.call('PEXPIRE', tk, ARGV[6])\n"
    "  out[i + 1] = s\n"
    "  if cv then\n"
    "    local ck, ek, f = KEYS[b + 3], KEYS[b + 4], ARGV[14 + i]\n"
    "    local old = redis.call('HGET', ek, f)\n"
    "    local un, rs = 0, '0'\n"
    "    if old then\n"
    "      local a, r = string.match(old, '^%d+:%d+:%-?%d+:(%d+):(%d+):')\n"
    "      un = tonumber(a) or 0\n"
    "      rs = r or '0'\n"
    "    end\n"
    "    if i > 1 then\n"
    "      un = un + 1\n"
    "      redis.call('HINCRBY', ek, '', 1)\n"
    "    end\n"
    "    redis.call('HSET', ek, f, ARGV[1] .. ':' .. string.format('%.0f', "
    "s) .. ':' .. ARGV[12] .. ':' .. string.format('%.0f', un) .. ':' .. rs "
    ".. ':' .. nows .. ':' .. ARGV[2] .. ':' .. ARGV[13])\n"
    "    redis.call('ZADD', ck, s, f)\n"
    "    if not old and redis.call('ZCARD', ck) > mc then\n"
    "      conv_drop(ck, ek, redis.call('ZRANGE', ck, 0, 0)[1])\n"
    "    end\n"
    "    redis.call('PEXPIRE', ck, ARGV[10])\n"
    "    redis.call('PEXPIRE', ek, ARGV[10])\n"
    "  end\n"
    "end\n"
    "redis.call('HSET', KEYS[2], 'sender', ARGV[2], 'conv', ARGV[3], "
    "'ts', ARGV[4], 'revoked', '0')\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[6])\n"
    "if dd then\n"
    "  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. out[2], 'EX', ARGV[7])\n"
    "end\n"
    "return out\n";

/*
 * sync. KEYS: IM-TL, IM-SEQ, IM-EPOCH. ARGV: min_seq, max_seq ("0": none),
 * limit, retention ms, message key prefix, IM-SEQ ttl ms. Drops aged
 * entries and refreshes the TTLs of IM-SEQ and IM-EPOCH (a client that
 * syncs holds seqs: the counter must not expire under it; PEXPIRE of a
 * missing key is a no-op), then returns {max_seq, has_more, oldest seq
 * held (max_seq + 1: none), epoch ("0": none), seq, member, revoked, ...}.
 * The epoch is a string: a Lua number would round a 64-bit id.
 */
static const char lua_sync[] =
    LUA_PROLOGUE LUA_TRIM_AGE
    "local top = tonumber(redis.call('GET', KEYS[2]) or '0') or 0\n" LUA_NOW
    "trim_age(KEYS[1], now - tonumber(ARGV[4]))\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[6])\n"
    "redis.call('PEXPIRE', KEYS[3], ARGV[6])\n"
    "local ep = '0'\n"
    "if top > 0 then ep = redis.call('GET', KEYS[3]) or '0' end\n"
    "local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
    "local oldest = top + 1\n"
    "if first[2] then oldest = tonumber(first[2]) end\n"
    "local hi = ARGV[2]\n"
    "if hi == '0' then hi = '+inf' end\n"
    "local lim = tonumber(ARGV[3])\n"
    "local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], hi, "
    "'WITHSCORES', 'LIMIT', 0, lim + 1)\n"
    "local n = #r / 2\n"
    "local more = 0\n"
    "if n > lim then n = lim more = 1 end\n"
    "local out = {top, more, oldest, ep}\n"
    "for i = 1, n do\n"
    "  local m = r[2 * i - 1]\n"
    "  local id = string.match(m, '^(%d+):')\n"
    "  local rv = 0\n"
    "  if id and redis.call('HGET', ARGV[5] .. id, 'revoked') == '1' then "
    "rv = 1 end\n"
    "  out[3 * i + 2] = tonumber(r[2 * i])\n"
    "  out[3 * i + 3] = m\n"
    "  out[3 * i + 4] = rv\n"
    "end\n"
    "return out\n";

/* revoke. KEYS: IM-MSG. 1 = revoked, 0 = unknown (HSET alone would
 * create a key without TTL). */
static const char lua_revoke[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'revoked', '1')\n"
    "return 1\n";

/* group_set. KEYS: IM-GROUP. ARGV: members. Replaces the set atomically;
 * no members = no set (Redis keeps no empty sets). SADD in chunks keeps
 * unpack() well inside Lua's C stack. */
static const char lua_group_set[] =
    "redis.call('DEL', KEYS[1])\n"
    "for i = 1, #ARGV, 500 do\n"
    "  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 499, "
    "#ARGV)))\n"
    "end\n"
    "return 1\n";

/*
 * route_set. KEYS: IM-USER. ARGV: platform, broker_id, ttl s, max fields.
 * Redis 7.0 has one TTL per key, so the key lives as long as its longest
 * lived field: the TTL only grows here. At max fields a new platform
 * replaces the first one in HKEYS order, which for a small hash (listpack)
 * is the one added first.
 */
static const char lua_route_set[] =
    LUA_CHECK_HASH
    "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and "
    "redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then\n"
    "  redis.call('HDEL', KEYS[1], redis.call('HKEYS', KEYS[1])[1])\n"
    "end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
    "end\n"
    "return 1\n";

/* route_del. KEYS: IM-USER. ARGV: platform, broker_id. Deletes the field
 * only if a newer login (another node) has not taken it over. */
static const char lua_route_del[] =
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "end\n"
    "return 1\n";

/* set_delivered. KEYS: IM-POS. ARGV: device, seq, max devices, ttl ms.
 * Keeps the highest seq (acks arrive out of order). */
static const char lua_delivered[] =
    LUA_CHECK_HASH LUA_LRU
    "local k = KEYS[1]\n"
    "local stamp = redis.call('HINCRBY', k, '', 1)\n"
    "local cur = redis.call('HGET', k, ARGV[1])\n"
    "local seq = tonumber(ARGV[2])\n"
    "if cur then\n"
    "  local old = tonumber(string.match(cur, ':(%d+)$')) or -1\n"
    "  if old > seq then seq = old end\n"
    "elseif redis.call('HLEN', k) > tonumber(ARGV[3]) then\n"
    "  evict_lru(k)\n"
    "end\n"
    "redis.call('HSET', k, ARGV[1], string.format('%.0f', stamp) .. ':' .. "
    "string.format('%.0f', seq))\n"
    "redis.call('PEXPIRE', k, ARGV[4])\n"
    "return 1\n";

/* set_read. KEYS: IM-READ. ARGV: conversation, message id, max, ttl ms.
 * Keeps the last written message id per conversation. */
static const char lua_read[] =
    LUA_CHECK_HASH LUA_LRU
    "local k = KEYS[1]\n"
    "local stamp = redis.call('HINCRBY', k, '', 1)\n"
    "if redis.call('HEXISTS', k, ARGV[1]) == 0 and "
    "redis.call('HLEN', k) > tonumber(ARGV[3]) then\n"
    "  evict_lru(k)\n"
    "end\n"
    "redis.call('HSET', k, ARGV[1], string.format('%.0f', stamp) .. ':' .. "
    "ARGV[2])\n"
    "redis.call('PEXPIRE', k, ARGV[4])\n"
    "return 1\n";

/* max_seq. KEYS: IM-SEQ, IM-EPOCH. ARGV: their ttl ms. Called at auth:
 * the client is about to hold seqs, so the counter's TTL restarts.
 * Returns {max_seq, epoch}, both strings ("0": none). */
static const char lua_max_seq[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "local e = false\n"
    "if v then\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[2], ARGV[1])\n"
    "  e = redis.call('GET', KEYS[2])\n"
    "end\n"
    "return {v or '0', e or '0'}\n";

/* route_refresh (heartbeats). KEYS: IM-USER, IM-SEQ, IM-EPOCH. ARGV: route
 * ttl s, IM-SEQ ttl ms (IM-EPOCH's too). EXPIRE / PEXPIRE of a missing key
 * are no-ops: expired routes stay dead, and no counter is created. An
 * online client keeps its max seq alive even when nobody writes to it. */
static const char lua_route_refresh[] =
    "redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[2])\n"
    "redis.call('PEXPIRE', KEYS[3], ARGV[2])\n"
    "return 1\n";

/*
 * conv_list. KEYS: IM-CONV, IM-CONVE. ARGV: before_seq ("0": from the
 * newest), limit, ttl ms. Returns {has_more, total unread, member, value,
 * ...}, newest first (highest last seq).
 */
static const char lua_conv_list[] =
    "local hi = '+inf'\n"
    "if ARGV[1] ~= '0' then hi = '(' .. ARGV[1] end\n"
    "local lim = tonumber(ARGV[2])\n"
    "local fs = redis.call('ZREVRANGEBYSCORE', KEYS[1], hi, '-inf', "
    "'LIMIT', 0, lim + 1)\n"
    "local n = #fs\n"
    "local more = 0\n"
    "if n > lim then n = lim more = 1 end\n"
    "local tot = tonumber(redis.call('HGET', KEYS[2], '') or '0') or 0\n"
    "if tot < 0 then tot = 0 end\n"
    "local out = {more, tot}\n"
    "for i = 1, n do\n"
    "  local v = redis.call('HGET', KEYS[2], fs[i])\n"
    "  if v then\n"
    "    out[#out + 1] = fs[i]\n"
    "    out[#out + 1] = v\n"
    "  end\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[3])\n"
    "return out\n";

/*
 * conv_read. KEYS: IM-CONV, IM-CONVE, IM-TL. ARGV: member, read_seq ("0":
 * everything), kind ("1" 1:1, "2" group), peer, user, message key prefix,
 * ttl ms. Moves the read position forward only; unread becomes the
 * messages of others in this conversation above it, recounted from the
 * timeline and the messages' metadata (IM-MSG sender, conv) when the
 * position lands below the last message. 1, or 0: no such entry.
 */
static const char lua_conv_read[] =
    "local v = redis.call('HGET', KEYS[2], ARGV[1])\n"
    "if not v then return 0 end\n"
    "local mid, last, ty, un, rs, rest = string.match(v, "
    "'^(%d+):(%d+):(%-?%d+):(%d+):(%d+):(.*)$')\n"
    "if not mid then\n"
    "  return redis.error_reply('IMGW ' .. KEYS[2] .. ' holds a bad entry')\n"
    "end\n"
    "last = tonumber(last)\n"
    "local want = tonumber(ARGV[2])\n"
    "if want == 0 or want > last then want = last end\n"
    "if want > tonumber(rs) then\n"
    "  local nu = 0\n"
    "  if want < last then\n"
    "    local ms = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. "
    "string.format('%.0f', want), string.format('%.0f', last))\n"
    "    for j = 1, #ms do\n"
    "      local id = string.match(ms[j], '^(%d+):')\n"
    "      local h = id and redis.call('HMGET', ARGV[6] .. id, 'sender', "
    "'conv') or {}\n"
    "      local sd, c = h[1], h[2]\n"
    "      if sd and sd ~= ARGV[5] then\n"
    "        if ARGV[3] == '2' then\n"
    "          if c == 'g_' .. ARGV[4] then nu = nu + 1 end\n"
    "        elseif sd == ARGV[4] and c and string.sub(c, 1, 2) == 's_' then\n"
    "          nu = nu + 1\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  redis.call('HINCRBY', KEYS[2], '', nu - tonumber(un))\n"
    "  redis.call('HSET', KEYS[2], ARGV[1], mid .. ':' .. "
    "string.format('%.0f', last) .. ':' .. ty .. ':' .. "
    "string.format('%.0f', nu) .. ':' .. string.format('%.0f', want) .. "
    "':' .. rest)\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[7])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[7])\n"
    "return 1\n";

/* conv_delete. KEYS: IM-CONV, IM-CONVE. ARGV: member. 1, or 0: none. */
static const char lua_conv_del[] =
    LUA_CONV_DROP "if conv_drop(KEYS[1], KEYS[2], ARGV[1]) then return 1 end\n"
                  "return 0\n";

const char *const imgw__redis_scripts[IMGW__REDIS_N_SCRIPTS] = {
    [IMGW__REDIS_S_APPEND] = lua_append,
    [IMGW__REDIS_S_SYNC] = lua_sync,
    [IMGW__REDIS_S_REVOKE] = lua_revoke,
    [IMGW__REDIS_S_GROUP_SET] = lua_group_set,
    [IMGW__REDIS_S_ROUTE_SET] = lua_route_set,
    [IMGW__REDIS_S_ROUTE_DEL] = lua_route_del,
    [IMGW__REDIS_S_DELIVERED] = lua_delivered,
    [IMGW__REDIS_S_READ] = lua_read,
    [IMGW__REDIS_S_MAX_SEQ] = lua_max_seq,
    [IMGW__REDIS_S_ROUTE_REFRESH] = lua_route_refresh,
    [IMGW__REDIS_S_CONV_LIST] = lua_conv_list,
    [IMGW__REDIS_S_CONV_READ] = lua_conv_read,
    [IMGW__REDIS_S_CONV_DEL] = lua_conv_del,
};

/* ---- helpers ------------------------------------------------------------- */

static size_t
key1(char *buf, const char *prefix, const char *id)
{
    int n = snprintf(buf, KEY_MAX, "%s%s", prefix, id);
    return (size_t)n;
}

static size_t
key_msg(char *buf, uint64_t id)
{
    int n = snprintf(buf, KEY_MAX, K_MSG "%" PRIu64, id);
    return (size_t)n;
}

/* An integer reply or a string holding one; def when nil. */
static int
reply_int(const redisReply *r, long long def, long long *out)
{
    if (r->type == REDIS_REPLY_INTEGER) {
        *out = r->integer;
        return 0;
    }
    if (r->type == REDIS_REPLY_NIL) {
        *out = def;
        return 0;
    }
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < 24) {
        char buf[24], *end;
        memcpy(buf, r->str, r->len);
        buf[r->len] = '\0';
        *out = strtoll(buf, &end, 10);
        return *end == '\0' ? 0 : -1;
    }
    return -1;
}

/* A string holding an unsigned 64-bit decimal (an epoch; "0" = none). */
static int
reply_u64(const redisReply *r, uint64_t *out)
{
    if (r->type != REDIS_REPLY_STRING || r->len == 0 || r->len > 20)
        return -1;
    char buf[24], *end;
    memcpy(buf, r->str, r->len);
    buf[r->len] = '\0';
    if (buf[0] < '0' || buf[0] > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (*end != '\0' || errno != 0)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* A reply we cannot read: for a write its effect is unknown. */
static int
bad_reply(imgw__redis_req_t *q)
{
    IMGW_LOG_WARN_RL("store: redis (%s): unexpected reply shape",
                     q->rl->r->where);
    return q->write ? IMGW_ETIMEDOUT : IMGW_EBUSY;
}

/* Starts a request; NULL with *ret set when the caller must return *ret
 * (after having called its callback with IMGW_EBUSY when *busy). */
#define REQ_BEGIN(q, sl, fn, write, busy_stmt)                               \
    imgw__redis_loop_t *rl_ = (sl)->impl;                                    \
    int refuse_;                                                             \
    imgw__redis_req_t *q = imgw__redis_req_new(rl_, fn, write, &refuse_);    \
    if (q == NULL) {                                                         \
        if (refuse_ != 0)                                                    \
            return refuse_;                                                  \
        busy_stmt;                                                           \
        return 0;                                                            \
    }

/* ---- done callbacks of the simple requests ------------------------------- */

static void
done_status(imgw__redis_req_t *q, redisReply *reply, int status)
{
    (void)reply;
    if (q->cb.done)
        q->cb.done(status, q->data);
}

/* Integer reply: 0 = not found. */
static void
done_found(imgw__redis_req_t *q, redisReply *reply, int status)
{
    if (status == 0) {
        if (reply->type != REDIS_REPLY_INTEGER)
            status = bad_reply(q);
        else if (reply->integer == 0)
            status = IMGW_ENOTFOUND;
    }
    if (q->cb.done)
        q->cb.done(status, q->data);
}

/* ---- append -------------------------------------------------------------- */

static void
append_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    imgw_store_append_t *req = q->app;
    if (status != 0) {
        q->cb.append(req, status, q->data);
        return;
    }
    long long code = -1;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1)
        (void)reply_int(reply->element[0], -1, &code);
    if (code == 0 && reply->elements == req->n_users + 1) {
        long long seq[1];
        for (size_t i = 0; i < req->n_users; i++) {
            if (reply_int(reply->element[i + 1], -1, seq) != 0 || seq[0] < 1) {
                q->cb.append(req, bad_reply(q), q->data);
                return;
            }
            req->seqs[i] = seq[0];
        }
        q->cb.append(req, 0, q->data);
        return;
    }
    if (code == 1 && reply->elements == 2 &&
        reply->element[1]->type == REDIS_REPLY_STRING) {
        /* "<message_id>:<seq>" of the first append */
        char buf[48], *end;
        const redisReply *d = reply->element[1];
        size_t n = d->len < sizeof(buf) - 1 ? d->len : sizeof(buf) - 1;
        memcpy(buf, d->str, n);
        buf[n] = '\0';
        uint64_t mid = strtoull(buf, &end, 10);
        if (*end == ':') {
            req->duplicate = 1;
            req->dup_message_id = mid;
            req->dup_seq = strtoll(end + 1, NULL, 10);
            q->cb.append(req, 0, q->data);
            return;
        }
    }
    if (code == 2) {
        /* The message id is still in use (protocol.md 5 says ids are
         * unique): memory refuses this up front, we can only tell now. */
        q->cb.append(req, IMGW_EEXIST, q->data);
        return;
    }
    q->cb.append(req, bad_reply(q), q->data);
}

int
imgw__redis_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
                   imgw_store_append_cb cb, void *data)
{
    REQ_BEGIN(q, sl, append_done, 1, cb(req, IMGW_EBUSY, data));
    imgw__redis_t *r = rl_->r;
    size_t n = req->n_users;
    const char *cmid = req->client_msg_id ? req->client_msg_id : "";
    const char *conv = req->conversation_id ? req->conversation_id : "";
    q->cb.append = cb;
    q->data = data;
    q->app = req;

    /* EVALSHA sha numkeys, 2 + 5n keys, 14 + n args */
    int ckind = imgw__store_conv_kind(conv, n);
    char preview[IMGW_STORE_PREVIEW_MAX + 1];
    size_t pl = req->preview
                    ? imgw__store_cut_utf8(req->preview, IMGW_STORE_PREVIEW_MAX)
                    : 0;
    if (pl > 0)
        memcpy(preview, req->preview, pl);
    preview[pl] = '\0';
    int argc = 3 + 2 + 5 * (int)n + 14 + (int)n;
    size_t text =
        strlen(K_DEDUP) + strlen(req->sender) + 1 + strlen(cmid) + 1 + KEY_MAX;
    for (size_t i = 0; i < n; i++) {
        const char *peer =
            ckind ? imgw__store_conv_peer(ckind, conv, req->users, n, i) : "";
        text += strlen(K_SEQ) + strlen(K_TL) + strlen(K_EPOCH) +
                strlen(K_CONV) + strlen(K_CONVE) + 5 * strlen(req->users[i]) +
                5 + 2 + strlen(peer) + 1;
    }
    const char **argv = imgw_try_malloc((size_t)argc * sizeof(*argv));
    size_t *lens = imgw_try_malloc((size_t)argc * sizeof(*lens));
    char *buf = imgw_try_malloc(text);
    if (argv == NULL || lens == NULL || buf == NULL) {
        imgw_free(argv);
        imgw_free(lens);
        imgw_free(buf);
        imgw__redis_req_free(q);
        return IMGW_ENOMEM;
    }
    char *p = buf;
    char numkeys[16], mid[24], ts[24], rc[16], rms[24], ttl[16], sttl[24],
        ck[4], mt[16], mc[16];
    int a = 2;
#define PUT(s, l)                                                            \
    do {                                                                     \
        argv[a] = (s);                                                       \
        lens[a] = (l);                                                       \
        a++;                                                                 \
    } while (0)
#define PUTS(s) PUT((s), strlen(s))
    snprintf(numkeys, sizeof(numkeys), "%zu", 2 + 5 * n);
    PUTS(numkeys);
    int k = sprintf(p, K_DEDUP "%s:%s", req->sender, cmid);
    PUT(p, (size_t)k);
    p += k + 1;
    k = (int)key_msg(p, req->message_id);
    PUT(p, (size_t)k);
    p += k + 1;
    for (size_t i = 0; i < n; i++) {
        static const char *const pre[5] = {K_SEQ, K_TL, K_EPOCH, K_CONV,
                                           K_CONVE};
        for (int j = 0; j < 5; j++) {
            k = sprintf(p, "%s%s", pre[j], req->users[i]);
            PUT(p, (size_t)k);
            p += k + 1;
        }
    }
    snprintf(mid, sizeof(mid), "%" PRIu64, req->message_id);
    snprintf(ts, sizeof(ts), "%" PRId64, req->server_time_ms);
    snprintf(rc, sizeof(rc), "%d", r->retention_count);
    snprintf(rms, sizeof(rms), "%" PRId64, r->retention_ms);
    snprintf(ttl, sizeof(ttl), "%d", r->dedupe_ttl);
    snprintf(sttl, sizeof(sttl), "%" PRId64, r->seq_ttl_ms);
    snprintf(ck, sizeof(ck), "%d", ckind);
    snprintf(mt, sizeof(mt), "%" PRId32, req->msg_type);
    snprintf(mc, sizeof(mc), "%d", r->max_convs);
    PUTS(mid);
    PUTS(req->sender);
    PUTS(conv);
    PUTS(ts);
    PUTS(rc);
    PUTS(rms);
    PUTS(ttl);
    PUT(req->entry_len ? (const char *)req->entry : "", req->entry_len);
    PUTS(cmid[0] ? "1" : "0");
    PUTS(sttl);
    PUTS(ck);
    PUTS(mt);
    PUT(preview, pl);
    PUTS(mc);
    for (size_t i = 0; i < n; i++) {
        if (!ckind) {
            PUT("", 0);
            continue;
        }
        k = sprintf(p, "%s:%s", ckind == IMGW_STORE_CONV_GROUP ? "g" : "s",
                    imgw__store_conv_peer(ckind, conv, req->users, n, i));
        PUT(p, (size_t)k);
        p += k + 1;
    }
#undef PUT
#undef PUTS
    imgw__redis_send(q, IMGW__REDIS_S_APPEND, a, argv, lens);
    imgw_free(argv);
    imgw_free(lens);
    imgw_free(buf);
    return 0;
}

/* ---- sync and max_seq ---------------------------------------------------- */

#define SYNC_STACK 32

static void
sync_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    imgw_store_entry_t stack_e[SYNC_STACK], *e = stack_e;
    long long top = 0, more = 0, oldest = 0;
    uint64_t epoch = 0;
    size_t n = 0;
    if (status != 0) {
        q->cb.sync(status, NULL, 0, 0, 0, 0, 0, q->data);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 4 ||
        (reply->elements - 4) % 3 != 0 ||
        reply_int(reply->element[0], 0, &top) != 0 ||
        reply_int(reply->element[1], 0, &more) != 0 ||
        reply_int(reply->element[2], 0, &oldest) != 0 ||
        reply_u64(reply->element[3], &epoch) != 0)
        goto bad;
    n = (reply->elements - 4) / 3;
    if (n > (size_t)q->aux)
        goto bad;
    if (n > SYNC_STACK) {
        e = imgw_try_malloc(n * sizeof(*e));
        if (e == NULL) {
            q->cb.sync(IMGW_EBUSY, NULL, 0, 0, 0, 0, 0, q->data);
            return;
        }
    }
    for (size_t i = 0; i < n; i++) {
        redisReply **x = reply->element + 4 + 3 * i;
        long long seq, rv;
        if (reply_int(x[0], -1, &seq) != 0 || x[1]->type != REDIS_REPLY_STRING ||
            reply_int(x[2], 0, &rv) != 0)
            goto bad;
        /* Member: "<message_id>:<stored_ms>:" + the entry bytes. */
        const char *m = x[1]->str, *end = m + x[1]->len;
        const char *c1 = memchr(m, ':', (size_t)(end - m));
        const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(end - c1 - 1)) : NULL;
        const char *blob = c2 ? c2 + 1 : m;
        e[i].seq = seq;
        e[i].blob = (const uint8_t *)blob;
        e[i].len = (size_t)(end - blob);
        e[i].revoked = rv == 1;
    }
    q->cb.sync(0, n ? e : NULL, n, more != 0, top, oldest, epoch, q->data);
    if (e != stack_e)
        imgw_free(e);
    return;
bad:
    if (e != stack_e)
        imgw_free(e);
    q->cb.sync(bad_reply(q), NULL, 0, 0, 0, 0, 0, q->data);
}

int
imgw__redis_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
                 int64_t max_seq, int limit, imgw_store_sync_cb cb, void *data)
{
    /* A read for the caller: its only write drops aged entries. */
    REQ_BEGIN(q, sl, sync_done, 0, cb(IMGW_EBUSY, NULL, 0, 0, 0, 0, 0, data));
    char tl[KEY_MAX], sq[KEY_MAX], ek[KEY_MAX], mn[24], mx[24], lim[16],
        rms[24], sttl[24];
    const char *argv[12];
    size_t lens[12];
    q->cb.sync = cb;
    q->data = data;
    q->aux = limit;
    snprintf(mn, sizeof(mn), "%" PRId64, min_seq);
    snprintf(mx, sizeof(mx), "%" PRId64, max_seq);
    snprintf(lim, sizeof(lim), "%d", limit);
    snprintf(rms, sizeof(rms), "%" PRId64, rl_->r->retention_ms);
    snprintf(sttl, sizeof(sttl), "%" PRId64, rl_->r->seq_ttl_ms);
    argv[2] = "3";
    argv[3] = tl;
    lens[3] = key1(tl, K_TL, user);
    argv[4] = sq;
    lens[4] = key1(sq, K_SEQ, user);
    argv[5] = ek;
    lens[5] = key1(ek, K_EPOCH, user);
    argv[6] = mn;
    argv[7] = mx;
    argv[8] = lim;
    argv[9] = rms;
    argv[10] = K_MSG;
    argv[11] = sttl;
    lens[2] = 1;
    for (int i = 6; i < 12; i++)
        lens[i] = strlen(argv[i]);
    imgw__redis_send(q, IMGW__REDIS_S_SYNC, 12, argv, lens);
    return 0;
}

static void
max_seq_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    long long v = 0;
    uint64_t epoch = 0;
    if (status == 0 &&
        (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
         reply_int(reply->element[0], 0, &v) != 0 ||
         reply_u64(reply->element[1], &epoch) != 0))
        status = bad_reply(q);
    q->cb.seq(status, status == 0 ? v : 0, status == 0 ? epoch : 0, q->data);
}

int
imgw__redis_max_seq(imgw_store_loop_t *sl, const char *user,
                    imgw_store_seq_cb cb, void *data)
{
    /* A read for the caller: its only write is the TTL refresh. */
    REQ_BEGIN(q, sl, max_seq_done, 0, cb(IMGW_EBUSY, 0, 0, data));
    char k[KEY_MAX], ek[KEY_MAX], sttl[24];
    snprintf(sttl, sizeof(sttl), "%" PRId64, rl_->r->seq_ttl_ms);
    const char *argv[6] = {NULL, NULL, "2", k, ek, sttl};
    size_t lens[6] = {
        0, 0, 1, key1(k, K_SEQ, user), key1(ek, K_EPOCH, user), strlen(sttl)};
    q->cb.seq = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_MAX_SEQ, 6, argv, lens);
    return 0;
}

/* ---- delivered / read positions ------------------------------------------ */

int
imgw__redis_set_delivered(imgw_store_loop_t *sl, const char *user,
                          const char *device, int64_t seq,
                          imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_status, 1,
              if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX], s[24], max[8], ttl[24];
    snprintf(s, sizeof(s), "%" PRId64, seq);
    snprintf(max, sizeof(max), "%d", IMGW__REDIS_MAX_DEVICES);
    snprintf(ttl, sizeof(ttl), "%" PRId64, rl_->r->retention_ms);
    const char *argv[8] = {NULL, NULL, "1", k, device, s, max, ttl};
    size_t lens[8];
    for (int i = 2; i < 8; i++)
        lens[i] = i == 3 ? key1(k, K_POS, user) : strlen(argv[i]);
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_DELIVERED, 8, argv, lens);
    return 0;
}

int
imgw__redis_set_read(imgw_store_loop_t *sl, const char *user,
                     const char *conversation_id, const char *message_id,
                     imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_status, 1,
              if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX], max[8], ttl[24];
    snprintf(max, sizeof(max), "%d", IMGW__REDIS_MAX_READS);
    snprintf(ttl, sizeof(ttl), "%" PRId64, rl_->r->retention_ms);
    const char *argv[8] = {NULL, NULL, "1", k, conversation_id, message_id,
                           max, ttl};
    size_t lens[8];
    for (int i = 2; i < 8; i++)
        lens[i] = i == 3 ? key1(k, K_READ, user) : strlen(argv[i]);
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_READ, 8, argv, lens);
    return 0;
}

/* ---- messages ------------------------------------------------------------ */

static void
msg_get_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    imgw_store_msg_t m;
    long long ts = 0;
    if (status != 0) {
        q->cb.msg(status, NULL, q->data);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        q->cb.msg(bad_reply(q), NULL, q->data);
        return;
    }
    redisReply **x = reply->element;
    if (x[0]->type != REDIS_REPLY_STRING) {
        q->cb.msg(IMGW_ENOTFOUND, NULL, q->data);
        return;
    }
    (void)reply_int(x[2], 0, &ts);
    m.message_id = q->message_id;
    m.sender = x[0]->str;
    m.conversation_id = x[1]->type == REDIS_REPLY_STRING ? x[1]->str : "";
    m.server_time_ms = ts;
    m.revoked = x[3]->type == REDIS_REPLY_STRING && x[3]->len == 1 &&
                x[3]->str[0] == '1';
    q->cb.msg(0, &m, q->data);
}

int
imgw__redis_msg_get(imgw_store_loop_t *sl, uint64_t message_id,
                    imgw_store_msg_cb cb, void *data)
{
    REQ_BEGIN(q, sl, msg_get_done, 0, cb(IMGW_EBUSY, NULL, data));
    char k[KEY_MAX];
    const char *argv[6] = {"HMGET", k, "sender", "conv", "ts", "revoked"};
    size_t lens[6] = {5, key_msg(k, message_id), 6, 4, 2, 7};
    q->cb.msg = cb;
    q->data = data;
    q->message_id = message_id;
    imgw__redis_send(q, -1, 6, argv, lens);
    return 0;
}

int
imgw__redis_revoke(imgw_store_loop_t *sl, uint64_t message_id,
                   imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_found, 1, if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX];
    const char *argv[4] = {NULL, NULL, "1", k};
    size_t lens[4] = {0, 0, 1, key_msg(k, message_id)};
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_REVOKE, 4, argv, lens);
    return 0;
}

/* ---- groups -------------------------------------------------------------- */

int
imgw__redis_group_set(imgw_store_loop_t *sl, const char *gid,
                      const char *const *members, size_t n,
                      imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_status, 1, if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX];
    int argc = 4 + (int)n;
    const char **argv = imgw_try_malloc((size_t)argc * sizeof(*argv));
    size_t *lens = imgw_try_malloc((size_t)argc * sizeof(*lens));
    if (argv == NULL || lens == NULL) {
        imgw_free(argv);
        imgw_free(lens);
        imgw__redis_req_free(q);
        return IMGW_ENOMEM;
    }
    argv[2] = "1";
    lens[2] = 1;
    argv[3] = k;
    lens[3] = key1(k, K_GROUP, gid);
    for (size_t i = 0; i < n; i++) {
        argv[4 + i] = members[i];
        lens[4 + i] = strlen(members[i]);
    }
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_GROUP_SET, argc, argv, lens);
    imgw_free(argv);
    imgw_free(lens);
    return 0;
}

static void
group_get_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    const char *stack_m[64], **m = stack_m;
    if (status == 0 && reply->type != REDIS_REPLY_ARRAY)
        status = bad_reply(q);
    if (status == 0 && reply->elements == 0)
        status = IMGW_ENOTFOUND; /* Redis keeps no empty sets */
    if (status != 0) {
        q->cb.members(status, NULL, 0, q->data);
        return;
    }
    size_t n = reply->elements;
    if (n > 64 && (m = imgw_try_malloc(n * sizeof(*m))) == NULL) {
        q->cb.members(IMGW_EBUSY, NULL, 0, q->data);
        return;
    }
    for (size_t i = 0; i < n; i++)
        m[i] = reply->element[i]->type == REDIS_REPLY_STRING
                   ? reply->element[i]->str
                   : "";
    q->cb.members(0, m, n, q->data);
    if (m != stack_m)
        imgw_free(m);
}

/* GET IM-DEDUP-{u}:{cmid}: nil = not found, else "<message_id>:<seq>". */
static void
dedupe_get_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    uint64_t id = 0;
    int64_t seq = 0;
    if (status == 0 && reply->type == REDIS_REPLY_NIL) {
        status = IMGW_ENOTFOUND;
    } else if (status == 0) {
        char *end = NULL;
        if (reply->type != REDIS_REPLY_STRING || reply->len > 64)
            status = bad_reply(q);
        else {
            char buf[72];
            memcpy(buf, reply->str, reply->len);
            buf[reply->len] = '\0';
            id = strtoull(buf, &end, 10);
            if (end == buf || *end != ':')
                status = bad_reply(q);
            else
                seq = strtoll(end + 1, NULL, 10);
        }
    }
    q->cb.dedupe(status, id, seq, q->data);
}

int
imgw__redis_dedupe_get(imgw_store_loop_t *sl, const char *sender,
                       const char *client_msg_id, imgw_store_dedupe_cb cb,
                       void *data)
{
    REQ_BEGIN(q, sl, dedupe_get_done, 0, cb(IMGW_EBUSY, 0, 0, data));
    char k[KEY_MAX];
    int kl = snprintf(k, sizeof(k), K_DEDUP "%s:%s", sender, client_msg_id);
    const char *argv[2] = {"GET", k};
    size_t lens[2] = {3, (size_t)kl};
    q->cb.dedupe = cb;
    q->data = data;
    imgw__redis_send(q, -1, 2, argv, lens);
    return 0;
}

int
imgw__redis_group_get(imgw_store_loop_t *sl, const char *gid,
                      imgw_store_members_cb cb, void *data)
{
    REQ_BEGIN(q, sl, group_get_done, 0, cb(IMGW_EBUSY, NULL, 0, data));
    char k[KEY_MAX];
    const char *argv[2] = {"SMEMBERS", k};
    size_t lens[2] = {8, key1(k, K_GROUP, gid)};
    q->cb.members = cb;
    q->data = data;
    imgw__redis_send(q, -1, 2, argv, lens);
    return 0;
}

int
imgw__redis_group_del(imgw_store_loop_t *sl, const char *gid,
                      imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_found, 1, if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX];
    const char *argv[2] = {"DEL", k};
    size_t lens[2] = {3, key1(k, K_GROUP, gid)};
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, -1, 2, argv, lens);
    return 0;
}

/* ---- routes -------------------------------------------------------------- */

int
imgw__redis_route_set(imgw_store_loop_t *sl, const char *user,
                      const char *platform, const char *broker_id, int ttl,
                      imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_status, 1, if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX], t[16], max[8];
    snprintf(t, sizeof(t), "%d", ttl);
    snprintf(max, sizeof(max), "%d", IMGW_STORE_MAX_ROUTES);
    const char *argv[8] = {NULL, NULL, "1", k, platform, broker_id, t, max};
    size_t lens[8];
    for (int i = 2; i < 8; i++)
        lens[i] = i == 3 ? key1(k, K_USER, user) : strlen(argv[i]);
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_ROUTE_SET, 8, argv, lens);
    return 0;
}

int
imgw__redis_route_del(imgw_store_loop_t *sl, const char *user,
                      const char *platform, const char *broker_id,
                      imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_status, 1, if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX];
    const char *argv[6] = {NULL, NULL, "1", k, platform, broker_id};
    size_t lens[6];
    for (int i = 2; i < 6; i++)
        lens[i] = i == 3 ? key1(k, K_USER, user) : strlen(argv[i]);
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_ROUTE_DEL, 6, argv, lens);
    return 0;
}

/* Refreshes the route's TTL and the user's IM-SEQ TTL (lua_route_refresh). */
int
imgw__redis_route_refresh(imgw_store_loop_t *sl, const char *user, int ttl,
                          imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_status, 1, if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX], sq[KEY_MAX], ek[KEY_MAX], t[16], sttl[24];
    snprintf(t, sizeof(t), "%d", ttl);
    snprintf(sttl, sizeof(sttl), "%" PRId64, rl_->r->seq_ttl_ms);
    const char *argv[8] = {NULL, NULL, "3", k, sq, ek, t, sttl};
    size_t lens[8] = {0, 0, 1, 0, 0, 0, strlen(t), strlen(sttl)};
    lens[3] = key1(k, K_USER, user);
    lens[4] = key1(sq, K_SEQ, user);
    lens[5] = key1(ek, K_EPOCH, user);
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_ROUTE_REFRESH, 8, argv, lens);
    return 0;
}

/* Route and watcher hashes alike: field -> value pairs (route_set caps
 * IM-USER at IMGW_STORE_MAX_ROUTES fields, watch_set IM-PWATCH at
 * IMGW_STORE_MAX_WATCHERS). */
static void
route_get_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    imgw_store_route_t r[IMGW_STORE_MAX_WATCHERS];
    size_t n = 0;
    if (status == 0 &&
        (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2 != 0))
        status = bad_reply(q);
    if (status != 0) {
        q->cb.routes(status, NULL, 0, q->data);
        return;
    }
    for (size_t i = 0; i + 1 < reply->elements && n < IMGW_STORE_MAX_WATCHERS;
         i += 2) {
        if (reply->element[i]->type != REDIS_REPLY_STRING ||
            reply->element[i + 1]->type != REDIS_REPLY_STRING)
            continue;
        r[n].platform = reply->element[i]->str;
        r[n].broker_id = reply->element[i + 1]->str;
        n++;
    }
    q->cb.routes(0, n ? r : NULL, n, q->data);
}

int
imgw__redis_route_get(imgw_store_loop_t *sl, const char *user,
                      imgw_store_routes_cb cb, void *data)
{
    REQ_BEGIN(q, sl, route_get_done, 0, cb(IMGW_EBUSY, NULL, 0, data));
    char k[KEY_MAX];
    const char *argv[2] = {"HGETALL", k};
    size_t lens[2] = {7, key1(k, K_USER, user)};
    q->cb.routes = cb;
    q->data = data;
    imgw__redis_send(q, -1, 2, argv, lens);
    return 0;
}

/* ---- conversations ------------------------------------------------------- */

/* "s:<peer>" / "g:<gid>" into buf (KEY_MAX bytes); its length. */
static size_t
conv_member(char *buf, int kind, const char *peer)
{
    int n = snprintf(buf, KEY_MAX, "%s:%s",
                     kind == IMGW_STORE_CONV_GROUP ? "g" : "s", peer);
    return (size_t)n;
}

/* Next ':'-separated decimal field of [*p, end); -1 when malformed. */
static int
field_num(const char **p, const char *end, int is_signed, long long *out)
{
    const char *c = memchr(*p, ':', (size_t)(end - *p));
    if (c == NULL || c == *p || c - *p > 20)
        return -1;
    char buf[24], *e;
    memcpy(buf, *p, (size_t)(c - *p));
    buf[c - *p] = '\0';
    if (!is_signed && buf[0] == '-')
        return -1;
    errno = 0;
    if (is_signed)
        *out = strtoll(buf, &e, 10);
    else
        *out = (long long)strtoull(buf, &e, 10);
    if (*e != '\0' || errno != 0)
        return -1;
    *p = c + 1;
    return 0;
}

/* One list entry: member "s:<peer>" / "g:<gid>" and its packed value. */
static int
conv_parse(const redisReply *m, const redisReply *v, imgw_store_conv_t *c)
{
    if (m->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
        m->len < 3 || m->str[1] != ':' || m->len - 2 >= sizeof(c->peer))
        return -1;
    memset(c, 0, sizeof(*c));
    if (m->str[0] == 'g')
        c->kind = IMGW_STORE_CONV_GROUP;
    else if (m->str[0] == 's')
        c->kind = IMGW_STORE_CONV_SINGLE;
    else
        return -1;
    memcpy(c->peer, m->str + 2, m->len - 2);
    const char *p = v->str, *end = v->str + v->len;
    long long mid, seq, type, unread, rseq, upd;
    if (field_num(&p, end, 0, &mid) || field_num(&p, end, 0, &seq) ||
        field_num(&p, end, 1, &type) || field_num(&p, end, 0, &unread) ||
        field_num(&p, end, 0, &rseq) || field_num(&p, end, 0, &upd))
        return -1;
    const char *c2 = memchr(p, ':', (size_t)(end - p));
    if (c2 == NULL || (size_t)(c2 - p) >= sizeof(c->last_sender))
        return -1;
    memcpy(c->last_sender, p, (size_t)(c2 - p));
    size_t pl = (size_t)(end - c2 - 1);
    if (pl > IMGW_STORE_PREVIEW_MAX)
        pl = imgw__store_cut_utf8(c2 + 1, IMGW_STORE_PREVIEW_MAX);
    memcpy(c->preview, c2 + 1, pl);
    c->preview[pl] = '\0';
    c->last_message_id = (uint64_t)mid;
    c->last_seq = seq;
    c->last_type = (int32_t)type;
    c->unread = unread > UINT32_MAX ? UINT32_MAX : (uint32_t)unread;
    c->read_seq = rseq;
    c->updated_ms = upd;
    return 0;
}

static void
conv_list_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    long long more = 0, total = 0;
    if (status != 0) {
        q->cb.convs(status, NULL, 0, 0, 0, q->data);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
        reply->elements % 2 != 0 ||
        (reply->elements - 2) / 2 > (size_t)q->aux ||
        reply_int(reply->element[0], 0, &more) != 0 ||
        reply_int(reply->element[1], 0, &total) != 0) {
        q->cb.convs(bad_reply(q), NULL, 0, 0, 0, q->data);
        return;
    }
    size_t n = (reply->elements - 2) / 2;
    imgw_store_conv_t *c = NULL;
    if (n > 0 && (c = imgw_try_malloc(n * sizeof(*c))) == NULL) {
        q->cb.convs(IMGW_EBUSY, NULL, 0, 0, 0, q->data);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (conv_parse(reply->element[2 + 2 * i], reply->element[3 + 2 * i],
                       &c[i]) != 0) {
            imgw_free(c);
            q->cb.convs(bad_reply(q), NULL, 0, 0, 0, q->data);
            return;
        }
    q->cb.convs(0, c, n, more != 0, total > 0 ? (uint64_t)total : 0, q->data);
    imgw_free(c);
}

int
imgw__redis_conv_list(imgw_store_loop_t *sl, const char *user,
                      int64_t before_seq, int limit, imgw_store_conv_list_cb cb,
                      void *data)
{
    /* A read for the caller: its only write is the TTL refresh. */
    REQ_BEGIN(q, sl, conv_list_done, 0, cb(IMGW_EBUSY, NULL, 0, 0, 0, data));
    char ck[KEY_MAX], ek[KEY_MAX], before[24], lim[16], sttl[24];
    snprintf(before, sizeof(before), "%" PRId64, before_seq);
    snprintf(lim, sizeof(lim), "%d", limit);
    snprintf(sttl, sizeof(sttl), "%" PRId64, rl_->r->seq_ttl_ms);
    const char *argv[8] = {NULL, NULL, "2", ck, ek, before, lim, sttl};
    size_t lens[8] = {0,
                      0,
                      1,
                      key1(ck, K_CONV, user),
                      key1(ek, K_CONVE, user),
                      strlen(before),
                      strlen(lim),
                      strlen(sttl)};
    q->cb.convs = cb;
    q->data = data;
    q->aux = limit;
    imgw__redis_send(q, IMGW__REDIS_S_CONV_LIST, 8, argv, lens);
    return 0;
}

int
imgw__redis_conv_read(imgw_store_loop_t *sl, const char *user, int kind,
                      const char *peer, int64_t read_seq, imgw_store_done_cb cb,
                      void *data)
{
    REQ_BEGIN(q, sl, done_found, 1, if (cb) cb(IMGW_EBUSY, data));
    char ck[KEY_MAX], ek[KEY_MAX], tl[KEY_MAX], mem[KEY_MAX], rs[24], sttl[24];
    snprintf(rs, sizeof(rs), "%" PRId64, read_seq);
    snprintf(sttl, sizeof(sttl), "%" PRId64, rl_->r->seq_ttl_ms);
    const char *kd = kind == IMGW_STORE_CONV_GROUP ? "2" : "1";
    const char *argv[13] = {NULL, NULL, "3",  ck,   ek,    tl,  mem,
                            rs,   kd,   peer, user, K_MSG, sttl};
    size_t lens[13];
    lens[2] = 1;
    lens[3] = key1(ck, K_CONV, user);
    lens[4] = key1(ek, K_CONVE, user);
    lens[5] = key1(tl, K_TL, user);
    lens[6] = conv_member(mem, kind, peer);
    for (int i = 7; i < 13; i++)
        lens[i] = strlen(argv[i]);
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_CONV_READ, 13, argv, lens);
    return 0;
}

int
imgw__redis_conv_delete(imgw_store_loop_t *sl, const char *user, int kind,
                        const char *peer, imgw_store_done_cb cb, void *data)
{
    REQ_BEGIN(q, sl, done_found, 1, if (cb) cb(IMGW_EBUSY, data));
    char ck[KEY_MAX], ek[KEY_MAX], mem[KEY_MAX];
    const char *argv[6] = {NULL, NULL, "2", ck, ek, mem};
    size_t lens[6] = {0,
                      0,
                      1,
                      key1(ck, K_CONV, user),
                      key1(ek, K_CONVE, user),
                      conv_member(mem, kind, peer)};
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_CONV_DEL, 6, argv, lens);
    return 0;
}
/* ---- presence watchers ---------------------------------------------------- */

/* IM-PWATCH-{u}: hash broker_id -> broker_id, EX ttl: the route script on
 * another key (the TTL only grows; past the cap a new node replaces the
 * oldest field). */
int
imgw__redis_watch_set(imgw_store_loop_t *sl, const char *user,
                      const char *broker_id, int ttl, imgw_store_done_cb cb,
                      void *data)
{
    REQ_BEGIN(q, sl, done_status, 1, if (cb) cb(IMGW_EBUSY, data));
    char k[KEY_MAX], t[16], max[8];
    snprintf(t, sizeof(t), "%d", ttl);
    snprintf(max, sizeof(max), "%d", IMGW_STORE_MAX_WATCHERS);
    const char *argv[8] = {NULL, NULL, "1", k, broker_id, broker_id, t, max};
    size_t lens[8];
    for (int i = 2; i < 8; i++)
        lens[i] = i == 3 ? key1(k, K_PWATCH, user) : strlen(argv[i]);
    q->cb.done = cb;
    q->data = data;
    imgw__redis_send(q, IMGW__REDIS_S_ROUTE_SET, 8, argv, lens);
    return 0;
}

int
imgw__redis_watch_get(imgw_store_loop_t *sl, const char *user,
                      imgw_store_routes_cb cb, void *data)
{
    REQ_BEGIN(q, sl, route_get_done, 0, cb(IMGW_EBUSY, NULL, 0, data));
    char k[KEY_MAX];
    const char *argv[2] = {"HGETALL", k};
    size_t lens[2] = {7, key1(k, K_PWATCH, user)};
    q->cb.routes = cb;
    q->data = data;
    imgw__redis_send(q, -1, 2, argv, lens);
    return 0;
}
