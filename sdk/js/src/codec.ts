/**
 * The two wire codecs of imgw (docs/protocol.md section 2): protobuf in
 * binary frames, the same envelope as JSON in text frames. Both decode to,
 * and encode from, the JSON form: plain objects keyed by the proto field
 * names (snake_case), enums as names, 64-bit integers as numbers, bytes as
 * UTF-8 strings. The client above this file never sees the codec.
 */
import { create, fromBinary, toBinary, ScalarType } from "@bufbuild/protobuf";
import type { DescField, DescMessage } from "@bufbuild/protobuf";
import * as pb from "./gen/imgw_pb";

export type Codec = "protobuf" | "json";

/** A decoded or to-be-encoded envelope; body in its JSON form. */
export interface Frame {
  command: string; // CommandType name, e.g. "CMD_PUSH_MSG"
  sequence: number;
  timestamp?: number;
  body: Record<string, unknown>;
}

const CMD_NAMES: Record<number, string> = {};
const CMD_NUMS: Record<string, number> = {};
for (const v of pb.CommandTypeSchema.values) {
  CMD_NAMES[v.number] = v.name;
  CMD_NUMS[v.name] = v.number;
}

export function commandNumber(name: string): number {
  const n = CMD_NUMS[name];
  if (n === undefined) throw new Error(`unknown command ${name}`);
  return n;
}

/** Body message of each command (protocol.md section 3.1). */
const BODIES: Record<string, DescMessage> = {
  CMD_ERROR_RSP: pb.ErrorResponseSchema,
  CMD_HEARTBEAT_REQ: pb.HeartbeatRequestSchema,
  CMD_HEARTBEAT_RSP: pb.HeartbeatResponseSchema,
  CMD_AUTH_REQ: pb.AuthRequestSchema,
  CMD_AUTH_RSP: pb.AuthResponseSchema,
  CMD_KICK_PUSH: pb.KickPushSchema,
  CMD_SEND_MSG_REQ: pb.SendMessageRequestSchema,
  CMD_SEND_MSG_RSP: pb.SendMessageResponseSchema,
  CMD_PUSH_MSG: pb.PushMessageSchema,
  CMD_MSG_ACK: pb.MessageAckSchema,
  CMD_REVOKE_MSG_REQ: pb.RevokeMessageRequestSchema,
  CMD_REVOKE_MSG_RSP: pb.RevokeMessageResponseSchema,
  CMD_REVOKE_MSG_PUSH: pb.RevokeMessagePushSchema,
  CMD_SYNC_REQ: pb.SyncRequestSchema,
  CMD_SYNC_RSP: pb.SyncResponseSchema,
  CMD_READ_RECEIPT_REQ: pb.ReadReceiptRequestSchema,
  CMD_READ_RECEIPT_RSP: pb.ReadReceiptResponseSchema,
  CMD_READ_RECEIPT_PUSH: pb.ReadReceiptPushSchema,
  CMD_TYPING_STATUS_REQ: pb.TypingStatusRequestSchema,
  CMD_TYPING_STATUS_PUSH: pb.TypingStatusPushSchema,
  CMD_CONVERSATION_LIST_REQ: pb.ConversationListRequestSchema,
  CMD_CONVERSATION_LIST_RSP: pb.ConversationListResponseSchema,
  CMD_CONVERSATION_DELETE_REQ: pb.ConversationDeleteRequestSchema,
  CMD_CONVERSATION_DELETE_RSP: pb.ConversationDeleteResponseSchema,
  CMD_PRESENCE_REQ: pb.PresenceRequestSchema,
  CMD_PRESENCE_RSP: pb.PresenceResponseSchema,
  CMD_PRESENCE_SUB_REQ: pb.PresenceSubscribeRequestSchema,
  CMD_PRESENCE_SUB_RSP: pb.PresenceSubscribeResponseSchema,
  CMD_PRESENCE_PUSH: pb.PresencePushSchema,
};

const utf8enc = new TextEncoder();
const utf8dec = new TextDecoder("utf-8", { fatal: false });

const INT64 = new Set<ScalarType>([
  ScalarType.INT64, ScalarType.UINT64, ScalarType.SINT64,
  ScalarType.FIXED64, ScalarType.SFIXED64,
]);

/* ---- JSON form <-> protobuf-es messages ---------------------------------- */

function scalarToPb(t: ScalarType, v: unknown): unknown {
  if (t === ScalarType.BYTES) return typeof v === "string" ? utf8enc.encode(v) : v ?? new Uint8Array();
  if (INT64.has(t)) return BigInt(typeof v === "number" ? Math.trunc(v) : (v as string) ?? 0);
  if (t === ScalarType.BOOL) return Boolean(v);
  if (t === ScalarType.STRING) return v == null ? "" : String(v);
  return Number(v ?? 0);
}

function scalarFromPb(t: ScalarType, v: unknown): unknown {
  if (t === ScalarType.BYTES) return utf8dec.decode(v as Uint8Array);
  if (typeof v === "bigint") return Number(v);
  return v;
}

function enumToPb(f: DescField & { enum?: { values: { name: string; number: number }[] } }, v: unknown): number {
  if (typeof v === "number") return v;
  const e = f.enum!.values.find((x) => x.name === v);
  return e ? e.number : 0;
}

function enumFromPb(f: DescField & { enum?: { values: { name: string; number: number }[] } }, v: number): string | number {
  const e = f.enum!.values.find((x) => x.number === v);
  return e ? e.name : v;
}

