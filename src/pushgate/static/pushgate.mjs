// pushgate.js as an ES module: named exports (and a default export of the whole namespace).
//
//   import { Client, closeCodeAction } from '/static/pushgate.mjs';   // from a pushgate server
//   import { Client } from 'pushgate-client';                         // the npm package
//
// One source, no build step: the code is pushgate.js, a classic script (so `<script
// src="/pushgate.js">` keeps its global `Pushgate`); importing it for its side effect defines
// globalThis.Pushgate in browsers and in Node alike, and this module re-exports it.
import './pushgate.js';

const Pushgate = globalThis.Pushgate;

export const {
  Client,
  PushgateError,
  STATES,
  closeCodeAction,
  handshakeIsFatal,
  backoffDelay,
  tokenExpiry,
  refreshDelay,
  version,
} = Pushgate;
export default Pushgate;
