/**
 * Errors of the SDK. Server errors carry the protocol's ErrorCode name
 * (docs/protocol.md section 3.3); the SDK's own conditions use names that
 * are not ErrorCode names (TIMEOUT, DISCONNECTED, CLOSED, KICKED).
 */

/** The protocol's error codes (proto/imgw.proto ErrorCode), by name. */
export const ErrorCodes = {
  ERR_SUCCESS: 0,
  ERR_UNKNOWN: 1,
  ERR_INVALID_PARAM: 2,
  ERR_SERVER_BUSY: 3,
  ERR_AUTH_FAILED: 100,
  ERR_TOKEN_EXPIRED: 101,
  ERR_PERMISSION_DENIED: 102,
  ERR_USER_NOT_EXIST: 103,
  ERR_MESSAGE_TOO_LARGE: 200,
  ERR_SEND_TOO_FAST: 201,
  ERR_CONVERSATION_NOT_EXIST: 202,
} as const;

export type ServerErrorCode = keyof typeof ErrorCodes;

/** Conditions raised by the SDK itself rather than the server. */
export type ClientErrorCode =
  | "TIMEOUT" // no response within requestTimeoutMs
  | "DISCONNECTED" // the connection dropped before the response came
  | "CLOSED" // close() was called, or the client stopped for good
  | "KICKED" // the same user and platform logged in elsewhere
  | "NOT_CONNECTED"; // a request that cannot wait for a connection

export type ImgwErrorCode = ServerErrorCode | ClientErrorCode;

const NAMES: Record<number, ServerErrorCode> = Object.fromEntries(
  Object.entries(ErrorCodes).map(([k, v]) => [v, k as ServerErrorCode]),
);

/** The name of a numeric or named code as the server sent it. */
export function errorCodeName(code: number | string | undefined): ServerErrorCode {
  if (code === undefined || code === null || code === "") return "ERR_SUCCESS";
  if (typeof code === "string") {
    if (code in ErrorCodes) return code as ServerErrorCode;
    const n = Number(code);
    return Number.isInteger(n) && NAMES[n] ? NAMES[n] : "ERR_UNKNOWN";
  }
  return NAMES[code] ?? "ERR_UNKNOWN";
}

export class ImgwError extends Error {
  /** ErrorCode name (server) or a ClientErrorCode. */
  readonly code: ImgwErrorCode;
  /** The numeric ErrorCode for server errors, undefined otherwise. */
  readonly serverCode?: number;

  constructor(code: ImgwErrorCode, message?: string) {
    super(message ? `${code}: ${message}` : code);
    this.name = "ImgwError";
    this.code = code;
    if (code in ErrorCodes) this.serverCode = ErrorCodes[code as ServerErrorCode];
  }

  /** True for errors of the server (an ErrorCode), false for the SDK's own. */
  get fromServer(): boolean {
    return this.serverCode !== undefined;
  }
}
