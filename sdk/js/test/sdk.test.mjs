// The SDK against a real imgw (IMGW_BIN): messaging on both codecs, typed
// errors, token refresh, reconnects after server restarts with nothing lost
// or duplicated, an in-flight send stored once, and the resume contract's
// discontinuities (memory restart, Redis FLUSHALL, retention). Redis cases
// need IMGW_TEST_REDIS_URL (test/integration/test_sdk_js.py sets it).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { ImgwClient, ImgwError, decodeFrame, singleConversationId } from "../dist/index.mjs";
import { FAST, Imgw, WebSocket, log, record, redisFlushAll, sleep, token, uid, until } from "./helpers.mjs";

const servers = [];
const clients = [];
after(async () => {
  for (const c of clients) c.close();
  for (const s of servers) { await s.stop(); s.cleanup(); }
});

async function server(env) {
  const s = new Imgw(env);
  servers.push(s);
  return await s.start();
}

function client(srv, user, extra = {}) {
  const c = new ImgwClient({ url: srv.url, userId: user, token: () => token(user), WebSocket, reconnect: FAST, heartbeatIntervalMs: 5000, ...extra });
  clients.push(c);
  return c;
}

const contents = (r) => r.messages.map((m) => m.content);

for (const codec of ["protobuf", "json"]) {
  test(`messaging, receipts, typing, revoke and typed errors (${codec})`, async () => {
    log(`check (${codec}): a sends to b; b gets it once with seq and ids; read receipt, typing and revoke reach a; a bad send rejects with ERR_MESSAGE_TOO_LARGE`);
    const srv = await server({ IMGW__LIMITS__MAX_MESSAGE_BYTES: "1000" });
    const a = uid("a"), b = uid("b");
    const ca = client(srv, a, { codec }), cb = client(srv, b, { codec: codec === "json" ? "protobuf" : "json" });
    const ra = record(ca), rb = record(cb);
    await ca.connect();
    await cb.connect();
    const sent = await ca.send({ to: b, content: "hello é €" });
    log("sent:", JSON.stringify(sent));
    assert.match(sent.messageId, /^\d+$/);
    assert.equal(sent.seq, 1);
    assert.equal(sent.conversationId, singleConversationId(a, b));
    await until(() => rb.messages.length === 1, "b gets the message");
    const m = rb.messages[0];
    assert.equal(m.content, "hello é €");
    assert.equal(m.messageId, sent.messageId);
    assert.equal(m.senderId, a);
    assert.equal(m.clientMsgId, sent.clientMsgId);
    assert.equal(m.seq, 1);
    assert.equal(m.source, "push");
    await cb.markRead(m.conversationId, [m.messageId]);
    await until(() => ra.reads.length === 1, "a gets the read receipt");
    assert.deepEqual(ra.reads[0].messageIds, [m.messageId]);
    cb.typing(m.conversationId, 1);
    await until(() => ra.typing.length === 1, "a sees b typing");
    assert.equal(ra.typing[0].userId, b);
    await ca.revoke(sent.messageId, sent.conversationId);
    await until(() => rb.revokes.length === 1, "b gets the revoke");
    assert.equal(rb.revokes[0].messageId, sent.messageId);
    await assert.rejects(ca.send({ to: b, content: "x".repeat(2000) }), (e) => e instanceof ImgwError && e.code === "ERR_MESSAGE_TOO_LARGE" && e.serverCode === 200);
    await assert.rejects(cb.revoke(sent.messageId, sent.conversationId), (e) => e instanceof ImgwError && e.code === "ERR_PERMISSION_DENIED");
    log("typed errors: ERR_MESSAGE_TOO_LARGE, ERR_PERMISSION_DENIED");
    // History: the revoked message comes back marked.
    const h = await cb.history(2, 10);
    assert.equal(h.length, 1);
    assert.equal(h[0].revoked, true);
    assert.equal(rb.messages.length, 1, "nothing delivered twice");
    ca.close();
    cb.close();
  });
}

