// The interests field on the start screen: tags typed into one input,
// normalised like the server does, and remembered in localStorage.

export const MAX_INTERESTS = 10;
export const MAX_INTEREST_CHARS = 32;
const STORAGE_KEY = "chatroulette.interests";

// Python's whitespace (str.isspace), which the server collapses; JavaScript's
// \s differs (it has U+FEFF, lacks U+001C-U+001F and U+0085).
const WHITESPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/g;

// Text that shows nothing, which the server refuses as empty: whitespace,
// format characters (category Cf: zero-width space, BOM...) and Hangul fillers.
const BLANK =
  /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\p{Cf}\u115f\u1160\u3164\uffa0]*$/u;

/** Does `text` show nothing (the server refuses it as empty)? */
export function isBlank(text) {
  return BLANK.test(text);
}

/** Trim, lower-case and collapse inner whitespace, as the server does. */
export function normaliseInterest(raw) {
  return raw.replace(WHITESPACE, " ").replace(/^ | $/g, "").toLowerCase();
}

/** The interest as the server would take it, or null if it would refuse it. */
export function validInterest(raw) {
  const interest = normaliseInterest(raw);
  const n = [...interest].length;
  return n >= 1 && n <= MAX_INTEREST_CHARS && !isBlank(interest) ? interest : null;
}

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "[]");
    if (!Array.isArray(saved)) return [];
    const valid = saved
      .filter((item) => typeof item === "string")
      .map(validInterest)
      .filter((item) => item !== null);
    return [...new Set(valid)].slice(0, MAX_INTERESTS);
  } catch {
    return []; // Storage disabled or corrupt: start empty.
  }
}

function save(interests) {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(interests));
  } catch {
    // Private mode or storage full: interests just are not remembered.
  }
}

export class InterestsField {
  /**
   * @param {HTMLInputElement} input where interests are typed
   * @param {HTMLUListElement} list where they are shown as removable tags
   * @param {(text: string) => void} notify shows a short message to the user
   */
  constructor(input, list, notify) {
    this.input = input;
    this.list = list;
    this.notify = notify;
    this.interests = load();
    this.render();
    input.addEventListener("keydown", (event) => this.onKeyDown(event));
    input.addEventListener("input", () => {
      // A pasted "a, b, c" becomes three tags; the text after the last comma stays.
      if (input.value.includes(",")) {
        const parts = input.value.split(",");
        input.value = parts.pop();
        parts.forEach((part) => this.add(part));
      }
    });
    input.addEventListener("blur", () => this.commit());
  }

  /** The interests to send with `find`, including anything still typed in the field. */
  values() {
    this.commit();
    return [...this.interests];
  }

  /** Turn the text in the input into a tag. Returns true if there was text. */
  commit() {
    const text = this.input.value;
    if (isBlank(text)) return false;
    this.input.value = "";
    this.add(text);
    return true;
  }

  add(raw) {
    const interest = normaliseInterest(raw);
    if (isBlank(interest) || this.interests.includes(interest)) return;
    if ([...interest].length > MAX_INTEREST_CHARS) {
      this.notify(`Interests are at most ${MAX_INTEREST_CHARS} characters.`);
      return;
    }
    if (this.interests.length >= MAX_INTERESTS) {
      this.notify(`You can add up to ${MAX_INTERESTS} interests.`);
      return;
    }
    this.interests.push(interest);
    save(this.interests);
    this.render();
  }

  remove(interest) {
    this.interests = this.interests.filter((item) => item !== interest);
    save(this.interests);
    this.render();
    this.input.focus();
  }

  onKeyDown(event) {
    if (event.isComposing) return;
    if (event.key === "Enter") {
      // Enter adds the typed interest; on an empty field it submits (Start).
      if (this.commit()) event.preventDefault();
    } else if (event.key === "," ) {
      event.preventDefault();
      this.commit();
    } else if (event.key === "Backspace" && this.input.value === "" && this.interests.length) {
      this.remove(this.interests[this.interests.length - 1]);
    }
  }

  render() {
    const items = this.interests.map((interest) => {
      const item = document.createElement("li");
      item.className = "tag";
      const label = document.createElement("span");
      label.textContent = interest;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "\u00d7";
      remove.setAttribute("aria-label", `Remove ${interest}`);
      remove.addEventListener("click", () => this.remove(interest));
      item.append(label, remove);
      return item;
    });
    this.list.replaceChildren(...items);
  }
}
