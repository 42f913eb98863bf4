// chatroulette browser client: the screens, the chat state and the wire
// protocol (docs/protocol.md). Server events are JSON objects dispatched on
// their "type" to the handlers in `events` below.

import { Connection, backoffDelay, socketUrl } from "./connection.js";
import { InterestsField, isBlank } from "./interests.js";
import { ChatLog } from "./log.js";
import { TitleNotifier } from "./title.js";
import { saveTranscript } from "./transcript.js";
import { TypingSender } from "./typing.js";
import { LocalMedia, VideoCall, cameraProblem } from "./video.js";

export const MAX_TEXT_CHARS = 2000;
const SHOW_COUNT_FROM = 1800; // the character counter appears near the limit
const NOTICE_MS = 6000;
const RECENT_MS = 10000; // how long a sent message may still be refused
const BURST_GAP_MS = 1500; // messages closer together than this form a burst
// A signal sent this recently may be refused as not_chatting because the chat
// ended on the way: that is no news to the user.
const SIGNAL_RACE_MS = 5000;
const VIDEO_KEY = "chatroulette.video"; // "on" when video is chosen
const VIDEO_WARNED_KEY = "chatroulette.videoWarned"; // "yes" once the notice was acknowledged

// Shown while a search or invite refused as `unavailable` (a server of a
// cluster that lost its shared lobby for a moment) is retried by itself.
const RETRYING_TEXT = "The service is briefly unavailable. Retrying...";
const BACK_TEXT = "The service is back. Looking for someone you can chat with...";
// The states in which a find or invite is on its way or waiting for a match.
const LOOKING = ["waiting", "inviting", "joining"];

const VIDEO_STATE_TEXT = {
  connecting: "Connecting video...",
  connected: "Video connected",
  failed: "Could not connect video. You can still chat by text.",
};

const $ = (id) => document.getElementById(id);
const ui = {
  online: $("online"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  reconnectNow: $("reconnect-now"),
  home: $("home"),
  startForm: $("start-form"),
  interestInput: $("interest-input"),
  inviteHome: $("invite-home"),
  chat: $("chat"),
  invitePanel: $("invite-panel"),
  inviteLink: $("invite-link"),
  copyLink: $("copy-link"),
  afterChat: $("after-chat"),
  changeInterests: $("change-interests"),
  inviteChat: $("invite-chat"),
  typing: $("typing-text"),
  notice: $("notice"),
  composer: $("composer"),
  leave: $("leave"),
  message: $("message"),
  send: $("send"),
  count: $("count"),
  report: $("report"),
  save: $("save"),
  reportDialog: $("report-dialog"),
  reportForm: $("report-form"),
  reportReason: $("report-reason"),
  reportCancel: $("report-cancel"),
  start: $("start"),
  videoChoice: $("video-choice"),
  videoProblem: $("video-problem"),
  videoWarning: $("video-warning"),
  videoUnderstood: $("video-understood"),
  preview: $("preview"),
  stage: $("stage"),
  remoteVideo: $("remote-video"),
  selfVideo: $("self-video"),
  videoState: $("video-state"),
  mute: $("mute"),
  cameraOff: $("camera-off"),
};

// What the user is doing (the connection's state is kept apart, below):
//   home      the start screen
//   waiting   looking for a random stranger
//   inviting  waiting for a friend to open an invite link
//   joining   opening a friend's invite link
//   chatting  in a chat
//   ended     a chat or a search is over; the leave button says New
let state = "home";
let chatId = null;
let armed = false; // the leave button says "Really?"
let reportable = false; // someone to report on this connection, not reported yet
let savable = false; // the log holds a chat (going on or over) that Save chat can download
let pending = null; // { frame, status } to send once the socket opens
let lookingFrame = null; // the last find or invite sent, to send again after `unavailable`
// The retries of lookingFrame: how many so far, the timer of the next one,
// and the log line that says so (null: not retrying).
let retry = { attempt: 0, timer: null, line: null };
let lastRequest = null; // type of the last request that the server may refuse
let recentOwn = []; // [{ line, text, at }] your messages of the last few seconds
let inviteCode = null;
let connectedOnce = false;
let lost = false;
let noticeTimer = null;
let chatMode = "text"; // "video" while looking for, or in, a video chat
let call = null; // the VideoCall of the current video chat
let lastSignalAt = 0;
let afterWarning = null; // what Start (or Invite) asked for before the video notice was acknowledged
let micMuted = false;
let cameraOff = false;

const log = new ChatLog($("log"), $("jump"));
const title = new TitleNotifier(document, $("favicon"));
const interests = new InterestsField(ui.interestInput, $("tag-list"), notify);
const media = new LocalMedia();
const typing = new TypingSender((active) => connection.send({ type: "typing", active }));
const connection = new Connection(socketUrl(), {
  onEvent: (event) => events[event.type]?.(event),
  onOpen,
  onLost,
});

// Helpers -------------------------------------------------------------------

/** Characters as the server counts them (code points: an emoji is one). */
function charCount(text) {
  return [...text].length;
}

/** A short message under the log, in plain words; it goes away by itself. */
function notify(text) {
  clearTimeout(noticeTimer);
  ui.notice.textContent = text;
  noticeTimer = setTimeout(() => {
    ui.notice.textContent = "";
  }, NOTICE_MS);
}

function showTyping(active) {
  ui.typing.hidden = !active;
}

function setOnline(count) {
  if (count === null) ui.online.textContent = "Offline: reconnecting...";
  else if (count === 1) ui.online.textContent = "1 person online: just you, for now.";
  else if (Number.isInteger(count)) ui.online.textContent = `${count.toLocaleString()} people online now.`;
}

function stored(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null; // storage disabled: nothing is remembered
  }
}