test("an expired token is refreshed through refreshToken()", async () => {
  log("check: the first token is expired; the server answers ERR_TOKEN_EXPIRED; the client asks refreshToken() and connects with the new one");
  const srv = await server({});
  const a = uid("a");
  let refreshed = 0;
  const ca = client(srv, a, { token: token(a, -3600), refreshToken: () => { refreshed++; return token(a); } });
  const ra = record(ca);
  await ca.connect();
  assert.equal(refreshed, 1);
  assert.ok(ra.errors.some((e) => e.code === "ERR_TOKEN_EXPIRED"), "the expiry was reported");
  assert.equal(ca.state, "open");
  ca.close();
});

test("a refused token stops the client and rejects connect()", async () => {
  log("check: a token signed with another secret is refused: connect() rejects with ERR_AUTH_FAILED and the client does not loop");
  const srv = await server({});
  const a = uid("a");
  const ca = client(srv, a, { token: token(a).slice(0, -4) + "AAAA" });
  await assert.rejects(ca.connect(), (e) => e.code === "ERR_AUTH_FAILED");
  assert.equal(ca.state, "closed");
});

test("server restart mid-conversation (file store): every message exactly once, in order, no discontinuity", async () => {
  log("check: a and b chat; imgw stops; a sends 3 while it is down (queued); imgw restarts on the same port and data; c sends 2 more; b gets all 8 exactly once and in order, a's sends resolve, and no discontinuity is reported (the durable store keeps the epoch)");
  const srv = await server({ IMGW__STORE__BACKEND: "file", IMGW__STORE__PATH: "data" });
  const a = uid("a"), b = uid("b"), c = uid("c");
  const ca = client(srv, a), cb = client(srv, b, { codec: "json" });
  const rb = record(cb);
  await ca.connect();
  await cb.connect();
  for (let i = 1; i <= 3; i++) await ca.send({ to: b, content: `a${i}` });
  await until(() => rb.messages.length === 3, "b has the first 3");
  const epoch = cb.cursor.epoch;
  log("b's cursor before the restart:", JSON.stringify(cb.cursor));
  await srv.stop();
  await until(() => ca.state === "reconnecting" && cb.state === "reconnecting", "both clients notice the drop");
  const queued = [4, 5, 6].map((i) => ca.send({ to: b, content: `a${i}` }));
  await sleep(200); // a few failed reconnect attempts while the server is down
  await srv.start();
  const results = await Promise.all(queued);
  log("queued sends stored:", results.map((r) => r.seq).join(","));
  const cc = client(srv, c);
  await cc.connect();
  await cc.send({ to: b, content: "c1" });
  await cc.send({ to: b, content: "c2" });
  await until(() => rb.messages.length >= 8, "b has all 8");
  await cb.sync(); // an explicit extra catch-up delivers nothing new
  await until(() => cb.state === "open", "b connected");
  assert.deepEqual(contents(rb).filter((x) => x.startsWith("a")), ["a1", "a2", "a3", "a4", "a5", "a6"]);
  assert.deepEqual(contents(rb).filter((x) => x.startsWith("c")), ["c1", "c2"]);
  assert.equal(rb.messages.length, 8);
  assert.equal(new Set(rb.messages.map((m) => m.messageId)).size, 8, "no duplicates");
  const seqs = rb.messages.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), "delivered in seq order");
  assert.equal(rb.discontinuities.length, 0, "no discontinuity on a durable restart");
  assert.equal(cb.cursor.epoch, epoch);
  log("b got:", contents(rb).join(","), "cursor", JSON.stringify(cb.cursor));
  for (const x of [ca, cb, cc]) x.close();
});

/**
 * A WebSocket that loses the connection right after the server answered
 * the first CMD_SEND_MSG_REQ once armed: the answer is swallowed and the
 * socket torn down, as if the network failed with the send in flight.
 */