function toPbInit(desc: DescMessage, obj: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of desc.fields) {
    const v = obj[f.name];
    if (v === undefined || v === null) continue;
    switch (f.fieldKind) {
      case "scalar": out[f.localName] = scalarToPb(f.scalar, v); break;
      case "enum": out[f.localName] = enumToPb(f, v); break;
      case "message": out[f.localName] = create(f.message, toPbInit(f.message, v as Record<string, unknown>)); break;
      case "list":
        out[f.localName] = (v as unknown[]).map((x) =>
          f.listKind === "scalar" ? scalarToPb(f.scalar, x)
            : f.listKind === "enum" ? enumToPb(f, x)
              : create(f.message, toPbInit(f.message, x as Record<string, unknown>)));
        break;
      case "map": {
        const m: Record<string, unknown> = {};
        for (const [k, x] of Object.entries(v as Record<string, unknown>)) m[k] = f.mapKind === "scalar" ? scalarToPb(f.scalar, x) : x;
        out[f.localName] = m;
        break;
      }
    }
  }
  return out;
}

function fromPb(desc: DescMessage, msg: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of desc.fields) {
    const v = msg[f.localName];
    switch (f.fieldKind) {
      case "scalar": out[f.name] = scalarFromPb(f.scalar, v); break;
      case "enum": out[f.name] = enumFromPb(f, v as number); break;
      case "message": if (v !== undefined) out[f.name] = fromPb(f.message, v as Record<string, unknown>); break;
      case "list":
        out[f.name] = (v as unknown[]).map((x) =>
          f.listKind === "scalar" ? scalarFromPb(f.scalar, x)
            : f.listKind === "enum" ? enumFromPb(f, x as number)
              : fromPb(f.message, x as Record<string, unknown>));
        break;
      case "map": {
        const m: Record<string, unknown> = {};
        for (const [k, x] of Object.entries(v as Record<string, unknown>)) m[k] = f.mapKind === "scalar" ? scalarFromPb(f.scalar, x) : x;
        out[f.name] = m;
        break;
      }
    }
  }
  return out;
}

/* ---- frames --------------------------------------------------------------- */

export function encodeFrame(codec: Codec, f: Frame): string | Uint8Array {
  const ts = f.timestamp ?? Date.now();
  if (codec === "json") {
    return JSON.stringify({ command: f.command, sequence: f.sequence, timestamp: ts, body: f.body });
  }
  const desc = BODIES[f.command];
  if (!desc) throw new Error(`no body message for ${f.command}`);
  const body = toBinary(desc, create(desc, toPbInit(desc, f.body)));
  return toBinary(pb.WebSocketMessageSchema, create(pb.WebSocketMessageSchema, {
    command: commandNumber(f.command), sequence: f.sequence, body, timestamp: BigInt(ts),
  }));
}

/**
 * Decodes a frame of either codec (the server answers in the codec of the
 * client's last frame, and a text frame is always JSON). Throws on a frame
 * that does not decode.
 */
export function decodeFrame(data: string | ArrayBuffer | Uint8Array): Frame {
  if (typeof data === "string") {
    const o = JSON.parse(data) as { command: string | number; sequence?: number; timestamp?: number; body?: Record<string, unknown> };
    const command = typeof o.command === "number" ? CMD_NAMES[o.command] ?? String(o.command) : o.command;
    return { command, sequence: Number(o.sequence ?? 0), timestamp: Number(o.timestamp ?? 0), body: normalizeJson(command, o.body ?? {}) };
  }
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const env = fromBinary(pb.WebSocketMessageSchema, bytes);
  const command = CMD_NAMES[env.command] ?? String(env.command);
  const desc = BODIES[command];
  const body = desc ? fromPb(desc, fromBinary(desc, env.body) as unknown as Record<string, unknown>) : {};
  return { command, sequence: env.sequence, timestamp: Number(env.timestamp), body };
}

/**
 * JSON bodies may omit default fields and may carry 64-bit numbers as
 * strings (protocol.md section 10): fill defaults from the proto and turn
 * numbers into numbers, so both codecs give the same shape.
 */
function normalizeJson(command: string, body: Record<string, unknown>): Record<string, unknown> {
  const desc = BODIES[command];
  return desc ? normalizeMsg(desc, body) : body;
}

function normalizeMsg(desc: DescMessage, o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...o };
  for (const f of desc.fields) {
    const v = o[f.name];
    switch (f.fieldKind) {
      case "scalar":
        if (v === undefined || v === null) out[f.name] = f.scalar === ScalarType.STRING || f.scalar === ScalarType.BYTES ? "" : f.scalar === ScalarType.BOOL ? false : 0;
        else if (INT64.has(f.scalar) || (f.scalar !== ScalarType.STRING && f.scalar !== ScalarType.BYTES && f.scalar !== ScalarType.BOOL)) out[f.name] = Number(v);
        break;
      case "enum":
        if (v === undefined || v === null) out[f.name] = f.enum.values[0]?.name ?? 0;
        else if (typeof v === "number") out[f.name] = enumFromPb(f, v);
        break;
      case "list":
        out[f.name] = Array.isArray(v) ? (f.listKind === "message" ? v.map((x) => normalizeMsg(f.message, x)) : v) : [];
        break;
      case "map":
        out[f.name] = v && typeof v === "object" ? v : {};
        break;
      case "message":
        if (v && typeof v === "object") out[f.name] = normalizeMsg(f.message, v as Record<string, unknown>);
        break;
    }
  }
  return out;
}