function store(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch {
    // storage disabled: nothing is remembered
  }
}

function videoWarned() {
  return stored(VIDEO_WARNED_KEY) === "yes";
}

function showStream(video, stream) {
  if (video.srcObject !== stream) video.srcObject = stream;
}

/** The video parts of the page: preview, notice, stage and the two toggles. */
function renderVideo() {
  const chosen = ui.videoChoice.checked;
  ui.videoWarning.hidden = !chosen || videoWarned();
  ui.preview.hidden = !chosen || !media.stream;
  showStream(ui.preview, chosen ? media.stream : null);
  const onStage = state !== "home" && chatMode === "video";
  ui.stage.hidden = !onStage;
  ui.chat.classList.toggle("video", onStage);
  showStream(ui.selfVideo, onStage ? media.stream : null);
  ui.selfVideo.hidden = !media.stream;
  ui.mute.setAttribute("aria-pressed", String(micMuted));
  ui.cameraOff.setAttribute("aria-pressed", String(cameraOff));
  ui.mute.disabled = ui.cameraOff.disabled = !media.stream;
}

/** Bring every control in line with `state`. */
function render() {
  const chatting = state === "chatting";
  ui.home.hidden = state !== "home";
  ui.chat.hidden = state === "home";
  ui.afterChat.hidden = state !== "ended";
  ui.invitePanel.hidden = !(state === "inviting" && inviteCode);
  ui.message.disabled = !chatting;
  ui.leave.textContent = state === "ended" ? "New" : armed ? "Really?" : "Stop";
  ui.leave.classList.toggle("armed", armed);
  ui.report.disabled = !reportable;
  ui.save.disabled = !savable;
  if (!chatting) showTyping(false);
  updateCount();
  renderVideo();
}

function setState(next) {
  state = next;
  if (!LOOKING.includes(next)) stopRetrying();
  if (next !== "chatting") {
    armed = false;
    closeCall();
  }
  render();
}

// Video -------------------------------------------------------------------------

/** Close the stranger's connection at once and clear their picture. */
function closeCall() {
  if (!call) return;
  call.close();
  call = null;
  ui.videoState.textContent = "Video ended.";
}

function startCall({ initiator, ice_servers: iceServers, ice_transport_policy: policy }) {
  closeCall();
  const thisCall = new VideoCall({
    stream: media.stream, // none (joined a friend's video chat without a camera): receive only
    initiator: initiator === true,
    iceServers,
    iceTransportPolicy: policy,
    remoteVideo: ui.remoteVideo,
    send: (data) => {
      if (call !== thisCall || !connection.send({ type: "signal", data })) return;
      lastSignalAt = Date.now();
    },
    onState: (videoState) => {
      if (call === thisCall) ui.videoState.textContent = VIDEO_STATE_TEXT[videoState];
    },
  });
  call = thisCall;
  ui.videoState.textContent = VIDEO_STATE_TEXT.connecting;
}

