/**
 * ImgwClient: one user's connection to imgw, kept alive across drops.
 *
 * What it does for the application (docs in ../README.md):
 *   - connects and authenticates (CMD_AUTH_REQ) with a token, asking
 *     refreshToken() for a new one when the server says it expired;
 *   - reconnects after any drop with jittered exponential backoff;
 *   - heartbeats every heartbeatIntervalMs and treats a silent connection
 *     as dead;
 *   - syncs after every (re)connect from its cursor (epoch, seq), paging
 *     while has_more, following the resume contract (protocol.md 5.2): a
 *     discontinuity is reported, never skipped silently;
 *   - delivers messages exactly once and in seq order (pushes and sync
 *     pages are merged, deduplicated by message id and seq, and held back
 *     while a gap is being filled), and acks what it delivered;
 *   - gives each send a client_msg_id and resends unacknowledged sends after
 *     a reconnect with the same id, so the server stores each message once;
 *   - lists and deletes conversations, marks them read (readState events
 *     tell this user's other devices), queries presence and keeps presence
 *     subscriptions across reconnects (a subscription belongs to one
 *     connection on the server, so it is made again after every auth).
 */
import { decodeFrame, encodeFrame } from "./codec";
import type { Codec, Frame } from "./codec";
import { Emitter } from "./emitter";
import { ImgwError, errorCodeName } from "./errors";
import type { ImgwErrorCode } from "./errors";

/* ---- public types ------------------------------------------------------- */

/** A message of the user's timeline, as delivered to the application. */
export interface ChatMessage {
  messageId: string;
  clientMsgId: string;
  conversationId: string;
  senderId: string;
  receiverId: string;
  groupId: string;
  messageType: number;
  content: string;
  sendTime: number;
  serverTime: number;
  /** Position in this user's timeline (per user, not per conversation). */
  seq: number;
  extra: Record<string, string>;
  /** Revoked before it was synced: content is empty. */
  revoked: boolean;
  /** How it arrived: a live push, or a sync page (history / catch-up). */
  source: "push" | "sync";
}

export interface ReadReceipt {
  conversationId: string;
  userId: string;
  messageIds: string[];
  readTime: number;
  /** The reader's timeline seq read up to (0: not given). Only meaningful
   * to the reader's own devices: see the readState event. */
  readSeq: number;
}

/** This user read a conversation up to readSeq on another device. */
export interface ReadState {
  conversationId: string;
  readSeq: number;
  readTime: number;
}

/** One entry of the conversation list (protocol.md, Conversation). */
export interface Conversation {
  conversationId: string;
  /** 1:1: the other user; "" for a group. */
  peerId: string;
  /** Group: its id; "" for 1:1. */
  groupId: string;
  lastMessageId: string;
  /** The last message's seq in this user's timeline (orders the list). */
  lastSeq: number;
  lastSenderId: string;
  lastMessageType: number;
  /** The first bytes of a text message; "" otherwise. */
  preview: string;
  /** Messages of others after readSeq. */
  unread: number;
  readSeq: number;
  updatedTime: number;
}

export interface ConversationPage {
  conversations: Conversation[];
  /** Older conversations exist: ask again with beforeSeq = the last lastSeq. */
  hasMore: boolean;
  /** Over all of this user's conversations. */
  totalUnread: number;
}

/** A user's presence: online platforms, cluster-wide. */
export interface Presence {
  userId: string;
  online: boolean;
  platforms: string[];
}

/** A subscribed-to user logged in or out on some platform. */
export interface PresenceChange extends Presence {
  /** The platform that came or went. */
  platform: string;
  time: number;
}

export interface TypingStatus {
  conversationId: string;
  userId: string;
  status: number; // 1 typing, 0 stopped
}

export interface Revocation {
  messageId: string;
  conversationId: string;
  revokedBy: string;
  revokedTime: number;
}

export interface Kick {
  reason: string;
  platform: string;
}

/** Where the client is in the user's timeline; persist it to resume. */
export interface Cursor {
  /** The timeline's epoch the seq belongs to; "" = none yet. */
  epoch: string;
  /** Highest seq delivered to the application (0 = none). */
  seq: number;
}

/**
 * Messages the client will never see: the timeline was reset or lost
 * (epochChanged), or retention dropped messages after the cursor.
 */