function dropAfterFirstSendAnswer(state) {
  return class {
    constructor(url) {
      this.onopen = this.onclose = this.onerror = this.onmessage = null;
      const inner = (this.inner = new WebSocket(url));
      inner.binaryType = "arraybuffer";
      inner.onopen = (e) => this.onopen?.(e);
      inner.onclose = (e) => this.onclose?.(e);
      inner.onerror = (e) => this.onerror?.(e);
      inner.onmessage = (e) => {
        if (this.awaiting && decodeFrame(e.data).command === "CMD_SEND_MSG_RSP") {
          this.awaiting = false;
          state.dropped = true;
          log("dropping the connection with the send's answer unread");
          inner.terminate();
          return;
        }
        this.onmessage?.(e);
      };
    }
    get readyState() { return this.inner.readyState; }
    get binaryType() { return this.inner.binaryType; }
    set binaryType(v) { this.inner.binaryType = v; }
    send(d) {
      if (state.armed && !state.dropped && decodeFrame(d).command === "CMD_SEND_MSG_REQ") this.awaiting = true;
      this.inner.send(d);
    }
    close(c, r) { this.inner.close(c, r); }
  };
}

test("a send in flight when the connection drops is stored once", async () => {
  log("check: the connection drops after the server stored a send but before its answer arrived; the client resends with the same client_msg_id after reconnecting; the server dedupes: one message id, b gets it once, a's timeline holds it once");
  const srv = await server({});
  const a = uid("a"), b = uid("b");
  const state = { armed: false, dropped: false };
  const ca = client(srv, a, { WebSocket: dropAfterFirstSendAnswer(state) });
  const cb = client(srv, b);
  const rb = record(cb);
  await ca.connect();
  await cb.connect();
  state.armed = true;
  const r = await ca.send({ to: b, content: "only once", clientMsgId: "cm-inflight-1" });
  assert.ok(state.dropped, "the connection was dropped with the send in flight");
  log("send resolved after the reconnect:", JSON.stringify(r));
  await until(() => rb.messages.length >= 1, "b gets it");
  await cb.sync();
  assert.equal(rb.messages.length, 1);
  assert.equal(rb.messages[0].messageId, r.messageId);
  assert.equal(r.seq, 1);
  const check = client(srv, a, { platform: "Check" });
  await check.connect();
  const hist = await check.history(r.seq + 1, 50);
  log("a's timeline:", hist.map((m) => `${m.seq}:${m.content}`).join(","));
  assert.deepEqual(hist.map((m) => m.content), ["only once"]);
  for (const x of [ca, cb, check]) x.close();
});

test("memory store restart: discontinuity reported, then the new timeline delivered once", async () => {
  log("check: b has seqs 1..3; the memory-store node restarts (timelines lost, epoch changes); b reconnects by itself and gets a discontinuity (epochChanged); a sends 2 after the restart: b gets exactly those 2");
  const srv = await server({ IMGW__STORE__BACKEND: "memory" });
  const a = uid("a"), b = uid("b");
  const ca = client(srv, a), cb = client(srv, b);
  const rb = record(cb);
  await ca.connect();
  await cb.connect();
  for (let i = 1; i <= 3; i++) await ca.send({ to: b, content: `old${i}` });
  await until(() => rb.messages.length === 3, "b has 3");
  const before = cb.cursor;
  await srv.stop();
  await srv.start();
  await until(() => rb.discontinuities.length === 1, "b is told about the discontinuity");
  const d = rb.discontinuities[0];
  log("discontinuity:", JSON.stringify(d));
  assert.equal(d.epochChanged, true);
  assert.deepEqual(d.previous, before);
  await until(() => ca.state === "open", "a reconnected");
  await ca.send({ to: b, content: "new1" });
  await ca.send({ to: b, content: "new2" });
  await until(() => rb.messages.length === 5, "b gets the 2 new");
  await cb.sync();
  assert.deepEqual(contents(rb), ["old1", "old2", "old3", "new1", "new2"]);
  assert.equal(cb.cursor.seq, 2);
  assert.notEqual(cb.cursor.epoch, before.epoch);
  ca.close();
  cb.close();
});

