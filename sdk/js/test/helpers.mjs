// Test helpers: a real imgw process (IMGW_BIN, default ../../build/imgw)
// that can be stopped and started again on the same port, HS256 tokens,
// a raw FLUSHALL for Redis, and waiting on conditions (never on time alone).
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "..", "..", "..");
export const IMGW_BIN = process.env.IMGW_BIN || join(REPO, "build", "imgw");
export const SECRET = "imgw-sdk-test-secret-0123456789-abcdef";
export { WebSocket };

export function log(...a) {
  console.log("  [sdk-test]", ...a);
}

function b64url(buf) {
  return Buffer.from(buf).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

/** An HS256 JWT for user (exp seconds from now; negative = expired). */
export function token(user, expIn = 600) {
  const now = Math.floor(Date.now() / 1000);
  const h = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const p = b64url(JSON.stringify({ sub: user, iat: now, exp: now + expIn }));
  const sig = b64url(createHmac("sha256", SECRET).update(`${h}.${p}`).digest());
  return `${h}.${p}.${sig}`;
}

export function uid(prefix) {
  return `${prefix}${randomBytes(4).toString("hex")}`;
}

export async function freePort() {
  return await new Promise((res, rej) => {
    const s = net.createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => res(p));
    });
  });
}

function healthz(port) {
  return new Promise((res) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/healthz", timeout: 1000 }, (r) => {
      r.resume();
      res(r.statusCode === 200);
    });
    req.on("error", () => res(false));
    req.on("timeout", () => { req.destroy(); res(false); });
  });
}

/**
 * One imgw node. env: extra IMGW__* variables (store backend etc.).
 * start() / stop() may be called again: the port stays the same.
 */
export class Imgw {
  constructor(env = {}) {
    this.env = env;
    this.dir = mkdtempSync(join(tmpdir(), "imgw-sdk-"));
    this.port = 0;
    this.proc = null;
    this.logPath = join(this.dir, "imgw.log");
    this.starts = 0;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async start() {
    if (!this.port) this.port = await freePort();
    const ini = join(this.dir, "imgw.ini");
    writeFileSync(ini, `[server]\nbind = 127.0.0.1\nports = ${this.port}\ndrain_seconds = 1\n\n[auth]\njwt_secret = ${SECRET}\n`);
    const env = { PATH: process.env.PATH, HOME: process.env.HOME || "/tmp",
      ASAN_OPTIONS: process.env.ASAN_OPTIONS || "detect_leaks=1", UBSAN_OPTIONS: process.env.UBSAN_OPTIONS || "print_stacktrace=1:halt_on_error=1",
      IMGW__LIMITS__SEND_RATE: "100000", ...this.env };
    for (let attempt = 0; attempt < 50; attempt++) {
      const fd = (await import("node:fs")).openSync(this.logPath, "a");
      this.proc = spawn(IMGW_BIN, ["-c", ini, "-t", "2", "-l", "info"], { env, cwd: this.dir, stdio: ["ignore", fd, fd] });
      const proc = this.proc;
      proc.exited = new Promise((res) => proc.once("exit", (code, sig) => res({ code, sig })));
      for (let i = 0; i < 200; i++) {
        if (proc.exitCode !== null) break;
        if (await healthz(this.port)) {
          this.starts++;
          log(`imgw started (#${this.starts}) on port ${this.port}`);
          return this;
        }
        await sleep(50);
      }
      // The old process may still hold the port for a moment: try again.
      if (proc.exitCode === null) proc.kill("SIGKILL");
      await proc.exited;
      await sleep(100);
    }
    throw new Error("imgw did not start:\n" + this.logTail());
  }

  /** SIGTERM (drain, clients get close 1001) or SIGKILL. */
  async stop(signal = "SIGTERM") {
    const p = this.proc;
    if (!p) return;
    this.proc = null;
    p.kill(signal);
    const r = await p.exited;
    log(`imgw stopped (${signal}): exit ${r.code ?? r.sig}`);
    const text = this.logText();
    for (const marker of ["AddressSanitizer", "LeakSanitizer", "runtime error:"]) {
      if (text.includes(marker)) throw new Error(`imgw log contains ${marker}:\n` + this.logTail());
    }
    if (signal === "SIGTERM" && r.code !== 0) throw new Error(`imgw exited with ${r.code ?? r.sig}:\n` + this.logTail());
  }

  logText() {
    try { return readFileSync(this.logPath, "utf8"); } catch { return ""; }
  }

  logTail(n = 40) {
    return this.logText().split("\n").slice(-n).join("\n");
  }

  cleanup() {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until cond() is true (checked every 20 ms); fails after a generous bound. */
export async function until(cond, what, timeoutMs = 20000) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for: ${what}`);
}

/** FLUSHALL on a Redis URL redis://host:port/db (plain RESP over TCP). */
export async function redisFlushAll(url) {
  const u = new URL(url);
  await new Promise((res, rej) => {
    const s = net.connect(Number(u.port || 6379), u.hostname || "127.0.0.1", () => s.write("FLUSHALL\r\n"));
    s.once("data", (d) => { s.end(); d.toString().startsWith("+OK") ? res() : rej(new Error(d.toString())); });
    s.once("error", rej);
  });
}

/** Collects a client's events for assertions. */
export function record(client) {
  const r = { messages: [], discontinuities: [], reads: [], typing: [], revokes: [], kicks: [], errors: [], states: [] };
  client.on("message", (m) => r.messages.push(m));
  client.on("discontinuity", (d) => r.discontinuities.push(d));
  client.on("read", (x) => r.reads.push(x));
  client.on("typing", (x) => r.typing.push(x));
  client.on("revoke", (x) => r.revokes.push(x));
  client.on("kick", (x) => r.kicks.push(x));
  client.on("error", (x) => r.errors.push(x));
  client.on("state", (x) => r.states.push(x));
  return r;
}

/** Fast reconnects for tests (the backoff shape is unchanged). */
export const FAST = { initialDelayMs: 50, maxDelayMs: 400, factor: 2, jitter: 0.5 };