export interface Discontinuity {
  previous: Cursor;
  epoch: string;
  epochChanged: boolean;
  /** Lowest seq the server still holds in the (new) timeline. */
  oldestSeq: number;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface SendOptions {
  /** Single chat peer; exactly one of to / groupId. */
  to?: string;
  groupId?: string;
  content: string;
  messageType?: number;
  extra?: Record<string, string>;
  /** Your own idempotency key; default: generated. */
  clientMsgId?: string;
}

export interface SendResult {
  messageId: string;
  /** The sender's own timeline seq of this message. */
  seq: number;
  serverTime: number;
  clientMsgId: string;
  conversationId: string;
}

export interface ClientEvents {
  message: (m: ChatMessage) => void;
  read: (r: ReadReceipt) => void;
  /** This user read a conversation on another device (clear its badge). */
  readState: (r: ReadState) => void;
  /** A subscribed-to user's presence changed (also after a reconnect, with
   * the state then, since changes while offline were missed). */
  presence: (p: PresenceChange) => void;
  typing: (t: TypingStatus) => void;
  revoke: (r: Revocation) => void;
  kick: (k: Kick) => void;
  discontinuity: (d: Discontinuity) => void;
  /** After each complete catch-up sync (every page fetched). */
  synced: (c: Cursor) => void;
  /** The cursor moved (persist it to resume after a page reload). */
  cursor: (c: Cursor) => void;
  state: (s: ConnectionState) => void;
  /** Connection-level problems (auth refused, undecodable frames, ...). */
  error: (e: Error) => void;
}

/** The subset of the WebSocket API the client uses (browser and `ws`). */
export interface WebSocketLike {
  binaryType: string;
  readyState: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
}
export type WebSocketCtor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** ws:// or wss:// URL of imgw's WebSocket endpoint, e.g. ws://host:8080/ws */
  url: string;
  userId: string;
  /** The JWT, or a function returning one (called at every connect). */
  token: string | (() => string | Promise<string>);
  /** Asked for a new token when the server says ERR_TOKEN_EXPIRED. */
  refreshToken?: () => string | Promise<string>;
  /** Default "Web". One connection per (user, platform). */
  platform?: string;
  /** Default "protobuf". */
  codec?: Codec;
  /** WebSocket constructor; default globalThis.WebSocket (Node: `ws`). */
  WebSocket?: WebSocketCtor;
  /** Default 30000 (protocol.md 5: every 30 s). */
  heartbeatIntervalMs?: number;
  /** No frame at all for this long: the connection is dead. Default 2.5 x heartbeat. */
  deadAfterMs?: number;
  /** Default 10000. */
  requestTimeoutMs?: number;
  /** Reconnect backoff; false turns reconnecting off. */
  reconnect?: false | { initialDelayMs?: number; maxDelayMs?: number; factor?: number; jitter?: number };
  /** Sync page size, default 100 (server cap 500). */
  syncLimit?: number;
  /** Where to resume from (e.g. loaded from storage); default: the whole timeline. */
  cursor?: Cursor;
  /** Message ids remembered for dedupe, default 5000. */
  dedupeSize?: number;
}

/* ---- internals ----------------------------------------------------------- */

type Body = Record<string, unknown>;

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  command: string;
}

interface OutgoingSend {
  body: Body;
  clientMsgId: string;
  resolve: (r: SendResult) => void;
  reject: (e: Error) => void;
  /** Sent on the current connection and not yet answered. */
  inFlight: boolean;
}

const OPEN = 1;

function str(v: unknown): string {
  return v == null ? "" : String(v);
}

function num(v: unknown): number {
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** A random client_msg_id: 128 bits, hex (ids: [A-Za-z0-9_.-]). */
export function newClientMsgId(): string {
  const b = new Uint8Array(16);
  const c = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c?.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  return "c" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** "s_<a>_<b>" with a <= b byte-wise (protocol.md 5). */
export function singleConversationId(a: string, b: string): string {
  const enc = new TextEncoder();
  const x = enc.encode(a), y = enc.encode(b);
  let le = x.length <= y.length;
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) { le = x[i] < y[i]; break; }
  }
  return le ? `s_${a}_${b}` : `s_${b}_${a}`;
}

export function groupConversationId(groupId: string): string {
  return `g_${groupId}`;
}

function toConversation(b: Body): Conversation {
  return {
    conversationId: str(b.conversation_id),
    peerId: str(b.peer_id),
    groupId: str(b.group_id),
    lastMessageId: str(b.last_message_id),
    lastSeq: num(b.last_seq),
    lastSenderId: str(b.last_sender_id),
    lastMessageType: num(b.last_message_type),
    preview: str(b.preview),
    unread: num(b.unread),
    readSeq: num(b.read_seq),
    updatedTime: num(b.updated_time),
  };
}

function toPresence(b: Body): Presence {
  return { userId: str(b.user_id), online: Boolean(b.online), platforms: ((b.platforms as string[]) ?? []).map(str) };
}

/** The server takes at most this many ids per presence request. */
const PRESENCE_BATCH = 100;

