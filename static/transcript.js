// Save chat: the conversation as a plain-text file, made in the browser.
//
// The server never stores chat text, so the transcript is built here from
// the log as shown (the text of each line, never its markup) and handed to
// the browser as a download from a Blob; nothing is sent anywhere.

// How long the object URL stays valid after the click. Some browsers start
// reading the Blob only after the click returns, so it is not revoked at once.
const REVOKE_MS = 10000;

const pad = (n) => String(n).padStart(2, "0");

/** "2025-01-31 09:05" in local time. */
export function stamp(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** "chatroulette-2025-01-31-0905.txt" in local time. */
export function transcriptFilename(date) {
  return `chatroulette-${stamp(date).replace(" ", "-").replace(":", "")}.txt`;
}

/** The file's text: a header line with the date and time, then one entry per log line. */
export function transcriptText(lines, date) {
  return [`chatroulette chat, saved ${stamp(date)}`, "", ...lines].join("\n") + "\n";
}

/** Download `lines` as a UTF-8 text file. */
export function saveTranscript(lines, date = new Date()) {
  const blob = new Blob([transcriptText(lines, date)], { type: "text/plain;charset=utf-8" });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = transcriptFilename(date);
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), REVOKE_MS);
}