test("retention trimmed past the cursor: discontinuity with oldestSeq", async () => {
  log("check: retention_count 3; b (offline, cursor seq 1) comes back after 5 more messages: discontinuity (epoch unchanged, oldestSeq 4) and the 3 held messages");
  const srv = await server({ IMGW__STORE__RETENTION_COUNT: "3" });
  const a = uid("a"), b = uid("b");
  const ca = client(srv, a);
  await ca.connect();
  await ca.send({ to: b, content: "m1" });
  const cb1 = client(srv, b);
  const r1 = record(cb1);
  await cb1.connect();
  assert.deepEqual(contents(r1), ["m1"]);
  const saved = cb1.cursor;
  cb1.close();
  for (let i = 2; i <= 6; i++) await ca.send({ to: b, content: `m${i}` });
  const cb2 = client(srv, b, { cursor: saved, codec: "json" });
  const r2 = record(cb2);
  await cb2.connect();
  log("discontinuity:", JSON.stringify(r2.discontinuities));
  assert.equal(r2.discontinuities.length, 1);
  assert.equal(r2.discontinuities[0].epochChanged, false);
  assert.equal(r2.discontinuities[0].oldestSeq, 4);
  assert.deepEqual(contents(r2), ["m4", "m5", "m6"]);
  ca.close();
  cb2.close();
});

test("Redis FLUSHALL under connected clients: discontinuity, then the new timeline", { skip: !process.env.IMGW_TEST_REDIS_URL && "IMGW_TEST_REDIS_URL not set" }, async () => {
  log("check: redis store; b has seqs 1..2; FLUSHALL; a's next message is seq 1 of a new timeline: b's client sees a push below its cursor, syncs with its epoch, reports the discontinuity and delivers the message once");
  const url = process.env.IMGW_TEST_REDIS_URL;
  const srv = await server({ IMGW__STORE__BACKEND: "redis", IMGW__STORE__REDIS_URL: url });
  const a = uid("a"), b = uid("b");
  const ca = client(srv, a), cb = client(srv, b, { codec: "json" });
  const rb = record(cb);
  await ca.connect();
  await cb.connect();
  await ca.send({ to: b, content: "r1" });
  await ca.send({ to: b, content: "r2" });
  await until(() => rb.messages.length === 2, "b has 2");
  // Pushes carry no epoch: b learns its timeline's epoch from a sync. Sync
  // once here so the cursor compared below is the one b holds when the
  // flush happens, whatever background sync the client ran meanwhile.
  await cb.sync();
  const before = cb.cursor;
  assert.notEqual(before.epoch, "", "b knows its epoch before the flush");
  await redisFlushAll(url);
  log("FLUSHALL done");
  const r = await ca.send({ to: b, content: "after-flush" });
  assert.equal(r.seq, 1);
  await until(() => rb.messages.length === 3, "b gets the message after the flush");
  await until(() => rb.discontinuities.length === 1, "b is told");
  assert.equal(rb.discontinuities[0].epochChanged, true);
  assert.deepEqual(rb.discontinuities[0].previous, before);
  await cb.sync();
  assert.deepEqual(contents(rb), ["r1", "r2", "after-flush"]);
  assert.equal(cb.cursor.seq, 1);
  ca.close();
  cb.close();
});