function toMessage(b: Body, source: "push" | "sync"): ChatMessage {
  const extra = { ...((b.extra as Record<string, string>) ?? {}) };
  return {
    messageId: str(b.message_id),
    clientMsgId: str(b.client_msg_id),
    conversationId: str(b.conversation_id),
    senderId: str(b.sender_id),
    receiverId: str(b.receiver_id),
    groupId: str(b.group_id),
    messageType: num(b.message_type),
    content: str(b.content),
    sendTime: num(b.send_time),
    serverTime: num(b.server_time),
    seq: num(b.seq),
    extra,
    revoked: extra.revoked === "1",
    source,
  };
}

/** A bounded set: the oldest entries go first. */
class BoundedSet {
  private set = new Set<string>();
  constructor(private max: number) {}
  has(k: string): boolean { return this.set.has(k); }
  add(k: string): void {
    if (this.set.has(k)) return;
    this.set.add(k);
    if (this.set.size > this.max) {
      const first = this.set.values().next().value as string;
      this.set.delete(first);
    }
  }
}

export class ImgwClient extends Emitter<ClientEvents> {
  readonly userId: string;
  private opts: Required<Pick<ClientOptions, "platform" | "codec" | "heartbeatIntervalMs" | "requestTimeoutMs" | "syncLimit">> & ClientOptions;
  private WS: WebSocketCtor;
  private ws: WebSocketLike | null = null;
  private stateValue: ConnectionState = "idle";
  private stopped = false;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private lastFrameAt = 0;
  private seqCounter = 0;
  private pending = new Map<number, Pending>();
  private outgoing: OutgoingSend[] = [];
  private seen: BoundedSet;
  private cur: Cursor;
  /* Timeline positions waiting for a gap below them to be filled. */
  private held = new Map<number, ChatMessage | null>();
  private syncing = false;
  private syncAgain = false;
  private authed = false;
  private forceRefresh = false;
  private firstConnect: { resolve: () => void; reject: (e: Error) => void } | null = null;
  /* Users whose presence the application subscribed to; made again on
   * every connection (the server keeps subscriptions per connection). */
  private presenceSubs = new Set<string>();

  constructor(options: ClientOptions) {
    super();
    if (!options || !options.url || !options.userId) throw new TypeError("ImgwClient: url and userId are required");
    this.opts = {
      platform: "Web",
      codec: "protobuf",
      heartbeatIntervalMs: 30000,
      requestTimeoutMs: 10000,
      syncLimit: 100,
      ...options,
    };
    this.userId = options.userId;
    const g = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    const ctor = options.WebSocket ?? g;
    if (!ctor) throw new TypeError("ImgwClient: no WebSocket available; pass options.WebSocket (Node: the ws package)");
    this.WS = ctor;
    this.seen = new BoundedSet(options.dedupeSize ?? 5000);
    this.cur = { epoch: options.cursor?.epoch ?? "", seq: options.cursor?.seq ?? 0 };
  }

  /* ---- public API ------------------------------------------------------- */

  get state(): ConnectionState { return this.stateValue; }

  /** The current resume position (persist it; pass it back as options.cursor). */
  get cursor(): Cursor { return { ...this.cur }; }

  /**
   * Connects (and keeps reconnecting until close()). Resolves after the
   * first successful auth and catch-up sync; rejects when that first auth
   * is refused for good (the client then stops) or on close().
   */
  connect(): Promise<void> {
    if (this.stopped) return Promise.reject(new ImgwError("CLOSED"));
    const p = new Promise<void>((resolve, reject) => { this.firstConnect = { resolve, reject }; });
    if (this.stateValue === "idle") this.open();
    return p;
  }

  /**
   * While waiting to reconnect: try now instead of after the rest of the
   * backoff (e.g. a "retry now" button, or the browser's online event).
   */
  reconnectNow(): void {
    if (this.stopped || !this.reconnectTimer) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.open();
  }

  /** Stops for good: closes the socket, rejects every waiting promise. */
  close(): void {
    if (this.stopped) return;
    this.stop(new ImgwError("CLOSED"));
  }

  /**
   * Sends a message. Queued while disconnected; a send whose answer was
   * lost with the connection is resent after the reconnect with the same
   * client_msg_id (the server dedupes it). Resolves with the server's
   * message id and seq; rejects with an ImgwError carrying the server's
   * ErrorCode (ERR_MESSAGE_TOO_LARGE, ERR_PERMISSION_DENIED, ...).
   */
  send(o: SendOptions): Promise<SendResult> {
    if (this.stopped) return Promise.reject(new ImgwError("CLOSED"));
    if (!!o.to === !!o.groupId) return Promise.reject(new ImgwError("ERR_INVALID_PARAM", "exactly one of to / groupId"));
    const clientMsgId = o.clientMsgId ?? newClientMsgId();
    const body: Body = {
      client_msg_id: clientMsgId,
      conversation_id: o.to ? singleConversationId(this.userId, o.to) : groupConversationId(o.groupId!),
      sender_id: this.userId,
      receiver_id: o.to ?? "",
      group_id: o.groupId ?? "",
      message_type: o.messageType ?? 1,
      content: o.content,
      send_time: Date.now(),
      extra: o.extra ?? {},
    };
    return new Promise<SendResult>((resolve, reject) => {
      const s: OutgoingSend = { body, clientMsgId, resolve, reject, inFlight: false };
      this.outgoing.push(s);
      if (this.authed && !this.syncing) this.transmit(s);
    });
  }

