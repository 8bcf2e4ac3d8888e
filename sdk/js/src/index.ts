/**
 * imgw-client: the JavaScript / TypeScript SDK of imgw. See README.md.
 */
export { ImgwClient, newClientMsgId, singleConversationId, groupConversationId } from "./client";
export type {
  ChatMessage, ClientEvents, ClientOptions, ConnectionState, Conversation, ConversationPage, Cursor,
  Discontinuity, Kick, Presence, PresenceChange, ReadReceipt, ReadState, Revocation, SendOptions,
  SendResult, TypingStatus, WebSocketCtor, WebSocketLike,
} from "./client";
export { ImgwError, ErrorCodes, errorCodeName } from "./errors";
export type { ImgwErrorCode, ServerErrorCode, ClientErrorCode } from "./errors";
export { encodeFrame, decodeFrame } from "./codec";
export type { Codec, Frame } from "./codec";
