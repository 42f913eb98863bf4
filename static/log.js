// The conversation log: status lines and messages, rendered as text only.
//
// Everything a stranger sends goes through textContent, never innerHTML, so
// "<img src=x onerror=...>" is shown as those characters and nothing runs.
// Links are not made clickable.

// How close to the bottom (in px) still counts as "at the bottom".
const BOTTOM_SLACK = 24;

export class ChatLog {
  /**
   * @param {HTMLElement} element the scrolling role="log" container
   * @param {HTMLButtonElement} jumpButton shown when a message arrives while scrolled up
   */
  constructor(element, jumpButton) {
    this.element = element;
    this.jumpButton = jumpButton;
    jumpButton.addEventListener("click", () => this.scrollToBottom());
    // Whether the reader is following the conversation at the bottom; kept
    // through resizes (an on-screen keyboard opening shrinks the log).
    this.following = true;
    element.addEventListener("scroll", () => {
      this.following = this.atBottom();
      if (this.following) this.jumpButton.hidden = true;
    });
    new ResizeObserver(() => {
      if (this.following) element.scrollTop = element.scrollHeight;
    }).observe(element);
  }

  atBottom() {
    const el = this.element;
    return el.scrollHeight - el.scrollTop - el.clientHeight <= BOTTOM_SLACK;
  }

  scrollToBottom() {
    this.element.scrollTop = this.element.scrollHeight;
    this.following = true;
    this.jumpButton.hidden = true;
  }

  clear() {
    this.element.replaceChildren();
    this.jumpButton.hidden = true;
    this.following = true;
  }

  /** The text of every line, as shown ("You: hi", "Stranger has disconnected."). */
  lines() {
    return Array.from(this.element.children, (line) => line.textContent);
  }

  /** A status line ("Stranger has disconnected."). `alert` marks bad news. */
  status(text, { alert = false } = {}) {
    const line = document.createElement("p");
    line.className = alert ? "status alert" : "status";
    line.textContent = text;
    this.append(line, true);
    return line;
  }

  /** A chat message; `mine` for your own. Returns the element. */
  message(text, mine) {
    const line = document.createElement("p");
    line.className = mine ? "msg you" : "msg stranger";
    const who = document.createElement("strong");
    who.className = "who";
    who.textContent = mine ? "You:" : "Stranger:";
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    line.append(who, " ", body);
    // Your own message always scrolls into view: you just sent it.
    this.append(line, mine);
    return line;
  }

  /** Mark one of your messages as refused by the server. */
  markFailed(line, why) {
    line.classList.add("failed");
    const note = document.createElement("span");
    note.className = "failed-note";
    note.textContent = `(not delivered: ${why})`;
    line.append(" ", note);
  }

  append(node, forceScroll) {
    // Decide before adding: auto-scroll only if the reader was already at the
    // bottom, so scrolling up to reread is never interrupted.
    const follow = forceScroll || this.atBottom();
    this.element.append(node);
    if (follow) this.scrollToBottom();
    else this.jumpButton.hidden = false;
  }
}