  /**
   * Read receipt for messages of one conversation (at most 100 ids). With
   * readSeq (the seq, in this user's timeline, of the last message read)
   * the server also moves the conversation's read position and unread
   * count, and this user's other devices get a readState event.
   */
  async markRead(conversationId: string, messageIds: string[], readSeq = 0): Promise<void> {
    const body: Body = { conversation_id: conversationId, message_ids: messageIds.slice(-100) };
    if (readSeq > 0) body.read_seq = readSeq;
    const f = await this.request("CMD_READ_RECEIPT_REQ", body);
    this.check(f);
  }

  /**
   * Marks a conversation read up to one of its messages (one you received
   * or synced: its id and seq): the receipt for it, with read_seq.
   */
  markConversationRead(conversationId: string, upTo: { messageId: string; seq: number }): Promise<void> {
    return this.markRead(conversationId, [upTo.messageId], upTo.seq);
  }

  /**
   * One page of the conversation list, newest first: beforeSeq 0 for the
   * first page, then the last entry's lastSeq while hasMore; limit 1..50.
   */
  async conversations(o: { beforeSeq?: number; limit?: number } = {}): Promise<ConversationPage> {
    const f = await this.request("CMD_CONVERSATION_LIST_REQ", { before_seq: o.beforeSeq ?? 0, limit: o.limit ?? 20 });
    this.check(f);
    return {
      conversations: ((f.body.conversations as Body[]) ?? []).map(toConversation),
      hasMore: Boolean(f.body.has_more),
      totalUnread: num(f.body.total_unread),
    };
  }

  /** Hides a conversation for this user (the other side keeps it). */
  async deleteConversation(conversationId: string): Promise<void> {
    const f = await this.request("CMD_CONVERSATION_DELETE_REQ", { conversation_id: conversationId });
    this.check(f);
  }

  /** Presence of any number of users (asked 100 at a time). */
  async presence(userIds: string[]): Promise<Presence[]> {
    const ids = [...new Set(userIds)];
    const out: Presence[] = [];
    for (let i = 0; i < ids.length; i += PRESENCE_BATCH) {
      const f = await this.request("CMD_PRESENCE_REQ", { user_ids: ids.slice(i, i + PRESENCE_BATCH) });
      this.check(f);
      for (const u of (f.body.users as Body[]) ?? []) out.push(toPresence(u));
    }
    return out;
  }

  /**
   * Subscribes to users' presence: presence events follow each login and
   * logout of theirs. Resolves with their presence now. Kept across
   * reconnects; the server bounds subscriptions per connection
   * (limits.presence_subscriptions, default 100): over it the promise
   * rejects with ERR_INVALID_PARAM and none of these ids is kept.
   */
  async subscribePresence(userIds: string[]): Promise<Presence[]> {
    const ids = [...new Set(userIds)].filter((u) => !this.presenceSubs.has(u));
    const out: Presence[] = [];
    for (let i = 0; i < ids.length; i += PRESENCE_BATCH) {
      const batch = ids.slice(i, i + PRESENCE_BATCH);
      const f = await this.request("CMD_PRESENCE_SUB_REQ", { user_ids: batch, unsubscribe: false });
      this.check(f);
      for (const u of batch) this.presenceSubs.add(u);
      for (const u of (f.body.users as Body[]) ?? []) out.push(toPresence(u));
    }
    return out;
  }

  /** Ends presence subscriptions: the listed users, or all of them. */
  async unsubscribePresence(userIds?: string[]): Promise<void> {
    const ids = userIds ? [...new Set(userIds)] : [];
    if (userIds) for (const u of ids) this.presenceSubs.delete(u);
    else this.presenceSubs.clear();
    if (!this.authed) return; // nothing on the server without a connection
    if (userIds && ids.length === 0) return;
    for (let i = 0; i === 0 || i < ids.length; i += PRESENCE_BATCH) {
      const f = await this.request("CMD_PRESENCE_SUB_REQ", { user_ids: ids.slice(i, i + PRESENCE_BATCH), unsubscribe: true });
      this.check(f);
    }
  }

  /** Users whose presence this client keeps subscribed. */
  get presenceSubscriptions(): string[] { return [...this.presenceSubs]; }

