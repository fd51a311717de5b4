// Type definitions for pushgate.js (the npm package "pushgate-client", and the global `Pushgate`
// of <script src="/pushgate.js">). Protocol and behaviour: docs/protocol.md.

export as namespace Pushgate;

/** A stream position: offsets count publications within one epoch. */
export interface Position {
  epoch: string;
  offset: number;
}

export type State = 'connecting' | 'connected' | 'disconnected' | 'closed';
export type TransportName = 'websocket' | 'sse';
export type CloseAction = 'now' | 'backoff' | 'stop';

export const STATES: Readonly<{
  CONNECTING: 'connecting';
  CONNECTED: 'connected';
  DISCONNECTED: 'disconnected';
  CLOSED: 'closed';
}>;

/** Why the last connection ended. `code` is the close code (null for a refused handshake, whose
 *  HTTP `status` and server error code `error` are given instead). */
export interface CloseInfo {
  code: number | null;
  reason: string;
  status?: number;
  error?: string;
  delay?: number | null;
  offline?: boolean;
}

export interface StateEvent extends CloseInfo {
  state: State;
}

export interface Welcome {
  type: 'welcome';
  client: string;
  user: string | null;
  node: string;
  stream?: { epoch: string; offset: number; recovered: boolean };
  /** The user-stream position this connection passed (or null). */
  userSince: Position | null;
  /** True when a position was passed and the server could not recover from it. */
  maybeMissed: boolean;
}

export interface MessagePush<T = unknown> {
  type: 'message';
  channel: string;
  data: T;
  offset: number;
  epoch: string;
  /** The user id of the client that published it, stamped by the server; absent when a backend
   *  (HTTP API, broker) or an anonymous client published it. */
  from?: string;
}

export interface DirectPush<T = unknown> {
  type: 'direct';
  /** The sender's user id, stamped by the server; null when the backend sent it. */
  from: string | null;
  data: T;
  offset?: number;
  epoch?: string;
}

export interface BroadcastPush<T = unknown> {
  type: 'broadcast';
  data: T;
}

export interface JoinLeavePush {
  type: 'join' | 'leave';
  channel: string;
  user: string | null;
}

export interface ResyncPush {
  type: 'resync';
  channel?: string;
  stream?: 'user';
  epoch: string;
  offset: number;
}

export interface ErrorPush {
  type: 'error';
  code: string;
  message: string;
  channel?: string;
  /** HTTP status of a refused handshake. */
  status?: number;
}

export interface SubscribedEvent {
  channel: string;
  epoch: string | null;
  offset: number | null;
  recovered: boolean | null;
  resubscribe: boolean;
}

export interface EventMap {
  welcome: Welcome;
  state: StateEvent;
  message: MessagePush;
  direct: DirectPush;
  broadcast: BroadcastPush;
  join: JoinLeavePush;
  leave: JoinLeavePush;
  subscribed: SubscribedEvent;
  resync: ResyncPush;
  error: ErrorPush;
}

/** Where 'online' / 'offline' events come from (window in a browser). */
export interface NetworkEvents {
  addEventListener(type: 'online' | 'offline', listener: () => void): void;
}

export interface ClientOptions {
  /** Dev-mode identity, sent as ?user=. */
  user?: string;
  /** A JWT, or a function returning one: called before every connect and shortly before `exp`
   *  to refresh over the open connection. */
  token?: string | (() => string | Promise<string>);
  onWelcome?: (welcome: Welcome) => void;
  onStateChange?: (state: State, info: CloseInfo) => void;
  /** Backoff window in ms (500 .. 20000). */
  minDelay?: number;
  maxDelay?: number;
  /** "Reconnect now" (1012, 4002) waits a random delay in [0, nowJitter] ms. */
  nowJitter?: number;
  requestTimeout?: number;
  maxMessageSize?: number;
  pingInterval?: number;
  userSince?: Position | null;
  autoAck?: boolean;
  autoConnect?: boolean;
  /** A WebSocket constructor to use instead of the global one. */
  WebSocket?: unknown;
  /** What to try, in order (default both): SSE follows at once a WebSocket that fails to open. */
  transports?: TransportName[];
  /** The SSE endpoint (default: the url with /ws replaced by /sse). */
  sseUrl?: string;
  fetch?: typeof fetch;
  /** Source of 'online'/'offline' events; null turns offline detection off. */
  network?: NetworkEvents | null;
}

export interface OkReply {
  type: 'ok';
  id?: number | string;
  [field: string]: unknown;
}

export interface SubscribeReply extends OkReply {
  channel: string;
  epoch: string | null;
  offset: number | null;
  recovered?: boolean;
}

export interface PublishReply extends OkReply {
  epoch: string;
  offset: number;
}

export interface SendReply extends OkReply {
  positions: Record<string, Position>;
}

export interface PresenceReply extends OkReply {
  channel: string;
  users: string[];
  connections: number;
}

export class PushgateError extends Error {
  constructor(code: string, message?: string, reply?: object);
  /** The server's snake_case code, or timeout, disconnected, closed, message_too_big, not_supported. */
  code: string;
  reply: object | null;
  /** HTTP status when a refused handshake caused it. */
  status?: number;
}

export class Client {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  state: State;
  clientId: string | null;
  userId: string | null;
  node: string | null;
  /** 'websocket' or 'sse' while connected, else null. */
  transport: TransportName | null;
  lastClose: CloseInfo | null;
  online: boolean;

  connect(): Promise<void>;
  close(): void;
  on<K extends keyof EventMap>(type: K, fn: (event: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(type: K, fn: (event: EventMap[K]) => void): void;
  request(command: { type: string; [field: string]: unknown }): Promise<OkReply>;
  subscribe<T = unknown>(channel: string, handler?: (msg: MessagePush<T>) => void,
    options?: { since?: Position }): Promise<SubscribeReply>;
  unsubscribe(channel: string): Promise<OkReply>;
  position(channel: string): Position | null;
  channels(): string[];
  publish(channel: string, data: unknown, options?: { idempotencyKey?: string }): Promise<PublishReply>;
  send(users: string | string[], data: unknown, options?: { idempotencyKey?: string }): Promise<SendReply>;
  presence(channel: string): Promise<PresenceReply>;
  rpc<T = unknown>(method: string, data?: unknown): Promise<T>;
  /** Round trip in ms. */
  ping(): Promise<number>;
  ack(msgOrPosition: Position | DirectPush): Promise<Position>;
  userPosition(): Position | null;
}

export function closeCodeAction(code: number): CloseAction;
export function handshakeIsFatal(status: number): boolean;
export function backoffDelay(attempt: number, minDelay?: number, maxDelay?: number): number;
export function tokenExpiry(token: string): number | null;
export function refreshDelay(expMs: number, nowMs?: number): number;
export const version: string;

declare const Pushgate: {
  Client: typeof Client;
  PushgateError: typeof PushgateError;
  STATES: typeof STATES;
  closeCodeAction: typeof closeCodeAction;
  handshakeIsFatal: typeof handshakeIsFatal;
  backoffDelay: typeof backoffDelay;
  tokenExpiry: typeof tokenExpiry;
  refreshDelay: typeof refreshDelay;
  version: string;
};
export default Pushgate;