/** The camera could not be used: say why and fall back to text. */
function cameraFailed(error) {
  if (!ui.videoChoice.checked) return; // switched off meanwhile: nothing to explain
  ui.videoProblem.textContent = cameraProblem(error);
  videoOff();
}

function applyToggles() {
  media.setEnabled("audio", !micMuted);
  media.setEnabled("video", !cameraOff);
}

/** Video chosen: ask for camera and microphone and show the preview. */
function videoOn() {
  ui.videoChoice.checked = true;
  ui.videoProblem.textContent = "";
  store(VIDEO_KEY, "on");
  render();
  media.start().then(
    () => {
      applyToggles();
      render();
    },
    cameraFailed,
  );
}

/** Text only: every local track is stopped, so the camera light goes off. */
function videoOff() {
  ui.videoChoice.checked = false;
  afterWarning = null;
  store(VIDEO_KEY, null);
  media.stop();
  render();
}

/** Send a request now, or as soon as the socket opens. */
function request(frame, status) {
  lastRequest = frame.type;
  if (frame.type === "find" || frame.type === "invite") lookingFrame = frame;
  if (connection.send(frame)) {
    pending = null;
    if (status) log.status(status);
  } else {
    pending = { frame, status };
    log.status("Connecting to server...");
    connection.connect();
  }
}

/** Fresh chat screen for a new search or invite. */
function beginChatScreen() {
  stopRetrying();
  log.clear();
  typing.reset();
  showTyping(false);
  chatId = null;
  inviteCode = null;
  recentOwn = [];
  savable = false; // the last chat left the log with it
}

// User actions ----------------------------------------------------------------

/**
 * Whether a search or invite in the chosen mode may begin now. With video
 * chosen, it waits for the notice to be acknowledged and for the camera
 * (`then` runs once the browser answered; a refusal falls back to text).
 */
function readyToStart(then) {
  if (!ui.videoChoice.checked) return true;
  if (!videoWarned()) {
    afterWarning = then;
    if (state !== "home") setState("home");
    ui.videoWarning.hidden = false;
    ui.videoUnderstood.focus();
    return false;
  }
  if (media.stream) return true;
  media.start().then(then, (error) => {
    cameraFailed(error);
    then();
  });
  return false;
}

function startSearch() {
  if (!readyToStart(startSearch)) return;
  const chosen = interests.values();
  beginChatScreen();
  chatMode = ui.videoChoice.checked ? "video" : "text";
  setState("waiting");
  const frame = { type: "find" };
  if (chosen.length) frame.interests = chosen;
  if (chatMode === "video") frame.mode = "video";
  request(frame, "Looking for someone you can chat with...");
}

function createInvite() {
  if (!readyToStart(createInvite)) return;
  beginChatScreen();
  chatMode = ui.videoChoice.checked ? "video" : "text";
  setState("inviting");
  const frame = { type: "invite" };
  if (chatMode === "video") frame.mode = "video";
  request(frame, "Creating an invite link...");
}

function joinInvite(code) {
  beginChatScreen();
  chatMode = "text"; // the inviter's mode: paired says which
  setState("joining");
  request({ type: "find", invite: code }, "Joining your friend's chat...");
}

function endChat(text, alert = false) {
  typing.reset();
  showTyping(false);
  chatId = null;
  setState("ended");
  log.status(text, { alert });
}

/** The Stop -> Really? -> New button, also driven by Esc. */
function leaveAction() {
  switch (state) {
    case "chatting":
      if (!armed) {
        armed = true;
        render();
        return;
      }
      connection.send({ type: "leave" });
      endChat("You have disconnected.");
      return;
    case "waiting":
    case "inviting":
    case "joining": {
      const what = {
        waiting: "You stopped looking.",
        inviting: "You cancelled the invite.",
        joining: "You have disconnected.",
      }[state];
      pending = null;
      connection.send({ type: "leave" });
      setState("ended");
      log.status(what);
      return;
    }
    case "ended":
      startSearch(); // New: the next search starts at once
      return;
    default:
  }
}

function sendDraft() {
  if (state !== "chatting") return;
  const text = ui.message.value;
  if (isBlank(text)) return; // Nothing to say: text that shows nothing is not sent.
  if (charCount(text) > MAX_TEXT_CHARS) {
    notify(`That message is too long: ${MAX_TEXT_CHARS} characters at most.`);
    return;
  }
  typing.stop();
  if (!connection.send({ type: "message", text })) return;
  lastRequest = "message";
  const now = Date.now();
  recentOwn = recentOwn.filter((sent) => now - sent.at < RECENT_MS);
  recentOwn.push({ line: log.message(text, true), text, at: now });
  ui.message.value = "";
  armed = false; // Still talking: "Really?" goes back to "Stop".
  render();
  ui.message.focus();
}