  /** Typing status (1 typing, 0 stopped); not stored, no response. */
  typing(conversationId: string, status = 1): void {
    if (!this.authed) return;
    this.write({ command: "CMD_TYPING_STATUS_REQ", sequence: this.nextSeq(), body: { conversation_id: conversationId, status } });
  }

  /** Revokes one of the user's own messages (within the server's window). */
  async revoke(messageId: string, conversationId = ""): Promise<void> {
    const f = await this.request("CMD_REVOKE_MSG_REQ", { message_id: messageId, conversation_id: conversationId });
    this.check(f);
  }

  /** Catches up now (also done after every reconnect and on seq gaps). */
  sync(): Promise<void> {
    return this.catchUp();
  }

  /**
   * Fetches older history: the messages with seq in (beforeSeq - limit,
   * beforeSeq), oldest first. They are returned, not emitted, and do not
   * move the cursor.
   */
  async history(beforeSeq: number, limit = 50): Promise<ChatMessage[]> {
    const min = Math.max(0, beforeSeq - 1 - limit);
    const f = await this.request("CMD_SYNC_REQ", { min_seq: min, max_seq: Math.max(0, beforeSeq - 1), limit, epoch: "" });
    this.check(f);
    return ((f.body.messages as Body[]) ?? []).map((m) => toMessage(m, "sync"));
  }

  /* ---- connection -------------------------------------------------------- */

  private setState(s: ConnectionState): void {
    if (this.stateValue === s) return;
    this.stateValue = s;
    this.emit("state", s);
  }

