// Your typing state, as the stranger sees it.
//
// `typing: true` goes out on the first change to the draft; `typing: false`
// after TYPING_IDLE_MS without a change, when the draft is emptied, or when the
// message is sent. Only changes are sent, never one frame per keystroke.

export const TYPING_IDLE_MS = 4000;

export class TypingSender {
  /** @param {(active: boolean) => void} send */
  constructor(send, idleMs = TYPING_IDLE_MS) {
    this.send = send;
    this.idleMs = idleMs;
    this.active = false;
    this.timer = null;
  }

  /** The draft changed; `hasText` is whether anything is left in it. */
  changed(hasText) {
    if (!hasText) {
      this.stop();
      return;
    }
    if (!this.active) {
      this.active = true;
      this.send(true);
    }
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.stop(), this.idleMs);
  }

  /** Tell the stranger we stopped (idle, emptied, or sent). */
  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.active) {
      this.active = false;
      this.send(false);
    }
  }

  /** The chat is over: forget the state without telling anyone. */
  reset() {
    clearTimeout(this.timer);
    this.timer = null;
    this.active = false;
  }
}