function updateCount() {
  const n = charCount(ui.message.value);
  const over = n > MAX_TEXT_CHARS;
  ui.count.textContent =
    n >= SHOW_COUNT_FROM ? `${n} / ${MAX_TEXT_CHARS}${over ? " - too long to send" : ""}` : "";
  ui.count.classList.toggle("over", over);
  ui.message.setAttribute("aria-invalid", over ? "true" : "false");
  ui.send.disabled = state !== "chatting" || over;
}

// Server events ----------------------------------------------------------------

/**
 * A message was refused. The server does not say which one (accepted messages
 * get no reply), so the newest is marked "not delivered" only when that is
 * unambiguous: it was not part of a quick burst. Returns true if handled.
 */
function refusedMessage(code) {
  const now = Date.now();
  const newest = recentOwn.at(-1);
  const previous = recentOwn.at(-2);
  if (!newest || now - newest.at > RECENT_MS) return false;
  const unavailable = code === "unavailable";
  if (previous && newest.at - previous.at < BURST_GAP_MS) {
    if (unavailable) {
      log.status("Some of your last messages were not delivered: the service is briefly unavailable.", {
        alert: true,
      });
    } else {
      notify("You're going a bit fast: some of your last messages were not delivered.");
    }
    return true;
  }
  recentOwn.pop();
  log.markFailed(newest.line, code === "text_too_long" ? "too long" : "try again");
  if (unavailable) {
    // Not sent again by itself: the text goes back to the box, to send when the user wants.
    log.status("Your message was not delivered: the service is briefly unavailable. Try again in a moment.", {
      alert: true,
    });
  }
  if (state === "chatting" && !ui.message.value) {
    ui.message.value = newest.text; // give the text back, to send again
    updateCount();
  }
  return true;
}

export const ERROR_TEXT = {
  rate_limited: "You're going a bit fast. Wait a moment and try again.",
  text_too_long: `That message is too long: ${MAX_TEXT_CHARS} characters at most.`,
  not_chatting: "You're not in a chat right now.",
  invite_invalid: "That invite link is invalid, already used, or expired.",
  bad_request: "The server did not accept that.",
  banned:
    "Several people reported chats from your connection, so you can't start new chats for a while. Please try again later.",
  unavailable: "The service is briefly unavailable. Please try again in a moment.",
};

// Retrying a refused search or invite ----------------------------------------------

/** Stop retrying (Stop, a new search, a match, or the answer came). */
function stopRetrying() {
  clearTimeout(retry.timer);
  retry = { attempt: 0, timer: null, line: null };
}

/**
 * The search or invite was refused as `unavailable`: say so once, and send it
 * again after 1 s, 2 s, 4 s ... (at most 30 s, randomised between half and
 * all of it, as for reconnecting) until it is answered or the user stops.
 */
function retryLater() {
  if (!retry.line) retry.line = log.status(RETRYING_TEXT, { alert: true });
  clearTimeout(retry.timer);
  const delay = backoffDelay(retry.attempt);
  retry.attempt += 1;
  retry.timer = setTimeout(() => {
    retry.timer = null;
    if (LOOKING.includes(state) && lookingFrame) request(lookingFrame, null);
  }, delay);
}

/** An `unavailable` error: true if handled here. */
function unavailable() {
  if ((lastRequest === "find" || lastRequest === "invite") && state !== "chatting") {
    // After Stop (or Change interests) there is nothing left to retry or to say.
    if (LOOKING.includes(state)) retryLater();
    return true;
  }
  if (lastRequest === "report") {
    // Nothing changed on the server: the chat (if any) goes on there. Leave
    // it as the user did here, and let them report again in a moment.
    if (state === "ended") connection.send({ type: "leave" });
    reportable = true;
    log.status("Your report was not sent: the service is briefly unavailable. Try again in a moment.", {
      alert: true,
    });
    render();
    return true;
  }
  return lastRequest === "message" && refusedMessage("unavailable");
}

