// Background-tab signals: unread messages and a newly found stranger show in
// the tab title and favicon, and clear when you come back to the tab.

export class TitleNotifier {
  constructor(doc, favicon) {
    this.doc = doc;
    this.favicon = favicon;
    this.baseTitle = doc.title;
    this.baseIcon = favicon ? favicon.getAttribute("href") : null;
    this.unread = 0;
    this.found = false;
    const clear = () => {
      if (!this.inBackground()) this.clear();
    };
    doc.addEventListener("visibilitychange", clear);
    window.addEventListener("focus", clear);
  }

  inBackground() {
    return this.doc.hidden || !this.doc.hasFocus();
  }

  /** The stranger sent a message. */
  message() {
    if (!this.inBackground()) return;
    this.unread += 1;
    this.render();
  }

  /** A stranger was found. */
  partnerFound() {
    if (!this.inBackground()) return;
    this.found = true;
    this.render();
  }

  clear() {
    this.unread = 0;
    this.found = false;
    this.render();
  }

  render() {
    let title = this.baseTitle;
    if (this.unread) {
      title = `(${this.unread}) New message${this.unread > 1 ? "s" : ""} - ${this.baseTitle}`;
    } else if (this.found) {
      title = `Stranger found! - ${this.baseTitle}`;
    }
    this.doc.title = title;
    if (this.favicon) {
      const flagged = this.unread > 0 || this.found;
      this.favicon.setAttribute("href", flagged ? "favicon-alert.svg" : this.baseIcon);
    }
  }
}