  private open(): void {
    if (this.stopped) return;
    this.setState(this.attempt === 0 && !this.authedOnce ? "connecting" : "reconnecting");
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.opts.url);
    } catch (e) {
      this.emit("error", e as Error);
      this.scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => { if (this.ws === ws) void this.authenticate(ws); };
    ws.onmessage = (ev) => { if (this.ws === ws) this.onFrame(ev.data); };
    ws.onerror = () => { /* onclose follows */ };
    ws.onclose = (ev) => { if (this.ws === ws) this.onClose(ev.code, ev.reason); };
  }

  private authedOnce = false;
  private refreshed = false;

  private async token(): Promise<string> {
    if (this.forceRefresh && this.opts.refreshToken) {
      this.forceRefresh = false;
      const t = await this.opts.refreshToken();
      this.opts.token = t;
      return t;
    }
    const t = this.opts.token;
    return typeof t === "function" ? await t() : t;
  }

  private async authenticate(ws: WebSocketLike): Promise<void> {
    this.lastFrameAt = Date.now();
    this.startHeartbeat();
    let token: string;
    try {
      token = await this.token();
    } catch (e) {
      this.emit("error", e as Error);
      ws.close(1000, "no token");
      return;
    }
    let f: Frame;
    try {
      f = await this.request("CMD_AUTH_REQ", { user_id: this.userId, token, platform: this.opts.platform }, true);
    } catch {
      return; // the connection dropped or timed out: onClose reconnects
    }
    if (this.ws !== ws) return;
    const code = errorCodeName(f.body.error_code as string);
    if (code !== "ERR_SUCCESS") {
      const err = new ImgwError(code, str(f.body.error_msg));
      this.emit("error", err);
      if ((code === "ERR_TOKEN_EXPIRED" || code === "ERR_AUTH_FAILED") && this.opts.refreshToken && !this.refreshed) {
        // The server closes (4001); the reconnect asks for a new token,
        // once: a fresh token that is refused again is refused for good.
        this.forceRefresh = true;
        this.refreshed = true;
        return;
      }
      if (code === "ERR_SERVER_BUSY") return; // transient: the server closes, we retry
      this.stop(err); // refused for good: retrying the same token cannot help
      return;
    }
    this.authed = true;
    this.authedOnce = true;
    this.refreshed = false;
    this.attempt = 0;
    this.setState("open");
    void this.resubscribePresence(ws);
    await this.catchUp();
    if (this.ws !== ws) return;
    this.flushOutgoing();
    if (this.firstConnect) {
      this.firstConnect.resolve();
      this.firstConnect = null;
    }
  }

  /* A new connection has no subscriptions: make them again, and report
   * the state now (logins and logouts while offline were missed). */
  private async resubscribePresence(ws: WebSocketLike): Promise<void> {
    const ids = [...this.presenceSubs];
    for (let i = 0; i < ids.length; i += PRESENCE_BATCH) {
      let f: Frame;
      try {
        f = await this.request("CMD_PRESENCE_SUB_REQ", { user_ids: ids.slice(i, i + PRESENCE_BATCH), unsubscribe: false });
      } catch {
        return; // dropped again: the next auth retries
      }
      if (this.ws !== ws) return;
      const code = errorCodeName(f.body.error_code as string);
      if (code !== "ERR_SUCCESS") {
        this.emit("error", new ImgwError(code, "presence resubscribe: " + str(f.body.error_msg)));
        return;
      }
      for (const u of (f.body.users as Body[]) ?? []) {
        const p = toPresence(u);
        if (this.presenceSubs.has(p.userId)) this.emit("presence", { ...p, platform: "", time: Date.now() });
      }
    }
  }

  private onClose(code: number, reason: string): void {
    this.ws = null;
    this.authed = false;
    this.stopHeartbeat();
    const err = new ImgwError("DISCONNECTED", `close ${code}${reason ? " " + reason : ""}`);
    for (const [seq, p] of this.pending) {
      if (p.timer) clearTimeout(p.timer);
      this.pending.delete(seq);
      p.reject(err);
    }
    // Sends stay queued: the reconnect resends them with the same id.
    for (const s of this.outgoing) s.inFlight = false;
    this.syncing = false;
    if (this.stopped) return;
    if (code === 4002) {
      this.emit("kick", { reason: reason || "logged in elsewhere", platform: this.opts.platform });
      this.stop(new ImgwError("KICKED", reason));
      return;
    }
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    const r = this.opts.reconnect;
    if (r === false) {
      this.stop(new ImgwError("DISCONNECTED", "reconnect disabled"));
      return;
    }
    const initial = r?.initialDelayMs ?? 500;
    const max = r?.maxDelayMs ?? 30000;
    const factor = r?.factor ?? 2;
    const jitter = r?.jitter ?? 0.5;
    const base = Math.min(max, initial * Math.pow(factor, this.attempt));
    // Jitter spreads the reconnects of many clients after a server restart.
    const delay = base * (1 - jitter * Math.random());
    this.attempt++;
    this.setState("reconnecting");
    this.reconnectTimer = setTimeout(() => { this.reconnectTimer = undefined; this.open(); }, delay);
  }

  private stop(err: Error): void {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.stopHeartbeat();
    const ws = this.ws;
    this.ws = null;
    this.authed = false;
    if (ws) {
      try { ws.close(1000, "client closed"); } catch { /* already closed */ }
    }
    for (const [, p] of this.pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    const out = this.outgoing;
    this.outgoing = [];
    for (const s of out) s.reject(err);
    if (this.firstConnect) {
      this.firstConnect.reject(err);
      this.firstConnect = null;
    }
    this.setState("closed");
  }

  private startHeartbeat(): void {
    this.stopHeartbeat();
    const every = this.opts.heartbeatIntervalMs;
    const dead = this.opts.deadAfterMs ?? every * 2.5;
    this.heartbeatTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws) return;
      if (Date.now() - this.lastFrameAt > dead) {
        // Silent for too long: the peer or the path is gone.
        this.ws = null;
        try { ws.close(4000, "no frames"); } catch { /* closed */ }
        this.onClose(4000, "no frames");
        return;
      }
      this.write({ command: "CMD_HEARTBEAT_REQ", sequence: this.nextSeq(), body: { client_time: Date.now() } });
    }, Math.min(every, dead / 2));
  }

  private stopHeartbeat(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  /* ---- frames and requests ----------------------------------------------- */

  private nextSeq(): number {
    this.seqCounter = (this.seqCounter % 0xfffffffe) + 1;
    return this.seqCounter;
  }

  private write(f: Frame): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(encodeFrame(this.opts.codec, f));
      return true;
    } catch (e) {
      this.emit("error", e as Error);
      return false;
    }
  }

  /** A request answered by the frame with the same sequence. */
  private request(command: string, body: Body, beforeAuth = false): Promise<Frame> {
    if (this.stopped) return Promise.reject(new ImgwError("CLOSED"));
    if (!this.ws || (!beforeAuth && !this.authed)) return Promise.reject(new ImgwError("NOT_CONNECTED"));
    const sequence = this.nextSeq();
    return new Promise<Frame>((resolve, reject) => {
      const p: Pending = { resolve, reject, command, timer: undefined };
      p.timer = setTimeout(() => {
        this.pending.delete(sequence);
        reject(new ImgwError("TIMEOUT", command));
      }, this.opts.requestTimeoutMs);
      this.pending.set(sequence, p);
      if (!this.write({ command, sequence, body })) {
        clearTimeout(p.timer);
        this.pending.delete(sequence);
        reject(new ImgwError("NOT_CONNECTED"));
      }
    });
  }

  /** Throws the server's error of a response body, if any. */
  private check(f: Frame): void {
    const code = errorCodeName(f.body.error_code as string);
    if (code !== "ERR_SUCCESS") throw new ImgwError(code as ImgwErrorCode, str(f.body.error_msg));
  }

  private onFrame(data: unknown): void {
    this.lastFrameAt = Date.now();
    let f: Frame;
    try {
      f = decodeFrame(data as string | ArrayBuffer);
    } catch (e) {
      this.emit("error", new Error("undecodable frame: " + (e as Error).message));
      return;
    }
    const p = f.sequence ? this.pending.get(f.sequence) : undefined;
    if (p && (f.command.endsWith("_RSP"))) {
      this.pending.delete(f.sequence);
      if (p.timer) clearTimeout(p.timer);
      if (f.command === "CMD_ERROR_RSP" && p.command !== "CMD_ERROR_RSP") {
        // The request itself was refused (bad body, rate): its error, typed.
        p.resolve({ ...f, body: { error_code: f.body.error_code, error_msg: f.body.error_msg } });
      } else {
        p.resolve(f);
      }
      return;
    }
    const b = f.body;
    switch (f.command) {
      case "CMD_PUSH_MSG":
        this.onMessages([toMessage(b, "push")]);
        break;
      case "CMD_READ_RECEIPT_PUSH": {
        const r: ReadReceipt = { conversationId: str(b.conversation_id), userId: str(b.user_id), messageIds: (b.message_ids as string[]) ?? [], readTime: num(b.read_time), readSeq: num(b.read_seq) };
        this.emit("read", r);
        // Our own receipt from another device: its read_seq is a seq of our
        // timeline, so this device can clear the conversation's badge.
        if (r.userId === this.userId && r.readSeq > 0) this.emit("readState", { conversationId: r.conversationId, readSeq: r.readSeq, readTime: r.readTime });
        break;
      }
      case "CMD_PRESENCE_PUSH":
        this.emit("presence", { ...toPresence(b), platform: str(b.platform), time: num(b.time) });
        break;
      case "CMD_TYPING_STATUS_PUSH":
        this.emit("typing", { conversationId: str(b.conversation_id), userId: str(b.user_id), status: num(b.status) });
        break;
      case "CMD_REVOKE_MSG_PUSH":
        this.emit("revoke", { messageId: str(b.message_id), conversationId: str(b.conversation_id), revokedBy: str(b.revoked_by), revokedTime: num(b.revoked_time) });
        break;
      case "CMD_KICK_PUSH": {
        // The server closes with 4002 next; stop now so nothing reconnects.
        const reason = str(b.reason) || "logged in elsewhere";
        this.emit("kick", { reason, platform: str(b.platform) || this.opts.platform });
        this.stop(new ImgwError("KICKED", reason));
        break;
      }
      case "CMD_ERROR_RSP":
        this.emit("error", new ImgwError(errorCodeName(b.error_code as string), str(b.error_msg)));
        break;
      default:
        break; // heartbeat responses and unmatched responses
    }
  }

  /* ---- sends --------------------------------------------------------------- */

  private flushOutgoing(): void {
    for (const s of this.outgoing) if (!s.inFlight) this.transmit(s);
  }

  private transmit(s: OutgoingSend): void {
    if (!this.authed || s.inFlight) return;
    s.inFlight = true;
    this.request("CMD_SEND_MSG_REQ", s.body).then(
      (f) => this.onSendAnswer(s, f),
      (e: ImgwError) => {
        s.inFlight = false;
        // Lost with the connection (DISCONNECTED) or unanswered (TIMEOUT):
        // stays queued; the next connection resends it under the same id.
        if (e.code === "TIMEOUT" && this.ws) {
          const ws = this.ws;
          this.ws = null;
          try { ws.close(4000, "request timeout"); } catch { /* closed */ }
          this.onClose(4000, "request timeout");
        }
      },
    );
  }

  private onSendAnswer(s: OutgoingSend, f: Frame): void {
    const i = this.outgoing.indexOf(s);
    const code = errorCodeName(f.body.error_code as string);
    if (code === "ERR_SEND_TOO_FAST" || code === "ERR_SERVER_BUSY") {
      // Nothing was accepted: try again a little later, same id.
      s.inFlight = false;
      setTimeout(() => this.transmit(s), 500 + Math.random() * 500);
      return;
    }
    if (i >= 0) this.outgoing.splice(i, 1);
    if (code !== "ERR_SUCCESS") {
      s.reject(new ImgwError(code, str(f.body.error_msg)));
      return;
    }
    const messageId = str(f.body.message_id);
    const seq = num(f.body.seq);
    this.seen.add(messageId);
    // Our own message holds a seq of our timeline: account for it so the
    // cursor stays contiguous (it is not emitted: the promise reports it).
    if (seq > this.cur.seq) {
      this.held.set(seq, null);
      this.drain();
    }
    s.resolve({ messageId, seq, serverTime: num(f.body.server_time), clientMsgId: s.clientMsgId, conversationId: str(s.body.conversation_id) });
  }

  /* ---- delivery: order, dedupe, acks ------------------------------------------ */

  /** Pushes and sync pages both come here. */
  private onMessages(ms: ChatMessage[]): void {
    let gap = false;
    for (const m of ms) {
      if (m.seq <= this.cur.seq || this.held.has(m.seq)) {
        // Already delivered (or waiting): a push and a sync page overlapped.
        // A live push at a seq we passed that we have never seen means the
        // timeline restarted under us (a Redis flush): the sync with our
        // epoch finds out and re-reads the new timeline.
        if (m.source === "push" && m.messageId && !this.seen.has(m.messageId)) gap = true;
        continue;
      }
      this.held.set(m.seq, m);
      if (m.seq > this.cur.seq + 1) gap = true;
    }
    this.drain();
    if (gap) void this.catchUp();
  }

  /** Delivers held messages while they continue the cursor. */
  private drain(): void {
    let last: ChatMessage | null = null;
    while (this.held.has(this.cur.seq + 1)) {
      const m = this.held.get(this.cur.seq + 1)!;
      this.held.delete(this.cur.seq + 1);
      this.cur.seq++;
      if (m === null) continue;
      last = m;
      if (m.messageId && this.seen.has(m.messageId)) continue;
      if (m.messageId) this.seen.add(m.messageId);
      // Our own send whose answer was lost with a connection: the resend
      // resolves its promise; it is not a new incoming message.
      if (m.senderId === this.userId && m.clientMsgId && this.outgoing.some((o) => o.clientMsgId === m.clientMsgId)) continue;
      this.emit("message", m);
    }
    if (last) this.write({ command: "CMD_MSG_ACK", sequence: 0, body: { message_id: last.messageId, seq: last.seq } });
    this.emit("cursor", this.cursor);
    // Pushes carry no epoch: a timeline that started while we were
    // connected (its first seqs came as pushes) needs one sync to learn
    // it, or a later reset could not be told from continuity.
    if (this.cur.epoch === "" && this.cur.seq > 0 && !this.syncing && this.authed) void this.catchUp();
  }

  /** Skips the cursor past positions that will never come (after a sync). */
  private settle(): void {
    if (this.held.size === 0) return;
    const seqs = [...this.held.keys()].sort((a, b) => a - b);
    this.cur.seq = Math.max(this.cur.seq, seqs[0] - 1);
    this.drain();
  }

  /* ---- sync and the resume contract -------------------------------------- */

  private async catchUp(): Promise<void> {
    if (!this.authed) return;
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.syncAgain = false;
        await this.syncPages();
      } while (this.syncAgain && this.authed);
      this.settle();
      this.emit("synced", this.cursor);
    } catch (e) {
      if (!(e instanceof ImgwError && (e.code === "DISCONNECTED" || e.code === "CLOSED" || e.code === "NOT_CONNECTED"))) this.emit("error", e as Error);
    } finally {
      this.syncing = false;
    }
    if (this.authed) this.flushOutgoing();
  }

  private async syncPages(): Promise<void> {
    for (let guard = 0; guard < 100000; guard++) {
      const before = this.cursor;
      const f = await this.request("CMD_SYNC_REQ", { min_seq: before.seq, max_seq: 0, limit: this.opts.syncLimit, epoch: before.epoch });
      this.check(f);
      const b = f.body;
      const epoch = str(b.epoch);
      const serverMax = num(b.server_max_seq);
      const oldest = num(b.oldest_seq);
      const msgs = ((b.messages as Body[]) ?? []).map((m) => toMessage(m, "sync"));
      const epochChanged = before.epoch !== "" && epoch !== before.epoch;
      let restart = false;
      if (b.discontinuity) {
        this.emit("discontinuity", { previous: before, epoch, epochChanged, oldestSeq: oldest });
        if (epochChanged || before.seq > serverMax) {
          // Seqs of the old timeline mean nothing now: start from 0. The
          // server already answered from the new timeline's start unless
          // it had no epoch to compare (then ask again from 0).
          this.held.clear();
          this.cur.seq = 0;
          restart = !epochChanged && msgs.length === 0 && serverMax > 0;
        } else if (oldest - 1 > this.cur.seq) {
          this.cur.seq = oldest - 1; // trimmed: go on from what is left
        }
      } else if (epochChanged && before.seq === 0) {
        this.held.clear();
      }
      this.cur.epoch = epoch;
      if (msgs.length) {
        // A page is contiguous except where the timeline itself has holes.
        if (msgs[0].seq > this.cur.seq + 1) this.cur.seq = msgs[0].seq - 1;
        this.onMessages(msgs);
      } else {
        this.emit("cursor", this.cursor);
      }
      if (restart) continue;
      if (!b.has_more) return;
      if (msgs.length === 0) return;
      // Holes inside a page: move past them so the next page continues.
      const last = msgs[msgs.length - 1].seq;
      if (this.cur.seq < last) {
        this.cur.seq = last;
        this.held.forEach((_, k) => { if (k <= last) this.held.delete(k); });
      }
    }
  }
}