const events = {
  welcome({ online }) {
    setOnline(online);
  },

  online({ count }) {
    setOnline(count);
  },

  waiting() {
    // Already showing "Looking for someone..." since the request went out,
    // unless a refused search was retried meanwhile.
    if (state === "waiting" && retry.line) log.status(BACK_TEXT);
    stopRetrying();
  },

  paired(event) {
    const { chat, interests: shared, mode } = event;
    if (!LOOKING.includes(state)) return; // We already left.
    const friend = state !== "waiting";
    chatId = chat;
    reportable = true;
    savable = true;
    inviteCode = null;
    chatMode = mode === "video" ? "video" : "text";
    setState("chatting");
    log.status(
      friend
        ? "You're now chatting with your friend. Say hi!"
        : "You're now chatting with a random stranger. Say hi!",
    );
    if (Array.isArray(shared) && shared.length) log.status(`You both like ${shared.join(", ")}.`);
    if (chatMode === "video") startCall(event);
    title.partnerFound();
    ui.message.focus();
  },

  message({ text }) {
    if (state !== "chatting" || typeof text !== "string") return;
    showTyping(false);
    log.message(text, false);
    title.message();
  },

  signal({ data }) {
    if (state === "chatting" && call) call.receive(data);
  },

  typing({ active }) {
    if (state === "chatting") showTyping(active === true);
  },

  partner_left({ chat }) {
    if (state === "chatting" && chat === chatId) endChat("Stranger has disconnected.", true);
  },

  invite({ code }) {
    if (state !== "inviting" || typeof code !== "string") return;
    stopRetrying();
    inviteCode = code;
    const link = new URL(window.location.href);
    link.hash = `invite=${encodeURIComponent(code)}`;
    ui.inviteLink.value = link.href;
    render();
    log.status("Waiting for your friend to open the link...");
    ui.inviteLink.focus();
    ui.inviteLink.select();
  },

  invite_expired({ code }) {
    if (state === "inviting" && code === inviteCode) {
      inviteCode = null;
      setState("ended");
      log.status("Your invite link expired before anyone opened it.", { alert: true });
    }
  },

  error({ code, message }) {
    if (code === "not_chatting" && state !== "chatting" && Date.now() - lastSignalAt < SIGNAL_RACE_MS) {
      return; // our last ICE candidates crossed the end of the chat
    }
    if (code === "unavailable" && unavailable()) return;
    const text = ERROR_TEXT[code] || (typeof message === "string" && message) || "Something went wrong.";
    notify(text);
    if (lastRequest === "message" && refusedMessage(code)) return;
    if (LOOKING.includes(state) && lastRequest !== "report") {
      // The find or invite was refused: nothing is going on.
      setState("ended");
      log.status(text, { alert: true });
    }
  },
};

// Connection ---------------------------------------------------------------------

function onOpen() {
  connectedOnce = true;
  if (lost) {
    lost = false;
    ui.banner.hidden = true;
    if (state !== "home" && !pending) log.status("Reconnected. Press New to talk to someone.");
  }
  if (pending) {
    const { frame, status } = pending;
    pending = null;
    request(frame, status);
  }
}

function onLost({ code, delay }) {
  const seconds = Math.max(1, Math.round(delay / 1000));
  let why = "Connection lost.";
  if (!connectedOnce) why = "Can't reach the chat server.";
  else if (code === 1001) why = "The chat server is going away.";
  else if (code === 1008) why = "The server closed the connection: too many requests.";
  const wasLost = lost;
  lost = true;
  reportable = false; // A new connection is a new identity to the server.
  setOnline(null);
  ui.bannerText.textContent = `${why} Reconnecting in ${seconds} s...`;
  ui.banner.hidden = false;
  if (state === "chatting") {
    endChat("Connection lost: your chat with the stranger has ended.", true);
  } else if (LOOKING.includes(state) && !pending) {
    const what =
      state === "inviting" ? "Connection lost: your invite link no longer works." : "Connection lost: you stopped looking.";
    setState("ended");
    log.status(what, { alert: true });
  } else if (!wasLost) {
    render();
  }
}

// Wiring -----------------------------------------------------------------------

ui.startForm.addEventListener("submit", (event) => {
  event.preventDefault();
  startSearch();
});
ui.inviteHome.addEventListener("click", createInvite);
ui.inviteChat.addEventListener("click", createInvite);
ui.changeInterests.addEventListener("click", () => {
  setState("home");
  ui.interestInput.focus();
});
ui.leave.addEventListener("click", leaveAction);

