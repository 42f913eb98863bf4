// The WebSocket to the server: JSON frames in and out, and reconnection with
// exponential backoff and full jitter when the connection drops.

/** The WebSocket URL for this page: `ws` next to the page, `wss:` when the page is https. */
export function socketUrl(location = window.location) {
  const url = new URL("ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  url.search = "";
  return url.href;
}

export const BACKOFF_BASE_MS = 1000;
export const BACKOFF_CAP_MS = 30000;
// A connection must stay up this long before the backoff starts again from
// the beginning: a server that accepts and then drops us at once must not be
// hammered every second (by us and by every other client at the same moment).
export const STABLE_AFTER_MS = 10000;

/**
 * Delay before reconnection attempt `attempt` (0-based): exponential, capped,
 * and randomised between half and all of it, so that thousands of clients
 * dropped together by a server restart come back spread out.
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.round(ceiling * (0.5 + random() / 2));
}

/**
 * One logical connection to the server that survives drops.
 *
 * Handlers: onEvent(event) for every JSON object the server sends,
 * onOpen() when a socket opens, onLost({code, delay}) when it drops and a
 * retry is scheduled in `delay` ms.
 */
export class Connection {
  constructor(url, { onEvent, onOpen = () => {}, onLost = () => {}, random = Math.random } = {}) {
    this.url = url;
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.onLost = onLost;
    this.random = random;
    this.socket = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.openedAt = 0;
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  /** Open the socket now (cancelling any scheduled retry), unless one is open or opening. */
  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.socket !== null) return;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.openedAt = Date.now();
      this.onOpen();
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return; // The server only sends JSON; ignore anything else rather than crash.
      }
      if (frame !== null && typeof frame === "object" && typeof frame.type === "string") {
        this.onEvent(frame);
      }
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.openedAt && Date.now() - this.openedAt >= STABLE_AFTER_MS) this.attempt = 0;
      this.openedAt = 0;
      const delay = backoffDelay(this.attempt, this.random);
      this.attempt += 1;
      this.retryTimer = setTimeout(() => this.connect(), delay);
      this.onLost({ code: event.code, delay });
    });
  }

  /** Send one frame; false (and nothing sent) when the socket is not open. */
  send(frame) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }
}