for (const codec of ["protobuf", "json"]) {
  test(`conversation list, unread, read state across devices, delete (${codec})`, async () => {
    log(`check (${codec}): a sends 3 to b; b's list has the conversation with unread 3 and the last preview; b reads it on one device: the other device gets readState and its list shows unread 0; b deletes it: b's list is empty, a's is not`);
    const srv = await server({});
    const a = uid("a"), b = uid("b");
    const ca = client(srv, a, { codec });
    const b1 = client(srv, b, { codec, platform: "Web" }), b2 = client(srv, b, { codec: codec === "json" ? "protobuf" : "json", platform: "iOS" });
    const r1 = record(b1);
    const states = [];
    b2.on("readState", (s) => states.push(s));
    await ca.connect();
    await b1.connect();
    await b2.connect();
    for (const t of ["one", "two", "three"]) await ca.send({ to: b, content: t });
    await until(() => r1.messages.length === 3, "b1 gets 3 messages");
    const conv = singleConversationId(a, b);
    let page = await b1.conversations();
    log("b's list:", JSON.stringify(page));
    assert.equal(page.conversations.length, 1);
    const c0 = page.conversations[0];
    assert.equal(c0.conversationId, conv);
    assert.equal(c0.peerId, a);
    assert.equal(c0.unread, 3);
    assert.equal(c0.preview, "three");
    assert.equal(c0.lastSenderId, a);
    assert.equal(page.totalUnread, 3);
    const last = r1.messages[2];
    await b1.markConversationRead(conv, last);
    await until(() => states.length === 1, "b2 gets readState");
    assert.deepEqual({ c: states[0].conversationId, s: states[0].readSeq }, { c: conv, s: last.seq });
    page = await b2.conversations();
    assert.equal(page.conversations[0].unread, 0);
    assert.equal(page.conversations[0].readSeq, last.seq);
    assert.equal(page.totalUnread, 0);
    const pa = await ca.conversations();
    assert.equal(pa.conversations[0].unread, 0, "a's own messages are not unread for a");
    await b1.deleteConversation(conv);
    assert.equal((await b1.conversations()).conversations.length, 0);
    assert.equal((await ca.conversations()).conversations.length, 1);
    await assert.rejects(b1.deleteConversation(conv), (e) => e instanceof ImgwError && e.code === "ERR_CONVERSATION_NOT_EXIST");
    ca.close(); b1.close(); b2.close();
  });
}

for (const codec of ["protobuf", "json"]) test(`presence: query, subscribe, pushes, and the subscription survives a server restart (${codec})`, async () => {
  log("check: w subscribes to x (offline); x logs in on Web then iOS and out: w gets presence events with the platforms; presence() answers; after an imgw restart w resubscribes by itself (a presence event with the state then) and still gets x's login");
  const srv = await server({});
  const w = uid("w"), x = uid("x");
  const cw = client(srv, w, { codec });
  const events = [];
  cw.on("presence", (p) => events.push(p));
  await cw.connect();
  const now = await cw.subscribePresence([x, x]);
  assert.deepEqual(now, [{ userId: x, online: false, platforms: [] }]);
  assert.deepEqual(cw.presenceSubscriptions, [x]);
  const x1 = client(srv, x, { platform: "Web" });
  await x1.connect();
  await until(() => events.length === 1, "online event");
  assert.equal(events[0].online, true);
  assert.deepEqual(events[0].platforms, ["Web"]);
  assert.equal(events[0].platform, "Web");
  const x2 = client(srv, x, { platform: "iOS" });
  await x2.connect();
  await until(() => events.length === 2, "second platform");
  assert.deepEqual([...events[1].platforms].sort(), ["Web", "iOS"]);
  const q = await cw.presence([x, w]);
  log("presence():", JSON.stringify(q));
  assert.equal(q.length, 2);
  assert.equal(q[0].online, true);
  assert.equal(q[1].userId, w);
  assert.deepEqual(q[1].platforms, ["Web"]);
  // One logout at a time: pushes are snapshots, and two logouts at once
  // may reach w in either order (docs/protocol.md, Presence).
  x1.close();
  await until(() => events.length === 3, "first logout");
  assert.deepEqual(events[2].platforms, ["iOS"]);
  x2.close();
  await until(() => events.length === 4, "both logouts");
  assert.equal(events[3].online, false);
  assert.deepEqual(events[3].platforms, []);

  await srv.stop();
  await srv.start();
  await until(() => events.length === 5, "resubscribed after the restart (state event)");
  assert.equal(events[4].userId, x);
  assert.equal(events[4].online, false);
  const x3 = client(srv, x, { platform: "Web" });
  await x3.connect();
  await until(() => events.length === 6, "x's login after the restart");
  assert.equal(events[5].online, true);
  await cw.unsubscribePresence();
  assert.deepEqual(cw.presenceSubscriptions, []);
  x3.close();
  await sleep(300);
  assert.equal(events.length, 6, "no event after unsubscribe");
  cw.close();
});