ui.videoChoice.addEventListener("change", () => {
  if (ui.videoChoice.checked) videoOn();
  else {
    ui.videoProblem.textContent = "";
    videoOff();
  }
});
ui.videoUnderstood.addEventListener("click", () => {
  store(VIDEO_WARNED_KEY, "yes");
  render();
  if (afterWarning) {
    const then = afterWarning;
    afterWarning = null;
    then();
  } else {
    ui.start.focus();
  }
});
ui.mute.addEventListener("click", () => {
  micMuted = !micMuted;
  applyToggles();
  render();
});
ui.cameraOff.addEventListener("click", () => {
  cameraOff = !cameraOff;
  applyToggles();
  render();
});
// Leaving the page lets go of the camera and microphone and ends the video call.
window.addEventListener("pagehide", () => {
  closeCall();
  media.stop();
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted && ui.videoChoice.checked) videoOn(); // back from the back-forward cache
});
ui.reconnectNow.addEventListener("click", () => connection.connect());
window.addEventListener("online", () => connection.connect());

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendDraft();
});
ui.message.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a newline; never in the middle of IME composition.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendDraft();
  }
});
ui.message.addEventListener("input", () => {
  updateCount();
  if (state === "chatting") typing.changed(ui.message.value.trim() !== "");
});

ui.copyLink.addEventListener("click", async () => {
  ui.inviteLink.select();
  try {
    await navigator.clipboard.writeText(ui.inviteLink.value);
    notify("Link copied. Send it to your friend.");
  } catch {
    notify("Copy the selected link and send it to your friend.");
  }
});

ui.report.addEventListener("click", () => {
  if (!reportable) return;
  ui.reportReason.value = "";
  ui.reportDialog.showModal();
  ui.reportReason.focus();
});
ui.save.addEventListener("click", () => {
  if (savable) saveTranscript(log.lines());
});
ui.reportCancel.addEventListener("click", () => ui.reportDialog.close());
ui.reportForm.addEventListener("submit", (event) => {
  event.preventDefault();
  ui.reportDialog.close();
  if (!reportable) return;
  const reason = ui.reportReason.value.trim();
  const frame = { type: "report" };
  if (reason) frame.reason = reason;
  if (!connection.send(frame)) return;
  lastRequest = "report";
  reportable = false;
  if (state === "chatting") {
    endChat("You reported the stranger and left the chat. You won't be paired with them again.");
  } else {
    log.status("You reported the stranger. You won't be paired with them again.");
    render();
  }
});

function isTextField(element) {
  return (
    element instanceof HTMLInputElement ||
    element instanceof HTMLTextAreaElement ||
    (element instanceof HTMLElement && element.isContentEditable)
  );
}

document.addEventListener("keydown", (event) => {
  if (event.isComposing || ui.reportDialog.open) return;
  if (event.key === "Escape") {
    if (state === "home") return;
    event.preventDefault();
    leaveAction();
    return;
  }
  // Typing anywhere goes into the message box.
  const printable = event.key.length === 1 && !event.ctrlKey && !event.metaKey && !event.altKey;
  const onButton = event.target instanceof HTMLButtonElement && event.key === " ";
  if (state === "chatting" && printable && !onButton && !isTextField(event.target)) {
    ui.message.focus();
  }
});

// Where the browser does not shrink the layout for the on-screen keyboard
// (iOS Safari), size the page to the visible part so the composer stays above it.
if (window.visualViewport) {
  const viewport = window.visualViewport;
  const fit = () => {
    if (Math.abs(viewport.scale - 1) < 0.01) {
      document.documentElement.style.setProperty("--app-height", `${Math.round(viewport.height)}px`);
    }
  };
  viewport.addEventListener("resize", fit);
  fit();
}

/** An invite code in the address (#invite=CODE), removed so a reload does not reuse it. */
function takeInviteFromAddress() {
  const match = /^#invite=([^&]+)$/.exec(window.location.hash);
  if (!match) return null;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function joinFromAddress() {
  const code = takeInviteFromAddress();
  if (code === null) return;
  if (state === "chatting") {
    // Do not drop a conversation because a link was opened in this tab.
    notify("Leave this chat first, then open the invite link again.");
    return;
  }
  joinInvite(code);
}
window.addEventListener("hashchange", joinFromAddress);

if (stored(VIDEO_KEY) === "on") videoOn();
render();
connection.connect();
joinFromAddress();
